"""Blockwise instance stitching vs whole-volume ``scipy.ndimage.label``: wall time and peak memory.

    .venv/bin/python benchmarks/stitch.py [--shape 128 1024 1024] [--block 32 256 256] [--scale4]

Both approaches read the same OME-Zarr foreground mask and write OME-Zarr labels, each in its own
child process, so peak RSS (``ru_maxrss`` of the child, which includes everything it allocated)
is measured the same way for both. Prints wall time and peak memory of each and their ratios.
With ``--scale4`` it also runs alseg on a volume 4x larger (z doubled, y doubled) and prints
how much its peak memory grew.
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
else:
    from alseg.postprocess.stitch import label_components
    out = create_labels(mask_url, "alseg", dtype="uint32", chunks=block)
    n = label_components(mask_url, out.url, block_shape=block, work_dir=work, connectivity=26)["objects"]
print(json.dumps({"seconds": time.perf_counter() - t0, "objects": int(n)}))
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


def measure(shape, block, tmp: str, modes=("scipy", "alseg")) -> dict:
    url = os.path.join(tmp, f"mask-{'x'.join(map(str, shape))}.zarr")
    make_mask(url, shape, block)
    results = {}
    for mode in modes:
        # each measurement in its own grandchild so ru_maxrss is that run's peak alone
        code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import stitch as b; "
                f"print(json.dumps(b.run_child({mode!r}, {url!r}, '', {tuple(block)!r}, {os.path.join(tmp, 'work-' + mode + str(shape[0]))!r})))")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        results[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", nargs=3, type=int, default=(128, 1024, 1024))
    ap.add_argument("--block", nargs=3, type=int, default=(32, 256, 256))
    ap.add_argument("--scale4", action="store_true", help="also run alseg on a 4x larger volume")
    args = ap.parse_args()
    shape, block = tuple(args.shape), tuple(args.block)
    n_blocks = int(np.prod([-(-s // b) for s, b in zip(shape, block)]))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; volume {shape}, blocks {block} ({n_blocks} blocks), serial backend")
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(shape, block, tmp)
        s, a = r["scipy"], r["alseg"]
        assert s["objects"] == a["objects"], (s, a)
        print(f"scipy whole volume: {s['wall']:7.1f} s  peak {s['peak_mib']:7.0f} MiB  ({s['objects']} objects)")
        print(f"alseg blockwise   : {a['wall']:7.1f} s  peak {a['peak_mib']:7.0f} MiB  ({a['objects']} objects)")
        print(f"ratios alseg/scipy: time {a['wall'] / s['wall']:.2f}x (target <= 1.5), peak memory {a['peak_mib'] / s['peak_mib']:.2f}x (target <= 0.25)")
        if args.scale4:
            big = (shape[0] * 2, shape[1] * 2, shape[2])
            r4 = measure(big, block, tmp, modes=("alseg",))["alseg"]
            print(f"alseg on {big} (4x voxels): {r4['wall']:7.1f} s  peak {r4['peak_mib']:7.0f} MiB  "
                  f"growth {r4['peak_mib'] / a['peak_mib'] - 1:+.1%} (target < +10%)")


if __name__ == "__main__":
    main()
