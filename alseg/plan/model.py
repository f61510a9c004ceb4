"""The projection behind ``alseg plan``: work, bytes, memory and wall time of every stage of a job.

Nothing here reads a voxel. The input is the validated spec, the volume's shape (from ``--shape``
or the image's metadata), a cluster (nodes, GPUs and CPUs per node) and a throughput
:class:`~alseg.plan.profile.Profile`. The stages are the job's own (:func:`alseg.pipeline.graph.plan`),
in the order ``alseg run`` runs them; their work is counted with :mod:`alseg.plan.counts`.

The model (every plan prints these; each stage also lists what its number rests on):

* stages run one after another, as ``alseg run`` runs them; the job's time is their sum;
* inside a stage, work items (blocks, patches, row chunks) spread over its workers, longest first
  (list scheduling); a worker runs at the profile's per-worker rate;
* workers of a stage: what the cluster holds of its per-worker request (``resources.<stage>``:
  CPUs and GPUs per node, times the nodes), capped by ``resources.<stage>.workers``; the serial
  backend has one; passes without their own request (linking, pyramids, masks, stitching,
  scoring) are one-CPU tasks; on Ray a stage without ``workers`` takes what the cluster holds when
  it starts, so the plan assumes the whole cluster is up (and warns: an autoscaling cluster that
  starts from 0 workers gives such a stage 1);
* prediction under global tiling runs in two phases (every block's tiles on the model workers,
  which load the model once; then every block's seam, a 1-CPU task); however many GPUs, a phase
  takes at least its longest block (the *limit*, printed, with the tiles phase's parallel
  efficiency on 8 and 64 workers);
* a block's prediction costs its tiles (nnU-Net's tile placement, counted exactly) times the
  seconds per tile; another patch scales the tile time with its voxels, and test-time mirroring
  with its network passes per tile (8 in 3D, 4 for a 2d model, which mirrors y and x; the
  profile's own passes divided out, so a profile measured with mirroring plans a spec without it
  and the other way round); uncertainty scoring predicts without mirroring;
* nnU-Net trains in one process on one device (alseg's trainer), so more GPUs do not shorten
  pretraining or fine-tuning; an iteration's time scales with batch x patch voxels; a validation
  iteration counts as a third of a training one; nnU-Net's final validation predicts every case
  with mirroring;
* the MAE trains data-parallel over its ranks (Ray with GPUs), a step's time scaling with each
  rank's share of the batch and with the image's pixels (all-reduce not counted);
* storage: a stage takes at least its bytes over the profile's per-process store rates times its
  workers (computation and I/O overlap: the larger counts);
* active learning: each round selects, annotates (simulated: a copy of ground truth; manual: the
  time people take is not counted), fine-tunes on everything annotated so far and predicts the
  held-out region (then the mask, instances and scores of the whole volume, as ``run_predict`` does);
* peak memory per worker: the arrays one work item holds (estimates from array sizes; torch's and
  nnU-Net's own buffers are not counted; nnU-Net training, pretraining and fine-tuning alike, is
  not modelled: ``resources.nnunet.memory_gb`` is shown where set);
* selection, annotation, embedding quality, the measurement table and the report are not
  measured by ``alseg calibrate``: their small figures are formulas marked *assumed*.

Besides times, a plan names where its inputs came from (``sources``: the volume's shape, bytes and
voxel size, the nodes' CPUs, what a run directory on object storage asks of the nodes' scratch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from alseg.errors import SpecError
from alseg.io import store as st
from alseg.pipeline.graph import plan as stage_graph
from alseg.plan.job import ASSUMPTIONS, Cluster, JobContext, JobPlan
from alseg.plan.profile import Profile, differences
from alseg.plan.stages import project_stage
from alseg.spec import JobSpec

def object_storage_note(spec: JobSpec) -> list[str]:
    """What a run directory on object storage means for the nodes (their scratch folders)."""
    scheme = st.protocol_of(spec.run.dir)
    if scheme == "file":
        return []
    return [f"run.dir is on object storage ({scheme}): nnU-Net plans, preprocesses and trains in the training node's "
            "scratch folder (ALSEG_SCRATCH, else the system's temporary folder; room for the preprocessed pool), "
            "publishes each model to the run directory, and every predicting node fetches it once into its own scratch"]


def project(spec: JobSpec, shape: Sequence[int], cluster: Cluster, profile: Profile, *, dtype_bytes: int = 1,
            voxel_size_nm: Sequence[float] | None = None, sources: Sequence[str] = ()) -> JobPlan:
    """The plan of ``spec`` on a volume of ``shape`` voxels on ``cluster``, at ``profile``'s rates.

    ``voxel_size_nm`` None: the profile's calibration volume's (said in the plan's ``sources``,
    after the caller's own ``sources``)."""
    if len(shape) != 3 or any(int(s) <= 0 for s in shape):
        raise SpecError(f"volume shape: expected 3 positive sizes (z, y, x), got {tuple(shape)}")
    said = list(sources)
    if voxel_size_nm is not None:
        voxel = tuple(float(v) for v in voxel_size_nm)
    else:
        voxel = tuple(float(v) for v in profile.voxel_size_nm)
        said.append(f"voxel size {' x '.join(f'{v:g}' for v in voxel)} nm (z y x) from the profile's calibration volume, "
                    "not the input's (give --voxel-size Z Y X); it sizes the MAE's inputs where embedding.img_size_px is unset")
    job = JobContext(spec, shape, cluster, profile, dtype_bytes, voxel)
    if job.pool == 0:
        raise SpecError(f"no candidate patches: patch {spec.patches.shape_vox} with edge {spec.patches.edge!r} and the "
                        f"holdout leave none in a volume of {tuple(shape)}")
    graph = stage_graph(spec)
    stages = [project_stage(job, stage) for stage in graph]
    said += object_storage_note(spec)
    # the built-in default was measured at no spec's settings: its own warning says so
    warnings = list(dict.fromkeys(job.warnings + ([] if profile.assumption else differences(profile, spec))))
    if profile.assumption:
        warnings.insert(0, "no --profile: every time below rests on the built-in default profile, an ASSUMPTION "
                           "(figures measured on other machines and guesses); run `alseg calibrate SPEC` on your node kind")
    if spec.resources.backend == "serial" and (cluster.nodes > 1 or cluster.gpus_per_node > 1):
        warnings.append("resources.backend is serial: one worker runs everything, whatever the cluster")
    return JobPlan(spec.name, job.shape, job.dtype, voxel, cluster, profile.describe(), profile.assumption, job.pool, stages,
                   list(ASSUMPTIONS), warnings, sources=said)


# --------------------------------------------------------------------------------------------- #
# rendering
# --------------------------------------------------------------------------------------------- #
def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def render(plan: JobPlan) -> str:
    """The plan as a human table, with its warnings and assumptions."""
    z, y, x = plan.shape
    c = plan.cluster
    lines = [f"plan for job {plan.name}: volume {z} x {y} x {x} ({math.prod(plan.shape):,} voxels, "
             f"{_bytes(plan.input_bytes)} at {plan.dtype_bytes} B/voxel), "
             f"{c.nodes} node(s) x {c.gpus_per_node} GPU(s), {c.cpus_per_node} CPUs per node",
             f"profile: {plan.profile}"]
    if plan.sources:
        lines += ["sources:"] + [f"  - {s}" for s in plan.sources]
    lines += [f"candidate patches (pool): {plan.pool_patches:,}", ""]
    head = ("stage", "work", "tasks", "workers", "read", "written", "peak mem/worker", "wall time")
    rows = []
    for s in plan.stages:
        work = ", ".join(f"{v:,} {k}" for k, v in s.items.items()) or "-"
        wall = _duration(s.seconds) + (" *" if s.assumed else "")
        if s.limit_s is not None:
            wall += f" (limit {_duration(s.limit_s)})"
        rows.append((s.key, work, f"{s.tasks:,}", str(s.workers), _bytes(s.bytes_read), _bytes(s.bytes_written),
                     _bytes(s.peak_memory_bytes), wall))
    rows.append(("total", "", "", "", _bytes(sum(s.bytes_read for s in plan.stages)),
                 _bytes(sum(s.bytes_written for s in plan.stages)), "", _duration(plan.total_seconds)))
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines += [fmt(head), fmt(tuple("-" * w for w in widths))] + [fmt(r) for r in rows]
    lines.append("  * assumed (a formula; alseg calibrate does not measure it)   limit: global tiling's, with unlimited workers")
    if plan.warnings:
        lines += ["", "warnings:"] + [f"  - {w}" for w in plan.warnings]
    lines += ["", "per stage, what the figure rests on:"]
    for s in plan.stages:
        lines += [f"  {s.key}:"] + [f"    {b}" for b in s.basis]
    lines += ["", "scaling assumptions:"] + [f"  - {a}" for a in plan.assumptions]
    return "\n".join(lines)
