"""A full MitoEM job projected by `alseg plan` from a profile `alseg calibrate` measures on this machine.

    .venv/bin/python benchmarks/mitoem_projection.py [--dir mitoem-projection] [--profile FILE]
                                                     [--nodes 1] [--gpus-per-node 8] [--full]

The job is ``configs/mitoem-full.yaml`` (1000 x 4096 x 4096 at 30 x 8 x 8 nm, nnU-Net's own
3d_fullres plan, prediction with mirroring, k-center over 2 rounds of 64) on one node of 8 GPUs
(a p4d.24xlarge of cluster/ray-cluster.yaml).

1. Unless ``--profile`` names one, ``alseg calibrate`` measures this machine at that spec's
   settings, from a calibration spec written into ``--dir`` that differs from it where this
   machine cannot follow, each difference said (``alseg plan`` lists them again as warnings):
   * ``pseudolabel.method: classical``: CellSAM's weights are not on this machine;
   * ``prediction.mirroring: false``: calibrate measures one network pass per tile and the plan
     multiplies it by the 8 passes of the real spec (on two CPU cores, 8 passes of the 44.6 M
     parameter network over every calibration tile, twice, would take hours);
   * ``run.dir`` and ``input.url`` local (calibrate reads no input; its volume is synthetic);
   * ``--quick`` unless ``--full``: the smallest calibration volume, fewest training steps.
2. ``alseg plan configs/mitoem-full.yaml --nodes N --gpus-per-node G --profile PROFILE --shape 1000
   4096 4096 --voxel-size 30 8 8``: the projection from that profile, and the same with the
   built-in profile (figures from an H200, partly guessed) for comparison. Plans are also kept
   as JSON in ``--dir``.

A CPU profile projects what a GPU cluster would do at this CPU's per-worker speed: an upper bound
that says where the time goes, not a GPU figure. On two CPU cores the calibration takes about 26
minutes (a training iteration of nnU-Net's MitoEM network is about 70 s there).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from workdir import claim

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "configs" / "mitoem-full.yaml"
SHAPE = ("1000", "4096", "4096")
VOXEL = ("30", "8", "8")


def alseg(*args: str, log: Path | None = None) -> str:
    """Run ``alseg ARGS`` as its own process; its stdout (also written to ``log``)."""
    res = subprocess.run([sys.executable, "-m", "alseg.cli", *args], capture_output=True, text=True)
    if log is not None:
        log.write_text(res.stdout + res.stderr)
    if res.returncode:
        sys.exit(f"alseg {' '.join(args)} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return res.stdout


def calibration_spec(work: Path) -> Path:
    data = yaml.safe_load(SPEC.read_text())
    data["input"]["url"] = str(work / "no-input.zarr")  # calibrate never opens it: MitoEM's voxel size is its default
    data["run"]["dir"] = str(work / "run")
    data["pseudolabel"] = {"method": "classical", "block_shape_vox": data["pseudolabel"]["block_shape_vox"],
                           "halo_px": data["pseudolabel"]["halo_px"]}
    data["prediction"]["mirroring"] = False
    path = work / "calibration-spec.yaml"
    path.write_text("# configs/mitoem-full.yaml with what this machine cannot run changed (benchmarks/mitoem_projection.py)\n"
                    + yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="mitoem-projection", help="working folder (default ./mitoem-projection; an earlier "
                    "run's is replaced)")
    ap.add_argument("--profile", default=None, help="a profile to plan from (default: calibrate this machine first)")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--full", action="store_true", help="calibrate without --quick (slower, less noisy)")
    args = ap.parse_args()

    work = Path(args.dir).resolve()
    claim(work, "mitoem-projection", ["calibration-spec.yaml", "profile.json", "calibrate.log", "plan-*.json", "run"],
          [Path(args.profile)] if args.profile else [])
    if args.profile:
        profile = Path(args.profile).resolve()
    else:
        spec = calibration_spec(work)
        profile = work / "profile.json"
        t0 = time.perf_counter()
        print(f"calibrating at {spec} ...", flush=True)
        alseg("calibrate", str(spec), "-q", "--out", str(profile), *([] if args.full else ["--quick"]),
              log=work / "calibrate.log")
        print(f"calibrated in {time.perf_counter() - t0:.0f} s -> {profile}")
        log = (work / "calibrate.log").read_text()
        print(log[log.find("profile of"):] if "profile of" in log else log[-2000:])
    common = ["--nodes", str(args.nodes), "--gpus-per-node", str(args.gpus_per_node), "--shape", *SHAPE,
              "--voxel-size", *VOXEL]
    for name, extra in (("profile", ["--profile", str(profile)]), ("builtin", [])):
        t0 = time.perf_counter()
        text = alseg("plan", str(SPEC), *common, *extra)
        seconds = time.perf_counter() - t0
        (work / f"plan-{name}.json").write_text(alseg("plan", str(SPEC), *common, *extra, "--json"))
        title = f"the profile {profile}" if name == "profile" else "the built-in profile (H200 figures, partly guessed)"
        print(f"\n=== {SPEC.relative_to(REPO)} on {args.nodes} node(s) x {args.gpus_per_node} GPUs, from {title} "
              f"(planned in {seconds:.1f} s) ===\n{text}")
    totals = {n: json.loads((work / f"plan-{n}.json").read_text())["total_seconds"] for n in ("profile", "builtin")}
    print(f"total: {totals['profile'] / 3600:.1f} h from this machine's profile, {totals['builtin'] / 3600:.1f} h from the "
          f"built-in one ({totals['profile'] / totals['builtin']:.1f}x)")


if __name__ == "__main__":
    main()
