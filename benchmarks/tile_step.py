"""What ``prediction.tile_step`` costs in accuracy and saves in time, on a trained run.

    .venv/bin/python benchmarks/tile_step.py --run RUNDIR [--round N] [--steps 0.5 0.75 1.0] [--repeats 3]
    .venv/bin/python benchmarks/tile_step.py --synthetic [--iterations 400] [--steps ...] [--repeats 3]

Takes the model that round ``N`` of an alseg run directory fine-tuned (default: its last round),
and predicts the whole volume with it once per tile step, through the stage that makes a run's
final prediction (``run_predict``: blockwise nnU-Net at the spec's tiling, mask, 3D instances),
each into a scratch run directory of its own; scores each on the run's held-out region against the
ground truth (F1 at IoU 0.5 and 0.75, foreground IoU) and times it. Steps are run in turn, ``--repeats`` rounds; the medians are printed with the
ratio to step 0.5 (nnU-Net's default) measured in the same run. The run directory is only read.

``--synthetic`` needs no run: a 3D nnU-Net (patch 16 x 64 x 64, 4 stages, features 8-64) is trained
for ``--iterations`` on the full ground truth of the lower half of an ``alseg synth`` medium volume
(32 x 384 x 384 at 30 x 8 x 8 nm), and the whole volume is predicted with global tiling (blocks
16 x 128 x 128), 26-connected instances of at least 200 voxels, scored on the upper half.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np


def _model(rundir: str, round_index: int | None) -> tuple[int, dict]:
    from alseg.io import store as st

    stages = st.join(rundir, "stages")
    fs, path = st.filesystem(stages)
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)] if fs.exists(path) else []
    rounds = sorted(int(n[len("finetune-"):-len(".json")]) for n in names if n.startswith("finetune-") and n.endswith(".json"))
    if not rounds:
        sys.exit(f"{rundir} has no fine-tuned round (stages/finetune-NN.json): run the job first")
    r = rounds[-1] if round_index is None else round_index
    if r not in rounds:
        sys.exit(f"{rundir} has no round {r}; rounds: {rounds}")
    return r, st.read_json(st.join(stages, f"finetune-{r:02d}.json"))["result"]


def _synthetic(args: argparse.Namespace) -> None:
    from alseg.evaluate.metrics import evaluate_volumes
    from alseg.geometry import Box
    from alseg.io.omezarr import create_labels, open_volume
    from alseg.nnunet import IntensityNorm, NnUNetDirs, export_dataset, plan_and_preprocess, train
    from alseg.nnunet.predict import predict_volume
    from alseg.plan import counts as cnt
    from alseg.postprocess.stitch import label_components
    from alseg.spec import TrainingSpec
    from alseg.synth import SynthParams, write_synthetic

    shape, block, patch = (32, 384, 384), (16, 128, 128), (16, 64, 64)
    held = Box((16, 0, 0), shape)
    steps = sorted(set(args.steps) | {0.5})
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; synthetic medium {shape}, nnU-Net patch {patch} trained "
          f"{args.iterations} iterations on the lower half's ground truth; global tiling, blocks {block}; scored on {held.shape}; "
          f"medians of {args.repeats} runs")
    times: dict[float, list[float]] = {s: [] for s in steps}
    scores: dict[float, dict] = {}
    with tempfile.TemporaryDirectory(prefix="alseg-tile-step-") as tmp:
        url = os.path.join(tmp, "v.zarr")
        write_synthetic(url, SynthParams.preset("medium", shape=shape, seed=3), chunks=block)
        norm = IntensityNorm.of_volume(url)
        dirs = NnUNetDirs(os.path.join(tmp, "nnunet"))
        boxes = [Box((z, y, x), (z + 16, y + 64, x + 64)) for z in (0,) for y in range(0, 384, 64) for x in range(0, 384, 64)]
        export_dataset(dirs, 1, "tilestep", url, url + "/labels/mitochondria", boxes, norm=norm)
        plan_and_preprocess(dirs, 1, overrides={"patch_size_vox": list(patch), "batch_size": 2, "n_stages": 4,
                                                "features_per_stage": [8, 16, 32, 64]})
        epochs = max(1, args.iterations // 50)
        t0 = time.perf_counter()
        folder = train(dirs, 1, "tilestep", TrainingSpec(epochs=epochs, iterations_per_epoch=50, val_iterations_per_epoch=1,
                                                         final_validation=False), device="cpu")
        print(f"trained {epochs * 50} iterations in {time.perf_counter() - t0:.0f} s")
        for rep in range(args.repeats):
            for step in steps:
                name = os.path.join(tmp, f"s{step:g}-{rep}")
                t0 = time.perf_counter()
                predict_volume(folder, url, name + "-classes.zarr", norm=norm, block_shape=block, halo=(0, 0, 0),
                               work_dir=name + "-work", tile_step=step)
                times[step].append(time.perf_counter() - t0)
                out = create_labels(url, f"s{step:g}-{rep}", dtype="uint32", chunks=block)
                label_components(name + "-classes.zarr", out.url, block_shape=block, work_dir=name + "-cc", connectivity=26,
                                 min_size_vox=200, threshold=0)
                got = evaluate_volumes(url + "/labels/mitochondria", out.url, region=held)
                assert step not in scores or got == scores[step], "a repeat scores the same"
                scores[step] = got
        classes = open_volume(os.path.join(tmp, "s0.5-0-classes.zarr")).read()
        if not (classes == 1).any():
            sys.exit("the model predicts no foreground: train longer (--iterations)")
    _table(steps, times, scores, {s: cnt.volume_tiles(shape, patch, s) for s in steps})


def _table(steps, times, scores, tiles) -> None:
    base = float(np.median(times[0.5]))
    print(f"{'step':>5} {'tiles':>8} {'seconds':>8} {'vs 0.5':>7} {'F1@0.5':>7} {'F1@0.75':>8} {'fg IoU':>7} {'objects pred/true':>18}")
    for step in steps:
        sec = float(np.median(times[step]))
        s = scores[step]
        print(f"{step:5.2f} {tiles[step]:8d} {sec:8.1f} {sec / base:6.2f}x {s['at']['0.5']['f1']:7.3f} {s['at']['0.75']['f1']:8.3f} "
              f"{s['foreground_iou']:7.3f} {s['objects_pred']:>14}/{s['objects_gt']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", help="an alseg run directory with at least one fine-tuned round")
    what.add_argument("--synthetic", action="store_true", help="train a small 3D model on a synthetic volume instead")
    ap.add_argument("--iterations", type=int, default=400, help="--synthetic: training iterations (batch 2)")
    ap.add_argument("--round", type=int, default=None, help="whose model (default: the last round)")
    ap.add_argument("--steps", nargs="+", type=float, default=[0.5, 0.75, 1.0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.synthetic:
        return _synthetic(args)

    from alseg.annotate.cli import spec_of_run
    from alseg.pipeline.evaluation import evaluate
    from alseg.pipeline.predict import run_predict
    from alseg.plan import counts as cnt
    from alseg.preflight import holdout_of
    from alseg.pipeline.common import input_volume
    from alseg.runtime import SerialRunner

    spec = spec_of_run(args.run)
    r, model = _model(args.run, args.round)
    steps = sorted(set(args.steps) | {0.5})
    for step in steps:  # the spec's own bounds (model_copy below does not validate)
        type(spec.prediction).model_validate({**spec.prediction.model_dump(), "tile_step": step})
    region = holdout_of(spec, input_volume(spec).shape)
    if region is None:
        sys.exit("the run's spec has no held-out region (patches.holdout): nothing to score on")
    with open(os.path.join(model["model_folder"], "plans.json")) as fh:
        patch = json.load(fh)["configurations"][spec.nnunet.configuration]["patch_size"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; run {args.run} round {r} ({spec.nnunet.configuration}, patch {patch}); "
          f"volume {input_volume(spec).shape}, scored on the held-out region {region.shape}; medians of {args.repeats} runs")
    times: dict[float, list[float]] = {s: [] for s in steps}
    scores: dict[float, dict] = {}
    with tempfile.TemporaryDirectory(prefix="alseg-tile-step-") as tmp:
        for rep in range(args.repeats):
            for step in steps:
                run = os.path.join(tmp, f"step-{step:g}-{rep}")
                sp = spec.model_copy(update={"prediction": spec.prediction.model_copy(update={"tile_step": step}),
                                             "run": spec.run.model_copy(update={"dir": run})})
                t0 = time.perf_counter()
                # serial, here: never the run's own Ray cluster, whatever its resources say
                pred = run_predict(sp, model_folder=model["model_folder"], norm=model["norm"], progress=False,
                                   runner=SerialRunner(progress=False), work_key=f"step-{step:g}")
                times[step].append(time.perf_counter() - t0)
                got = evaluate(sp, pred["instances"], holdout_only=True)
                if step in scores:
                    assert got == scores[step], "a repeat scores the same"
                scores[step] = got
    patch3 = patch if len(patch) == 3 else (1, *patch)
    _table(steps, times, scores, {s: cnt.volume_tiles(input_volume(spec).shape, patch3, s) for s in steps})


if __name__ == "__main__":
    main()
