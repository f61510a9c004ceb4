"""2D-to-3D linking against hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest

from alseg.pseudolabel.link import link_stack, match_planes


def disk(shape, cy, cx, r):
    y, x = np.ogrid[:shape[0], :shape[1]]
    return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


def stack(*slices):
    return np.stack([np.asarray(s, dtype=np.uint32) for s in slices])


def same_partition(a, b):
    fg = (a > 0) | (b > 0)
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[fg])) == len(np.unique(b[fg]))


S = (40, 40)


def test_persisting_drifting_object_is_one_instance():
    slices = [disk(S, 20, 10 + 2 * z, 6).astype(np.uint32) * (z + 1) for z in range(6)]  # other ids per slice
    out = link_stack(stack(*slices), min_iou=0.3)
    assert out.max() == 1 and np.array_equal(out > 0, stack(*slices) > 0)


def test_split_merge_appear_vanish():
    a = disk(S, 20, 20, 8)
    left, right = a & (np.arange(40)[None, :] < 22), a & (np.arange(40)[None, :] > 23)
    z0 = a.astype(np.uint32)
    z1 = left * 1 + right * 2  # split: the larger overlap (left) continues, right starts anew
    z2 = a.astype(np.uint32) * 5  # merge again: continues the best match (left), right ends
    z3 = np.zeros(S, np.uint32)  # vanishes
    z4 = disk(S, 20, 20, 8).astype(np.uint32)  # appears again: a new object
    out = link_stack(stack(z0, z1, z2, z3, z4), min_iou=0.3)
    assert out[0][a].tolist() == [1] * a.sum()
    assert set(np.unique(out[1][left])) == {1} and set(np.unique(out[1][right])) == {2}
    assert set(np.unique(out[2][a])) == {1}
    assert not out[3].any()
    assert set(np.unique(out[4][a])) == {3}
    assert out.max() == 3


def test_low_overlap_is_not_linked_and_min_size_applies_after_linking():
    z0 = disk(S, 20, 10, 5).astype(np.uint32)
    z1 = disk(S, 20, 26, 5).astype(np.uint32)  # far: IoU 0
    out = link_stack(stack(z0, z1), min_iou=0.3)
    assert out.max() == 2
    # each slice's disk is 81 px: a 3D minimum of 100 drops both unless linked
    tall = stack(*[disk(S, 20, 20, 5).astype(np.uint32)] * 3)
    assert link_stack(tall, min_iou=0.3, min_size_vox=100).max() == 1
    assert link_stack(stack(z0, z1), min_iou=0.3, min_size_vox=100).max() == 0


def test_optimal_not_greedy_matching():
    """Greedy best-IoU-first would pair a with c1 and leave b alone; the optimal assignment pairs both."""
    a = np.zeros((1, 20), np.uint32)
    b = np.zeros((1, 20), np.uint32)
    a[0, 0:10], a[0, 10:20] = 1, 2
    b[0, 2:10], b[0, 10:11] = 3, 3  # c1 = 3: IoU with 1 is 8/11, with 2 is 1/19
    b[0, 11:20] = 4  # c2 = 4: IoU with 2 is 9/10
    assert sorted(match_planes(a, b, 0.3)) == [(1, 3), (2, 4)]
    # a constructed conflict: one candidate wins over the greedy choice
    a = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 0, 0]])
    b = np.array([[3, 3, 3, 3, 4, 4, 4, 4, 4, 0]])
    # IoU(1,3)=4/5, IoU(1,4)=1/9, IoU(2,4)=3/5 -> both pairs
    assert sorted(match_planes(a, b, 0.1)) == [(1, 3), (2, 4)]
    with pytest.raises(ValueError):
        match_planes(a, b[:, :5], 0.1)
    with pytest.raises(ValueError):
        link_stack(a, 0.3)


def test_drifting_rows_of_objects_keep_their_identity():
    """Four objects drifting by random one-pixel steps, with shuffled 2D ids: four 3D objects."""
    rng = np.random.default_rng(0)
    slices, ref = [], []
    xs = [20, 20, 20, 20]
    for z in range(8):
        m, r = np.zeros(S, np.uint32), np.zeros(S, np.uint32)
        ids = rng.permutation(4) + 1
        for k in range(4):
            xs[k] += int(rng.integers(-1, 2))
            d = disk(S, 6 + 9 * k, xs[k], 4)
            m[d], r[d] = ids[k], k + 1
        slices.append(m)
        ref.append(r)
    out = link_stack(stack(*slices), min_iou=0.5)
    assert out.max() == 4 and same_partition(out, stack(*ref))


def test_overlap_measure_links_a_narrow_section_inside_a_wide_one():
    wide = np.zeros((1, 20), np.uint32)
    narrow = np.zeros((1, 20), np.uint32)
    wide[0, 2:18] = 1
    narrow[0, 8:11] = 2  # IoU 3/16, overlap coefficient 1
    assert match_planes(wide, narrow, 0.5) == []
    assert match_planes(wide, narrow, 0.5, measure="overlap") == [(1, 2)]
    assert link_stack(np.concatenate([wide, narrow])[:, None, :], 0.5, measure="overlap").max() == 1
    with pytest.raises(ValueError, match="unknown overlap measure"):
        match_planes(wide, narrow, 0.5, measure="dice")


def test_gap_closing_bridges_one_missed_section_only():
    a = disk(S, 20, 20, 8).astype(np.uint32)
    empty = np.zeros(S, np.uint32)
    one_gap = stack(a, a, empty, a, a)
    assert link_stack(one_gap, min_iou=0.3).max() == 2, "without gap closing the miss cuts the object"
    out = link_stack(one_gap, min_iou=0.3, gap=1)
    assert out.max() == 1 and np.array_equal(out > 0, one_gap > 0)
    assert link_stack(stack(a, empty, empty, a), min_iou=0.3, gap=1).max() == 2, "two missed sections are not bridged"
    with pytest.raises(ValueError, match="at most one section"):
        link_stack(one_gap, min_iou=0.3, gap=2)


def test_gap_closing_joins_only_pieces_without_links():
    big = disk(S, 20, 20, 8).astype(np.uint32)
    small = disk(S, 20, 15, 4).astype(np.uint32)   # linked to big, barely touching shifted
    shifted = disk(S, 20, 24, 8).astype(np.uint32)
    assert match_planes(big, small, 0.2) and not match_planes(small, shifted, 0.2) and match_planes(big, shifted, 0.2)
    # big continues into small (a link forward), so it is not bridged to shifted two sections on
    assert link_stack(stack(big, small, shifted), min_iou=0.2, gap=1).max() == 2
    # small has no link forward and shifted none back: a gap candidate only if they overlap enough
    empty = np.zeros(S, np.uint32)
    assert link_stack(stack(small, empty, shifted), min_iou=0.2, gap=1).max() == 2
    assert link_stack(stack(big, empty, shifted), min_iou=0.2, gap=1).max() == 1
    # a piece two sections on that already has a link back is not bridged to one ending before it
    p, q, r = disk(S, 20, 13, 6), disk(S, 20, 27, 6), disk(S, 20, 20, 10)
    assert not (p & q).any() and match_planes(p.astype(np.uint32), r.astype(np.uint32), 0.2)
    assert link_stack(stack(p, q, r), min_iou=0.2, gap=1).max() == 2
    assert link_stack(stack(big, empty, shifted, shifted), min_iou=0.2, gap=1).max() == 1


def test_gap_closing_pairs_one_to_one_by_total_score():
    """Two objects end and two start two sections on, each overlapping both: the pairing of the
    largest summed IoU, never one piece joined to two (which would merge all four)."""
    empty = np.zeros(S, np.uint32)
    z0 = (disk(S, 20, 14, 6) * 1 + disk(S, 20, 27, 6) * 2).astype(np.uint32)
    z2 = (disk(S, 20, 17, 6) * 3 + disk(S, 20, 30, 6) * 4).astype(np.uint32)
    assert len(match_planes(z0, z2, 0.05)) == 2 and (z0 == 2)[z2 == 3].any(), "crosswise overlaps exist"
    out = link_stack(stack(z0, empty, z2), min_iou=0.05, gap=1)
    assert out.max() == 2
    assert out[0, 20, 14] == out[2, 20, 17] != out[0, 20, 27] == out[2, 20, 30]
