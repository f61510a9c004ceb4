"""The run directory: apart from everything the job reads, and owned by one job at a time.

Two guarantees, checked before a stage writes anything:

* **No overlap with inputs.** The run directory may not equal, lie inside, or contain the input
  image, its ground truth, or any other file the spec names (weights, checkpoints, the
  annotation import folder), compared after normalising paths and URLs (``~``, ``..``,
  symlinks, ``file://``, trailing slashes, scheme and host case). A job never writes inside
  what it reads.
* **One owner.** The run directory records the job that owns it in ``alseg-run.json`` (the
  hash of the job's content, :meth:`~alseg.spec.JobSpec.job_digest`, the spec itself, alseg's and
  its main libraries' versions, when). A job with another spec refuses to run there unless
  ``run.overwrite: true``, and then says which job it replaces and which fields differ; stage
  signatures then recompute exactly what depends on them. A folder that holds data but no such
  record is not alseg's and is refused.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
from importlib import metadata
from typing import Any

from alseg.errors import OutputExistsError, SpecError
from alseg.io import store as st
from alseg.spec import JobSpec, ground_truth_url

RECORD = "alseg-run.json"
FORMAT = 1
_VERSIONED = ("alseg", "numpy", "zarr", "ome-zarr", "torch", "nnunetv2", "timm", "ray", "faiss-cpu")
log = logging.getLogger("alseg")


def normalised(url: str) -> tuple[str, tuple[str, ...]]:
    """``(root, path components)`` of a path or URL, for containment tests."""
    if st.is_local(url):
        path = os.path.realpath(st.local_path(url).expanduser())
        return "file", tuple(p for p in path.split(os.sep) if p)
    text = st.redact(url)
    scheme, rest = text.split("://", 1)
    host, _, path = rest.partition("/")
    parts = tuple(p for p in posixpath.normpath("/" + path).split("/") if p)
    return f"{scheme.lower()}://{host.lower()}", parts


def contains(outer: str, inner: str) -> bool:
    """Whether ``inner`` is ``outer`` or lies inside it."""
    (ra, pa), (rb, pb) = normalised(outer), normalised(inner)
    return ra == rb and pb[: len(pa)] == pa


def inputs_of(spec: JobSpec) -> list[tuple[str, str]]:
    """``(field, URL)`` of everything the job reads."""
    out = [("input.url", spec.input.url)]
    gt = ground_truth_url(spec)
    if gt is not None:
        out.append(("input.ground_truth", gt))
    for field, value in (
        ("pseudolabel.weights_path", getattr(spec.pseudolabel, "weights_path", None)),
        ("pseudolabel.checkpoint", getattr(spec.pseudolabel, "checkpoint", None)),
        ("pseudolabel.decoder_checkpoint", getattr(spec.pseudolabel, "decoder_checkpoint", None)),
        ("embedding.weights_path", spec.embedding.weights_path),
        ("annotation.import_dir", getattr(spec.annotation, "import_dir", None)),
    ):
        if value is not None:
            out.append((field, value))
    return out


def overlap_problems(spec: JobSpec) -> list[tuple[str, str]]:
    """One ``("run.dir", message)`` per input the run directory overlaps."""
    run = spec.run.dir
    problems = []
    for field, url in inputs_of(spec):
        if contains(run, url) or contains(url, run):
            how = ("is" if contains(run, url) and contains(url, run)
                   else "contains" if contains(run, url) else "lies inside")
            problems.append(("run.dir", f"the run directory {st.redact(run)} {how} {field} ({st.redact(url)}): a job "
                             "never writes where it reads; choose a run directory apart from every input"))
    return problems


def _record_url(spec: JobSpec) -> str:
    return st.join(spec.run.dir, RECORD)


def _changed(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the fields that differ between two spec dumps."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def ownership_problem(spec: JobSpec) -> tuple[str, str] | None:
    """Why this job may not use its run directory (another job's, or not alseg's), or None."""
    run = spec.run.dir
    url = _record_url(spec)
    if st.exists(url):
        record = st.read_json(url)
        if record.get("job_digest") == spec.job_digest() or spec.run.overwrite:
            return None
        changed = _changed(record.get("spec", {}), spec.job_content())
        return ("run.dir", f"the run directory {st.redact(run)} belongs to another job ('{record.get('name')}', spec "
                f"{record.get('job_digest')}, started {record.get('created')}), which differs in "
                f"{', '.join(changed[:8]) or 'its content'}{' ...' if len(changed) > 8 else ''}: use a new run directory, "
                "or set run.overwrite: true to let this job replace that one's artefacts")
    if st.has_content(run):
        return ("run.dir", f"the run directory {st.redact(run)} holds data that alseg did not write (no {RECORD}): "
                "a run directory must be new, empty, or one that alseg made; choose another")
    return None


def claim(spec: JobSpec) -> dict[str, Any]:
    """Check the run directory against the job and record the job as its owner; returns the record.

    Raises :class:`SpecError` when it overlaps an input and :class:`OutputExistsError` when it
    belongs to another job (without ``run.overwrite``) or holds data alseg did not write.
    Replacing another job's record (``run.overwrite``) is logged with what differs.
    """
    problems = overlap_problems(spec)
    if problems:
        raise SpecError("; ".join(m for _, m in problems), problems)
    problem = ownership_problem(spec)
    if problem is not None:
        raise OutputExistsError(problem[1])
    url = _record_url(spec)
    previous = st.read_json(url) if st.exists(url) else None
    if previous is not None and previous.get("job_digest") == spec.job_digest():
        return previous
    record = {"format": FORMAT, "name": spec.name, "job_digest": spec.job_digest(), "spec": spec.job_content(),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": _versions(), "replaced": []}
    if previous is not None:
        changed = _changed(previous.get("spec", {}), spec.job_content())
        record["replaced"] = [*previous.get("replaced", []), {k: previous.get(k) for k in ("name", "job_digest", "created")}]
        log.warning("run.overwrite: job '%s' (spec %s) takes over the run directory %s from job '%s' (spec %s, started %s); "
                    "changed: %s; the artefacts that depend on these fields are recomputed, the others reused",
                    spec.name, spec.job_digest(), st.redact(spec.run.dir), previous.get("name"), previous.get("job_digest"),
                    previous.get("created"), ", ".join(changed) or "nothing")
    fs, path = st.filesystem(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, json.dumps(record, indent=1).encode())
    return record


def _versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
