"""Blockwise instance stitching vs whole-volume labelling: wall time and peak memory.

    .venv/bin/python benchmarks/stitch.py [--shape 128 1024 1024] [--block 32 256 256] [--repeats 3] [--scale4] [--ray]

Four ways to label the same OME-Zarr foreground mask (26-connectivity) and write OME-Zarr labels:
whole-volume ``scipy.ndimage.label``, whole-volume connected-components-3d (``cc3d``, what a user
would pick for speed when the volume fits in memory), and alseg's blockwise stitching with each
block labelled by cc3d (the default) or by scipy. Each run is its own child process, so peak RSS
(``ru_maxrss`` of the child, which includes everything it allocated) is measured the same way for
all; each is run ``--repeats`` times in turn and the medians are printed with their ratios.
With ``--scale4`` it also runs alseg on a volume 4x larger (z doubled, y doubled) and prints
how much its peak memory grew. With ``--ray`` it also runs alseg on a local Ray cluster of 1 and of
2 CPUs (timed after a first warm-up run in the same cluster, so worker start-up is not counted;
Ray's workers are not the child's children, so no peak memory) and prints the speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

CHILD = r"""
import json, sys, time, numpy as np
mode, mask_url, out_url, block, work = sys.argv[1:6]
block = tuple(json.loads(block))
from alseg.io.omezarr import create_labels, open_volume
t0 = time.perf_counter()
if mode == "scipy":
    from scipy import ndimage
    mask = open_volume(mask_url).read() > 0
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    out = create_labels(mask_url, "scipy", dtype="uint32", chunks=block)
    out.write(out.bounds, labels.astype(np.uint32))
elif mode == "cc3d":
    import cc3d
    mask = open_volume(mask_url).read() > 0
    labels, n = cc3d.connected_components(mask, connectivity=26, out_dtype=np.uint32, binary_image=True, return_N=True)
    out = create_labels(mask_url, "cc3d", dtype="uint32", chunks=block)
    out.write(out.bounds, labels)
elif mode.startswith("ray"):
    from alseg.postprocess.stitch import label_components
    from alseg.runtime import make_runner
    runner = make_runner("ray", num_cpus=int(mode[3:]), progress=False)
    warm = create_labels(mask_url, mode + "-warm", dtype="uint32", chunks=block)
    label_components(mask_url, warm.url, block_shape=block, work_dir=work + "-warm", connectivity=26, runner=runner)
    t0 = time.perf_counter()
    out = create_labels(mask_url, mode, dtype="uint32", chunks=block)
    n = label_components(mask_url, out.url, block_shape=block, work_dir=work, connectivity=26, runner=runner)["objects"]
    seconds = time.perf_counter() - t0  # the timed run alone, not the cluster's shutdown
    runner.close()
else:
    from alseg.postprocess.stitch import label_components
    labeller = {"alseg": "cc3d", "alseg-scipy": "scipy"}[mode]
    out = create_labels(mask_url, mode, dtype="uint32", chunks=block)
    n = label_components(mask_url, out.url, block_shape=block, work_dir=work, connectivity=26, labeller=labeller)["objects"]
if not mode.startswith("ray"):
    seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "objects": int(n)}))
"""


def make_mask(url: str, shape: tuple[int, int, int], block: tuple[int, int, int]) -> None:
    """Elongated blobs (smoothed noise, thresholded), written slab by slab."""
    from scipy import ndimage

    from alseg.geometry import Box
    from alseg.io.omezarr import create_image

    vol = create_image(url, shape=shape, dtype="uint8", chunks=block, voxel_size_nm=(30, 8, 8), levels=1)
    rng = np.random.default_rng(0)
    for z in range(0, shape[0], block[0]):
        z1 = min(z + block[0], shape[0])
        noise = rng.random((z1 - z, shape[1] // 4, shape[2] // 4)).astype(np.float32)
        small = ndimage.gaussian_filter(noise, (1, 2, 2), mode="wrap") > 0.56
        slab = np.repeat(np.repeat(small, 4, axis=1), 4, axis=2)
        vol.write(Box((z, 0, 0), (z1, shape[1], shape[2])), slab.astype(np.uint8))


def run_child(mode: str, mask_url: str, out_url: str, block, work: str) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CHILD, mode, mask_url, out_url, json.dumps(list(block)), work],
                         capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kib <= before:
        raise RuntimeError("ru_maxrss of children did not grow: run each measurement in a fresh parent")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out.update(wall=wall, peak_mib=peak_kib / 1024)
    return out


MODES = ("scipy", "cc3d", "alseg-scipy", "alseg")
LABELS = {"scipy": "scipy whole volume", "cc3d": "cc3d whole volume", "alseg-scipy": "alseg, scipy per block",
          "alseg": "alseg, cc3d per block"}


def measure(shape, block, tmp: str, modes=MODES, repeats: int = 1) -> dict:
    """Median wall time and peak memory of each mode over ``repeats`` rounds (modes interleaved)."""
    import shutil

    url = os.path.join(tmp, f"mask-{'x'.join(map(str, shape))}.zarr")
    make_mask(url, shape, block)
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(repeats):
        for mode in modes:
            work = os.path.join(tmp, f"work-{mode}{shape[0]}")
            for old in (work, work + "-warm"):  # the benchmark's own scratch: a fresh run each time
                shutil.rmtree(old, ignore_errors=True)
            # each measurement in its own grandchild so ru_maxrss is that run's peak alone
            code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import stitch as b; "
                    f"print(json.dumps(b.run_child({mode!r}, {url!r}, '', {tuple(block)!r}, {work!r})))")
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(res.stdout.strip().splitlines()[-1]))
    results = {}
    for mode, rs in runs.items():
        assert len({r["objects"] for r in rs}) == 1, rs
        results[mode] = {"objects": rs[0]["objects"], "wall": float(np.median([r["wall"] for r in rs])),
                         "work": float(np.median([r["seconds"] for r in rs])),
                         "peak_mib": float(np.median([r["peak_mib"] for r in rs])), "runs": len(rs)}
    return results


def labelling_alone(url: str, block, repeats: int) -> dict[str, float]:
    """Seconds to label every block of the mask (already in memory) with each labeller, medians."""
    from alseg.geometry import BlockGrid
    from alseg.io.omezarr import open_volume
    from alseg.postprocess.components import label_foreground

    mask = open_volume(url).read() > 0
    blocks = [np.ascontiguousarray(mask[b.write.slices]) for b in BlockGrid(mask.shape, block, 0)]
    times: dict[str, list[float]] = {"scipy": [], "cc3d": []}
    for _ in range(repeats):
        for labeller in times:
            t0 = time.perf_counter()
            for fg in blocks:
                label_foreground(fg, 26, labeller)
            times[labeller].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", nargs=3, type=int, default=(128, 1024, 1024))
    ap.add_argument("--block", nargs=3, type=int, default=(32, 256, 256))
    ap.add_argument("--repeats", type=int, default=3, help="rounds of every mode; medians are printed")
    ap.add_argument("--scale4", action="store_true", help="also run alseg on a 4x larger volume")
    ap.add_argument("--ray", action="store_true", help="also run alseg on a local Ray cluster of 1 and of 2 CPUs")
    args = ap.parse_args()
    shape, block = tuple(args.shape), tuple(args.block)
    n_blocks = int(np.prod([-(-s // b) for s, b in zip(shape, block)]))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; volume {shape}, blocks {block} ({n_blocks} blocks), "
          f"serial backend; medians of {args.repeats} runs")
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(shape, block, tmp, repeats=args.repeats)
        assert len({v["objects"] for v in r.values()}) == 1, r
        for mode in MODES:
            v = r[mode]
            print(f"{LABELS[mode]:24s}: {v['wall']:7.2f} s wall ({v['work']:6.2f} s after imports)  peak {v['peak_mib']:7.0f} MiB  "
                  f"({v['objects']} objects)")
        a, s, c, p = r["alseg"], r["scipy"], r["cc3d"], r["alseg-scipy"]
        print(f"ratios alseg/scipy whole: time {a['wall'] / s['wall']:.2f}x (issue 18's target <= 0.8), "
              f"peak memory {a['peak_mib'] / s['peak_mib']:.2f}x (target <= 0.25)")
        print(f"ratios alseg/cc3d whole : time {a['wall'] / c['wall']:.2f}x, peak memory {a['peak_mib'] / c['peak_mib']:.2f}x")
        print(f"ratios after imports    : alseg/scipy whole {a['work'] / s['work']:.2f}x, alseg/cc3d whole {a['work'] / c['work']:.2f}x")
        print(f"per-block labeller      : cc3d/scipy time {a['wall'] / p['wall']:.2f}x wall, {a['work'] / p['work']:.2f}x after imports")
        lab = labelling_alone(os.path.join(tmp, f"mask-{'x'.join(map(str, shape))}.zarr"), block, args.repeats)
        print(f"labelling alone         : {n_blocks} blocks in memory, scipy {lab['scipy']:.3f} s, cc3d {lab['cc3d']:.3f} s, "
              f"cc3d {lab['scipy'] / lab['cc3d']:.1f}x faster")
        if args.ray:
            rr = measure(shape, block, tmp, modes=("ray1", "ray2"), repeats=args.repeats)
            one, two = rr["ray1"]["work"], rr["ray2"]["work"]
            assert rr["ray1"]["objects"] == rr["ray2"]["objects"] == a["objects"], rr
            print(f"alseg on Ray, 1 CPU     : {one:7.2f} s after warm-up;  2 CPUs: {two:7.2f} s;  speed-up {one / two:.2f}x (target >= 1.6)")
        if args.scale4:
            big = (shape[0] * 2, shape[1] * 2, shape[2])
            r4 = measure(big, block, tmp, modes=("alseg",), repeats=args.repeats)["alseg"]
            print(f"alseg on {big} (4x voxels): {r4['wall']:7.1f} s  peak {r4['peak_mib']:7.0f} MiB  "
                  f"growth {r4['peak_mib'] / a['peak_mib'] - 1:+.1%} (target < +10%)")


if __name__ == "__main__":
    main()
