"""Boxes, block grids with halos, and the candidate-patch grid.

Pure and dependency-free (numpy only). Every region is a half-open :class:`Box` in voxel
coordinates of the full-resolution volume, axes in the volume's order (``zyx``).

* :class:`BlockGrid` tiles a volume into *write* blocks that partition it exactly; each block also
  has a *read* region = write region grown by the halo and clipped at the volume edge, and records
  how much of the halo was clipped so callers can pad (daisy's read/write ROI split).
* :class:`PatchGrid` is the pool of non-overlapping candidate patches for active learning; patches
  that touch the held-out evaluation region never enter it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from alseg.errors import SpecError

Shape = tuple[int, ...]


def _as_shape(values: Sequence[int] | int, ndim: int, what: str, *, allow_zero: bool = False) -> Shape:
    if isinstance(values, (int, np.integer)):
        values = (int(values),) * ndim
    out = tuple(int(v) for v in values)
    if len(out) != ndim:
        raise SpecError(f"{what}: expected {ndim} values, got {len(out)} ({out})")
    low = 0 if allow_zero else 1
    if any(v < low for v in out):
        bound = "non-negative" if allow_zero else "positive"
        raise SpecError(f"{what}: expected {bound} values, got {out}")
    return out


@dataclass(frozen=True, order=True)
class Box:
    """A half-open axis-aligned box ``[start, stop)`` in voxels."""

    start: Shape
    stop: Shape

    def __post_init__(self) -> None:
        start = tuple(int(v) for v in self.start)
        stop = tuple(int(v) for v in self.stop)
        if len(start) != len(stop):
            raise ValueError(f"box start {start} and stop {stop} differ in length")
        if any(b < a for a, b in zip(start, stop)):
            raise ValueError(f"box stop {stop} lies before start {start}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "stop", stop)

    @classmethod
    def from_shape(cls, shape: Sequence[int], offset: Sequence[int] | None = None) -> "Box":
        offset = tuple(offset) if offset is not None else (0,) * len(shape)
        return cls(tuple(offset), tuple(o + s for o, s in zip(offset, shape)))

    @property
    def ndim(self) -> int:
        return len(self.start)

    @property
    def shape(self) -> Shape:
        return tuple(b - a for a, b in zip(self.start, self.stop))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def empty(self) -> bool:
        return self.size == 0

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    def intersect(self, other: "Box") -> "Box":
        """The overlap of two boxes (an empty box at ``max(start)`` when they do not overlap)."""
        start = tuple(max(a, b) for a, b in zip(self.start, other.start))
        stop = tuple(max(s, min(a, b)) for s, a, b in zip(start, self.stop, other.stop))
        return Box(start, stop)

    def overlaps(self, other: "Box") -> bool:
        return not self.intersect(other).empty

    def contains(self, other: "Box") -> bool:
        return all(a <= c and d <= b for a, b, c, d in zip(self.start, self.stop, other.start, other.stop))

    def grow(self, before: Sequence[int] | int, after: Sequence[int] | int | None = None) -> "Box":
        """Grow by ``before`` voxels below and ``after`` (default: the same) above, per axis."""
        b = _as_shape(before, self.ndim, "grow", allow_zero=True)
        a = b if after is None else _as_shape(after, self.ndim, "grow", allow_zero=True)
        return Box(tuple(s - x for s, x in zip(self.start, b)), tuple(s + x for s, x in zip(self.stop, a)))

    def translate(self, offset: Sequence[int]) -> "Box":
        return Box(tuple(s + o for s, o in zip(self.start, offset)), tuple(s + o for s, o in zip(self.stop, offset)))

    def relative_to(self, outer: "Box") -> "Box":
        """This box in the coordinates of ``outer`` (whose start becomes the origin)."""
        if not outer.contains(self):
            raise ValueError(f"{self} is not inside {outer}")
        return self.translate(tuple(-o for o in outer.start))

    def __str__(self) -> str:
        return "[" + ", ".join(f"{a}:{b}" for a, b in zip(self.start, self.stop)) + ")"


@dataclass(frozen=True)
class Block:
    """One block of a :class:`BlockGrid`.

    ``write`` partitions the volume; ``read`` = ``write`` grown by the halo, clipped to the volume;
    ``pad_before`` / ``pad_after`` are the halo voxels that were clipped away at the volume edge
    (what a caller pads with, e.g. reflection, to give every block the same context).
    """

    index: Shape
    write: Box
    read: Box
    pad_before: Shape
    pad_after: Shape

    @property
    def key(self) -> str:
        """A stable name for completion markers and error messages, e.g. ``"b_0_3_1"``."""
        return "b_" + "_".join(str(i) for i in self.index)

    @property
    def write_in_read(self) -> Box:
        """The write region in the coordinates of the read region (to crop results)."""
        return self.write.relative_to(self.read)

    @property
    def write_in_padded(self) -> Box:
        """The write region in the coordinates of the read region padded by ``pad_before``/``pad_after``."""
        return self.write_in_read.translate(self.pad_before)


@dataclass(frozen=True)
class BlockGrid:
    """A regular grid of write blocks with a halo, over a volume of ``shape`` voxels.

    Blocks at the upper edge are smaller where ``block_shape`` does not divide ``shape`` (they are
    never padded beyond the volume). The halo may be zero; it may not exceed the block shape.
    """

    shape: Shape
    block_shape: Shape
    halo: Shape

    def __init__(self, shape: Sequence[int], block_shape: Sequence[int] | int, halo: Sequence[int] | int = 0) -> None:
        shape_t = _as_shape(shape, len(shape), "volume shape")
        block_t = _as_shape(block_shape, len(shape_t), "block shape")
        halo_t = _as_shape(halo, len(shape_t), "halo", allow_zero=True)
        if any(h > b for h, b in zip(halo_t, block_t)):
            raise SpecError(f"halo {halo_t} is larger than the block shape {block_t} along some axis")
        object.__setattr__(self, "shape", shape_t)
        object.__setattr__(self, "block_shape", block_t)
        object.__setattr__(self, "halo", halo_t)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def grid_shape(self) -> Shape:
        return tuple(-(-s // b) for s, b in zip(self.shape, self.block_shape))

    def __len__(self) -> int:
        return int(np.prod(self.grid_shape, dtype=np.int64))

    @property
    def bounds(self) -> Box:
        return Box.from_shape(self.shape)

    def block(self, index: Sequence[int]) -> Block:
        index_t = tuple(int(i) for i in index)
        if len(index_t) != self.ndim or any(not 0 <= i < g for i, g in zip(index_t, self.grid_shape)):
            raise IndexError(f"block index {index_t} outside grid {self.grid_shape}")
        start = tuple(i * b for i, b in zip(index_t, self.block_shape))
        stop = tuple(min(s + b, n) for s, b, n in zip(start, self.block_shape, self.shape))
        write = Box(start, stop)
        wanted = write.grow(self.halo)
        read = wanted.intersect(self.bounds)
        pad_before = tuple(r - w for r, w in zip(read.start, wanted.start))
        pad_after = tuple(w - r for r, w in zip(read.stop, wanted.stop))
        return Block(index_t, write, read, pad_before, pad_after)

    def __iter__(self) -> Iterator[Block]:
        for index in itertools.product(*(range(g) for g in self.grid_shape)):
            yield self.block(index)

    def block_of(self, voxel: Sequence[int]) -> Block:
        """The block whose write region holds ``voxel``."""
        if not all(0 <= v < s for v, s in zip(voxel, self.shape)):
            raise IndexError(f"voxel {tuple(voxel)} outside volume {self.shape}")
        return self.block(tuple(v // b for v, b in zip(voxel, self.block_shape)))


EdgeMode = Literal["pad", "drop"]


@dataclass(frozen=True)
class Patch:
    """A candidate patch: its position in the patch grid, its box in the volume, and its id."""

    id: int
    index: Shape
    box: Box
    """The patch's nominal box (may extend beyond the volume at the edge with ``edge="pad"``)."""
    valid: Box
    """The part of ``box`` inside the volume: what is read; the rest is padding."""


@dataclass(frozen=True)
class PatchGrid:
    """The pool of non-overlapping candidate patches, tiled from the volume origin.

    ``edge="pad"`` keeps partial patches at the upper edge (read then padded to the full patch
    shape, as the paper padded MitoEM into 32 x 512 x 512 patches); ``edge="drop"`` drops them.
    Patches that overlap ``holdout`` (the evaluation region) are excluded from the pool.
    Patch ids are consecutive from 0 over the pool, in C order of the grid.
    """

    shape: Shape
    patch_shape: Shape
    holdout: Box | None = None
    edge: EdgeMode = "pad"

    def __post_init__(self) -> None:
        shape = _as_shape(self.shape, len(self.shape), "volume shape")
        patch = _as_shape(self.patch_shape, len(shape), "patch shape")
        if self.edge not in ("pad", "drop"):
            raise SpecError(f"patch edge mode: expected 'pad' or 'drop', got {self.edge!r}")
        if self.holdout is not None:
            if self.holdout.ndim != len(shape):
                raise SpecError(f"holdout box {self.holdout} has {self.holdout.ndim} axes, volume has {len(shape)}")
            if not Box.from_shape(shape).contains(self.holdout) or self.holdout.empty:
                raise SpecError(f"holdout box {self.holdout} must be non-empty and inside the volume {shape}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "patch_shape", patch)

    @property
    def grid_shape(self) -> Shape:
        if self.edge == "pad":
            return tuple(-(-s // p) for s, p in zip(self.shape, self.patch_shape))
        return tuple(s // p for s, p in zip(self.shape, self.patch_shape))

    def patches(self) -> list[Patch]:
        bounds = Box.from_shape(self.shape)
        out: list[Patch] = []
        for index in itertools.product(*(range(g) for g in self.grid_shape)):
            start = tuple(i * p for i, p in zip(index, self.patch_shape))
            box = Box.from_shape(self.patch_shape, start)
            valid = box.intersect(bounds)
            if self.holdout is not None and valid.overlaps(self.holdout):
                continue
            out.append(Patch(len(out), index, box, valid))
        return out

    def __len__(self) -> int:
        return len(self.patches())


def holdout_box(
    shape: Sequence[int], *, axis: int, fraction: float, side: Literal["start", "end"] = "end"
) -> Box:
    """A slab covering ``fraction`` of the volume along ``axis`` at one end (at least one voxel)."""
    if not 0.0 < fraction < 1.0:
        raise SpecError(f"holdout fraction: expected a value in (0, 1), got {fraction}")
    shape_t = tuple(int(s) for s in shape)
    length = max(1, int(round(shape_t[axis] * fraction)))
    if length >= shape_t[axis]:
        raise SpecError(
            f"holdout of {fraction:g} along axis {axis} leaves no voxels for the pool (axis length {shape_t[axis]})"
        )
    start, stop = [0] * len(shape_t), list(shape_t)
    if side == "end":
        start[axis] = shape_t[axis] - length
    else:
        stop[axis] = length
    return Box(tuple(start), tuple(stop))
