"""What ``prediction.tile_step`` costs in accuracy and saves in time, on a trained run.

    .venv/bin/python benchmarks/tile_step.py --run RUNDIR [--round N] [--steps 0.5 0.75 1.0] [--repeats 3]

Takes the model that round ``N`` of an alseg run directory fine-tuned (default: its last round),
and predicts the run's held-out region with it once per tile step, through the same stage a round's
evaluation runs (``run_predict``: blockwise nnU-Net, mask, 3D instances), each into a scratch run
directory of its own; scores each against the ground truth (F1 at IoU 0.5 and 0.75, foreground
IoU) and times it. Steps are run in turn, ``--repeats`` rounds; the medians are printed with the
ratio to step 0.5 (nnU-Net's default) measured in the same run. The run directory is only read.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np


def _model(rundir: str, round_index: int | None) -> tuple[int, dict]:
    from alseg.io import store as st

    stages = st.join(rundir, "stages")
    rounds = sorted(int(n[len("finetune-"):-len(".json")]) for n in st.listdir(stages)
                    if n.startswith("finetune-") and n.endswith(".json"))
    if not rounds:
        sys.exit(f"{rundir} has no fine-tuned round (stages/finetune-NN.json): run the job first")
    r = rounds[-1] if round_index is None else round_index
    if r not in rounds:
        sys.exit(f"{rundir} has no round {r}; rounds: {rounds}")
    return r, st.read_json(st.join(stages, f"finetune-{r:02d}.json"))["result"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="an alseg run directory with at least one fine-tuned round")
    ap.add_argument("--round", type=int, default=None, help="whose model (default: the last round)")
    ap.add_argument("--steps", nargs="+", type=float, default=[0.5, 0.75, 1.0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from alseg.annotate.cli import spec_of_run
    from alseg.pipeline.evaluation import evaluate
    from alseg.pipeline.predict import run_predict
    from alseg.plan import counts as cnt
    from alseg.preflight import holdout_of
    from alseg.pipeline.common import input_volume

    spec = spec_of_run(args.run)
    r, model = _model(args.run, args.round)
    steps = sorted(set(args.steps) | {0.5})
    region = holdout_of(spec, input_volume(spec).shape)
    if region is None:
        sys.exit("the run's spec has no held-out region (patches.holdout): nothing to score on")
    import json

    with open(os.path.join(model["model_folder"], "plans.json")) as fh:
        patch = json.load(fh)["configurations"][spec.nnunet.configuration]["patch_size"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; run {args.run} round {r} ({spec.nnunet.configuration}, patch {patch}); "
          f"held-out region {region.shape}; medians of {args.repeats} runs")
    times: dict[float, list[float]] = {s: [] for s in steps}
    scores: dict[float, dict] = {}
    with tempfile.TemporaryDirectory(prefix="alseg-tile-step-") as tmp:
        for rep in range(args.repeats):
            for step in steps:
                run = os.path.join(tmp, f"step-{step:g}-{rep}")
                sp = spec.model_copy(update={"prediction": spec.prediction.model_copy(update={"tile_step": step}),
                                             "run": spec.run.model_copy(update={"dir": run})})
                t0 = time.perf_counter()
                pred = run_predict(sp, model_folder=model["model_folder"], norm=model["norm"], progress=False, region=region,
                                   work_key=f"step-{step:g}")
                times[step].append(time.perf_counter() - t0)
                got = evaluate(sp, pred["instances"], holdout_only=True)
                if step in scores:
                    assert got == scores[step], "a repeat scores the same"
                scores[step] = got
    base = float(np.median(times[0.5]))
    print(f"{'step':>5} {'tiles/section or volume':>24} {'seconds':>8} {'vs 0.5':>7} {'F1@0.5':>7} {'F1@0.75':>8} {'fg IoU':>7} {'objects pred/true':>18}")
    for step in steps:
        sec = float(np.median(times[step]))
        s = scores[step]
        shape = region.shape[1:] if len(patch) == 2 else region.shape
        tiles = cnt.volume_tiles(shape, patch, step)
        print(f"{step:5.2f} {tiles:24d} {sec:8.1f} {sec / base:6.2f}x {s['at']['0.5']['f1']:7.3f} {s['at']['0.75']['f1']:8.3f} "
              f"{s['foreground_iou']:7.3f} {s['objects_pred']:>4}/{s['objects_gt']}")


if __name__ == "__main__":
    main()
