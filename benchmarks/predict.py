"""Blockwise nnU-Net prediction vs nnU-Net's own whole-array predictor: throughput and peak memory.

    .venv/bin/python benchmarks/predict.py [--shape 48 256 256] [--block 32 128 128] [--halo 8 32 32] [--batch-tiles 0] [--repeats 3]

Trains a tiny nnU-Net (plan overrides: patch 16 x 64 x 64, 4 stages; weights do not matter for
speed) on a synthetic volume, then, each in its own child process (peak = the child's
``ru_maxrss``, everything it allocated), predicts the same volume with

* nnU-Net's own ``predict_single_npy_array`` on the whole array (holds whole-volume logits), and
* alseg's blockwise predictor (serial backend, one worker, chunk-aligned OME-Zarr output, tiles
  batched per forward pass as ``--batch-tiles`` says, automatic by default; default global
  tiling: nnU-Net's tiles on the whole volume, each computed once, overhangs handed between
  blocks; ``--tiling halo`` for the halo mode, which uses ``--halo``),

and prints voxels per second and peak memory of each (medians of ``--repeats`` runs, the two
alternating), their ratios, the voxel agreement of the two class maps, and alseg's peak memory on a
volume 4x larger (z and y doubled).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time, numpy as np
mode, url, folder, out, block, halo, norm, tiling, batch = sys.argv[1:10]
from alseg.nnunet import IntensityNorm
norm = IntensityNorm(**json.loads(norm))
from alseg.io.omezarr import open_volume
if mode == "nnunet":
    from alseg.nnunet.predict import load_predictor
    pred = load_predictor(folder)
    img = open_volume(url).read()
    t0 = time.perf_counter()
    seg = pred.predict_single_npy_array(norm(img)[None], {"spacing": list(open_volume(url).voxel_size_nm)})
    seconds = time.perf_counter() - t0
    np.save(out, seg.astype(np.uint8))
else:
    from alseg.nnunet.predict import predict_volume
    t0 = time.perf_counter()
    predict_volume(folder, url, out, norm=norm, block_shape=json.loads(block), halo=json.loads(halo), tiling=tiling,
                   work_dir=out + "-work", batch_tiles=int(batch))
    seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds}))
"""


def child(mode, url, folder, out, block, halo, norm, tiling="global", batch=0) -> dict:
    code = (f"import json, resource, subprocess, sys; r = subprocess.run([sys.executable, '-c', {CHILD!r}, "
            f"{mode!r}, {url!r}, {folder!r}, {out!r}, {json.dumps(block)!r}, {json.dumps(halo)!r}, {json.dumps(norm)!r}, {tiling!r}, {str(batch)!r}], "
            f"capture_output=True, text=True); "
            f"assert r.returncode == 0, r.stderr[-3000:]; d = json.loads(r.stdout.strip().splitlines()[-1]); "
            f"d['peak_mib'] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024; print(json.dumps(d))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", nargs=3, type=int, default=(48, 256, 256))
    ap.add_argument("--block", nargs=3, type=int, default=(32, 128, 128))
    ap.add_argument("--halo", nargs=3, type=int, default=(8, 32, 32), help="halo of the halo mode")
    ap.add_argument("--tiling", choices=("global", "halo"), default="global")
    ap.add_argument("--batch-tiles", type=int, default=0, help="alseg's prediction.batch_tiles (0: automatic; 1: one tile per "
                    "forward pass, as nnU-Net's own)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of each; medians are printed")
    args = ap.parse_args()
    import numpy as np

    from alseg.geometry import Box
    from alseg.io.omezarr import open_volume
    from alseg.nnunet import IntensityNorm, NnUNetDirs, export_dataset, plan_and_preprocess, train
    from alseg.spec import TrainingSpec
    from alseg.synth import SynthParams, write_synthetic

    shape, block, halo = tuple(args.shape), list(args.block), list(args.halo)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; volume {shape}, blocks {tuple(block)}, tiling {args.tiling}"
          f"{' halo ' + str(tuple(halo)) if args.tiling == 'halo' else ''}, batch_tiles {args.batch_tiles}; "
          f"tiny plan (patch 16 x 64 x 64, 4 stages, features 8-64), CPU, no mirroring; medians of {args.repeats} alternating runs")
    with tempfile.TemporaryDirectory() as tmp:
        url = os.path.join(tmp, "v.zarr")
        write_synthetic(url, SynthParams.preset("easy", shape=shape, seed=1), chunks=tuple(min(b, s) for b, s in zip(block, shape)))
        dirs = NnUNetDirs(os.path.join(tmp, "nnunet"))
        norm = IntensityNorm.of_volume(url)
        boxes = [Box((0, y, x), (16, y + 64, x + 64)) for y in (0, 64) for x in (0, 64)]
        export_dataset(dirs, 1, "bench", url, url + "/labels/mitochondria", boxes, norm=norm)
        plan_and_preprocess(dirs, 1, overrides={"patch_size_vox": [16, 64, 64], "batch_size": 2, "n_stages": 4, "features_per_stage": [8, 16, 32, 64]})
        folder = train(dirs, 1, "bench", TrainingSpec(epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1, final_validation=False), device="cpu")
        vox = int(np.prod(shape))
        runs: dict[str, list[dict]] = {"nnunet": [], "alseg": []}
        for rep in range(args.repeats):  # alternating, so drift in the machine's speed hits both
            runs["nnunet"].append(child("nnunet", url, folder, os.path.join(tmp, "own.npy"), block, halo, norm.to_json()))
            runs["alseg"].append(child("alseg", url, folder, os.path.join(tmp, f"ours{rep}.zarr"), block, halo, norm.to_json(), args.tiling, args.batch_tiles))
        own, ours = ({k: float(np.median([r[k] for r in rs])) for k in ("seconds", "peak_mib")} for rs in (runs["nnunet"], runs["alseg"]))
        agree = float((np.load(os.path.join(tmp, "own.npy")) == open_volume(os.path.join(tmp, "ours0.zarr")).read()).mean())
        print(f"nnU-Net whole array : {vox / own['seconds']:10.0f} voxels/s  peak {own['peak_mib']:6.0f} MiB")
        print(f"alseg blockwise     : {vox / ours['seconds']:10.0f} voxels/s  peak {ours['peak_mib']:6.0f} MiB")
        print(f"ratios alseg/nnU-Net: throughput {own['seconds'] / ours['seconds']:.2f}x (issue 18's target on CPU >= 1.3), "
              f"peak memory {ours['peak_mib'] / own['peak_mib']:.2f}x; class maps agree on {agree:.4%} of voxels")
        big = (shape[0] * 2, shape[1] * 2, shape[2])
        url4 = os.path.join(tmp, "v4.zarr")
        write_synthetic(url4, SynthParams.preset("easy", shape=big, seed=1), chunks=tuple(min(b, s) for b, s in zip(block, big)))
        big_runs = [child("alseg", url4, folder, os.path.join(tmp, f"big{rep}.zarr"), block, halo, norm.to_json(), args.tiling, args.batch_tiles)
                    for rep in range(args.repeats)]
        ours4 = {k: float(np.median([r[k] for r in big_runs])) for k in ("seconds", "peak_mib")}
        print(f"alseg on {big} (4x voxels): {4 * vox / ours4['seconds']:10.0f} voxels/s  peak {ours4['peak_mib']:6.0f} MiB  "
              f"growth {ours4['peak_mib'] / ours['peak_mib'] - 1:+.1%} (target < +10%)")


if __name__ == "__main__":
    main()
