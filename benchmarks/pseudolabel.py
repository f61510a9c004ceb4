"""Pseudo-labels on the real VNC stack: quality against its ground truth, throughput, Ray scaling.

    .venv/bin/python benchmarks/pseudolabel.py [--vnc ../shared/data/vnc] [--method classical]

Ingests the VNC ssTEM stack (20 x 1024 x 1024, 50 x 4.6 x 4.6 nm) to OME-Zarr, pseudo-labels it
with the default (classical) backend through the blockwise engine, and prints:

* quality against the VNC mitochondria (labels == 191, 3D connected components): foreground IoU
  and instance F1 / precision / recall / PQ at IoU 0.5 and 0.75, with the project's metrics;
* throughput in slices (1024 x 1024) per second per worker: serial, then Ray with 1 and 2
  workers (actors; Ray start-up excluded), and the speed-up from 1 to 2 workers, measured in the
  same run. Outputs of every run are checked identical.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vnc", default=str(REPO.parent / "shared" / "data" / "vnc"))
    ap.add_argument("--block", nargs=3, type=int, default=(4, 512, 512))
    ap.add_argument("--halo", type=int, default=64)
    args = ap.parse_args()

    from alseg.evaluate.metrics import evaluate_volumes
    from alseg.ingest import ingest_vnc
    from alseg.io.omezarr import open_volume
    from alseg.pseudolabel import pseudolabel_volume
    from alseg.runtime.ray_backend import RayRunner
    from alseg.spec import ClassicalPseudoLabel

    spec = ClassicalPseudoLabel()
    block = tuple(args.block)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; blocks {block}, halo {args.halo} px; backend classical (defaults)")
    with tempfile.TemporaryDirectory() as tmp:
        url = os.path.join(tmp, "vnc.zarr")
        ingest_vnc(args.vnc, url, chunks=(4, 256, 256))
        shape = open_volume(url).shape
        runs = {}

        def run(name, runner=None, workers=1):
            out = os.path.join(tmp, f"{name}.zarr")
            t0 = time.perf_counter()
            res = pseudolabel_volume(url, out, spec, work_dir=os.path.join(tmp, f"work-{name}"), block_shape=block,
                                     halo_yx=args.halo, runner=runner, workers=workers)
            wall = time.perf_counter() - t0
            runs[name] = (wall, res, out)
            seg = res["seconds"]["segment"]
            print(f"{name:>14}: {wall:6.1f} s in all; segmentation pass {seg:6.1f} s: {shape[0] / seg / workers:5.2f} slices/s per worker "
                  f"({res['objects']} objects; passes {res['seconds']})")

        run("serial")
        runner = RayRunner(num_cpus=2, progress=False)
        try:
            run("ray-1-worker", runner, 1)
            run("ray-2-workers", runner, 2)
        finally:
            runner.close()
        ref = open_volume(runs["serial"][2]).read()
        for name in ("ray-1-worker", "ray-2-workers"):
            assert np.array_equal(open_volume(runs[name][2]).read(), ref), f"{name} differs from serial"
        seg = {k: v[1]["seconds"]["segment"] for k, v in runs.items()}
        print(f"speed-up 1 -> 2 Ray workers: segmentation pass {seg['ray-1-worker'] / seg['ray-2-workers']:.2f}x, "
              f"whole job {runs['ray-1-worker'][0] / runs['ray-2-workers'][0]:.2f}x (2 cores)")
        scores = evaluate_volumes(os.path.join(url, "labels", "mitochondria"), runs["serial"][2], thresholds=(0.5, 0.75))
        print(f"quality vs VNC ground truth ({scores['objects_gt']} objects; predicted {scores['objects_pred']}): "
              f"foreground IoU {scores['foreground_iou']:.3f}")
        for t, s in scores["at"].items():
            print(f"  IoU {t}: F1 {s['f1']:.3f}  precision {s['precision']:.3f}  recall {s['recall']:.3f}  "
                  f"PQ {s['panoptic_quality']:.3f}  (TP {s['tp']}, FP {s['fp']}, FN {s['fn']})")


if __name__ == "__main__":
    main()
