"""Batch submission to a Ray cluster through Ray's Jobs API (the one adapter around
``ray.job_submission``).

A submitted job carries everything it needs in its runtime environment, never a local path: the
spec's YAML text and the alseg version that submitted it (:data:`SPEC_ENV`, :data:`VERSION_ENV`).
Its entrypoint, ``alseg run-submitted STAGE``, refuses to run on a node whose alseg differs. The
job's driver asks Ray for what the stage it runs needs (:func:`driver_resources`). A token for a
cluster with token authentication (``RAY_AUTH_MODE=token``) is read from an environment variable
and sent as an ``Authorization`` header only: never in a job's metadata or runtime environment.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from alseg.errors import AlsegError, SpecError
from alseg.io import store as st
from alseg.runtime.base import Resources
from alseg.spec import JobSpec

SPEC_ENV = "ALSEG_JOB_SPEC"
VERSION_ENV = "ALSEG_JOB_VERSION"
TOKEN_ENV = "RAY_AUTH_TOKEN"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
STAGES = ("run", "pseudolabel", "pretrain", "embed", "predict")
"""What a submitted job runs: the whole job, or one stage command of the same name."""
_TRAINS = ("run", "pretrain")  # stages whose driver trains nnU-Net in its own subprocess
_STAGE_RESOURCES = {"pseudolabel": "pseudolabel", "embed": "embedding", "predict": "prediction"}
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobsError(AlsegError):
    """The Jobs API refused or failed a request; the message says which and why."""


@dataclass(frozen=True)
class JobRow:
    id: str
    status: str
    name: str
    stage: str
    run_dir: str
    start_s: float | None
    end_s: float | None
    message: str


def driver_resources(spec: JobSpec, stage: str) -> Resources:
    """What a submitted job's driver asks Ray for: ``resources.nnunet`` where it trains nnU-Net
    (``run``, ``pretrain``; no GPU when ``nnunet.device`` is ``cpu``); with the serial backend the
    driver does a stage's work itself, so that stage's resources; else one CPU (the stage's work
    runs on Ray workers that ask for their own)."""
    r = spec.resources
    if stage in _TRAINS or r.backend == "serial":
        field = "nnunet" if stage in _TRAINS else _STAGE_RESOURCES[stage]
        res = Resources.from_spec(getattr(r, field), label=f"resources.{field}")
        if stage in (*_TRAINS, "predict") and spec.nnunet.device == "cpu":
            res = Resources(cpus=res.cpus, gpus=0.0, memory_bytes=res.memory_bytes, label=res.label)
        return res
    return Resources(cpus=1.0, gpus=0.0, label="driver")


def check_portable(spec: JobSpec, source: str) -> None:
    """Refuse paths that mean nothing on a cluster node: relative local paths, and ``~`` (this
    machine's home) in any path the job reads or writes."""
    from alseg.rundir import inputs_of

    for field, value in [("run.dir", spec.run.dir), *inputs_of(spec)]:
        if not st.is_local(value):
            continue
        text = value[len("file://"):] if value.startswith("file://") else value
        if text.startswith("~") or not os.path.isabs(text):
            raise SpecError(f"{source}: {field} {value!r} is a {'home-relative' if text.startswith('~') else 'relative'} "
                            "path, which means nothing on the cluster's nodes: give an absolute path that every node "
                            "sees, or a URL")


def _headers(token_env: str) -> dict[str, str] | None:
    token = os.environ.get(token_env)
    return {"Authorization": f"Bearer {token}"} if token else None


@contextmanager
def _explicit_address() -> Iterator[None]:
    """Ray's client lets ``RAY_ADDRESS`` / ``RAY_API_SERVER_ADDRESS`` override the address it is
    given; the address alseg was given wins."""
    saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def client(address: str, token_env: str = TOKEN_ENV):
    """A Jobs API client for ``address`` (e.g. ``http://127.0.0.1:8265``)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        with _explicit_address():
            return JobSubmissionClient(address, headers=_headers(token_env))
    except AuthenticationError as err:
        first = str(err).strip().splitlines()[0]
        raise JobsError(f"the Ray cluster at {address} refused the request ({first}); put the cluster's token in "
                        f"${token_env}") from None
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise JobsError(f"no Ray Jobs API at {address}: {str(err).strip().splitlines()[0]}") from None


def submission_id(spec: JobSpec) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", spec.name.lower()).strip("-")[:40] or "job"
    return f"alseg-{name}-{spec.job_digest()[:8]}-{secrets.token_hex(3)}"


def submit(jobs_client: Any, spec: JobSpec, text: str, *, stage: str = "run") -> str:
    """Submit one job: ``alseg run-submitted STAGE`` with the spec's ``text`` in its runtime
    environment; returns its submission id."""
    from alseg import __version__

    if stage not in STAGES:
        raise SpecError(f"cannot submit stage {stage!r}: expected one of {', '.join(STAGES)}")
    res = driver_resources(spec, stage)
    sid = submission_id(spec)
    metadata = {"alseg": __version__, "name": spec.name, "stage": stage, "job_digest": spec.job_digest(),
                "run_dir": st.redact(spec.run.dir)}
    kwargs: dict[str, Any] = {"entrypoint_num_cpus": res.cpus, "entrypoint_num_gpus": res.gpus}
    if res.memory_bytes is not None:
        kwargs["entrypoint_memory"] = res.memory_bytes
    try:
        return jobs_client.submit_job(entrypoint=f"alseg run-submitted {stage}", submission_id=sid, metadata=metadata,
                                      runtime_env={"env_vars": {SPEC_ENV: text, VERSION_ENV: __version__,
                                                                "RAY_USAGE_STATS_ENABLED": "0"}}, **kwargs)
    except (RuntimeError, OSError) as err:  # OSError: requests' connection errors (the cluster went away mid-request)
        raise JobsError(f"submitting {spec.name}: the Ray cluster did not answer ({_first_line(err)})") from None


def rows(jobs_client: Any, *, every: bool = False) -> list[JobRow]:
    """alseg's jobs on the cluster (``every``: all of them), oldest first."""
    out = []
    for job in _call("listing the cluster's jobs", jobs_client.list_jobs):
        meta = job.metadata or {}
        if "alseg" not in meta and not every:
            continue
        out.append(JobRow(job.submission_id or job.job_id or "?", str(job.status.value if hasattr(job.status, "value") else job.status),
                          meta.get("name", "-"), meta.get("stage", "-"), meta.get("run_dir", "-"),
                          None if job.start_time is None else job.start_time / 1000, None if job.end_time is None else job.end_time / 1000,
                          "".join((job.message or "").strip().splitlines()[-1:])))
    return sorted(out, key=lambda r: r.start_s or 0.0)


def _call(what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except OSError as err:  # requests' connection errors: the cluster went away mid-request
        raise JobsError(f"{what}: the Ray cluster did not answer ({_first_line(err)})") from None
    except RuntimeError as err:
        text = _first_line(err)
        if "404" in text or "does not exist" in text:
            raise JobsError(f"{what}: no such job on this cluster (alseg jobs lists them)") from None
        raise JobsError(f"{what}: {text}") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def status(jobs_client: Any, job_id: str) -> str:
    got = _call(f"job {job_id}", lambda: jobs_client.get_job_status(job_id))
    return str(got.value if hasattr(got, "value") else got)


def logs(jobs_client: Any, job_id: str) -> str:
    return _call(f"job {job_id}", lambda: jobs_client.get_job_logs(job_id))


def follow(jobs_client: Any, job_id: str, write: Callable[[str], None]) -> str:
    """Write the job's log as it grows until the job ends; its final status."""
    status(jobs_client, job_id)  # an unknown id fails here, with a clear message

    async def tail() -> None:
        async for chunk in jobs_client.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except (RuntimeError, OSError) as err:  # the log stream broke (aiohttp's errors are OSErrors or RuntimeErrors)
        raise JobsError(f"following job {job_id}: the Ray cluster did not answer ({_first_line(err)})") from None
    return status(jobs_client, job_id)


def stop(jobs_client: Any, job_id: str) -> bool:
    """Ask the cluster to stop a job; False when it had already ended."""
    return bool(_call(f"job {job_id}", lambda: jobs_client.stop_job(job_id)))
