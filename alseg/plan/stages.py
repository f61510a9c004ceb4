"""One projection per stage of the job graph (:func:`project_stage`): work items, bytes, memory
and seconds, each with what its number rests on. The model is described in :mod:`alseg.plan.model`."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from alseg.embed.sizes import input_side
from alseg.errors import SpecError
from alseg.geometry import Box
from alseg.pipeline.graph import Stage
from alseg.plan import counts as cnt
from alseg.plan.job import REPORT_S, SELECT_S, JobContext, StagePlan, roofline, stage_plan
from alseg.select import uncertainty_measure
from alseg.spec import TrainingSpec

# --------------------------------------------------------------------------------------------- #
# stages
# --------------------------------------------------------------------------------------------- #
def _pseudolabels(job: JobContext, st: Stage) -> StagePlan:
    pl, r = job.spec.pseudolabel, job.r.pseudolabel
    bz, by, bx = pl.block_shape_vox
    h = pl.halo_px
    z = cnt.axis_blocks(job.shape[0], bz)
    reads = cnt.outer(z, cnt.axis_reads(job.shape[1], by, h), cnt.axis_reads(job.shape[2], bx, h))
    writes = cnt.outer(z, cnt.axis_blocks(job.shape[1], by), cnt.axis_blocks(job.shape[2], bx))
    blocks = reads.size
    w, _ = job.workers(job.spec.resources.pseudolabel, "resources.pseudolabel", r.device)
    cpu = job.cpu_tasks()
    segment = r.startup_s + cnt.makespan(reads / r.read_voxels_per_s, w)
    finish = cnt.makespan(writes / r.finish_voxels_per_s, cpu)
    read = float(reads.sum()) * job.dtype + job.voxels * 4
    written = job.voxels * 4 + job.voxels * 4 * 4 / 3
    basis = [f"segmentation: {int(reads.sum()):,} read voxels (halo {h} px) at {r.read_voxels_per_s:,.0f}/s per worker "
             f"({r.slices_per_s:.2f} tile sections/s), {w} worker(s)",
             f"linking + relabelling + pyramid: {job.voxels:,} voxels at {r.finish_voxels_per_s:,.0f}/s per task, {cpu} task(s)"]
    if r.method != pl.method:
        job.warnings.append(f"pseudolabel.method is {pl.method}, the profile measured {r.method}: its rate is another labeller's")
    batch = int(getattr(pl, "batch_size", 8))
    mem = int(reads.max()) * (job.dtype + 4) + int(writes.max()) * 4 + min(batch, bz) * (by + 2 * h) * (bx + 2 * h) * 16
    weights = getattr(pl, "weights_path", None) or getattr(pl, "checkpoint", None)
    if weights and os.path.isfile(weights):
        mem += os.path.getsize(weights)
    seconds = roofline(job, segment + finish, read, written, w, basis)
    return stage_plan(st.key, st.title, seconds, w, 3 * blocks, items={"blocks": blocks}, bytes_read=int(read),
                      bytes_written=int(written), peak_memory_bytes=mem, basis=basis)


def _scoring(job: JobContext, voxels: float, blocks: int) -> tuple[float, list[str]]:
    cpu = job.cpu_tasks()
    per = voxels / max(blocks, 1) / job.r.evaluate.voxels_per_s
    return cnt.makespan(np.full(max(blocks, 1), per), cpu), [
        f"scoring: {int(voxels):,} voxels at {job.r.evaluate.voxels_per_s:,.0f}/s per task, {cpu} task(s)"]


def _pseudolabel_scores(job: JobContext, st: Stage) -> StagePlan:
    blocks = math.prod(cnt.grid_shape(job.shape, job.spec.pseudolabel.block_shape_vox))
    seconds, basis = _scoring(job, job.voxels, blocks)
    read = job.voxels * 8
    seconds = roofline(job, seconds, read, 0, job.cpu_tasks(), basis)
    return stage_plan(st.key, st.title, seconds, job.cpu_tasks(), blocks, items={"blocks": blocks}, bytes_read=read, basis=basis)


def _prep_s(job: JobContext, cases: int, fixed: float) -> tuple[float, list[str]]:
    n = job.r.nnunet
    vox = cases * job.patch_vox
    s = vox / n.export_voxels_per_s + fixed + vox / n.preprocess_voxels_per_s
    return s, [f"dataset of {cases:,} cases: export at {n.export_voxels_per_s:,.0f} vox/s, preprocessing at "
               f"{n.preprocess_voxels_per_s:,.0f} vox/s, + {fixed:.1f} s fixed (nnU-Net's planning or plan transfer)"]


def _training(job: JobContext, schedule: TrainingSpec, cases: int) -> tuple[float, list[str]]:
    n = job.r.nnunet
    job.check_device("nnU-Net training", job.cluster.gpus_per_node > 0 and job.spec.nnunet.device != "cpu", n.device)
    it = job.train_iteration_s(schedule)
    iters = schedule.epochs * (schedule.iterations_per_epoch + schedule.val_iterations_per_epoch / 3)
    s = n.train_startup_s + iters * it
    basis = [f"training: {schedule.epochs} epochs x ({schedule.iterations_per_epoch} + {schedule.val_iterations_per_epoch}/3) "
             f"iterations x {it:.3f} s + {n.train_startup_s:.0f} s start-up; one process, one device"]
    if schedule.final_validation:
        passes = cnt.mirror_passes(job.patch_plan, True)  # nnU-Net's trainer validates with mirroring
        tiles = cnt.volume_tiles(job.spec.patches.shape_vox, job.patch_plan) * cases
        s += tiles * passes * job.pass_s
        basis.append(f"nnU-Net's final validation: {cases:,} cases x {tiles // max(cases, 1):,} tiles x {passes} network "
                     f"passes (mirroring) at {job.pass_s:.3f} s per pass")
    return s, basis


def _training_memory(job: JobContext) -> tuple[int | None, str]:
    """Peak memory of an nnU-Net training process: not modelled; the spec's request where it sets one."""
    mem = job.spec.resources.nnunet.memory_gb
    return (None if mem is None else int(mem * 2**30),
            "peak memory: nnU-Net's own (not modelled; resources.nnunet.memory_gb shown when set)")


def _pretrain(job: JobContext, st: Stage) -> StagePlan:
    n = job.r.nnunet
    prep, basis = _prep_s(job, job.pool, n.plan_fixed_s)
    train, more = _training(job, job.spec.nnunet.pretrain, job.pool)
    basis += more
    read = job.pool * job.patch_vox * (job.dtype + 4)
    written = job.pool * job.patch_vox * (4 + 1) * 2 + 2 * n.model_bytes
    seconds = roofline(job, prep + train, read, written, 1, basis)
    mem, why = _training_memory(job)
    return stage_plan(st.key, st.title, seconds, 1, 3, items={"cases": job.pool}, bytes_read=read, bytes_written=written,
                      peak_memory_bytes=mem, basis=basis + [why])


def _finetune(job: JobContext, st: Stage, round_index: int) -> StagePlan:
    n = job.r.nnunet
    cases = min(job.pool, round_index * job.spec.selection.budget)
    scratch = job.spec.nnunet.finetune_from == "scratch"
    prep, basis = _prep_s(job, cases, n.plan_fixed_s if scratch else n.transfer_fixed_s)
    train, more = _training(job, job.spec.nnunet.finetune, cases)
    read = cases * job.patch_vox * (job.dtype + 4)
    written = cases * job.patch_vox * 5 * 2 + 2 * n.model_bytes
    seconds = roofline(job, prep + train, read, written, 1, basis + more)
    mem, why = _training_memory(job)
    return stage_plan(st.key, st.title, seconds, 1, 3, items={"cases": cases}, bytes_read=read, bytes_written=written,
                      peak_memory_bytes=mem, basis=basis + more + [why])


def _embed_model(job: JobContext, st: Stage) -> StagePlan:
    e, r = job.spec.embedding, job.r
    side = e.img_size_px or input_side(e, job.spec.patches.shape_vox[1:], job.voxel_nm[1:])
    sample = min(job.pool, 1024)
    fit = sample / _patch_rate(job, side)
    basis = [f"standardisation: {sample:,} patches at {_patch_rate(job, side):.1f} patches/s"]
    mem: int | None = None
    world = 1
    if e.source == "mae" and e.weights_path is None:
        if r.mae is None:
            raise SpecError("embedding.source is mae, and the profile holds no MAE rate (it was calibrated with another "
                            "source): calibrate with this spec")
        sections = cnt.pool_sum(job.shape, job.spec.patches.shape_vox, job.holdout, job.spec.patches.edge, axis=0)
        n = min(e.max_train_slices + e.heldout_slices, sections)
        n_train = n - min(e.heldout_slices, n // 5)
        res = job.spec.resources.embedding
        w, on_gpu = job.workers(res, "resources.embedding", r.mae.device)
        world = (res.workers or w) if job.backend == "ray" and on_gpu else 1
        batch = min(e.batch_size, n_train)
        if batch < world:
            job.warnings.append(f"MAE training on {world} ranks: a batch of {batch} cannot feed them and train_mae refuses; "
                                f"set resources.embedding.workers to at most {batch} (planned with {batch} ranks)")
            world = batch
        batch -= batch % world
        steps = e.epochs * max(1, n_train // batch)
        step_s = (batch / world / r.mae.batch_size) * (side / r.mae.img_size_px) ** 2 / r.mae.steps_per_s
        context = e.context + 1.0 if e.model == "conv" and e.context > 1.0 else 1.0
        big = int(round(side * context))
        prep = n / r.mae.slices_per_s * (side / r.mae.img_size_px) ** 2
        seconds = prep + steps * step_s + fit + r.mae.fixed_s
        basis = [f"{n:,} training sections prepared at {r.mae.slices_per_s * (r.mae.img_size_px / side) ** 2:.0f}/s",
                 f"{steps:,} steps of batch {batch} ({world} rank(s)) at {side} px: {step_s:.3f} s per step, "
                 f"+ {r.mae.fixed_s:.1f} s outside the loop (losses, held-out figures, checkpoints)"] + basis
        mem = n * big * big * 2
        if e.model != r.mae.model:
            job.warnings.append(f"embedding.model is {e.model}, the profile measured the {r.mae.model} MAE")
    elif e.source == "pixels":
        seconds = 2 * fit
        basis.append("pixels PCA: its sample read like the embeddings (assumed)")
    else:
        seconds = fit
    read = sample * job.patch_vox * job.dtype * 2
    seconds = roofline(job, seconds, read, 0, 1, basis)
    return stage_plan(st.key, st.title, seconds, world, world, items={"patches": sample}, bytes_read=read,
                      peak_memory_bytes=mem, basis=basis)


def _patch_rate(job: JobContext, side: int) -> float:
    """Embedding patches per second per worker, scaled to the spec's sections and image side."""
    e, r = job.spec.embedding, job.r.embed
    return r.patches_per_s * (r.slices_per_patch / e.slices_per_patch) * (r.img_size_px / side) ** 2


def _embed(job: JobContext, st: Stage) -> StagePlan:
    e, r = job.spec.embedding, job.r.embed
    side = e.img_size_px or input_side(e, job.spec.patches.shape_vox[1:], job.voxel_nm[1:])
    items = cnt.ceil_div(job.pool, e.rows_per_chunk)
    rows = np.full(items, e.rows_per_chunk, dtype=np.float64)
    rows[-1] = job.pool - (items - 1) * e.rows_per_chunk
    w, _ = job.workers(job.spec.resources.embedding, "resources.embedding", r.device)
    rate = _patch_rate(job, side)
    compute = r.load_s + cnt.makespan(rows / rate, min(w, items))
    read = job.pool * job.patch_vox * job.dtype
    basis = [f"{job.pool:,} patches in {items:,} chunk(s) of {e.rows_per_chunk} rows at {rate:.1f} patches/s per worker, "
             f"{min(w, items)} worker(s) (one per chunk at most)"]
    seconds = roofline(job, compute, read, job.pool * 4096, min(w, items), basis)
    return stage_plan(st.key, st.title, seconds, min(w, items), items, items={"patches": job.pool, "chunks": items},
                      bytes_read=read, bytes_written=job.pool * 4096,
                      peak_memory_bytes=e.slices_per_patch * side * side * 4 * 8 + job.patch_vox * (job.dtype + 4), basis=basis)


def _embed_quality(job: JobContext, st: Stage) -> StagePlan:
    e = job.spec.embedding
    side = e.img_size_px or input_side(e, job.spec.patches.shape_vox[1:], job.voxel_nm[1:])
    sample = min(job.pool, 1024)
    read = sample * job.patch_vox * (job.dtype + 8)
    seconds = sample / _patch_rate(job, side) + job.io_seconds(read, 0, 1)
    return stage_plan(st.key, st.title, seconds, 1, 1, items={"patches": sample}, bytes_read=read, assumed=True,
                      basis=[f"assumed: {sample:,} patches' pixels at the embedding rate + their label reads"])


@dataclass
class _Predict:
    seconds: float
    blocks: int
    tiles: int
    phases: int
    limit_s: float | None
    workers: int
    read: float
    written: float
    memory: int
    basis: list[str]


def _predict_volume(job: JobContext, region: Box | None) -> _Predict:
    """``predict_volume``: global tiling (two phases) or halo tiling (blocks meeting ``region``)."""
    p, r = job.spec.prediction, job.r.predict
    block = tuple(min(b, s) for b, s in zip(p.block_shape_vox, job.shape))
    patch = job.patch_plan
    w, _ = job.workers(job.spec.resources.prediction, "resources.prediction", r.device)
    fits = patch[0] > 1 and all(s >= q for s, q in zip(job.shape, patch))
    writes = cnt.outer(*[cnt.axis_blocks(s, b) for s, b in zip(job.shape, block)])
    if p.tiling == "global" and fits and region is None:
        narrow = [a for a in range(3) if block[a] < patch[a] and block[a] < job.shape[a]]
        if narrow:
            raise SpecError(f"prediction.block_shape_vox {tuple(p.block_shape_vox)} is narrower than nnU-Net's patch "
                            f"{patch} on axes {narrow}: make blocks at least one patch wide")
        tiles = cnt.global_tiles(job.shape, block, patch, p.tile_step)
        once, per_start = job.warmup_s()
        seam = cnt.seam_voxels(job.shape, block, patch, p.tile_step)
        seam_rate = job.r.postprocess.other_voxels_per_s
        cpu = job.cpu_tasks()
        phases = cnt.two_phases(tiles * job.tile_s, seam / seam_rate, w, cpu, per_phase_s=r.load_s + per_start)
        ext = cnt.outer(*[np.minimum(cnt.axis_blocks(s, b) + q, s) for s, b, q in zip(job.shape, block, patch)])
        # overhangs and each seam's own sums: written in the first phase, read in the second
        over = float(ext.sum() - writes.sum() + seam.sum())
        read = float(ext.sum()) * job.dtype + over * 4 * (job.classes + 1)
        written = job.voxels + over * 4 * (job.classes + 1)
        memory = int(ext.max()) * (4 + 4 * job.classes + 4)
        eff = {n: cnt.two_phases(tiles * job.tile_s, seam / seam_rate, n, cpu).efficiency for n in (8, 64)}
        basis = [f"global tiling: {int(tiles.sum()):,} tiles of {patch} (step {p.tile_step:g}) at {job.tile_s:.3f} s, {tiles.size:,} blocks in "
                 f"2 phases (tiles, then seams), {w} worker(s), model load {r.load_s:.1f} s once",
                 f"seams: {seam.sum():,.0f} voxels at {seam_rate:,.0f} vox/s per task (assumed: the mask rate), {cpu} task(s)",
                 f"limit (any number of workers: each phase its longest block): {phases.limit_s:,.0f} s; parallel efficiency "
                 f"of the tiles phase: {100 * phases.efficiency:.0f} % here, {100 * eff[8]:.0f} % on 8 workers, "
                 f"{100 * eff[64]:.0f} % on 64",
                 job.mirroring_basis(job.passes, f"prediction.mirroring {p.mirroring}")]
        return _Predict(once + phases.seconds, tiles.size, int(tiles.sum()), phases.count, once + phases.limit_s, w, read,
                        written, memory, basis)
    tiles = cnt.halo_tiles(job.shape, block, p.halo_vox, patch, p.tile_step)
    chosen = np.ones(tiles.shape, bool) if region is None else cnt.blocks_meeting(job.shape, block, region)
    reads = cnt.outer(*[cnt.axis_reads(s, b, h) for s, b, h in zip(job.shape, block, p.halo_vox)])
    n = int(chosen.sum())
    seconds = r.load_s + sum(job.warmup_s()) + cnt.makespan(tiles[chosen] * job.tile_s, w)
    read = float(reads[chosen].sum()) * job.dtype
    written = float(writes[chosen].sum())
    memory = int(reads.max()) * (4 + 6 * job.classes + 2)
    what = "the blocks meeting the held-out region" if region is not None else "every block"
    basis = [f"halo tiling ({what}): {int(tiles[chosen].sum()):,} tiles of {patch} (step {p.tile_step:g}) at {job.tile_s:.3f} s, {n:,} blocks, "
             f"{min(w, max(n, 1))} worker(s)", job.mirroring_basis(job.passes, f"prediction.mirroring {p.mirroring}")]
    return _Predict(seconds, n, int(tiles[chosen].sum()), 1, None, min(w, max(n, 1)), read, written, memory, basis)


def _post(job: JobContext) -> tuple[float, int, float, float, list[str]]:
    """What ``run_predict`` does after the network, on the whole volume: pyramid, mask, instances."""
    q, r = job.spec.postprocess, job.r.postprocess
    vox = cnt.outer(*[cnt.axis_blocks(s, b) for s, b in zip(job.shape, q.block_shape_vox)])
    cpu = job.cpu_tasks()
    seconds = cnt.makespan(vox / r.other_voxels_per_s, cpu) + cnt.makespan(vox / r.stitch_voxels_per_s, cpu)
    read = job.voxels * (1 + 1 + 1 + 4)
    written = job.voxels * (1 / 3 + 1 + 4 + 4 * 4 / 3)
    basis = [f"class pyramid + mask at {r.other_voxels_per_s:,.0f} vox/s and instances ({q.watershed} watershed) at "
             f"{r.stitch_voxels_per_s:,.0f} vox/s per task, {vox.size:,} blocks of {tuple(q.block_shape_vox)}, {cpu} task(s)"]
    return seconds, 4 * vox.size, read, written, basis


def _predict_stage(job: JobContext, st: Stage, region: Box | None, score: bool) -> StagePlan:
    pred = _predict_volume(job, region)
    post_s, post_tasks, post_read, post_written, post_basis = _post(job)
    network = roofline(job, pred.seconds, pred.read, pred.written, pred.workers, pred.basis)
    seconds = network + roofline(job, post_s, post_read, post_written, job.cpu_tasks(), post_basis)
    basis = pred.basis + post_basis
    read, written = pred.read + post_read, pred.written + post_written
    tasks = pred.blocks + post_tasks
    if score:
        voxels = job.voxels if job.holdout is None else job.holdout.size
        blocks = math.prod(cnt.grid_shape((job.holdout or Box.from_shape(job.shape)).shape, job.spec.postprocess.block_shape_vox))
        s, more = _scoring(job, voxels, blocks)
        seconds += s
        basis += more
        read += voxels * 8
        tasks += blocks
    items = {"blocks": pred.blocks, "tiles": pred.tiles}
    if pred.limit_s is not None:
        items["phases"] = pred.phases
    # the limit of the whole stage: prediction at its limit (unlimited workers), the rest as planned
    limit = None if pred.limit_s is None else pred.limit_s + seconds - network
    mem = pred.memory + job.r.nnunet.model_bytes
    return stage_plan(st.key, st.title, seconds, pred.workers, tasks, items=items, bytes_read=int(read), bytes_written=int(written),
                      peak_memory_bytes=int(mem), limit_s=limit, basis=basis)


def _select(job: JobContext, st: Stage, round_index: int) -> StagePlan:
    sel = job.spec.selection
    left = max(0, job.pool - (round_index - 1) * sel.budget)
    seconds, basis, tasks = SELECT_S, [f"assumed: {SELECT_S:.0f} s (k-center, random and k-means are small next to the rest)"], 1
    read = job.pool * 4096
    if uncertainty_measure(sel) is not None:
        samples = sel.samples if sel.method == "bald" else 1
        tiles = cnt.volume_tiles(job.spec.patches.shape_vox, job.patch_plan) * left * samples
        w, _ = job.workers(job.spec.resources.prediction, "resources.prediction", job.r.predict.device)
        passes = cnt.mirror_passes(job.patch_plan, False)  # score_patches predicts without mirroring (tta flips are its samples)
        seconds += job.r.predict.load_s + tiles * passes * job.pass_s / w
        read += left * job.patch_vox * job.dtype
        tasks = left
        basis += [f"uncertainty scores: {left:,} patches x {samples} sample(s), {tiles:,} tiles over {w} worker(s)",
                  job.mirroring_basis(passes, "scoring (no mirroring)")]
    seconds += job.io_seconds(read, 0, 1)
    return stage_plan(st.key, st.title, seconds, 1, tasks, items={"candidates": left, "picks": sel.budget}, bytes_read=int(read),
                      assumed=True, basis=basis)


def _annotate(job: JobContext, st: Stage) -> StagePlan:
    b = job.spec.selection.budget
    if job.spec.annotation.method == "manual":
        return stage_plan(st.key, st.title, 0.0, 1, b, items={"patches": b}, assumed=True,
                          basis=["manual annotation: the time people take is not counted (the job stops until `alseg import`)"])
    read, written = b * job.patch_vox * 4, b * job.patch_vox * 5
    return stage_plan(st.key, st.title, 1.0 + job.io_seconds(read, written, 1), 1, b, items={"patches": b}, bytes_read=read,
                      bytes_written=written, assumed=True, basis=["assumed: ground truth of the picks copied at the store rates + 1 s"])


def _measure(job: JobContext, st: Stage) -> StagePlan:
    vox = cnt.outer(*[cnt.axis_blocks(s, b) for s, b in zip(job.shape, job.spec.postprocess.block_shape_vox)])
    cpu = job.cpu_tasks()
    seconds = cnt.makespan(vox / job.r.postprocess.stitch_voxels_per_s, cpu)
    return stage_plan(st.key, st.title, seconds, cpu, vox.size, items={"blocks": vox.size}, bytes_read=job.voxels * 4, assumed=True,
                      basis=["assumed: one pass over the instances at the stitching rate"])


def _report(job: JobContext, st: Stage) -> StagePlan:
    return stage_plan(st.key, st.title, REPORT_S, 1, 1, assumed=True, basis=[f"assumed: {REPORT_S:.0f} s"])


def project_stage(job: JobContext, st: Stage) -> StagePlan:
    key = st.key
    if key == "pseudolabels":
        return _pseudolabels(job, st)
    if key == "pseudolabel-scores":
        return _pseudolabel_scores(job, st)
    if key == "pretrain":
        return _pretrain(job, st)
    if key == "embed-model":
        return _embed_model(job, st)
    if key == "embed":
        return _embed(job, st)
    if key == "embed-quality":
        return _embed_quality(job, st)
    kind, _, number = key.partition("-")
    if kind == "evaluate":
        return _predict_stage(job, st, job.holdout, score=True)
    if kind == "select":
        return _select(job, st, int(number))
    if kind == "annotate":
        return _annotate(job, st)
    if kind == "finetune":
        return _finetune(job, st, int(number))
    if key == "predict":
        return _predict_stage(job, st, None, score=False)
    if key == "measure":
        return _measure(job, st)
    if key == "report":
        return _report(job, st)
    raise SpecError(f"alseg plan has no model of stage {key!r}")  # a new stage: add its model here
