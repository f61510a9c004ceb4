"""``alseg calibrate``: measure this node's per-worker throughput of every stage at a spec's settings.

A small synthetic volume (:mod:`alseg.synth`, at the input's voxel size when its metadata can be
read) goes through alseg's own stage code at the spec's settings, on the serial runner (one
worker), in a scratch folder:

* pseudo-labels: :func:`~alseg.pipeline.pseudolabels.run_pseudolabels` (the spec's labeller, blocks
  and halo), and the labeller's loading timed on its own;
* scoring: :func:`~alseg.pipeline.evaluation.evaluate` of those pseudo-labels;
* nnU-Net: :func:`~alseg.nnunet.export_dataset`, :func:`~alseg.nnunet.plan_and_preprocess` with the
  spec's plan overrides, nnU-Net's own preprocessor on one case (in process: the per-case part),
  :func:`~alseg.nnunet.transfer_plans` (the fine-tuning route) and :func:`~alseg.nnunet.train` for
  a few short epochs (the steady epochs' times from nnU-Net's log give seconds per iteration);
* prediction: that network (the planned architecture, trained those few iterations: its speed does
  not depend on its weights) through :func:`~alseg.nnunet.predict.predict_volume` at the spec's
  blocks, tiling and mirroring, on the device ``resources.prediction`` and ``nnunet.device``
  choose; then :func:`~alseg.pipeline.predict.run_predict` for the pyramid, mask and instances,
  and :func:`~alseg.pipeline.predict.instances_of_mask` alone for the stitching rate;
* the MAE: :func:`~alseg.pipeline.embedding.run_mae` for a few epochs, then
  :func:`~alseg.pipeline.embedding.run_embed`;
* storage: an OME-Zarr image written and read back at ``store_url`` (then removed).

Rates subtract what the model counts separately (model loading per worker, a training
process's start-up), so they are per-worker steady rates.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from alseg import __version__
from alseg.embed.data import training_slices
from alseg.embed.sources import load_embedder
from alseg.errors import AlsegError, SpecError
from alseg.geometry import Box
from alseg.io import store as st
from alseg.io.omezarr import create_image, create_labels, open_volume
from alseg.nnunet import IntensityNorm, export_dataset, plan_and_preprocess, train, transfer_plans
from alseg.nnunet.predict import load_predictor, predict_volume
from alseg.nnunet.run import preprocess_seconds, resolve_device
from alseg.pipeline.common import device_for, nnunet_dirs
from alseg.pipeline.embedding import resolved_embedding, run_embed, run_mae
from alseg.pipeline.evaluation import evaluate
from alseg.pipeline.predict import instances_of_mask, run_predict
from alseg.pipeline.pseudolabels import run_pseudolabels
from alseg.plan import counts as cnt
from alseg.plan.profile import (DeviceInfo, EmbedRate, EvaluateRate, MaeRate, NnunetRate, PostprocessRate, PredictRate,
                                Profile, PseudolabelRate, Rates, StoreRate, settings_of)
from alseg.preflight import patch_grid_of
from alseg.pseudolabel import make_labeller
from alseg.runtime import SerialRunner
from alseg.spec import JobSpec, TrainingSpec, parse_spec
from alseg.synth import SynthParams, write_synthetic

Say = Callable[[str], None]
MITO_PER_UM3 = 4.0
"""Mitochondria density of the calibration volume: denser than the generator's default, so that a
small volume holds some (the stages' work then looks like real work)."""
EPOCH_TIME = re.compile(r"Epoch time:\s*([0-9.]+)\s*s")


def calibration_shape(spec: JobSpec, quick: bool) -> tuple[int, int, int]:
    """The calibration volume: two candidate patches along z and along x (quick: along x only), and
    at least two nnU-Net patches (``plan_overrides.patch_size_vox``) on every axis (quick: one), so
    that prediction computes several tiles per block."""
    pz, py, px = spec.patches.shape_vox
    shape = [pz if quick else 2 * pz, py, 2 * px]
    given = spec.nnunet.plan_overrides.patch_size_vox
    if given is not None:
        tail = list(given)[-3:]
        for a, v in zip(range(3 - len(tail), 3), tail):
            shape[a] = max(shape[a], int(v) * (1 if quick or int(v) == 1 else 2))
    return tuple(shape)  # type: ignore[return-value]


def _voxel_size(spec: JobSpec) -> tuple[float, float, float]:
    """The input's voxel size from its metadata when it can be opened (no voxel is read), else MitoEM's."""
    try:
        return tuple(float(v) for v in open_volume(spec.input.url, level=spec.input.level).voxel_size_nm)  # type: ignore[return-value]
    except AlsegError:
        return (30.0, 8.0, 8.0)


def calibration_spec(spec: JobSpec, volume_url: str, run_dir: str, *, epochs: int) -> JobSpec:
    """The spec's settings on the calibration volume: its own run directory, no held-out region
    (every patch in the pool), ground truth from the synthetic labels, the serial runner, ``epochs``
    MAE epochs."""
    data = spec.model_dump(mode="json")
    data["input"] = {"url": volume_url, "level": 0, "ground_truth": "mitochondria", "missing_chunks": "error"}
    data["run"] = {"dir": run_dir, "seed": spec.run.seed, "overwrite": False}
    data["patches"]["holdout"] = None
    data["annotation"] = {"method": "simulated"}
    data["resources"]["backend"] = "serial"
    data["resources"]["ray_address"] = None
    data["embedding"]["epochs"] = epochs
    data["embedding"]["warmup_epochs"] = 0
    return parse_spec(data, source="calibration spec")


def device_info() -> DeviceInfo:
    """This machine: CPU model and cores, GPU (name and count), torch, Python, alseg."""
    import torch

    cpu_model = None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        cpu_model = platform.processor() or None
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpu = torch.cuda.get_device_name(0) if gpus else None
    host = socket.gethostname() or "host"
    return DeviceInfo(name=gpu or host, hostname=host, cpu_model=cpu_model, cpu_count=os.cpu_count() or 1, gpu=gpu,
                      gpu_count=gpus, torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
                      alseg=__version__)


class _Clock:
    def __init__(self, say: Say) -> None:
        self.say = say

    def __call__(self, what: str, fn: Callable[[], Any]) -> tuple[Any, float]:
        self.say(f"calibrate: {what} ...")
        t = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t
        self.say(f"calibrate: {what}: {seconds:.1f} s")
        return out, seconds


def _steady(total: float, fixed: float) -> float:
    """The part of ``total`` left after ``fixed`` (at least a tenth of it: a noisy fixed cost never makes a rate infinite)."""
    return max(total - fixed, 0.1 * total, 1e-6)


def calibrate(spec: JobSpec, *, quick: bool = False, shape: tuple[int, int, int] | list[int] | None = None,
              work_dir: str | None = None, store_url: str | None = None, keep: bool = False, progress: bool = False,
              say: Say = print) -> Profile:
    """Measure every stage's per-worker rate at ``spec``'s settings (see the module docstring)."""
    started = time.perf_counter()
    own = work_dir is None
    tmp = tempfile.mkdtemp(prefix="alseg-calibrate-") if own else os.fspath(work_dir)
    os.makedirs(tmp, exist_ok=True)
    if not own and os.listdir(tmp):
        raise SpecError(f"--work {tmp} is not empty: calibrate writes a fresh volume and run directory there")
    clock = _Clock(say)
    try:
        voxel = _voxel_size(spec)
        vshape = tuple(int(s) for s in (shape or calibration_shape(spec, quick)))
        url = os.path.join(tmp, "volume.zarr")
        chunks = tuple(min(c, s) for c, s in zip((32, 256, 256), vshape))
        clock(f"synthetic volume {vshape} at {voxel} nm",
              lambda: write_synthetic(url, SynthParams.preset("medium", shape=vshape, voxel_size_nm=voxel, seed=spec.run.seed,
                                                                 mito_per_um3=MITO_PER_UM3),
                                      chunks=chunks))
        cspec = calibration_spec(spec, url, os.path.join(tmp, "run"), epochs=2 if quick else 3)
        runner = SerialRunner(progress=progress)
        pseudolabel = _pseudolabels(cspec, vshape, voxel, runner, clock)
        evaluate_rate = _evaluate(cspec, vshape, clock)
        nn, folder, norm = _nnunet(cspec, vshape, quick, clock)
        predict, post = _predict(cspec, vshape, folder, norm, runner, clock)
        mae, embed = _embedding(cspec, vshape, folder, norm, runner, progress, clock)
        store = _store(url, store_url or os.path.join(tmp, "store"), vshape, voxel, quick, clock)
        rates = Rates(pseudolabel=pseudolabel, evaluate=evaluate_rate, nnunet=nn, predict=predict, postprocess=post, mae=mae,
                      embed=embed, store=store)
        notes = [f"calibration volume {list(vshape)} (synthetic, medium difficulty), serial runner, one worker per stage"
                 + ("; --quick: fewer steps, noisier figures" if quick else "")]
        return Profile(device=device_info(), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), notes=notes,
                       settings=settings_of(spec), volume_shape=list(vshape), voxel_size_nm=list(voxel),
                       seconds=time.perf_counter() - started, rates=rates)
    finally:
        if own and not keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif keep:
            say(f"calibrate: scratch kept in {tmp}")


def _pseudolabels(cspec: JobSpec, vshape: tuple[int, ...], voxel: tuple[float, ...], runner: SerialRunner,
                  clock: _Clock) -> PseudolabelRate:
    import torch

    pl = cspec.pseudolabel
    _, startup = clock(f"loading the {pl.method} labeller", lambda: make_labeller(pl, pixel_size_nm=voxel[1]))
    res, _ = clock("pseudo-labels", lambda: run_pseudolabels(cspec, runner=runner, progress=False))
    bz, by, bx = pl.block_shape_vox
    z = cnt.axis_blocks(vshape[0], bz)
    ry, rx = cnt.axis_reads(vshape[1], by, pl.halo_px), cnt.axis_reads(vshape[2], bx, pl.halo_px)
    read = float(cnt.outer(z, ry, rx).sum())
    sections = float(z.sum()) * len(ry) * len(rx)
    seg = _steady(res["seconds"]["segment"], startup)
    finish = res["seconds"]["link"] + res["seconds"]["relabel_and_pyramid"]
    gpu = cspec.resources.pseudolabel.gpus > 0 and torch.cuda.is_available() and pl.method != "classical"
    return PseudolabelRate(method=pl.method, device="cuda" if gpu else "cpu", read_voxels_per_s=read / seg,
                           slices_per_s=sections / seg, finish_voxels_per_s=math.prod(vshape) / max(finish, 1e-6),
                           startup_s=startup)


def _evaluate(cspec: JobSpec, vshape: tuple[int, ...], clock: _Clock) -> EvaluateRate:
    url = st.join(cspec.run.dir, "pseudolabels.zarr")
    _, seconds = clock("scoring against ground truth", lambda: evaluate(cspec, url))
    return EvaluateRate(voxels_per_s=math.prod(vshape) / max(seconds, 1e-6))


def _nnunet(cspec: JobSpec, vshape: tuple[int, ...], quick: bool, clock: _Clock) -> tuple[NnunetRate, str, IntensityNorm]:
    n = cspec.nnunet
    dirs = nnunet_dirs(cspec).make()
    url = cspec.input.url
    norm = IntensityNorm.of_volume(url)
    boxes = [p.valid for p in patch_grid_of(cspec, vshape).patches()][: 2 if quick else 4]
    labels = _training_labels(url, boxes)
    overrides = n.plan_overrides.model_dump()
    _, t_export = clock(f"nnU-Net dataset of {len(boxes)} cases",
                               lambda: export_dataset(dirs, 1, "calib", url, labels, boxes, norm=norm, boundary=n.boundary_class))
    case_vox = sum(b.size for b in boxes)
    plans, t_plan = clock("nnU-Net plans and preprocessing",
                          lambda: plan_and_preprocess(dirs, 1, configuration=n.configuration, overrides=overrides))
    (t_case, vox_case), _ = clock("nnU-Net preprocessing of one case (in process)",
                                  lambda: preprocess_seconds(dirs, 1, "calib", configuration=n.configuration))
    export_dataset(dirs, 2, "calibft", url, labels, boxes[:1], norm=norm, boundary=n.boundary_class)
    _, t_transfer = clock("nnU-Net plans carried to a fine-tuning dataset",
                          lambda: transfer_plans(dirs, 1, 2, configuration=n.configuration))
    conf = plans["configurations"][n.configuration]
    iterations = 2 if quick else 5
    epochs = 2 if quick else 3
    schedule = TrainingSpec(epochs=epochs, iterations_per_epoch=iterations, val_iterations_per_epoch=1,
                            learning_rate=n.pretrain.learning_rate, batch_size=n.pretrain.batch_size, final_validation=False)
    lines: list[str] = []
    folder, t_train = clock(f"nnU-Net training, {epochs} epochs of {iterations} iterations",
                            lambda: train(dirs, 1, "calib", schedule, configuration=n.configuration, device=n.device,
                                          echo=lines.append))
    epoch_s = [float(m.group(1)) for line in lines if (m := EPOCH_TIME.search(line))]
    s_per_iteration, startup = training_rate(t_train, epoch_s, iterations)
    rate = NnunetRate(
        device=resolve_device(n.device), patch_vox=[int(v) for v in conf["patch_size"]],
        batch_size=int(n.pretrain.batch_size or conf["batch_size"]), s_per_iteration=s_per_iteration,
        train_startup_s=startup, plan_fixed_s=max(0.0, t_plan - len(boxes) * t_case),
        transfer_fixed_s=max(0.0, t_transfer - t_case), preprocess_voxels_per_s=vox_case / max(t_case, 1e-6),
        export_voxels_per_s=case_vox / max(t_export, 1e-6),
        model_bytes=os.path.getsize(os.path.join(folder, "fold_all", "checkpoint_final.pth")))
    return rate, folder, norm


def training_rate(wall_s: float, epoch_s: list[float], iterations: int) -> tuple[float, float]:
    """``(seconds per training iteration, start-up seconds)`` of one training process that took
    ``wall_s`` for epochs of ``iterations`` iterations and one validation iteration (counted as a
    third of one), nnU-Net's log reporting ``epoch_s``. The steady epochs (all but the first) give
    the rate; the start-up is the rest of the wall time, so it holds the process's start, the first
    epoch's warm-up (data loaders, cuDNN's search, compilation) and the checkpoints: the plan, at
    this schedule, gives back ``wall_s``."""
    if len(epoch_s) < 2:
        raise AlsegError(f"calibration: nnU-Net's log reported {len(epoch_s)} epoch time(s), expected at least 2")
    steady = sum(epoch_s[1:]) / len(epoch_s[1:])
    return steady / (iterations + 1 / 3), max(0.0, wall_s - len(epoch_s) * steady)


def _training_labels(url: str, boxes: list[Box]) -> str:
    """Labels for the calibration's nnU-Net dataset: the synthetic ground truth when the cases hold
    mitochondria (nnU-Net's fingerprint needs foreground), else the darkest tenth of the volume
    (the labels do not change how fast nnU-Net runs)."""
    truth = st.join(url, "labels", "mitochondria")
    gt = open_volume(truth)
    if all(np.count_nonzero(gt.read(b)) for b in boxes):
        return truth
    image = open_volume(url).read()
    dark = create_labels(url, "calibration", dtype="uint32")
    dark.write(dark.bounds, (image <= np.percentile(image, 10)).astype(np.uint32))
    return st.join(url, "labels", "calibration")


def _predict(cspec: JobSpec, vshape: tuple[int, ...], folder: str, norm: IntensityNorm, runner: SerialRunner,
             clock: _Clock) -> tuple[PredictRate, PostprocessRate]:
    p = cspec.prediction
    _, device = device_for(cspec.resources.prediction, cspec.nnunet.device, label="resources.prediction")
    load_predictor(folder, device=device, mirroring=p.mirroring)  # the first load imports nnU-Net: not a worker's cost
    predictor, load_s = clock("loading the model", lambda: load_predictor(folder, device=device, mirroring=p.mirroring))
    classes = int(predictor.label_manager.num_segmentation_heads)
    del predictor
    with open(os.path.join(folder, "plans.json")) as fh:
        conf = json.load(fh)["configurations"][cspec.nnunet.configuration]
    patch = tuple(int(v) for v in conf["patch_size"])
    patch3 = patch if len(patch) == 3 else (1, *patch)
    block = tuple(min(b, s) for b, s in zip(p.block_shape_vox, vshape))
    if p.tiling == "global" and len(patch) == 3 and all(s >= q for s, q in zip(vshape, patch)):
        tiles = cnt.global_tiles(vshape, block, patch3, p.tile_step)
    else:
        tiles = cnt.halo_tiles(vshape, block, p.halo_vox, patch3, p.tile_step)
    out_dir = st.join(cspec.run.dir, "calibration-prediction")
    work = st.join(cspec.run.dir, "work", "predict", "calibration")

    def run(name: str, work_dir: str) -> None:
        predict_volume(folder, cspec.input.url, st.join(out_dir, name), norm=norm, block_shape=p.block_shape_vox,
                       halo=p.halo_vox, runner=runner, work_dir=work_dir, device=device, mirroring=p.mirroring, tiling=p.tiling,
                       tile_step=p.tile_step, batch_tiles=p.batch_tiles)

    what = f"nnU-Net prediction ({int(tiles.sum())} tiles of {patch}, {device})"
    # twice: the first prediction of a process also warms the network up (kernels, allocator)
    _, t_first = clock(what + ", first in this process", lambda: run("first.zarr", work + "-first"))
    _, t_pred = clock(what, lambda: run("classes.zarr", work))
    tile_s = _steady(t_pred, load_s) / float(tiles.sum())  # the model loads once per prediction
    res, t_post = clock("pyramid, mask and instances",
                        lambda: run_predict(cspec, model_folder=folder, norm=norm.to_json(), runner=runner, progress=False,
                                            out_dir=out_dir, work_key="calibration"))
    again = st.join(cspec.run.dir, "calibration-instances.zarr")  # made by instances_of_mask, as run_predict makes its own
    _, t_stitch = clock("instances alone (stitching)",
                        lambda: instances_of_mask(cspec, res["mask"], again, work_dir=st.join(work, "again"), runner=runner))
    vox = math.prod(vshape)
    predict = PredictRate(device=device, patch_vox=list(patch), mirroring=p.mirroring, tiles_per_s=1 / tile_s,
                          tile_voxels_per_s=math.prod(patch3) / tile_s, load_s=load_s, warmup_s=max(0.0, t_first - t_pred),
                          classes=classes)
    post = PostprocessRate(stitch_voxels_per_s=vox / max(t_stitch, 1e-6),
                           other_voxels_per_s=vox / _steady(t_post, t_stitch))
    return predict, post


def _embedding(cspec: JobSpec, vshape: tuple[int, ...], folder: str, norm: IntensityNorm, runner: SerialRunner,
               progress: bool, clock: _Clock) -> tuple[MaeRate | None, EmbedRate]:
    e = cspec.embedding
    pretrained = {"model_folder": folder, "norm": norm.to_json(), "signature_sha256": "calibration"} \
        if e.source == "nnunet" else None
    mae, t_mae = clock(f"embedding model ({e.source})", lambda: run_mae(cspec, runner=runner, norm=norm, progress=progress,
                                                                          pretrained=pretrained))
    _, device = device_for(cspec.resources.embedding, label="resources.embedding")
    _, load_s = clock("loading the embedding model", lambda: load_embedder(mae["checkpoint"], device, slices=e.slices_per_patch))
    emb, t_embed = clock("embeddings", lambda: run_embed(cspec, runner=runner, progress=progress, pretrained=pretrained))
    pool = int(emb["rows"])
    patches_per_s = pool / _steady(t_embed, load_s)
    image = open_volume(cspec.input.url)
    side = int(resolved_embedding(cspec, image).img_size_px or 1)
    rate = EmbedRate(device=device, source=e.source, slices_per_patch=e.slices_per_patch, img_size_px=side,
                     patches_per_s=patches_per_s, load_s=load_s)
    if e.source != "mae" or not mae.get("steps"):
        return None, rate
    # reading and preparing the training sections, timed on its own (alseg's function, the same sections)
    patches = patch_grid_of(cspec, vshape).patches()
    context = e.context + 1.0 if e.model == "conv" and e.context > 1.0 else 1.0
    sections, t_prep = clock("MAE training sections", lambda: training_slices(
        image, patches, norm, side, e.max_train_slices + e.heldout_slices, cspec.run.seed, context=context))
    fit = min(pool, 1024) / patches_per_s
    fixed = max(0.0, t_mae - float(mae["train_seconds"]) - t_prep - fit)
    return MaeRate(device=str(mae.get("device", device)), model=e.model, img_size_px=side, batch_size=int(mae["batch"]),
                   steps_per_s=int(mae["steps"]) / max(float(mae["train_seconds"]), 1e-6),
                   slices_per_s=len(sections) / max(t_prep, 1e-6), fixed_s=fixed), rate


def _store(source: str, root: str, vshape: tuple[int, ...], voxel: tuple[float, ...], quick: bool, clock: _Clock) -> StoreRate:
    """Write the calibration volume's data, repeated to at least 8 MB (quick) or 64 MB, as an OME-Zarr
    image under ``root``, read it back, remove it (only that image)."""
    data = open_volume(source).read()
    reps = max(1, math.ceil((8e6 if quick else 64e6) / data.nbytes))
    shape = (vshape[0] * reps, *vshape[1:])
    target = st.join(root, f"alseg-calibrate-{uuid.uuid4().hex[:12]}.zarr")
    chunks = tuple(min(c, s) for c, s in zip((32, 256, 256), shape))
    vol = create_image(target, shape=shape, dtype=data.dtype, chunks=chunks, voxel_size_nm=voxel, levels=1, kind="calibration")
    try:
        def write() -> None:
            for k in range(reps):
                vol.write(Box((k * vshape[0], 0, 0), (k * vshape[0] + vshape[0], *vshape[1:])), data)

        _, t_write = clock(f"store write ({st.redact(root)})", write)
        back, t_read = clock("store read", lambda: open_volume(target).read())
        if not np.array_equal(back[: vshape[0]], data):
            raise AlsegError(f"calibration: the image written to {st.redact(target)} reads back different")
    finally:
        st.remove(target)
    mb = data.nbytes * reps / 1e6
    return StoreRate(url=st.redact(root), read_mb_per_s=mb / max(t_read, 1e-6), write_mb_per_s=mb / max(t_write, 1e-6))
