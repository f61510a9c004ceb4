"""How close `alseg plan` comes to a real run: predicted vs measured wall time per stage.

    .venv/bin/python benchmarks/plan_accuracy.py [--dir plan-accuracy] [--shape 32 512 512] [--repeats 3]
                                                 [--quick] [--spec SPEC] [--gpus-per-node 0]

1. writes a synthetic EM volume with ground truth (``--shape``, MitoEM's 30 x 8 x 8 nm) and, unless
   ``--spec`` is given, a demo-sized job spec on it (serial backend, tiny nnU-Net, conv MAE, two
   rounds of k-center + simulated annotation + fine-tuning);
2. ``alseg calibrate SPEC`` measures this machine at the spec's settings (``--quick``: its quick mode);
3. ``alseg plan SPEC --nodes 1 --gpus-per-node G --profile ... --json`` projects every stage;
4. ``alseg run SPEC`` runs the job for real, ``--repeats`` times (each in a fresh run directory);
5. prints, per stage, the planned and the measured wall time (``<run dir>/stages/<stage>.json``;
   the median of the repeats, with their range), their ratio measured / planned, and whether it lies within 30 % (the goal of issue 15); stages
   the plan marks *assumed* (formulas, not calibrated rates) are flagged, and stages under
   ``--floor-s`` seconds measured are compared but not counted against the goal (start-up noise: the first stage of a process imports its libraries, which no rate counts).

On two CPU cores the defaults take about 30 minutes (three runs of about 8).

Every command runs as its own process, as a user would run it; the figures go to
``<dir>/plan-accuracy.json`` too. A spec given with ``--spec`` must name a volume that exists and
a run directory that does not (the script refuses to reuse one: reused stages take no time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from workdir import claim

SPEC = """\
name: plan-accuracy
input: {{url: {volume}, ground_truth: mitochondria}}
run: {{dir: {run}}}
patches:
  shape_vox: [16, 64, 64]
  holdout: {{kind: fraction, axis: z, fraction: 0.5, side: end}}
pseudolabel: {{method: classical, threshold: otsu, block_shape_vox: [16, 128, 128], halo_px: 32, min_size_vox: 50}}
nnunet:
  device: cpu
  plan_overrides: {{patch_size_vox: [16, 64, 64], batch_size: 2, n_stages: 4, features_per_stage: [8, 16, 32, 64]}}
  pretrain: {{epochs: 4, iterations_per_epoch: 10, val_iterations_per_epoch: 2, final_validation: false}}
  finetune: {{epochs: 3, iterations_per_epoch: 10, val_iterations_per_epoch: 2, learning_rate: 0.003, final_validation: false}}
embedding: {{epochs: 10, batch_size: 32, slices_per_patch: 4}}
selection: {{method: kcenter, budget: 2, rounds: 2}}
annotation: {{method: simulated}}
prediction: {{block_shape_vox: [16, 128, 128], halo_vox: [4, 16, 16]}}
postprocess: {{block_shape_vox: [16, 128, 128], min_size_vox: 200}}
resources: {{backend: serial}}
"""
GOAL = 0.30


def alseg(*args: str, log: Path) -> float:
    """Run ``alseg ARGS`` in its own process (output to ``log``); its wall time in seconds."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        res = subprocess.run([sys.executable, "-m", "alseg.cli", *args], stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if res.returncode:
        sys.exit(f"alseg {' '.join(args)} failed (exit {res.returncode}); see {log}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="plan-accuracy", help="working folder (default ./plan-accuracy; an earlier run's is replaced)")
    ap.add_argument("--shape", nargs=3, type=int, default=(32, 512, 512), help="the run's volume (default 32 512 512)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of the job, each in a fresh run directory; per stage the "
                    "median is compared (default 3)")
    ap.add_argument("--spec", default=None, help="a job spec of your own instead of the built-in demo-sized one")
    ap.add_argument("--quick", action="store_true", help="calibrate --quick")
    ap.add_argument("--gpus-per-node", type=int, default=0, help="GPUs of this machine for the plan (default 0)")
    ap.add_argument("--cpus-per-node", type=int, default=None, help="CPUs for the plan (default: the profile's)")
    ap.add_argument("--floor-s", type=float, default=2.0, help="stages measured under this many seconds are not held to "
                    "the goal (default 2)")
    args = ap.parse_args()

    from alseg.spec import load_spec
    from alseg.synth import SynthParams, write_synthetic

    if args.repeats < 1:
        sys.exit("--repeats must be at least 1")
    work = Path(args.dir).resolve()
    if args.spec:  # its own run directory is run 1: checked before anything in --dir is removed
        own_run = load_spec(args.spec).run.dir
        if os.path.exists(own_run) and os.listdir(own_run):
            sys.exit(f"the spec's run directory {own_run} is not empty: a rerun reuses stages, which then take no time")
    claim(work, "plan-accuracy", ["volume.zarr", "job*.yaml", "run-*", "*.log", "plan.json", "profile.json",
                                  "plan-accuracy.json"], [Path(args.spec)] if args.spec else [])
    if args.spec:
        spec_path = Path(args.spec).resolve()
    else:
        volume = work / "volume.zarr"
        write_synthetic(str(volume), SynthParams.preset("medium", shape=tuple(args.shape), seed=0))
        spec_path = work / "job.yaml"
        spec_path.write_text(SPEC.format(volume=volume, run=work / "run-1"))
    spec = load_spec(spec_path)
    # every repeat its own fresh run directory: run-1 (the spec's own, unless --spec), run-2, ...
    specs = [spec_path]
    for k in range(2, args.repeats + 1):
        data = yaml.safe_load(spec_path.read_text())
        data["run"]["dir"] = str(work / f"run-{k}")
        specs.append(work / f"job-{k}.yaml")
        specs[-1].write_text(yaml.safe_dump(data, sort_keys=False))
    run_dirs = [load_spec(p).run.dir for p in specs]
    if len(set(run_dirs)) < len(run_dirs):
        sys.exit(f"the runs would share a run directory ({run_dirs}): give the spec a run.dir outside {work}")
    for d in run_dirs:
        if os.path.exists(d) and os.listdir(d):
            sys.exit(f"the run directory {d} is not empty: a rerun reuses stages, which then take no time")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; spec {spec_path}; volume {spec.input.url}; "
          f"{args.repeats} run(s)")

    profile = work / "profile.json"
    t_cal = alseg("calibrate", str(spec_path), "-q", "--out", str(profile), *(["--quick"] if args.quick else []),
                  log=work / "calibrate.log")
    plan_args = ["plan", str(spec_path), "--nodes", "1", "--gpus-per-node", str(args.gpus_per_node), "--profile", str(profile),
                 "--json"] + (["--cpus-per-node", str(args.cpus_per_node)] if args.cpus_per_node else [])
    t_plan = alseg(*plan_args, log=work / "plan.json")
    plan = json.loads((work / "plan.json").read_text())
    t_runs = [alseg("run", str(p), "-q", log=work / f"run-{k}.log") for k, p in enumerate(specs, 1)]
    t_run = statistics.median(t_runs)

    rows = []
    for stage in plan["stages"]:
        records = [Path(d) / "stages" / f"{stage['key']}.json" for d in run_dirs]
        walls = [json.loads(r.read_text())["wall_s"] for r in records if r.exists()]
        measured = statistics.median(walls) if len(walls) == len(records) else None
        rows.append({"stage": stage["key"], "planned_s": stage["seconds"], "measured_s": measured, "runs_s": walls,
                     "assumed": stage["assumed"]})
    print(f"calibrate {t_cal:.0f} s, plan {t_plan:.1f} s, run {t_run:.0f} s (median of {len(t_runs)}; one process each)")
    print(f"{'stage':<20} {'planned':>9} {'measured':>9} {'ratio':>7}  {'runs':<20} within 30 %")
    held = hits = 0
    for r in rows:
        if r["measured_s"] is None:
            print(f"{r['stage']:<20} {r['planned_s']:9.1f} {'-':>9} {'-':>7}  (no record in every run: the stage did not run)")
            continue
        ratio = r["measured_s"] / r["planned_s"] if r["planned_s"] > 0 else float("inf")
        r["ratio"] = ratio
        ok = abs(ratio - 1.0) <= GOAL
        counted = r["measured_s"] >= args.floor_s and not r["assumed"]
        held += counted
        hits += counted and ok
        note = ("yes" if ok else "no") + ("" if counted else f" (not counted: {'assumed' if r['assumed'] else f'under {args.floor_s:g} s'})")
        runs = "-".join(f"{w:.1f}" for w in (min(r["runs_s"]), max(r["runs_s"])))
        print(f"{r['stage']:<20} {r['planned_s']:9.1f} {r['measured_s']:9.1f} {ratio:7.2f}  {runs:<20} {note}")
    total_measured = sum(r["measured_s"] or 0.0 for r in rows)
    print(f"{'total':<20} {plan['total_seconds']:9.1f} {total_measured:9.1f} {total_measured / plan['total_seconds']:7.2f}")
    print(f"stages within 30 % of the plan: {hits} of {held} counted (goal: all)")
    (work / "plan-accuracy.json").write_text(json.dumps({"rows": rows, "calibrate_s": t_cal, "plan_s": t_plan, "run_s": t_runs,
                                                          "total_planned_s": plan["total_seconds"],
                                                          "total_measured_s": total_measured}, indent=1))


if __name__ == "__main__":
    main()
