"""Boxes, block grids with halos and the patch grid, checked exhaustively on small shapes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from alseg.errors import SpecError
from alseg.geometry import BlockGrid, Box, PatchGrid, holdout_box

SHAPES = [(1, 1, 1), (5, 7, 3), (8, 8, 8), (9, 4, 11)]
BLOCKS = [(1, 1, 1), (2, 3, 4), (4, 4, 4), (8, 8, 8), (3, 7, 2)]
HALOS = [(0, 0, 0), (1, 1, 1), (1, 0, 2)]


def test_box_basics():
    a = Box((0, 0, 0), (4, 5, 6))
    b = Box((2, 3, 4), (6, 7, 8))
    assert a.shape == (4, 5, 6) and a.size == 120
    assert a.intersect(b) == Box((2, 3, 4), (4, 5, 6))
    assert a.overlaps(b) and not a.overlaps(Box((4, 0, 0), (5, 1, 1)))
    assert a.intersect(Box((10, 10, 10), (11, 11, 11))).empty
    assert a.grow(1) == Box((-1, -1, -1), (5, 6, 7))
    assert a.grow((1, 0, 2), (0, 1, 0)) == Box((-1, 0, -2), (4, 6, 6))
    assert b.relative_to(Box((1, 1, 1), (9, 9, 9))) == Box((1, 2, 3), (5, 6, 7))
    with pytest.raises(ValueError):
        Box((3, 0, 0), (2, 1, 1))
    with pytest.raises(ValueError):
        a.relative_to(b)
    arr = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    assert arr[Box((1, 2, 3), (2, 4, 5)).slices].shape == (1, 2, 2)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("halo", HALOS)
def test_block_grid_partitions_volume_and_reads_halo(shape, block, halo):
    if any(h > b for h, b in zip(halo, block)):
        with pytest.raises(SpecError, match="halo"):
            BlockGrid(shape, block, halo)
        return
    grid = BlockGrid(shape, block, halo)
    cover = np.zeros(shape, int)
    blocks = list(grid)
    assert len(blocks) == len(grid) == int(np.prod([-(-s // b) for s, b in zip(shape, block)]))
    for blk in blocks:
        cover[blk.write.slices] += 1
        # the write region is the nominal block, clipped at the upper edge
        assert all(0 < w <= b for w, b in zip(blk.write.shape, block))
        # read = write grown by the halo, clipped to the volume; pads record what was clipped
        wanted = blk.write.grow(halo)
        assert blk.read == wanted.intersect(Box.from_shape(shape))
        assert tuple(r - w for r, w in zip(blk.read.start, wanted.start)) == blk.pad_before
        assert tuple(w - r for r, w in zip(blk.read.stop, wanted.stop)) == blk.pad_after
        assert blk.read.contains(blk.write)
        assert blk.write_in_read.shape == blk.write.shape
        # reading the halo then cropping gives the write region's data back
        data = np.arange(np.prod(shape)).reshape(shape)
        assert np.array_equal(data[blk.read.slices][blk.write_in_read.slices], data[blk.write.slices])
    assert np.all(cover == 1), "write regions must partition the volume exactly"
    keys = [b.key for b in blocks]
    assert len(set(keys)) == len(keys)


def test_block_of_and_errors():
    grid = BlockGrid((10, 10, 10), (4, 4, 4), 1)
    assert grid.block_of((9, 0, 5)).index == (2, 0, 1)
    with pytest.raises(IndexError):
        grid.block_of((10, 0, 0))
    with pytest.raises(IndexError):
        grid.block((3, 0, 0))
    with pytest.raises(SpecError):
        BlockGrid((10, 10, 10), (0, 4, 4))
    with pytest.raises(SpecError):
        BlockGrid((10, 10, 10), (4, 4, 4), (-1, 0, 0))
    with pytest.raises(SpecError):
        BlockGrid((10, 10), (4, 4, 4))


@pytest.mark.parametrize("shape", [(5, 7, 3), (8, 8, 8), (9, 4, 11), (2, 2, 2)])
@pytest.mark.parametrize("patch", [(2, 3, 4), (4, 4, 4), (8, 8, 8), (1, 1, 1)])
@pytest.mark.parametrize("edge", ["pad", "drop"])
def test_patch_grid_without_holdout(shape, patch, edge):
    grid = PatchGrid(shape, patch, edge=edge)
    patches = grid.patches()
    full = [s // p for s, p in zip(shape, patch)]
    ceil = [-(-s // p) for s, p in zip(shape, patch)]
    assert len(patches) == int(np.prod(ceil if edge == "pad" else full))
    assert [p.id for p in patches] == list(range(len(patches)))
    cover = np.zeros(shape, int)
    for p in patches:
        assert p.box.shape == patch
        assert p.valid == p.box.intersect(Box.from_shape(shape))
        if edge == "drop":
            assert p.valid == p.box
        cover[p.valid.slices] += 1
    assert cover.max() <= 1, "patches must not overlap"
    if edge == "pad":
        assert np.all(cover == 1), "with padding, patches cover the volume"


def test_patch_grid_keeps_holdout_out_of_pool():
    shape = (40, 64, 64)
    hold = holdout_box(shape, axis=0, fraction=0.5)
    assert hold == Box((20, 0, 0), (40, 64, 64))
    grid = PatchGrid(shape, (8, 32, 32), holdout=hold)
    patches = grid.patches()
    assert all(not p.valid.overlaps(hold) for p in patches)
    assert len(patches) == 2 * 2 * 2  # z 0-8 and 8-16 stay; 16-24 touches the holdout
    # a holdout that does not align with the grid removes every patch touching it
    odd = PatchGrid((10, 10, 10), (3, 3, 3), holdout=Box((4, 4, 4), (5, 5, 5)))
    assert len(odd) == 4**3 - 1
    start = holdout_box((10, 10, 10), axis=2, fraction=0.3, side="start")
    assert start == Box((0, 0, 0), (10, 10, 3))


def test_patch_grid_and_holdout_errors():
    with pytest.raises(SpecError):
        PatchGrid((10, 10, 10), (0, 2, 2))
    with pytest.raises(SpecError):
        PatchGrid((10, 10, 10), (2, 2, 2), edge="wrap")  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="inside"):
        PatchGrid((10, 10, 10), (2, 2, 2), holdout=Box((5, 5, 5), (11, 6, 6)))
    with pytest.raises(SpecError):
        holdout_box((10, 10, 10), axis=0, fraction=1.0)
    with pytest.raises(SpecError, match="no voxels"):
        holdout_box((1, 10, 10), axis=0, fraction=0.5)


def test_paper_mitoem_patch_count():
    """MitoEM train+val (500 x 4096 x 4096), padded into 32 x 512 x 512 patches: 1024 (the paper's Tab. 1 pool)."""
    assert len(PatchGrid((500, 4096, 4096), (32, 512, 512), edge="pad")) == 1024
    assert len(PatchGrid((500, 4096, 4096), (32, 512, 512), edge="drop")) == 15 * 64


def test_every_small_grid_is_consistent():
    """All block/halo combinations on one odd shape: adjacent write regions touch, never overlap."""
    shape = (5, 6, 7)
    for block in itertools.product((1, 2, 5), (3, 6), (2, 7)):
        grid = BlockGrid(shape, block, (1, 1, 1) if min(block) > 1 else 0)
        for blk in grid:
            for axis in range(3):
                nxt = list(blk.index)
                nxt[axis] += 1
                if nxt[axis] < grid.grid_shape[axis]:
                    assert grid.block(nxt).write.start[axis] == blk.write.stop[axis]
