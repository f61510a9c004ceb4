"""Synthetic-volume throughput (serial vs Ray) and per-block memory (small vs MitoEM-sized volume).

    .venv/bin/python benchmarks/synth.py [--shape 64 512 512] [--chunks 32 256 256] [--workers 2]

Prints voxels per second of the serial backend and of a local Ray cluster with ``--workers``
CPUs writing the same OME-Zarr volume (Ray start-up excluded), their ratio, and the peak traced
memory of rendering one block of a small volume and of a 1000 x 4096 x 4096 volume (the ratio
shows that memory follows the block, not the volume).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import tracemalloc

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from alseg.geometry import Box  # noqa: E402
from alseg.runtime import SerialRunner  # noqa: E402
from alseg.synth import SynthParams, SyntheticVolume, write_synthetic  # noqa: E402


def block_peak(shape: tuple[int, int, int], box: Box) -> float:
    vol = SyntheticVolume(SynthParams(shape=shape, seed=0))
    tracemalloc.start()
    vol.block(box)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", nargs=3, type=int, default=(64, 512, 512))
    ap.add_argument("--chunks", nargs=3, type=int, default=(32, 256, 256))
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    params = SynthParams(shape=tuple(args.shape), seed=0)
    voxels = params.shape[0] * params.shape[1] * params.shape[2]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_synthetic(os.path.join(tmp, "serial.zarr"), params, chunks=tuple(args.chunks), runner=SerialRunner(progress=False))
        serial_s = time.perf_counter() - t0

        from alseg.runtime.ray_backend import RayRunner

        with RayRunner(num_cpus=args.workers, progress=False) as ray_runner:
            t0 = time.perf_counter()
            write_synthetic(os.path.join(tmp, "ray.zarr"), params, chunks=tuple(args.chunks), runner=ray_runner)
            ray_s = time.perf_counter() - t0
    print(f"volume {params.shape}, chunks {tuple(args.chunks)}: {voxels / 1e6:.1f} M voxels")
    print(f"serial           : {serial_s:7.2f} s  {voxels / serial_s / 1e6:6.2f} M voxels/s")
    print(f"ray ({args.workers} workers)  : {ray_s:7.2f} s  {voxels / ray_s / 1e6:6.2f} M voxels/s")
    print(f"speed-up ray/serial: {serial_s / ray_s:.2f}x")

    box = Box((0, 0, 0), tuple(args.chunks))
    small = block_peak(tuple(args.shape), box)
    huge = block_peak((1000, 4096, 4096), box.translate((480, 2048, 2048)))
    print(f"peak memory of one {tuple(args.chunks)} block: {small:.0f} MiB in a {tuple(args.shape)} volume, "
          f"{huge:.0f} MiB in a (1000, 4096, 4096) volume (ratio {huge / small:.2f})")


if __name__ == "__main__":
    main()
