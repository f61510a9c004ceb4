"""Counting work without touching a voxel: patch pools, block grids, nnU-Net tiles, schedules.

Pure arithmetic on shapes (numpy only), per axis where the geometry is separable, so a
1000 x 4096 x 4096 volume is counted in milliseconds. Each function states the alseg code whose
behaviour it counts (:class:`~alseg.geometry.PatchGrid`, :class:`~alseg.geometry.BlockGrid`,
:func:`~alseg.nnunet.predict.predict_volume`); the tests compare them with those.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from alseg.geometry import Box

Shape3 = tuple[int, int, int]
LPT_LIMIT = 20_000
"""Above this many work items a schedule is the bound max(total / workers, longest item), which is
what list scheduling approaches when items far outnumber workers."""


def ceil_div(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def axis_blocks(length: int, block: int) -> np.ndarray:
    """Lengths of the write blocks of :class:`~alseg.geometry.BlockGrid` along one axis (the last
    one cut by the volume)."""
    n = ceil_div(length, block)
    out = np.full(n, int(block), dtype=np.int64)
    out[-1] = length - (n - 1) * block
    return out


def axis_reads(length: int, block: int, halo: int) -> np.ndarray:
    """Lengths of the read regions along one axis: each write block grown by ``halo`` on both
    sides, clipped at the volume (what :class:`~alseg.geometry.Block` ``read`` holds)."""
    n = ceil_div(length, block)
    start = np.arange(n, dtype=np.int64) * block
    stop = np.minimum(start + block, length)
    return np.minimum(stop + halo, length) - np.maximum(start - halo, 0)


def outer(*axes: np.ndarray) -> np.ndarray:
    """The grid of products of per-axis values (e.g. voxels of every block)."""
    out = np.asarray(axes[0], dtype=np.float64)
    for a in axes[1:]:
        out = np.multiply.outer(out, np.asarray(a, dtype=np.float64))
    return out


def grid_shape(shape: Sequence[int], block: Sequence[int]) -> Shape3:
    return tuple(ceil_div(s, b) for s, b in zip(shape, block))  # type: ignore[return-value]


def _overlapping(length: int, patch: int, count: int, lo: int, hi: int) -> np.ndarray:
    """Which of ``count`` patches along an axis (their part inside the volume) meet ``[lo, hi)``."""
    start = np.arange(count, dtype=np.int64) * patch
    stop = np.minimum(start + patch, length)
    return (start < hi) & (stop > lo)


def pool_patches(shape: Sequence[int], patch: Sequence[int], holdout: Box | None, edge: str) -> int:
    """Size of the candidate pool of :class:`~alseg.geometry.PatchGrid`: the patch grid (partial edge
    patches kept with ``pad``, dropped with ``drop``) less the patches whose valid box meets the
    held-out box (a box meets another when it meets it along every axis)."""
    counts = [ceil_div(s, p) if edge == "pad" else s // p for s, p in zip(shape, patch)]
    total = math.prod(counts)
    if holdout is None or total == 0:
        return total
    hit = math.prod(int(_overlapping(s, p, n, a, b).sum())
                    for s, p, n, a, b in zip(shape, patch, counts, holdout.start, holdout.stop))
    return total - hit


def pool_sum(shape: Sequence[int], patch: Sequence[int], holdout: Box | None, edge: str, axis: int) -> int:
    """Sum over the pool's patches of their valid length along ``axis`` (e.g. z sections)."""
    counts = [ceil_div(s, p) if edge == "pad" else s // p for s, p in zip(shape, patch)]
    lengths = [np.minimum(np.arange(n) * p + p, s) - np.arange(n) * p for s, p, n in zip(shape, patch, counts)]
    weights = [np.ones(n) if a != axis else lengths[a] for a, n in enumerate(counts)]
    total = float(outer(*weights).sum()) if all(counts) else 0.0
    if holdout is not None and all(counts):
        hit = [_overlapping(s, p, n, a, b) for s, p, n, a, b in zip(shape, patch, counts, holdout.start, holdout.stop)]
        total -= float(outer(*[w * h for w, h in zip(weights, hit)]).sum())
    return int(round(total))


def blocks_meeting(shape: Sequence[int], block: Sequence[int], region: Box) -> np.ndarray:
    """Boolean grid: the write blocks that meet ``region`` (``predict_volume(region=...)``)."""
    masks = []
    for s, b, lo, hi in zip(shape, block, region.start, region.stop):
        n = ceil_div(s, b)
        masks.append(_overlapping(s, b, n, lo, hi).astype(np.float64))
    return outer(*masks) > 0


def sliding_steps(size: int, tile: int, step: float = 0.5) -> list[int]:
    """Tile starts along one axis as nnU-Net places them (``compute_steps_for_sliding_window``):
    the fewest steps of at most ``step`` x ``tile`` that cover ``size``, spread evenly; one tile
    (padded) where the axis is not longer than the tile. A tile one voxel deep (a 2d model on a
    3D block) is placed on every section."""
    if tile == 1:
        return list(range(size))
    if size <= tile:
        return [0]
    n = math.ceil((size - tile) / (tile * step)) + 1
    actual = (size - tile) / (n - 1)
    return [int(round(actual * i)) for i in range(n)]


def global_tiles(shape: Sequence[int], block: Sequence[int], patch: Sequence[int], step: float = 0.5) -> np.ndarray:
    """Tiles each block computes under global tiling: nnU-Net's tiles on the whole volume, each
    computed by the block holding its start (:func:`~alseg.nnunet.predict.predict_volume`)."""
    per_axis = []
    for s, b, p in zip(shape, block, patch):
        starts = np.asarray(sliding_steps(s, p, step), dtype=np.int64)
        per_axis.append(np.bincount(starts // b, minlength=ceil_div(s, b)).astype(np.float64))
    return outer(*per_axis)


def halo_tiles(shape: Sequence[int], block: Sequence[int], halo: Sequence[int], patch: Sequence[int], step: float = 0.5) -> np.ndarray:
    """Tiles each block computes under halo tiling: its own sliding window over its read region."""
    return outer(*[np.asarray([len(sliding_steps(int(r), p, step)) for r in axis_reads(s, b, h)], dtype=np.float64)
                   for s, b, h, p in zip(shape, block, halo, patch)])


def volume_tiles(shape: Sequence[int], patch: Sequence[int], step: float = 0.5) -> int:
    """Tiles of nnU-Net's own sliding window over an array of ``shape``."""
    return math.prod(len(sliding_steps(s, p, step)) for s, p in zip(shape, patch))


def mirror_passes(patch: Sequence[int], mirroring: bool) -> int:
    """Network passes per tile: one, or with test-time mirroring one per subset of the mirrored axes
    (nnU-Net's ``_internal_maybe_mirror_and_predict``: the plain pass plus every non-empty
    combination of flips), 2^3 = 8 for a 3D patch and 2^2 = 4 for a 2d model, which mirrors its
    sections' (y, x) (``patch`` one voxel deep on z, as alseg predicts 2d models)."""
    if not mirroring:
        return 1
    axes = 3 if len(patch) == 3 and int(patch[0]) > 1 else 2
    return 2**axes


def makespan(durations: np.ndarray, workers: int) -> float:
    """Wall time of independent items on ``workers`` identical workers: longest-first list
    scheduling (each item to the least loaded worker), or its bound for very many items."""
    d = np.asarray(durations, dtype=np.float64).ravel()
    d = d[d > 0]
    if not len(d):
        return 0.0
    workers = max(1, int(workers))
    if workers == 1:
        return float(d.sum())
    if len(d) <= workers:
        return float(d.max())
    if len(d) > LPT_LIMIT:
        return float(max(d.sum() / workers, d.max()))
    loads = [0.0] * workers
    for x in np.sort(d)[::-1]:
        heapq.heapreplace(loads, loads[0] + float(x))
    return float(max(loads))


@dataclass(frozen=True)
class Phases:
    """Global tiling's two phases (``predict_volume``): every block's tiles on the model workers
    (started once, ``per_phase_s``: start and model load), then every block's seam, each phase's
    blocks independent; ``seconds`` with ``workers``, ``limit_s`` with unlimited workers (each
    phase its longest block), ``efficiency``: the tiles phase's ideal time (total / workers) over
    its schedule."""

    count: int
    seconds: float
    limit_s: float
    efficiency: float


def two_phases(tiles_s: np.ndarray, seams_s: np.ndarray, workers: int, seam_workers: int, per_phase_s: float = 0.0) -> Phases:
    """Schedule global tiling's phases: block durations of the tiles phase on ``workers``, of the
    seam phase on ``seam_workers``."""
    t = np.asarray(tiles_s, dtype=np.float64).ravel()
    m = np.asarray(seams_s, dtype=np.float64).ravel()
    first = makespan(t, workers)
    seconds = per_phase_s + first + makespan(m, seam_workers)
    limit = per_phase_s + float(t.max()) + float(m.max())
    return Phases(2, seconds, limit, float(t.sum() / workers / first) if first > 0 else 1.0)


def seam_voxels(shape: Sequence[int], block: Sequence[int], patch: Sequence[int], step: float = 0.5) -> np.ndarray:
    """Voxels of every block's seam (``predict_volume``'s second phase): the slabs along its lower
    faces that the lower neighbours' tiles reach (nnU-Net's tile placement, as
    :func:`alseg.nnunet.predict.seam_depths` finds it)."""
    depths = []
    for length, b, p in zip(shape, block, patch):
        steps = np.asarray(sliding_steps(length, p, step), dtype=np.int64)
        starts = np.arange(ceil_div(length, b), dtype=np.int64) * b
        widths = axis_blocks(length, b)
        d = np.zeros(len(starts), dtype=np.int64)
        for i in range(1, len(starts)):
            before = steps[steps < starts[i]]
            d[i] = min(int(widths[i]), max(0, int((before + p).max()) - int(starts[i]))) if len(before) else 0
        depths.append((d, widths))
    (dz, wz), (dy, wy), (dx, wx) = depths
    whole = outer(wz, wy, wx)
    rest = outer(wz - dz, wy - dy, wx - dx)
    return whole - rest
