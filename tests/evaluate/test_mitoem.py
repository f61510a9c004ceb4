"""MitoEM AP-75 and accuracy against a plain whole-array reference of the definition, and hand cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from alseg.evaluate.metrics import evaluate_volumes, match_instances, overlap_table
from alseg.evaluate.mitoem import challenge_scores
from alseg.io.omezarr import create_image, create_labels


def reference(gt: np.ndarray, pred: np.ndarray, t: float = 0.75) -> tuple[float, float]:
    """``(AP, accuracy)`` from the definition, numpy only: brute-force IoU of every pair from the masks,
    predictions ranked by size (ties: smaller id first), greedy one-to-one matching in rank order, then
    COCO's accumulate loop (precision envelope, 101 recall points, 0 past the last recall)."""
    g_ids = [int(i) for i in np.unique(gt) if i]
    p_ids = [int(i) for i in np.unique(pred) if i]
    ranked = sorted(p_ids, key=lambda p: (-int((pred == p).sum()), p))
    matched, hits = set(), []
    for p in ranked:
        best, best_iou = None, -1.0
        for g in g_ids:
            a, b = gt == g, pred == p
            iou = (a & b).sum() / (a | b).sum()
            if g not in matched and iou >= t and iou > best_iou:
                best, best_iou = g, iou
        if best is not None:
            matched.add(best)
        hits.append(best is not None)
    tp = sum(hits)
    fp, fn = len(p_ids) - tp, len(g_ids) - tp
    accuracy = 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)
    if not g_ids:
        return (1.0 if not p_ids else 0.0), accuracy
    precision, recall, n_tp = [], [], 0
    for k, hit in enumerate(hits, start=1):
        n_tp += hit
        precision.append(n_tp / k)
        recall.append(n_tp / len(g_ids))
    for i in range(len(precision) - 1, 0, -1):
        precision[i - 1] = max(precision[i - 1], precision[i])
    q = []
    for r in 0.01 * np.arange(101):
        i = next((i for i, rc in enumerate(recall) if rc >= r), None)
        q.append(precision[i] if i is not None else 0.0)
    return float(np.mean(q)), accuracy


def blobs(rng: np.random.Generator, shape=(10, 36, 36), level: float = 0.53) -> np.ndarray:
    return ndimage.label(ndimage.gaussian_filter(rng.random(shape), 2) > level)[0]


def perturbed(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """A prediction of ``gt``: renumbered, eroded or dilated objects, a merge, a dropped object, an extra one."""
    ids = [int(i) for i in np.unique(gt) if i]
    perm = rng.permutation(len(ids)) + 5
    pred = np.zeros_like(gt)
    for k, g in enumerate(ids):
        mask = gt == g
        choice = rng.integers(4)
        if choice == 1:
            mask = ndimage.binary_erosion(mask)
        elif choice == 2:
            mask = ndimage.binary_dilation(mask) & ((gt == 0) | mask)
        elif choice == 3 and k:
            continue  # dropped
        pred[mask] = perm[k]
    if len(ids) > 2:
        pred[pred == perm[1]] = perm[2]  # a merge
    pred[:2, :3, :3] = 999  # an extra object (may cut one)
    return pred


@pytest.mark.parametrize("seed", range(6))
def test_equal_to_reference_on_random_pairs(seed):
    rng = np.random.default_rng(seed)
    gt = blobs(rng)
    pred = perturbed(rng, gt)
    got = challenge_scores(overlap_table(gt, pred))
    ap, acc = reference(gt, pred)
    assert got.ap == pytest.approx(ap, abs=1e-12) and got.accuracy == pytest.approx(acc, abs=1e-12)
    # the challenge's accuracy is the matching accuracy at 0.75
    assert got.accuracy == pytest.approx(match_instances(overlap_table(gt, pred), 0.75)[0].accuracy)
    for t in (0.3, 0.5):  # the greedy rule below 0.5, where a prediction may have several candidates
        s = challenge_scores(overlap_table(gt, pred), t)
        assert (s.ap, s.accuracy) == pytest.approx(reference(gt, pred, t), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_ties_in_size_rank_by_id(seed):
    """Equal sizes: the smaller id ranks first, so the order of TP and FP among ties is fixed."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((2, 20, 40), np.uint32)
    pred = np.zeros_like(gt)
    for k in range(8):  # eight 2x4x4 predictions of equal size; half of them hit a ground-truth object
        y, x = 10 * (k // 4), 10 * (k % 4)
        pred[:, y:y + 4, x:x + 4] = int(rng.permutation(np.arange(1, 100))[0]) * 10 + k
        if rng.random() < 0.5:
            gt[:, y:y + 4, x:x + 4] = k + 1
    gt[:, 5:7, :3] = 50  # a missed object
    got = challenge_scores(overlap_table(gt, pred))
    assert got.ap == pytest.approx(reference(gt, pred)[0], abs=1e-12)


def test_hand_cases():
    gt = np.zeros((1, 20, 20), np.uint16)
    gt[0, :4, :4], gt[0, 10:14, 10:14] = 1, 2
    same = gt * 3
    s = challenge_scores(overlap_table(gt, same))
    assert (s.ap, s.accuracy, s.tp, s.fp, s.fn) == (1.0, 1.0, 2, 0, 0)
    # one hit and one bigger false positive: the FP ranks first, precision 1/2 up to recall 1/2
    fp_first = np.zeros_like(gt)
    fp_first[0, :4, :4] = 7
    fp_first[0, 16:, 14:] = 8  # 4 x 6 = 24 voxels > 16
    s = challenge_scores(overlap_table(gt, fp_first))
    assert s.ap == pytest.approx(51 * 0.5 / 101) and s.accuracy == pytest.approx(1 / 3)
    # the same with a smaller false positive: the hit ranks first, precision 1 up to recall 1/2
    hit_first = fp_first.copy()
    hit_first[0, 16:, 14:] = 0
    hit_first[0, 18:, 18:] = 8
    s = challenge_scores(overlap_table(gt, hit_first))
    assert s.ap == pytest.approx(51 / 101) and s.accuracy == pytest.approx(1 / 3)
    # IoU 12/16 = 0.75 exactly counts; 11/16 does not
    part = np.zeros_like(gt)
    part[0, :3, :4] = 1
    assert challenge_scores(overlap_table(gt, part)).tp == 1
    part[0, 2, 3] = 0
    assert challenge_scores(overlap_table(gt, part)).tp == 0
    # empty cases: defined, never NaN
    empty = np.zeros_like(gt)
    assert (challenge_scores(overlap_table(empty, empty)).ap, challenge_scores(overlap_table(empty, empty)).accuracy) == (1.0, 1.0)
    assert (challenge_scores(overlap_table(gt, empty)).ap, challenge_scores(overlap_table(gt, empty)).accuracy) == (0.0, 0.0)
    assert (challenge_scores(overlap_table(empty, gt)).ap, challenge_scores(overlap_table(empty, gt)).accuracy) == (0.0, 0.0)


@pytest.mark.parametrize("case", ["random", "empty_pred", "empty_gt"])
def test_blockwise_evaluation_reports_them(tmp_path, case):
    """``evaluate_volumes`` with objects crossing block borders reports the whole-array values."""
    rng = np.random.default_rng(7)
    gt = blobs(rng, (12, 40, 40)).astype(np.uint32)
    pred = perturbed(rng, gt).astype(np.uint32)
    if case == "empty_pred":
        pred[:] = 0
    elif case == "empty_gt":
        gt[:] = 0
    img = create_image(tmp_path / "img.zarr", shape=gt.shape, dtype="uint8", chunks=(4, 8, 8), voxel_size_nm=(30, 8, 8), levels=1)
    g, p = create_labels(img.url, "gt"), create_labels(img.url, "pred")
    g.write(g.bounds, gt)
    p.write(p.bounds, pred)
    got = evaluate_volumes(g.url, p.url, block_shape=(4, 8, 16), thresholds=(0.5,))
    ap, acc = reference(gt, pred)
    assert got["ap75"] == pytest.approx(ap, abs=1e-12) and got["accuracy75"] == pytest.approx(acc, abs=1e-12)
    assert set(got) == {"foreground_iou", "objects_gt", "objects_pred", "ap75", "accuracy75", "at"}
    assert list(got["at"]) == ["0.5"]
