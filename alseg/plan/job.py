"""What every stage's projection shares: the cluster, the plan records, and the job context (the
spec, the volume, the rates) with its helpers. The model itself is described in :mod:`alseg.plan.model`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from alseg.errors import SpecError
from alseg.plan import counts as cnt
from alseg.plan.profile import Profile
from alseg.preflight import holdout_of
from alseg.spec import JobSpec, StageResources, TrainingSpec

MB = 1e6
REPORT_S = 5.0
SELECT_S = 2.0
ASSUMPTIONS = [
    "stages run one after another (as `alseg run`); the job's time is their sum",
    "work items of a stage spread over its workers, longest first; each worker at the profile's per-worker rate",
    "workers = what the cluster holds of resources.<stage> (CPUs and GPUs per node x nodes), capped by its `workers`; "
    "serial backend: 1; linking, pyramids, masks, stitching and scoring are 1-CPU tasks",
    "Ray: a stage whose resources.<stage>.workers is unset gets as many workers as the cluster holds when it starts; "
    "the plan assumes the whole cluster is up (an autoscaling cluster starting from 0 workers is not)",
    "global tiling: two phases, each block's tiles on the model workers (started once, model load once), then each "
    "block's seam (1-CPU tasks at the mask rate); a phase takes at least its longest block, so prediction never drops "
    "below that limit",
    "prediction cost = nnU-Net's tiles (counted exactly) x seconds per tile, scaled by patch voxels and by network "
    "passes per tile (test-time mirroring: 8 in 3D, 4 for a 2d model, 1 without; the profile's own mirroring divided "
    "out; a mirrored pass costs a plain one); uncertainty scoring predicts without mirroring, nnU-Net's final "
    "validation with it",
    "nnU-Net trains in one process on one device: more GPUs do not shorten pretraining or fine-tuning; an iteration "
    "scales with batch x patch voxels; a validation iteration = 1/3 of a training one",
    "MAE: data-parallel ranks split the batch; a step scales with the per-rank batch x pixels (all-reduce not counted)",
    "I/O: a stage takes at least bytes / (store MB/s per process x workers); compute and I/O overlap",
    "each active-learning round: selection, annotation, fine-tuning on all patches annotated so far, held-out "
    "prediction (then mask, instances and scores of the whole volume)",
    "peak memory: arrays of one work item (estimates; torch's and nnU-Net's own buffers not counted)",
]


@dataclass(frozen=True)
class Cluster:
    """The machines a plan is for: ``nodes`` alike, each with GPUs and CPUs."""

    nodes: int
    gpus_per_node: int
    cpus_per_node: int

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 0 or self.cpus_per_node < 1:
            raise SpecError(f"cluster: expected nodes >= 1, GPUs per node >= 0, CPUs per node >= 1; got "
                            f"{self.nodes}, {self.gpus_per_node}, {self.cpus_per_node}")

    def fit(self, res: StageResources, backend: str, label: str) -> tuple[int, bool]:
        """``(workers, on_gpu)`` of a stage: what the cluster holds of one worker's request."""
        on_gpu = res.gpus > 0 and self.gpus_per_node > 0
        if backend == "serial":
            return 1, on_gpu
        per_node = []
        if res.cpus > 0:
            per_node.append(int(self.cpus_per_node // res.cpus))
        if on_gpu:
            per_node.append(int(self.gpus_per_node // res.gpus))
        n = min(per_node) if per_node else self.cpus_per_node
        if n < 1:
            raise SpecError(f"{label}: one worker asks for {res.cpus:g} CPU and {res.gpus if on_gpu else 0:g} GPU, "
                            f"a node has {self.cpus_per_node} CPUs and {self.gpus_per_node} GPUs: no node fits it; give "
                            f"the target nodes' CPUs as --cpus-per-node (or lower {label}.cpus)")
        total = n * self.nodes
        return (min(total, res.workers) if res.workers else total), on_gpu

    def cpu_tasks(self, backend: str) -> int:
        return 1 if backend == "serial" else self.nodes * self.cpus_per_node


@dataclass
class StagePlan:
    key: str
    title: str
    seconds: float
    workers: int
    tasks: int
    items: dict[str, int] = field(default_factory=dict)
    bytes_read: int = 0
    bytes_written: int = 0
    peak_memory_bytes: int | None = None
    limit_s: float | None = None
    """The limit (prediction under global tiling): the least time any number of workers takes."""
    basis: list[str] = field(default_factory=list)
    assumed: bool = False
    """True where the figure is a formula, not a rate ``alseg calibrate`` measured."""


@dataclass
class JobPlan:
    name: str
    shape: tuple[int, int, int]
    dtype_bytes: int
    voxel_size_nm: tuple[float, float, float]
    cluster: Cluster
    profile: str
    profile_assumed: bool
    pool_patches: int
    stages: list[StagePlan]
    assumptions: list[str]
    warnings: list[str]
    sources: list[str] = field(default_factory=list)
    """Where the volume's shape, bytes per voxel and voxel size, and the nodes' CPUs came from."""

    @property
    def total_seconds(self) -> float:
        return float(sum(s.seconds for s in self.stages))

    def stage(self, key: str) -> StagePlan:
        for s in self.stages:
            if s.key == key:
                return s
        raise KeyError(key)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["voxel_size_nm"] = list(self.voxel_size_nm)
        out["total_seconds"] = self.total_seconds
        out["voxels"] = math.prod(self.shape)
        out["input_bytes"] = self.input_bytes
        return out

    @property
    def input_bytes(self) -> int:
        """The volume's size: voxels x bytes per voxel."""
        return math.prod(self.shape) * self.dtype_bytes


# --------------------------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------------------------- #
class JobContext:
    """What every stage's projection needs: the spec, the volume, the cluster, the rates."""

    def __init__(self, spec: JobSpec, shape: Sequence[int], cluster: Cluster, profile: Profile, dtype_bytes: int,
                 voxel_size_nm: Sequence[float]) -> None:
        self.spec, self.cluster, self.profile, self.r = spec, cluster, profile, profile.rates
        self.shape = tuple(int(s) for s in shape)
        self.voxels = math.prod(self.shape)
        self.dtype = int(dtype_bytes)
        self.voxel_nm = tuple(float(v) for v in voxel_size_nm)
        self.backend = spec.resources.backend
        self.holdout = holdout_of(spec, self.shape)  # type: ignore[arg-type]
        p = spec.patches
        self.pool = cnt.pool_patches(self.shape, p.shape_vox, self.holdout, p.edge)
        self.patch_vox = math.prod(p.shape_vox)
        self.warnings: list[str] = []
        self.patch_plan, self.classes = self._nnunet_patch()
        pr = self.r.predict
        self.measured_passes = cnt.mirror_passes(as3(pr.patch_vox), pr.mirroring)
        self.pass_s = math.prod(self.patch_plan) / pr.tile_voxels_per_s / self.measured_passes
        """Seconds of one network pass over a tile of the plan's patch (the profile's mirroring divided out)."""
        self.passes = cnt.mirror_passes(self.patch_plan, spec.prediction.mirroring)
        self.tile_s = self.pass_s * self.passes
        """Seconds per tile at the spec's ``prediction.mirroring`` (``predict_volume``)."""
        self.warm = False  # the serial runner's one process has predicted before (the network is warm)

    def warmup_s(self) -> tuple[float, float]:
        """Warm-up of the network ``(once, per start of the workers)``: Ray starts new worker
        processes for every prediction (each warms up); the serial runner's one process warms up at
        its first prediction only."""
        w = self.r.predict.warmup_s
        if self.backend == "ray":
            return 0.0, w
        once, self.warm = (0.0 if self.warm else w), True
        return once, 0.0

    def _nnunet_patch(self) -> tuple[tuple[int, int, int], int]:
        n = self.spec.nnunet
        given = n.plan_overrides.patch_size_vox
        measured = tuple(self.r.predict.patch_vox)
        patch = tuple(given) if given is not None else measured
        if given is None and n.configuration == "2d" and len(measured) == 3:
            patch = measured[1:]
        if given is None:
            self.warnings.append(f"nnU-Net's patch is its planner's choice: taken from the profile ({list(measured)})")
        if len(patch) == 2:
            patch = (1, *patch)
        classes = 3 if n.boundary_class else 2
        return tuple(int(v) for v in patch), classes  # type: ignore[return-value]

    def mirroring_basis(self, passes: int, what: str) -> str:
        """What a stage's tile time rests on: the profile's passes per tile scaled to ``passes``."""
        pr = self.r.predict
        return (f"{what}: {passes} network pass(es) per tile at {self.pass_s:.3f} s each; the profile measured "
                f"{self.measured_passes} per tile (mirroring {pr.mirroring}, patch {list(pr.patch_vox)})")

    def workers(self, res: StageResources, label: str, rate_device: str) -> tuple[int, bool]:
        w, on_gpu = self.cluster.fit(res, self.backend, label)
        c = self.cluster
        if self.backend == "ray" and res.workers is None:
            self.warnings.append(
                f"{label}.workers is unset: on Ray, `alseg run` starts as many workers as the cluster holds when the stage "
                f"starts (Ray's current resources), so a cluster that autoscales from 0 workers gets 1; this plan assumes "
                f"the whole cluster is up ({w} worker(s)): set {label}.workers: {w}")
        if on_gpu and self.backend == "ray" and res.cpus > 0 and c.cpus_per_node // res.cpus < c.gpus_per_node // res.gpus:
            self.warnings.append(f"{label}: {c.cpus_per_node} CPUs per node hold only {int(c.cpus_per_node // res.cpus)} "
                                 f"workers of {res.cpus:g} CPUs, fewer than the node's {c.gpus_per_node} GPUs allow")
        self.check_device(label, on_gpu, rate_device)
        return w, on_gpu

    def check_device(self, label: str, on_gpu: bool, rate_device: str) -> None:
        if on_gpu and rate_device == "cpu":
            self.warnings.append(f"{label} runs on GPUs, but the profile measured it on a CPU: its time is a CPU's")
        if not on_gpu and rate_device.startswith("cuda"):
            self.warnings.append(f"{label} runs on CPUs here, but the profile measured it on a GPU: its time is a GPU's")

    def cpu_tasks(self) -> int:
        return self.cluster.cpu_tasks(self.backend)

    def io_seconds(self, read: float, written: float, workers: int) -> float:
        s = self.r.store
        return read / (s.read_mb_per_s * MB * workers) + written / (s.write_mb_per_s * MB * workers)

    def train_iteration_s(self, schedule: TrainingSpec) -> float:
        """Seconds of one training iteration at the spec's batch and patch (scaled from the profile's)."""
        n = self.r.nnunet
        batch = schedule.batch_size or self.spec.nnunet.plan_overrides.batch_size or n.batch_size
        return n.s_per_iteration * (batch / n.batch_size) * (math.prod(self.patch_plan) / math.prod(as3(n.patch_vox)))


STAGE_RESOURCES = ("pseudolabel", "nnunet", "embedding", "prediction", "postprocess")
"""The per-worker requests of a spec (``resources.<name>``)."""


def default_cpus_per_node(spec: JobSpec, gpus_per_node: int, profile_cpus: int) -> tuple[int, str]:
    """CPUs per node when none are given, and a line saying how they were chosen.

    With GPUs: what the GPUs need, the largest CPUs-per-GPU ratio of the spec's GPU stages times
    the GPUs (at least one worker's CPUs of every stage), never the calibration node's count (a
    profile made on a 2-core machine says nothing of the target's nodes). CPU nodes: the profile's
    node's count, the only figure at hand."""
    res = {name: getattr(spec.resources, name) for name in STAGE_RESOURCES}
    ratios = {name: r.cpus / r.gpus for name, r in res.items() if r.gpus > 0}
    if gpus_per_node > 0 and ratios:
        name = max(ratios, key=lambda k: ratios[k])
        need = math.ceil(ratios[name] * gpus_per_node)
        widest = max(math.ceil(r.cpus) for r in res.values())
        cpus = max(need, widest, 1)
        line = (f"{cpus} CPUs per node (default; give --cpus-per-node): what {gpus_per_node} GPU(s) need at "
                f"resources.{name}'s {ratios[name]:g} CPUs per GPU, the largest ratio of the spec's GPU stages")
        if widest > need:
            line += f", raised to the largest per-worker request ({widest} CPUs)"
        return cpus, line
    why = "CPU nodes" if gpus_per_node == 0 else "no stage asks for a GPU"
    return profile_cpus, (f"{profile_cpus} CPUs per node (default for {why}: the profile's node's; give --cpus-per-node "
                          "for the target's)")


def as3(patch: Sequence[int]) -> tuple[int, ...]:
    return tuple(patch) if len(patch) == 3 else (1, *patch)


def stage_plan(key: str, title: str, seconds: float, workers: int, tasks: int, **kw: Any) -> StagePlan:
    return StagePlan(key=key, title=title, seconds=float(seconds), workers=int(workers), tasks=int(tasks), **kw)


def roofline(job: JobContext, compute_s: float, read: float, written: float, workers: int, basis: list[str]) -> float:
    io = job.io_seconds(read, written, workers)
    if io > compute_s:
        basis.append(f"I/O-bound: {read / MB:,.0f} MB read, {written / MB:,.0f} MB written at the profile's store rates")
    return max(compute_s, io)
