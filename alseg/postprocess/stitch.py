"""3D instances from a foreground mask, block by block, equal to whole-volume connected components.

Three passes through the blockwise engine, each resumable:

1. **label**: every block labels its own foreground (6- or 26-connectivity), local ids ``1..n``;
   its provisional global ids are the local ones plus an offset
   (``block index x block voxels``, so no coordination is needed). It also copies the global ids
   of its faces that touch other blocks into thin *plane* arrays (one per axis, holding only the
   two voxel planes on either side of every block boundary) and returns its component sizes;
2. **faces**: for every boundary between blocks, the two planes give pairs of provisional ids
   that touch (for 26-connectivity across block edges and corners too); a union-find in the
   driver merges them. This pass reads only the plane arrays, a small fraction of the volume, in
   strips of whole planes (:func:`_strip_axes`);
3. **relabel**: merged objects get consecutive ids (ordered by their smallest provisional id, so
   the numbering is deterministic), objects smaller than ``min_size_vox`` *after merging* become
   background, and every block maps its local ids through a lookup table into the output.

Connected components label a block again in the relabel pass (the labeller is deterministic and
takes a fraction of the time zarr takes to store and read back a block of uint32 ids); a slow
per-block segmentation (the pseudo-labeller's) stores its local ids instead, in a scratch array
(:meth:`Layout.create` with ``local=True``, :func:`write_local`).

The driver holds only per-object tables (sizes, merges, the id map), never voxel data.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from alseg.blockwise import check_aligned, run_blocks
from alseg.errors import DataError, SpecError
from alseg.geometry import Block, BlockGrid, Box
from alseg.io import store as st
from alseg.postprocess.components import LABELLERS, Labeller, label_foreground, structure
from alseg.runtime import Runner, SerialRunner, get_shared

Connectivity = Literal[6, 26]


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
class Layout:
    """Where the passes keep their scratch data under the work directory."""

    work: str
    shape: tuple[int, int, int]
    block_shape: tuple[int, int, int]

    @property
    def local(self) -> str:
        """Per-block labels ``1..n`` (uint32), chunked like the blocks."""
        return st.join(self.work, "local.zarr")

    def planes(self, axis: int) -> str:
        """For every block boundary along ``axis``, the global provisional ids of the two voxel planes on
        either side of it (uint64): plane ``2 i`` is the last plane of block row ``i``, plane ``2 i + 1``
        the first of row ``i + 1``. Chunked so that each chunk is one block face."""
        return st.join(self.work, f"planes-{'zyx'[axis]}.zarr")

    def boundaries(self, axis: int) -> int:
        return -(-self.shape[axis] // self.block_shape[axis]) - 1

    def plane_shape(self, axis: int) -> tuple[int, ...]:
        shape = list(self.shape)
        shape[axis] = 2 * self.boundaries(axis)
        return tuple(shape)

    def plane_chunks(self, axis: int) -> tuple[int, ...]:
        chunks = list(self.block_shape)
        chunks[axis] = 1
        return tuple(chunks)

    @classmethod
    def create(cls, work: str, shape: Sequence[int], block_shape: Sequence[int], *, local: bool = True) -> Layout:
        """The scratch arrays of a run (kept when an interrupted run left them; refused when they
        belong to another geometry); ``local``: with the array of per-block labels."""
        if int(np.prod(block_shape)) >= 2**31:
            raise SpecError(f"blocks of {tuple(block_shape)} voxels are too large to label (at most 2**31 - 1 voxels per block)")
        lay = cls(work, tuple(int(s) for s in shape), tuple(int(b) for b in block_shape))  # type: ignore[arg-type]
        if local:
            _create_scratch(lay.local, lay.shape, lay.block_shape, "uint32")
        for axis in range(3):
            if lay.boundaries(axis) > 0:
                _create_scratch(lay.planes(axis), lay.plane_shape(axis), lay.plane_chunks(axis), "uint64")
                lay.open_planes(axis, "r")  # a work directory left by another geometry fails here, not in workers
        if local:
            lay.open_local("r")
        return lay

    def open_local(self, mode: str):
        return _open_zarr(self.local, mode, self.shape, self.block_shape)

    def open_planes(self, axis: int, mode: str):
        return _open_zarr(self.planes(axis), mode, self.plane_shape(axis), self.plane_chunks(axis))


@dataclass(frozen=True)
class Components:
    """How a block's local ids come about: connected components of ``mask > threshold``."""

    mask: str
    connectivity: int
    threshold: float
    labeller: Labeller

    def labels(self, box: Box) -> np.ndarray:
        from alseg.io.omezarr import open_volume

        return label_foreground(open_volume(self.mask).read(box) > self.threshold, self.connectivity, self.labeller)


@dataclass(frozen=True)
class _LabelJob:
    source: Components
    layout: Layout
    block: Block
    offset: int


def _label_block(job: _LabelJob) -> dict[str, Any]:
    """Label one block; keep the global ids on its faces that touch other blocks (the relabel pass
    labels the block again)."""
    local = job.source.labels(job.block.write)
    sizes = write_local(job.layout, job.block.write, local, job.offset, keep=False)
    return {"first": job.offset + 1, "sizes": sizes}


def write_local(lay: Layout, box: Box, local: np.ndarray, offset: int, *, keep: bool = True) -> list[int]:
    """Store the global ids (``local + offset``) of a block's faces that touch other blocks and, with
    ``keep``, its local ids ``1..n`` (uint32); returns the voxel count of each local id."""
    # faces first: the local labels are the completion of this block, written last
    for axis in range(3):
        row = box.start[axis] // lay.block_shape[axis]
        ends = []
        if box.start[axis] > 0:
            ends.append((0, 2 * row - 1))
        if box.stop[axis] < lay.shape[axis]:
            ends.append((box.shape[axis] - 1, 2 * row))
        if not ends:
            continue
        # the block's two ends go to planes 2 row - 1 and 2 row, next to each other: one write
        faces = np.take(local, [src for src, _ in ends], axis=axis).astype(np.uint64)
        faces[faces > 0] += np.uint64(offset)
        sel = list(box.slices)
        sel[axis] = slice(ends[0][1], ends[-1][1] + 1)
        lay.open_planes(axis, "r+")[tuple(sel)] = faces
    if keep:
        lay.open_local("r+")[box.slices] = local
    n = int(local.max()) if local.size else 0
    return [int(c) for c in np.bincount(local.ravel(), minlength=n + 1)[1:]]


@dataclass(frozen=True)
class _FaceJob:
    layout: Layout
    block: Block
    connectivity: int
    axes: tuple[int, ...]  # the boundaries whose strip this block's job takes (see _strip_axes)


def _strip_axes(block: Block, lay: Layout) -> tuple[int, ...]:
    """The faces pass works in *strips*: the boundary after z row ``i`` is cut into strips along y (one
    per block row ``j``, all of x), taken by block ``(i, j, 0)``; the boundary after y row ``j`` into
    strips along z, also taken by block ``(i, j, 0)``; the boundary after x column ``k`` into strips
    along z, taken by block ``(i, 0, k)``. A strip spans whole planes in its other direction, so it
    decodes each plane chunk it covers once (grown by one voxel on one side, a second row of chunks),
    where a block's own faces grown in-plane would decode up to nine."""
    iz, iy, ix = block.index
    axes = []
    if ix == 0 and iz < lay.boundaries(0):
        axes.append(0)
    if ix == 0 and iy < lay.boundaries(1):
        axes.append(1)
    if iy == 0 and ix < lay.boundaries(2):
        axes.append(2)
    return tuple(axes)


def _face_pairs(job: _FaceJob) -> dict[str, Any]:
    """Pairs of provisional ids touching across the boundary strips this block's job takes
    (:func:`_strip_axes`); for 26-connectivity across edges and corners too: a strip is read grown by
    one voxel towards the strip before it, and pairs across its far side are that of the next strip."""
    lay, box = job.layout, job.block.write
    pairs: set[tuple[int, int]] = set()
    grow = 1 if job.connectivity == 26 else 0
    along = {0: 1, 1: 0, 2: 0}  # the direction each boundary's strips are cut in
    for axis in job.axes:
        row = box.start[axis] // lay.block_shape[axis]
        start, stop = [0, 0, 0], list(lay.shape)
        cut = along[axis]
        start[cut], stop[cut] = max(0, box.start[cut] - grow), box.stop[cut]
        start[axis], stop[axis] = 2 * row, 2 * row + 2
        slab = np.asarray(lay.open_planes(axis, "r")[Box(tuple(start), tuple(stop)).slices])
        lower = np.take(slab, 0, axis=axis)
        upper = np.take(slab, 1, axis=axis)
        # in-plane offsets between the two planes: only (0, 0) for 6-connectivity
        shifts = [(0, 0)] if job.connectivity == 6 else [(du, dv) for du in (-1, 0, 1) for dv in (-1, 0, 1)]
        for du, dv in shifts:
            a, c = _shifted(lower, upper, du, dv)
            both = (a > 0) & (c > 0)
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
    layout: Layout
    output: str
    block: Block
    first: int  # the block's first provisional id
    sizes: tuple[int, ...]  # the voxel count of each of its local components, from the label pass
    keys: Any  # sorted provisional ids, as returned by Runner.put
    values: Any
    source: Components | None = None  # labels the block again; None: read the stored local ids


def _relabel_block(job: _RelabelJob) -> dict[str, Any]:
    from alseg.io.omezarr import open_volume

    keys, values = get_shared(job.keys), get_shared(job.values)
    if job.source is None:
        local = np.asarray(job.layout.open_local("r")[job.block.write.slices])
    else:
        local = job.source.labels(job.block.write)
        now = tuple(int(c) for c in np.bincount(local.ravel(), minlength=len(job.sizes) + 1)[1:])
        if now != job.sizes:
            raise DataError(f"block {job.block.key} of {st.redact(job.source.mask)} holds {len(now)} components now against "
                            f"{len(job.sizes)} when it was labelled{' (of other sizes)' if len(now) == len(job.sizes) else ''}: "
                            "the mask changed during the job; rerun with a fresh work directory")
    at = int(np.searchsorted(keys, job.first))
    # the block's ids are first .. first + count - 1, consecutive in the sorted keys
    count = len(job.sizes)
    lut = np.zeros(count + 1, dtype=values.dtype)
    lut[1:] = values[at:at + count]
    out = lut[local]
    target = open_volume(job.output, mode="r+")
    target.write(job.block.write, out.astype(target.dtype, copy=False))
    return {"objects": int(np.count_nonzero(np.unique(lut)))}


@functools.lru_cache(maxsize=16)
def _open_zarr(url: str, mode: str, shape: tuple[int, ...], chunks: tuple[int, ...]):
    """A worker opens each scratch array once; the key holds the geometry, so an array recreated
    at the same place with another geometry is opened afresh."""
    import zarr

    arr = zarr.open_array(st.zarr_store(url, read_only=(mode == "r")), mode=mode)
    if tuple(arr.shape) != shape or tuple(arr.chunks) != chunks:
        raise SpecError(f"scratch array {st.redact(url)} has shape {arr.shape} and chunks {arr.chunks}, expected {shape} and {chunks}: "
                        "the work directory belongs to another run; use a fresh one")
    return arr


# --------------------------------------------------------------------------------------------- #
# the driver
# --------------------------------------------------------------------------------------------- #
def relabel_table(label_results: dict[str, Any], face_results: dict[str, Any], *, min_size_vox: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """``(provisional ids, final ids, object count)`` from the per-block sizes and the face pairs.

    Only ids that touch a block face enter the union-find; every other component is its own object,
    so the Python work grows with the number of merges, not the number of components.
    """
    firsts, sizes = [], []
    for r in label_results.values():
        n = len(r["sizes"])
        firsts.append(np.arange(r["first"], r["first"] + n, dtype=np.uint64))
        sizes.append(np.asarray(r["sizes"], dtype=np.int64))
    keys = np.concatenate(firsts) if firsts else np.zeros(0, np.uint64)
    size_arr = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    order = np.argsort(keys, kind="stable")
    keys, size_arr = keys[order], size_arr[order]
    uf = UnionFind()
    for r in face_results.values():
        for a, b in r["pairs"]:
            uf.union(a, b)
    roots = np.arange(len(keys))
    if uf.parent:
        members = np.fromiter(uf.parent, dtype=np.uint64, count=len(uf.parent))
        heads = np.fromiter((uf.find(int(m)) for m in members), dtype=np.uint64, count=len(members))
        roots[np.searchsorted(keys, members)] = np.searchsorted(keys, heads)
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
    pyramid: bool = True,
    labeller: Labeller = "cc3d",
) -> dict[str, Any]:
    """Instances of ``mask > threshold`` written to the existing label volume ``output_url``.

    Equal, up to renumbering, to ``scipy.ndimage.label`` on the whole mask followed by removing
    objects smaller than ``min_size_vox``; ``work_dir`` holds the scratch array and the
    completion records of the three passes, so an interrupted run resumes. With ``pyramid``, the
    output's lower levels are filled too (mode downsampling), so viewers open it quickly.
    ``labeller`` labels each block (:mod:`alseg.postprocess.components`; both give the same ids).
    """
    from alseg.io.omezarr import open_volume

    runner = runner or SerialRunner(progress=False)
    mask_url, output_url, work = os.fspath(mask_url), os.fspath(output_url), os.fspath(work_dir)
    structure(connectivity)
    if labeller not in LABELLERS:
        raise SpecError(f"labeller must be one of {', '.join(LABELLERS)}, got {labeller!r}")
    mask = open_volume(mask_url)
    out = open_volume(output_url)
    if out.shape != mask.shape:
        raise SpecError(f"output shape {out.shape} differs from the mask's {mask.shape}")
    if out.dtype.kind != "u":
        raise SpecError(f"output labels need an unsigned integer dtype, got {out.dtype}")
    grid = BlockGrid(mask.shape, block_shape, 0)
    check_aligned(grid.block_shape, out.chunks, mask.shape)
    lay = Layout.create(work, mask.shape, grid.block_shape, local=False)
    source = Components(mask_url, connectivity, threshold, labeller)
    stride = int(np.prod(grid.block_shape))
    linear = {b.key: i for i, b in enumerate(grid)}
    labelled = run_blocks(
        _label_block, grid,
        payload=lambda b: _LabelJob(source, lay, b, linear[b.key] * stride),
        runner=runner, work_dir=work, name="label", desc="label blocks",
    )
    faces = run_blocks(
        _face_pairs, grid, payload=lambda b: _FaceJob(lay, b, connectivity, _strip_axes(b, lay)),
        runner=runner, work_dir=work, name="face-strips", desc="merge faces", select=lambda b: bool(_strip_axes(b, lay)),
    )
    count = finish(lay, grid, labelled, faces, output_url, min_size_vox=min_size_vox, runner=runner, work_dir=work, pyramid=pyramid,
                   source=source)
    return {"objects": count, "provisional": sum(len(r["sizes"]) for r in labelled.values()),
            "merges": sum(len(r["pairs"]) for r in faces.values())}


def smallest_uint(count: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids ``1..count``."""
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if count <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise DataError(f"{count} objects exceed even uint64 ids")


def check_capacity(count: int, dtype: np.dtype, output_url: str) -> None:
    """Refuse an output whose dtype cannot hold ids ``1..count``, naming the smallest that can.

    The object count is known once the faces are merged, before the relabel pass writes a voxel:
    that is as early as it can be checked (block counts before merging over-count objects split
    by block borders, so they cannot refuse anything).
    """
    dtype = np.dtype(dtype)
    if count > np.iinfo(dtype).max:
        raise DataError(f"{count} objects do not fit the output dtype {dtype} of {st.redact(output_url)} (ids up to "
                        f"{np.iinfo(dtype).max}): create it as {smallest_uint(count)}, the smallest unsigned dtype that holds them")


def finish(lay: Layout, grid: BlockGrid, labelled: dict[str, Any], pairs: dict[str, Any], output_url: str, *,
           min_size_vox: int, runner: Runner, work_dir: str, pyramid: bool, source: Components | None = None) -> int:
    """Merge the provisional ids that ``pairs`` link, drop small objects, write consecutive ids into
    ``output_url`` (and its pyramid); returns the object count. The blocks' local ids come from
    ``source`` (labelled again) or, without it, from the layout's stored local ids."""
    from alseg.io.omezarr import open_volume
    from alseg.pyramid import build_pyramid

    out = open_volume(output_url)
    keys, values, count = relabel_table(labelled, pairs, min_size_vox=min_size_vox)
    check_capacity(count, out.dtype, output_url)
    keys_ref, values_ref = runner.put(keys), runner.put(values)
    run_blocks(
        _relabel_block, grid,
        payload=lambda b: _RelabelJob(lay, output_url, b, labelled[b.key]["first"], tuple(labelled[b.key]["sizes"]), keys_ref, values_ref,
                                    source),
        runner=runner, work_dir=work_dir, name="relabel", desc="relabel blocks",
    )
    if pyramid and len(out.level_paths) > 1:
        build_pyramid(output_url, kind="mode", runner=runner, work_dir=work_dir)
    return count


def _create_scratch(url: str, shape: Sequence[int], chunks: Sequence[int], dtype: str) -> None:
    """Create a scratch array unless a previous (interrupted) run left it."""
    import zarr

    if not st.exists(st.join(url, "zarr.json")):
        zarr.create_array(st.zarr_store(url, read_only=False), shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=0)
