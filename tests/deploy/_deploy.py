"""Helpers of the deployment tests: the repository's files, the linters of locks/tools.txt, alseg's
own command-line parser and job-spec loader, Ray's own `ray job submit` parser, and what the job's
driver and each stage's workers need of the nodes they run on."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from alseg.cli import build_parser
from alseg.errors import SpecError
from alseg.spec import JobSpec, StageResources, load_spec
from tests.helpers.need import require

REPO = Path(__file__).resolve().parents[2]
# where scripts/install-tools.sh puts the linters: $ALSEG_TOOLS (relative to the repository, as the
# script takes it), else .tools
TOOLS = REPO / (os.environ.get("ALSEG_TOOLS") or ".tools")
TOOLS_BIN = TOOLS / "bin"


def tool(name: str) -> str | None:
    """A linter from $ALSEG_TOOLS/bin or .tools/bin (scripts/install-tools.sh), else from PATH; None
    if neither has it."""
    local = TOOLS_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def need_tool(name: str) -> str:
    """The linter's path; skips (fails in CI) without it, saying how to get it."""
    path = tool(name)
    require(path is not None, f"{name} is neither in {TOOLS_BIN} nor on PATH: run `make tools` (scripts/install-tools.sh)")
    assert path is not None
    return path


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    """Every document of a YAML file."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def alseg_problem(argv: list[str]) -> str | None:
    """None if ``alseg ARGV`` parses with alseg's own parser, else argparse's complaint."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as stop:
        if stop.code not in (0, None):  # --help exits 0
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {stop.code}"
    return None


def alseg_args(command: str) -> Any:
    """The parsed arguments of an ``alseg ...`` command line (shell words); fails if it does not parse."""
    argv = shlex.split(command)
    assert argv and argv[0] == "alseg", f"not an alseg command: {command!r}"
    problem = alseg_problem(argv[1:])
    assert problem is None, f"`{command}` does not parse with alseg's CLI: {problem}"
    return build_parser().parse_args(argv[1:])


def shell_commands(markdown: str) -> list[str]:
    """The commands of the ```bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(shlex.join(words))
    return out


def ray_job_submit(command: str) -> dict[str, Any]:
    """The options of a ``ray job submit ... -- ENTRYPOINT`` command line, as Ray's own command-line
    parser (the click command behind ``ray job submit``) reads them; fails if they do not parse."""
    from ray.dashboard.modules.job.cli import submit

    words = shlex.split(command)
    starts = [i for i in range(len(words) - 2) if words[i : i + 3] == ["ray", "job", "submit"]]
    assert starts, f"not a `ray job submit` command: {command!r}"
    ctx = submit.make_context("submit", words[starts[0] + 3 :])
    return dict(ctx.params)


# --- where the job's driver runs -------------------------------------------------------------------
# `alseg run` (the job's driver) trains nnU-Net in its own process tree on the GPU it sees, and resolves
# `auto` devices of prediction and embedding where it runs (alseg/nnunet/run.py, pipeline/common.py).
# So every cluster here submits it with a GPU of its own and resources.nnunet's CPUs (and memory where
# the submission can say it): Ray starts it on a GPU node and keeps that GPU from the stages' workers.
GPU_STAGES = ("pseudolabel", "embedding", "prediction")  # stages whose workers may ask for GPUs
STAGES = ("pseudolabel", "nnunet", "embedding", "prediction", "postprocess")
GiB = 2**30  # alseg reads memory_gb as GiB (alseg/runtime/base.py Resources.from_spec)


@dataclass(frozen=True)
class Node:
    """What one node (a launcher node type, a KubeRay pod) offers Ray."""

    name: str
    cpus: float
    gpus: float
    memory_bytes: float


@dataclass(frozen=True)
class Driver:
    """What the job's driver reserves: `ray job submit --entrypoint-num-*`, a RayJob's entrypointNum*."""

    cpus: float
    gpus: float
    memory_bytes: float | None = None  # None: the submission cannot reserve memory (KubeRay v1.7.0)


def _mem(stage: StageResources) -> float:
    return 0.0 if stage.memory_gb is None else stage.memory_gb * GiB


def submit_driver(command: str) -> Driver:
    """What a `ray job submit` command line reserves for its entrypoint (Ray's own parser)."""
    params = ray_job_submit(command)
    return Driver(params["entrypoint_num_cpus"] or 0.0, params["entrypoint_num_gpus"] or 0.0, params["entrypoint_memory"])


def driver_problems(driver: Driver, spec: JobSpec) -> list[str]:
    """The driver's reservation against resources.nnunet, which it trains nnU-Net with."""
    n = spec.resources.nnunet
    out = []
    if driver.gpus < 1 or driver.gpus < n.gpus:
        out.append(f"the job's driver reserves {driver.gpus:g} GPUs: it trains nnU-Net in its own processes, so it needs "
                   f"resources.nnunet's {max(n.gpus, 1):g} (else it runs on the CPU head and trains on CPUs)")
    if driver.cpus < n.cpus:
        out.append(f"the job's driver reserves {driver.cpus:g} CPUs, below resources.nnunet's {n.cpus:g}")
    if driver.memory_bytes is not None and driver.memory_bytes < _mem(n):
        out.append(f"the job's driver reserves {driver.memory_bytes / GiB:g} GiB, below resources.nnunet's {n.memory_gb:g}")
    return out


def driver_hosts(nodes: list[Node], driver: Driver) -> list[Node]:
    """The nodes Ray may start the driver on."""
    return [node for node in nodes if node.cpus >= driver.cpus and node.gpus >= driver.gpus]


def host_problems(node: Node, driver: Driver, spec: JobSpec) -> list[str]:
    """What ``node`` lacks to hold the driver (resources.nnunet: its CPUs, memory and GPU) and, beside
    it, the workers Ray may place on what the driver leaves: every GPU left to a GPU stage's workers
    with their CPUs and memory, and as many CPU-only workers as the CPUs left hold, in memory."""
    n = spec.resources.nnunet
    out = []
    if node.gpus < max(1.0, driver.gpus) or node.cpus < max(driver.cpus, n.cpus):
        return [f"{node.name} ({node.cpus:g} CPUs, {node.gpus:g} GPUs) cannot hold the driver "
                f"({driver.cpus:g} CPUs, {driver.gpus:g} GPUs; resources.nnunet {n.cpus:g} CPUs, {n.gpus:g} GPUs)"]
    driver_mem = max(_mem(n), driver.memory_bytes or 0.0)
    if node.memory_bytes < driver_mem:
        out.append(f"{node.name}: {node.memory_bytes / GiB:g} GiB cannot hold resources.nnunet's {n.memory_gb:g} GiB")
    left_cpus, left_gpus = node.cpus - driver.cpus, node.gpus - driver.gpus
    for name in STAGES:
        if name == "nnunet":
            continue
        s = getattr(spec.resources, name)
        if s.gpus > 0:
            k = int(left_gpus // s.gpus)
            if s.workers is not None:
                k = min(k, s.workers)
            if k * s.cpus > left_cpus:
                out.append(f"{node.name}: beside the driver, {k} {name} workers (one per GPU left) need {k * s.cpus:g} "
                           f"CPUs, {left_cpus:g} are left")
        elif s.cpus > 0:
            k = int(left_cpus // s.cpus)
        else:
            continue
        if driver_mem + k * _mem(s) > node.memory_bytes:
            out.append(f"{node.name}: the driver ({driver_mem / GiB:g} GiB) and {k} {name} workers "
                       f"({k * _mem(s) / GiB:g} GiB) exceed its {node.memory_bytes / GiB:g} GiB")
    return out


def worker_count_problems(spec: JobSpec, max_gpus: float, driver: Driver) -> list[str]:
    """Every GPU stage names its worker count, and the cluster at its largest holds them beside the
    driver. Without `workers` a stage starts as many workers as the cluster holds when it starts
    (alseg/runtime/ray_backend.py capacity): one, on a cluster scaled to zero, and the autoscaler is
    never asked for more."""
    out = []
    for name in GPU_STAGES:
        s = getattr(spec.resources, name)
        if s.gpus <= 0:
            continue
        if s.workers is None:
            out.append(f"resources.{name} sets no workers: on a cluster that starts without GPU nodes it would start one")
        elif s.workers * s.gpus > max_gpus - driver.gpus:
            out.append(f"resources.{name}: {s.workers} workers of {s.gpus:g} GPUs exceed the {max_gpus:g} GPUs the "
                       f"cluster grows to, less the driver's {driver.gpus:g} (a worker that never starts stalls the stage)")
    return out


def spec_from_text(text: str, tmp_path: Path, name: str = "job.yaml") -> JobSpec:
    """A job spec through alseg's own loader (the same as `alseg validate --offline`)."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_spec(path)


__all__ = ["GPU_STAGES", "REPO", "STAGES", "TOOLS", "TOOLS_BIN", "Driver", "GiB", "Node", "SpecError", "alseg_args",
           "alseg_problem", "driver_hosts", "driver_problems", "host_problems", "need_tool", "ray_job_submit",
           "shell_commands", "spec_from_text", "submit_driver", "tool", "worker_count_problems", "yaml_docs"]
