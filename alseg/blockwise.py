"""The blockwise volume engine: process a volume block by block with halos, on any runner, resumably.

Every volume-wide step of alseg (pseudo-labels, prediction, post-processing, evaluation) runs
through :func:`run_blocks` or :func:`map_volume`:

* the volume is tiled into *write* blocks (:class:`~alseg.geometry.BlockGrid`); each block reads
  its write region grown by the halo (clipped at the volume edge and padded there, so every block
  sees the same context) and writes only its write region;
* write blocks must be whole multiples of the output's chunks, so no two workers ever write the
  same chunk (checked up front);
* each finished block leaves a completion record under ``work_dir`` (written after its output is
  durable); a rerun skips recorded blocks. A block that keeps failing fails the job with its key;
* a progress bar counts blocks and voxels per second, with an ETA.

Process functions are plain module-level functions of numpy arrays, so they run unchanged in
tests, on the serial runner and in Ray workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alseg.errors import SpecError
from alseg.geometry import Block, BlockGrid
from alseg.runtime import CompletionMarkers, Resources, Runner, SerialRunner, WorkItem

ArrayFn = Callable[..., np.ndarray]


def check_aligned(block_shape: Sequence[int], chunks: Sequence[int], shape: Sequence[int], what: str = "output") -> None:
    """Raise unless every write block covers whole chunks of the output (edge blocks may be cut by the volume)."""
    bad = [(b, c) for b, c, s in zip(block_shape, chunks, shape) if b % c and b < s]
    if bad:
        raise SpecError(
            f"write blocks {tuple(block_shape)} are not whole multiples of the {what}'s chunks {tuple(chunks)}: "
            "two workers would write one chunk; choose block shapes that are multiples of the chunks"
        )


def run_blocks(
    fn: Callable[[Any], Any] | None,
    grid: BlockGrid,
    *,
    payload: Callable[[Block], Any],
    runner: Runner | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    name: str = "blocks",
    desc: str | None = None,
    worker: tuple[type, tuple[Any, ...]] | None = None,
    workers: int = 1,
    resources: Resources | None = None,
    select: Callable[[Block], bool] | None = None,
) -> dict[str, Any]:
    """Run ``fn(payload(block))`` for every block of ``grid`` (or those ``select`` keeps); ``{block key: result}``.

    With ``work_dir``, completion records go to ``work_dir/name`` and a rerun skips finished
    blocks (``fn`` must make its output durable before it returns, and return JSON-serialisable
    results). With ``worker=(cls, init_args)`` instead of ``fn``, ``workers`` stateful workers
    (a model loaded once each, e.g. one per GPU) process the blocks: ``cls(*init_args)(payload)``.
    """
    runner = runner or SerialRunner(progress=False)
    markers = CompletionMarkers(_join(work_dir, name)) if work_dir is not None else None
    blocks = [b for b in grid if select is None or select(b)]
    items = [WorkItem(b.key, payload(b)) for b in blocks]
    sizes = {b.key: b.write.size for b in blocks}
    if worker is not None:
        cls, args = worker
        return runner.map_workers(cls, args, items, workers=workers, resources=resources, markers=markers,
                                  desc=desc or name, weight=lambda item: sizes[item.key], unit="vox")
    return runner.map(fn, items, resources=resources, markers=markers, desc=desc or name,
                      weight=lambda item: sizes[item.key], unit="vox")


def _join(root: str | os.PathLike[str], name: str) -> str:
    from alseg.io import store as st

    return st.join(os.fspath(root), name)


@dataclass(frozen=True)
class ArrayJob:
    """What a worker needs to process one block of :func:`map_volume` (picklable, small)."""

    inputs: tuple[str, ...]
    output: str
    block: Block
    fn: ArrayFn
    pad_mode: str
    kwargs: tuple[tuple[str, Any], ...]


def read_padded(url: str, block: Block, pad_mode: str = "edge") -> np.ndarray:
    """The block's read region of the volume at ``url``, padded where the halo leaves the volume,
    so it always has the shape ``write + 2 x halo``; crop results with ``block.write_in_padded``."""
    from alseg.io.omezarr import open_volume

    data = open_volume(url).read(block.read)
    pads = list(zip(block.pad_before, block.pad_after))
    if any(a or b for a, b in pads):
        data = np.pad(data, pads, mode=pad_mode)  # type: ignore[call-overload]
    return data


def _process_array_block(job: ArrayJob) -> dict[str, Any]:
    from alseg.io.omezarr import open_volume

    arrays = [read_padded(url, job.block, job.pad_mode) for url in job.inputs]
    out = np.asarray(job.fn(*arrays, **dict(job.kwargs)))
    write_shape = job.block.write.shape
    if out.shape != write_shape:
        # the function returned the padded read region: crop the write region out of it
        inner = job.block.write_in_padded.slices
        expected = tuple(r + a + b for r, a, b in zip(job.block.read.shape, job.block.pad_before, job.block.pad_after))
        if out.shape != expected:
            raise ValueError(f"block {job.block.key}: function returned shape {out.shape}, expected {write_shape} or {expected}")
        out = out[inner]
    target = open_volume(job.output, mode="r+")
    target.write(job.block.write, out.astype(target.dtype, copy=False))
    return {"voxels": int(out.size)}


def map_volume(
    fn: ArrayFn,
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    block_shape: Sequence[int],
    halo: Sequence[int] | int = 0,
    pad_mode: str = "reflect",
    runner: Runner | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    name: str = "map",
    fn_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Apply ``fn(*input_blocks, **fn_kwargs)`` over the volume, block by block, into ``output``.

    Each input block is the block's read region (write + halo), padded with ``pad_mode`` where
    the halo leaves the volume, so ``fn`` always sees ``block + 2 * halo`` voxels; ``fn`` returns
    either that shape (the write region is cropped out) or the write region's shape. ``output``
    is an existing OME-Zarr level whose chunks divide ``block_shape``.
    """
    from alseg.io.omezarr import open_volume

    in_urls = tuple(os.fspath(u) for u in inputs)
    if not in_urls:
        raise SpecError("map_volume needs at least one input volume")
    vols = [open_volume(u) for u in in_urls]
    shape = vols[0].shape
    for u, v in zip(in_urls, vols):
        if v.shape != shape:
            raise SpecError(f"input {u} has shape {v.shape}, the first input {shape}")
    out = open_volume(output)
    if out.shape != shape:
        raise SpecError(f"output shape {out.shape} differs from the input shape {shape}")
    grid = BlockGrid(shape, block_shape, halo)
    check_aligned(grid.block_shape, out.chunks, shape)
    kwargs = tuple(sorted((fn_kwargs or {}).items()))
    return run_blocks(
        _process_array_block,
        grid,
        payload=lambda b: ArrayJob(in_urls, os.fspath(output), b, fn, pad_mode, kwargs),
        runner=runner,
        work_dir=work_dir,
        name=name,
        desc=name,
    )
