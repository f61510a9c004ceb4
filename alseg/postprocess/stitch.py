"""3D instances from a foreground mask, block by block, equal to whole-volume connected components.

Three passes through the blockwise engine, each resumable:

1. **label**: every block labels its own foreground (6- or 26-connectivity) and writes
   provisional ids made globally unique by an offset (``block index x block voxels``, so no
   coordination is needed) into a scratch uint64 array; it returns the size of each component;
2. **faces**: for every boundary plane between blocks, the two voxel planes on either side (grown
   by one voxel in-plane for 26-connectivity, so neighbours across block edges and corners are
   seen) give pairs of provisional ids that touch; a union-find in the driver merges them;
3. **relabel**: merged objects get consecutive ids (ordered by their smallest provisional id, so
   the numbering is deterministic), objects smaller than ``min_size_vox`` *after merging* become
   background, and every block writes its final labels.

The driver holds only per-object tables (sizes, merges, the id map), never voxel data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from alseg.blockwise import check_aligned, run_blocks
from alseg.errors import SpecError
from alseg.geometry import Block, BlockGrid, Box
from alseg.io import store as st
from alseg.runtime import Runner, SerialRunner, get_shared

Connectivity = Literal[6, 26]


def structure(connectivity: int) -> np.ndarray:
    if connectivity not in (6, 26):
        raise SpecError(f"connectivity must be 6 or 26, got {connectivity}")
    return ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)


class UnionFind:
    """Union-find over arbitrary hashable ids, with path halving and union by size."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.size: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        if x not in parent:
            parent[x] = x
            self.size[x] = 1
            return x
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]


# --------------------------------------------------------------------------------------------- #
# the three passes (module-level functions: they run in workers)
# --------------------------------------------------------------------------------------------- #
@dataclass(frozen=True)
class _LabelJob:
    mask: str
    scratch: str
    block: Block
    offset: int
    connectivity: int
    threshold: float


def _label_block(job: _LabelJob) -> dict[str, Any]:
    from alseg.io.omezarr import open_volume

    fg = open_volume(job.mask).read(job.block.write) > job.threshold
    local, n = ndimage.label(fg, structure=structure(job.connectivity), output=np.int64)
    prov = np.where(local > 0, local.astype(np.uint64) + np.uint64(job.offset), np.uint64(0))
    _open_scratch(job.scratch, mode="r+")[job.block.write.slices] = prov
    sizes = np.bincount(local.ravel(), minlength=n + 1)[1:]
    return {"ids": [job.offset + i + 1 for i in range(n)], "sizes": [int(s) for s in sizes]}


@dataclass(frozen=True)
class _FaceJob:
    scratch: str
    shape: tuple[int, int, int]
    block: Block
    connectivity: int


def _face_pairs(job: _FaceJob) -> dict[str, Any]:
    """Pairs of provisional ids touching across the block's upper faces."""
    scratch = _open_scratch(job.scratch, mode="r")
    pairs: set[tuple[int, int]] = set()
    grow = 1 if job.connectivity == 26 else 0
    for axis in range(3):
        b = job.block.write.stop[axis]
        if b >= job.shape[axis]:
            continue
        start = [max(0, s - grow) for s in job.block.write.start]
        stop = [min(n, e + grow) for e, n in zip(job.block.write.stop, job.shape)]
        start[axis], stop[axis] = b - 1, b + 1
        slab = np.asarray(scratch[Box(tuple(start), tuple(stop)).slices])
        lower = np.take(slab, 0, axis=axis)
        upper = np.take(slab, 1, axis=axis)
        # in-plane offsets between the two planes: only (0, 0) for 6-connectivity
        shifts = [(0, 0)] if job.connectivity == 6 else [(du, dv) for du in (-1, 0, 1) for dv in (-1, 0, 1)]
        for du, dv in shifts:
            a, c = _shifted(lower, upper, du, dv)
            both = (a > 0) & (c > 0) & (a != c)
            if both.any():
                for p in np.unique(np.stack([a[both], c[both]], axis=1), axis=0):
                    pairs.add((int(p[0]), int(p[1])))
    return {"pairs": sorted(pairs)}


def _shifted(lower: np.ndarray, upper: np.ndarray, du: int, dv: int) -> tuple[np.ndarray, np.ndarray]:
    """Views such that ``a[i, j]`` and ``c[i, j]`` are ``lower[u, v]`` and ``upper[u + du, v + dv]``."""
    def cut(n: int, d: int) -> tuple[slice, slice]:
        return (slice(0, n - d), slice(d, n)) if d >= 0 else (slice(-d, n), slice(0, n + d))

    (au, cu), (av, cv) = cut(lower.shape[0], du), cut(lower.shape[1], dv)
    return lower[au, av], upper[cu, cv]


@dataclass(frozen=True)
class _RelabelJob:
    scratch: str
    output: str
    block: Block
    keys: Any  # sorted provisional ids, as returned by Runner.put
    values: Any


def _relabel_block(job: _RelabelJob) -> dict[str, Any]:
    from alseg.io.omezarr import open_volume

    keys, values = get_shared(job.keys), get_shared(job.values)
    prov = np.asarray(_open_scratch(job.scratch, mode="r")[job.block.write.slices])
    out = np.zeros(prov.shape, dtype=values.dtype)
    fg = prov > 0
    if fg.any():
        idx = np.searchsorted(keys, prov[fg])
        out[fg] = values[idx]
    target = open_volume(job.output, mode="r+")
    target.write(job.block.write, out.astype(target.dtype, copy=False))
    return {"objects": int(np.unique(out[out > 0]).size)}


def _open_scratch(url: str, *, mode: str):
    import zarr

    return zarr.open_array(st.zarr_store(url, read_only=(mode == "r")), mode=mode)


# --------------------------------------------------------------------------------------------- #
# the driver
# --------------------------------------------------------------------------------------------- #
def relabel_table(label_results: dict[str, Any], face_results: dict[str, Any], *, min_size_vox: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """``(provisional ids, final ids, object count)`` from the per-block sizes and the face pairs."""
    uf = UnionFind()
    ids: list[int] = []
    sizes: list[int] = []
    for r in label_results.values():
        ids.extend(r["ids"])
        sizes.extend(r["sizes"])
    for r in face_results.values():
        for a, b in r["pairs"]:
            uf.union(a, b)
    keys = np.asarray(ids, dtype=np.uint64)
    order = np.argsort(keys)
    keys = keys[order]
    size_arr = np.asarray(sizes, dtype=np.int64)[order]
    roots = np.asarray([uf.find(int(k)) for k in keys], dtype=np.uint64)
    # objects: total size and smallest member per root
    uniq_roots, inverse = np.unique(roots, return_inverse=True)
    total = np.bincount(inverse, weights=size_arr, minlength=len(uniq_roots)).astype(np.int64)
    first = np.full(len(uniq_roots), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, inverse, np.arange(len(keys)))
    keep = total >= max(min_size_vox, 0)
    # consecutive ids in order of each object's smallest provisional id (deterministic)
    rank = np.zeros(len(uniq_roots), dtype=np.int64)
    kept = np.flatnonzero(keep)
    kept_sorted = kept[np.argsort(first[kept])]
    rank[kept_sorted] = np.arange(1, len(kept_sorted) + 1)
    count = len(kept_sorted)
    dtype = np.uint32 if count < 2**32 - 1 else np.uint64
    return keys, rank[inverse].astype(dtype), count


def label_components(
    mask_url: str | os.PathLike[str],
    output_url: str | os.PathLike[str],
    *,
    block_shape: Sequence[int],
    work_dir: str | os.PathLike[str],
    connectivity: Connectivity = 26,
    min_size_vox: int = 0,
    threshold: float = 0,
    runner: Runner | None = None,
) -> dict[str, Any]:
    """Instances of ``mask > threshold`` written to the existing label volume ``output_url``.

    Equal, up to renumbering, to ``scipy.ndimage.label`` on the whole mask followed by removing
    objects smaller than ``min_size_vox``; ``work_dir`` holds the scratch array and the
    completion records of the three passes, so an interrupted run resumes.
    """
    import zarr

    from alseg.io.omezarr import open_volume

    runner = runner or SerialRunner(progress=False)
    mask_url, output_url, work = os.fspath(mask_url), os.fspath(output_url), os.fspath(work_dir)
    structure(connectivity)
    mask = open_volume(mask_url)
    out = open_volume(output_url)
    if out.shape != mask.shape:
        raise SpecError(f"output shape {out.shape} differs from the mask's {mask.shape}")
    if out.dtype.kind != "u":
        raise SpecError(f"output labels need an unsigned integer dtype, got {out.dtype}")
    grid = BlockGrid(mask.shape, block_shape, 0)
    check_aligned(grid.block_shape, out.chunks, mask.shape)
    scratch = st.join(work, "provisional.zarr")
    if not st.exists(st.join(scratch, "zarr.json")):
        zarr.create_array(st.zarr_store(scratch, read_only=False), shape=mask.shape, chunks=grid.block_shape, dtype="uint64", fill_value=0)
    stride = int(np.prod(grid.block_shape))
    linear = {b.key: i for i, b in enumerate(grid)}
    labelled = run_blocks(
        _label_block, grid,
        payload=lambda b: _LabelJob(mask_url, scratch, b, linear[b.key] * stride, connectivity, threshold),
        runner=runner, work_dir=work, name="label", desc="label blocks",
    )
    faces = run_blocks(
        _face_pairs, grid, payload=lambda b: _FaceJob(scratch, mask.shape, b, connectivity),
        runner=runner, work_dir=work, name="faces", desc="merge faces",
    )
    keys, values, count = relabel_table(labelled, faces, min_size_vox=min_size_vox)
    if count >= np.iinfo(out.dtype).max:
        raise SpecError(f"{count} objects do not fit the output dtype {out.dtype}: use uint64 labels")
    keys_ref, values_ref = runner.put(keys), runner.put(values)
    run_blocks(
        _relabel_block, grid, payload=lambda b: _RelabelJob(scratch, output_url, b, keys_ref, values_ref),
        runner=runner, work_dir=work, name="relabel", desc="relabel blocks",
    )
    return {"objects": count, "provisional": int(len(keys)), "merges": sum(len(r["pairs"]) for r in faces.values())}
