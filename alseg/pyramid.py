"""Multiscale pyramids of OME-Zarr images and label images, computed block by block.

:func:`build_pyramid` fills levels 1..N from level 0 through the blockwise engine (any runner,
resumable); :func:`downsample` is the per-block kernel (``mean`` for images, ``mode`` or
``nearest`` for labels). The storage layer (:mod:`alseg.io.omezarr`) creates the levels' arrays
and knows nothing of this engine-level step.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from alseg.blockwise import check_aligned, run_blocks
from alseg.errors import DataError
from alseg.geometry import Block, BlockGrid, Box
from alseg.io.omezarr import open_volume
from alseg.runtime import Runner, SerialRunner

Downsampling = Literal["mean", "nearest", "mode"]


def downsample(data: np.ndarray, factors: Sequence[int], *, kind: Downsampling) -> np.ndarray:
    """Downsample by integer ``factors``.

    * ``mean``: block mean (images); integers are rounded back to their dtype;
    * ``nearest``: the first voxel of each block (labels; fast, but thin objects can vanish);
    * ``mode``: the most frequent value of each block, the smallest on ties (labels: objects are
      kept in proportion to their share of each block, and no value is ever invented).

    Edge blocks that are only partly covered use only the voxels that are there.
    """
    f = tuple(int(k) for k in factors)
    if kind == "nearest":
        return np.ascontiguousarray(data[tuple(slice(None, None, k) for k in f)])
    if kind == "mode":
        return _mode_pool(data, f)
    if kind != "mean":
        raise DataError(f"unknown downsampling {kind!r}: expected mean, nearest or mode")
    out_shape = tuple(-(-s // k) for s, k in zip(data.shape, f))
    padded_shape = tuple(o * k for o, k in zip(out_shape, f))
    acc = np.zeros(padded_shape, dtype=np.float64)
    cnt = np.zeros(padded_shape, dtype=np.float64)
    acc[tuple(slice(0, s) for s in data.shape)] = data
    cnt[tuple(slice(0, s) for s in data.shape)] = 1.0
    shape6 = tuple(x for o, k in zip(out_shape, f) for x in (o, k))
    total = acc.reshape(shape6).sum(axis=(1, 3, 5))
    count = cnt.reshape(shape6).sum(axis=(1, 3, 5))
    mean = total / count
    if np.dtype(data.dtype).kind in "ui":
        info = np.iinfo(data.dtype)
        return np.clip(np.rint(mean), info.min, info.max).astype(data.dtype)
    return mean.astype(data.dtype)


def _windows(data: np.ndarray, f: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(values, present)`` of shape ``out_shape + (prod(f),)``: each output voxel's source block."""
    out_shape = tuple(-(-s // k) for s, k in zip(data.shape, f))
    padded = np.zeros(tuple(o * k for o, k in zip(out_shape, f)), dtype=data.dtype)
    present = np.zeros(padded.shape, dtype=bool)
    inner = tuple(slice(0, s) for s in data.shape)
    padded[inner] = data
    present[inner] = True
    shape6 = tuple(x for o, k in zip(out_shape, f) for x in (o, k))
    order = (0, 2, 4, 1, 3, 5)
    flat = (*out_shape, int(np.prod(f)))
    return (padded.reshape(shape6).transpose(order).reshape(flat),
            present.reshape(shape6).transpose(order).reshape(flat))


def _mode_pool(data: np.ndarray, f: tuple[int, ...]) -> np.ndarray:
    values, present = _windows(data, f)
    n = values.shape[-1]
    if n == 1:
        return np.ascontiguousarray(values[..., 0])
    counts = np.zeros(values.shape, dtype=np.int16)
    for i in range(n):
        counts += (values == values[..., i:i + 1]) & present[..., i:i + 1]
    counts[~present] = -1
    best = counts == counts.max(axis=-1, keepdims=True)
    top = np.iinfo(data.dtype).max if data.dtype.kind in "ui" else np.inf
    return np.where(best, values, top).min(axis=-1).astype(data.dtype)


@dataclass(frozen=True)
class _PyramidJob:
    url: str
    level: int
    factors: tuple[int, int, int]
    block: Block  # of the destination level
    kind: str


def _pyramid_block(job: _PyramidJob) -> dict[str, int]:
    src = open_volume(job.url, level=job.level - 1)
    dst = open_volume(job.url, level=job.level, mode="r+")
    out = job.block.write
    src_box = Box(
        tuple(a * f for a, f in zip(out.start, job.factors)),
        tuple(min(b * f, s) for b, f, s in zip(out.stop, job.factors, src.shape)),
    )
    dst.write(out, downsample(src.read(src_box), job.factors, kind=job.kind))  # type: ignore[arg-type]
    return {"voxels": int(out.size)}


def pyramid_block_shape(shape: Sequence[int], chunks: Sequence[int], *, target_voxels: int = 2**24) -> tuple[int, ...]:
    """Whole multiples of ``chunks``, grown (x, then y, then z) up to about ``target_voxels`` per block."""
    block = [min(int(c), int(s)) for c, s in zip(chunks, shape)]
    grown = True
    while grown and int(np.prod(block)) * 2 <= target_voxels:
        grown = False
        for axis in (2, 1, 0):
            if block[axis] < shape[axis] and int(np.prod(block)) * 2 <= target_voxels:
                block[axis] = min(block[axis] * 2, int(shape[axis]))
                grown = True
    return tuple(block)


def build_pyramid(
    url: str | os.PathLike[str],
    *,
    kind: Downsampling,
    runner: Runner | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    block_shape: Sequence[int] | None = None,
    progress: bool = False,
) -> None:
    """Fill levels 1..N of the image or label image at ``url`` from level 0, level after level.

    Each level runs through the blockwise engine (:func:`alseg.blockwise.run_blocks`): blocks of
    whole output chunks (``block_shape``, default: chunks grown to about 16 M voxels), on any
    runner, resumable with ``work_dir`` (records under ``work_dir/pyramid-s<level>``). Memory
    holds one block and its source region, whatever the volume's size.
    """
    if kind not in ("mean", "nearest", "mode"):
        raise DataError(f"unknown downsampling {kind!r}: expected mean, nearest or mode")
    url = os.fspath(url)
    runner = runner or SerialRunner(progress=progress)
    top = open_volume(url)
    for level in range(1, len(top.level_paths)):
        src = open_volume(url, level=level - 1)
        dst = open_volume(url, level=level)
        factors = tuple(max(1, round(a / b)) for a, b in zip(src.shape, dst.shape))
        shape = tuple(block_shape) if block_shape is not None else pyramid_block_shape(dst.shape, dst.chunks)
        grid = BlockGrid(dst.shape, shape)
        check_aligned(grid.block_shape, dst.chunks, dst.shape, what=f"level {level}")
        run_blocks(
            _pyramid_block, grid,
            payload=lambda b, level=level, factors=factors: _PyramidJob(url, level, factors, b, kind),  # type: ignore[misc]
            runner=runner, work_dir=work_dir, name=f"pyramid-s{level}", desc=f"pyramid level {level}",
        )
