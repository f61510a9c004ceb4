"""The voxel-free counting behind `alseg plan`, against the code whose behaviour it counts: alseg's
PatchGrid and BlockGrid enumerated block by block, and nnU-Net's own tile placement."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from alseg.geometry import BlockGrid, Box, PatchGrid, holdout_box
from alseg.plan import counts as cnt

SHAPES = [(100, 300, 257), (64, 512, 512), (17, 33, 65), (1, 40, 40)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("edge", ["pad", "drop"])
@pytest.mark.parametrize("holdout", [None, "half-z", "box"])
def test_pool_equals_the_patch_grid(shape, edge, holdout):
    patch = (16, 64, 48)
    box = None
    if holdout == "half-z" and shape[0] > 1:
        box = holdout_box(shape, axis=0, fraction=0.5)
    elif holdout == "box":
        box = Box((0, shape[1] // 3, 5), (shape[0], shape[1] // 3 + 7, shape[2] - 5))
    patches = PatchGrid(shape, patch, holdout=box, edge=edge).patches()
    assert cnt.pool_patches(shape, patch, box, edge) == len(patches)
    assert cnt.pool_sum(shape, patch, box, edge, axis=0) == sum(p.valid.shape[0] for p in patches)


def test_mitoem_pool():
    shape, patch = (1000, 4096, 4096), (32, 512, 512)
    box = holdout_box(shape, axis=0, fraction=0.5)
    assert cnt.pool_patches(shape, patch, box, "pad") == len(PatchGrid(shape, patch, holdout=box)) == 15 * 8 * 8


@pytest.mark.parametrize("shape,block,halo", [((37, 100, 70), (16, 32, 32), (2, 8, 8)), ((5, 5, 5), (8, 8, 8), (1, 1, 1)),
                                              ((64, 256, 256), (16, 64, 128), (0, 64, 64))])
def test_block_sizes_equal_the_block_grid(shape, block, halo):
    grid = BlockGrid(shape, block, halo)
    writes = cnt.outer(*[cnt.axis_blocks(s, b) for s, b in zip(shape, block)])
    reads = cnt.outer(*[cnt.axis_reads(s, b, h) for s, b, h in zip(shape, block, halo)])
    assert writes.shape == grid.grid_shape == cnt.grid_shape(shape, block)
    for b in grid:
        assert writes[b.index] == b.write.size
        assert reads[b.index] == b.read.size
    region = Box((shape[0] // 3, shape[1] // 4, 0), (shape[0], shape[1] // 2 + 1, 4))
    meets = cnt.blocks_meeting(shape, block, region)
    assert all(meets[b.index] == b.write.overlaps(region) for b in grid)


def test_tile_steps_equal_nnunets():
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    for size, tile, step in itertools.product([1, 15, 16, 17, 20, 64, 100, 333, 1000, 4096], [16, 20, 64, 320], [0.25, 0.5, 0.75, 1.0]):
        if size < tile:
            assert cnt.sliding_steps(size, tile, step) == [0]  # nnU-Net pads the array to one tile
            continue
        ours = cnt.sliding_steps(size, tile, step)
        assert ours == compute_steps_for_sliding_window((size,), (tile,), step)[0], (size, tile, step)
    assert cnt.sliding_steps(7, 1) == list(range(7))  # a 2d model: every section
    # prediction.tile_step: 1.0 abuts the tiles, (2n - 1) / n fewer than 0.5 on each axis: 7.4x on a MitoEM-sized volume
    assert cnt.volume_tiles((1024, 4096, 4096), (32, 256, 256), 1.0) == 32 * 16 * 16
    assert cnt.volume_tiles((1024, 4096, 4096), (32, 256, 256)) == 63 * 31 * 31


@pytest.mark.parametrize("step", [0.5, 0.75, 1.0])
def test_global_tiles_count_each_tile_once_in_the_block_of_its_start(step):
    shape, block, patch = (50, 300, 270), (20, 128, 100), (16, 64, 64)
    tiles = cnt.global_tiles(shape, block, patch, step)
    steps = [cnt.sliding_steps(s, p, step) for s, p in zip(shape, patch)]
    brute = np.zeros(tiles.shape)
    for start in itertools.product(*steps):
        brute[tuple(s // b for s, b in zip(start, block))] += 1
    assert np.array_equal(tiles, brute)
    assert tiles.sum() == cnt.volume_tiles(shape, patch, step)
    halo = cnt.halo_tiles(shape, block, (4, 16, 16), patch, step)
    assert halo.sum() > tiles.sum()  # halo tiling recomputes the border tiles


def test_makespan_and_two_phases():
    assert cnt.makespan(np.array([4.0, 3.0, 3.0, 2.0]), 2) == 6.0  # longest first: {4, 2} and {3, 3}
    assert cnt.makespan(np.ones(10), 1) == 10.0
    assert cnt.makespan(np.ones(10), 20) == 1.0
    assert cnt.makespan(np.ones(cnt.LPT_LIMIT + 10), 7) == pytest.approx((cnt.LPT_LIMIT + 10) / 7)
    tiles, seams = np.ones((4, 3, 2)), np.full((4, 3, 2), 0.25)
    one = cnt.two_phases(tiles, seams, 1, 1, per_phase_s=0.5)
    assert one.count == 2 and one.seconds == 0.5 + tiles.sum() + seams.sum() and one.efficiency == 1.0
    wide = cnt.two_phases(tiles, seams, tiles.size, tiles.size, per_phase_s=0.5)
    assert wide.seconds == wide.limit_s == 0.5 + 1 + 0.25, "with a worker per block: one block per phase"
    assert cnt.two_phases(tiles, seams, 5, 2).efficiency == pytest.approx(24 / 5 / 5)  # 24 blocks on 5: 5 rounds
    previous = np.inf
    for w in range(1, 30):
        now = cnt.two_phases(tiles, seams, w, 2).seconds
        assert wide.limit_s - 0.5 <= now <= previous
        previous = now


@pytest.mark.parametrize("step", [0.5, 1.0])
def test_seam_voxels_are_the_voxels_other_blocks_tiles_reach(step):
    """Brute force over nnU-Net's tiles: a voxel is in its block's seam when a tile that starts in
    another block covers it; both the plan's count and the predictor's seam boxes must say so."""
    from alseg.geometry import BlockGrid
    from alseg.nnunet.predict import seam_boxes, seam_depths

    shape, block, patch = (50, 300, 270), (20, 128, 100), (16, 64, 64)
    steps = [cnt.sliding_steps(s, p, step) for s, p in zip(shape, patch)]
    owner = [np.arange(n) // b for n, b in zip(shape, block)]
    foreign = np.zeros(shape, bool)
    for start in itertools.product(*steps):
        o = [s // b for s, b in zip(start, block)]
        sl = tuple(slice(s, s + p) for s, p in zip(start, patch))
        mine = (owner[0][sl[0]] == o[0])[:, None, None] & (owner[1][sl[1]] == o[1])[None, :, None] & (owner[2][sl[2]] == o[2])[None, None, :]
        foreign[sl] |= ~mine
    counted = cnt.seam_voxels(shape, block, patch, step)
    for b in BlockGrid(shape, block, 0):
        want = foreign[b.write.slices]
        mask = np.zeros(b.write.shape, bool)
        for box in seam_boxes(b.write.shape, seam_depths(b.write, steps, patch)):
            assert not mask[box.slices].any(), "disjoint boxes"
            mask[box.slices] = True
        assert np.array_equal(mask, want), b.index
        assert counted[b.index] == want.sum(), b.index


@pytest.mark.parametrize("shape,block,patch", [((50, 300, 270), (20, 128, 100), (16, 64, 64)),
                                               ((40, 256, 256), (16, 64, 64), (16, 64, 64)),  # 8-section edge blocks
                                               ((56, 200, 232), (16, 64, 64), (16, 64, 64))])
def test_the_pieces_a_seam_waits_for_are_the_neighbours_whose_tiles_reach_it(shape, block, patch):
    """Brute force over nnU-Net's tiles: block b gets a piece from its neighbour b - d exactly when
    a tile starting in that neighbour covers a voxel of b (edge blocks narrower than the patch
    hold no tile start, so neither do their neighbours along the other axes hand any on)."""
    from alseg.geometry import BlockGrid
    from alseg.nnunet.predict import expected_pieces

    steps = [cnt.sliding_steps(s, p) for s, p in zip(shape, patch)]
    reach: dict[tuple[int, ...], set[tuple[int, ...]]] = {}
    grid = cnt.grid_shape(shape, block)
    for start in itertools.product(*steps):
        o = tuple(s // b for s, b in zip(start, block))
        last = tuple(min((s + p - 1) // b, g - 1) for s, p, b, g in zip(start, patch, block, grid))
        for t in itertools.product(*[range(a, z + 1) for a, z in zip(o, last)]):
            if t != o:
                reach.setdefault(t, set()).add(tuple(ti - oi for ti, oi in zip(t, o)))
    for b in BlockGrid(shape, block, 0):
        assert set(expected_pieces(b.write, steps, patch)) == reach.get(b.index, set()), b.index
