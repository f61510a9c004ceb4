"""Stage records: what each stage of a job read (its signature) and when it finished.

A stage's signature is the exact spec fields it reads (dotted leaves, e.g.
``prediction.mirroring``) and the tokens of the upstream stages whose artefacts it reads. A
record ``<run dir>/stages/<key>.json`` is written after the stage's artefacts are complete
(provenance last), with a fresh token: a stage that re-runs gives its downstream a new token,
so they re-run too; a stage whose signature is unchanged is skipped.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from alseg import __version__
from alseg.io import store as st
from alseg.spec import JobSpec, without_neutral_additions

FORMAT = 1


def leaves(data: Any, prefix: str) -> dict[str, Any]:
    """``{dotted path: value}`` of every leaf under ``prefix`` of a spec dump."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key in sorted(data):
            out.update(leaves(data[key], f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: data}


def field_values(spec: JobSpec, fields: tuple[str, ...], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The leaves of ``fields`` (sections or single fields) in the spec, less ``exclude``."""
    dump = without_neutral_additions(spec.model_dump(mode="json"))  # an added field at its neutral value changes no record
    out: dict[str, Any] = {}
    for field in fields:
        node: Any = dump
        for part in field.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out.update(leaves(node, field))
    for key in list(out):
        if any(key == e or key.startswith(e + ".") for e in exclude):
            del out[key]
    return {k: st.redact(v) if isinstance(v, str) and "://" in v else v for k, v in out.items()}


@dataclass(frozen=True)
class Signature:
    fields: dict[str, Any]
    upstream: dict[str, str]

    @property
    def sha(self) -> str:
        text = json.dumps({"fields": self.fields, "upstream": self.upstream}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def changes(self, recorded: dict[str, Any]) -> list[str]:
        """What differs from a recorded signature: changed fields by name, then changed upstream stages."""
        old_f, old_u = recorded.get("fields", {}), recorded.get("upstream", {})
        out = [k for k in sorted(set(old_f) | set(self.fields)) if old_f.get(k) != self.fields.get(k)]
        out += [f"upstream {k}" for k in sorted(set(old_u) | set(self.upstream)) if old_u.get(k) != self.upstream.get(k)]
        return out


def record_url(spec: JobSpec, key: str) -> str:
    return st.join(spec.run.dir, "stages", f"{key}.json")


def read_record(spec: JobSpec, key: str) -> dict[str, Any] | None:
    url = record_url(spec, key)
    if not st.exists(url):
        return None
    fs, path = st.filesystem(url)
    with fs.open(path, "r") as fh:
        record = json.load(fh)
    return record if record.get("format") == FORMAT else None


def write_record(spec: JobSpec, key: str, signature: Signature, result: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """Record a finished stage (after its artefacts are complete); returns the record."""
    record = {"format": FORMAT, "key": key, "signature": {"fields": signature.fields, "upstream": signature.upstream},
              "signature_sha": signature.sha, "token": uuid.uuid4().hex[:16], "result": result, "wall_s": round(wall_s, 3),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "alseg": __version__}
    url = record_url(spec, key)
    fs, path = st.filesystem(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(f"{path}.tmp", json.dumps(record, indent=1, default=str).encode())
    fs.mv(f"{path}.tmp", path)
    return record
