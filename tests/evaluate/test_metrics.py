"""Instance metrics against a plain reference (loops over objects, brute-force matching) and hand cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from alseg.evaluate.metrics import evaluate_volumes, match_instances, overlap_table, score_table
from alseg.geometry import Box
from alseg.io.omezarr import create_image, create_labels


def reference_scores(gt: np.ndarray, pred: np.ndarray, t: float) -> dict:
    """Brute force: every one-to-one pairing of objects, keep the one with most matches (then most IoU)."""
    g_ids = [int(i) for i in np.unique(gt) if i]
    p_ids = [int(i) for i in np.unique(pred) if i]
    iou = {}
    for g in g_ids:
        for p in p_ids:
            a, b = gt == g, pred == p
            iou[g, p] = (a & b).sum() / (a | b).sum()
    best = (0, 0.0)
    small, large = (g_ids, p_ids) if len(g_ids) <= len(p_ids) else (p_ids, g_ids)
    for perm in itertools.permutations(large, len(small)):
        pairs = [(s, l) if small is g_ids else (l, s) for s, l in zip(small, perm)]
        vals = [iou[pq] for pq in pairs if iou[pq] >= t]
        best = max(best, (len(vals), sum(vals)))
    tp, s = best
    fp, fn = len(p_ids) - tp, len(g_ids) - tp
    fg = ((gt > 0) & (pred > 0)).sum() / max(((gt > 0) | (pred > 0)).sum(), 1)
    return {"tp": tp, "fp": fp, "fn": fn, "f1": 2 * tp / max(2 * tp + fp + fn, 1), "accuracy": tp / max(tp + fp + fn, 1),
            "pq": s / max(tp + fp / 2 + fn / 2, 1e-9), "fg": fg}


def boxes(rng, n: int, shape=(4, 32, 32), jitter: int = 0, ids=None) -> np.ndarray:
    """Up to ``n`` random boxes; later ones paint over earlier ones (so objects may be cut or split)."""
    out = np.zeros(shape, np.int64)
    for k in range(n):
        z0, y0, x0 = rng.integers(0, 2), rng.integers(0, 24), rng.integers(0, 24)
        dy, dx = rng.integers(3, 9, size=2) + rng.integers(-jitter, jitter + 1, size=2)
        out[z0:z0 + 2, y0:y0 + max(dy, 1), x0:x0 + max(dx, 1)] = (ids[k] if ids is not None else k + 1)
    return out


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("t", [0.3, 0.5, 0.75])
def test_matches_brute_force_reference(seed, t):
    rng = np.random.default_rng(seed)
    gt = boxes(np.random.default_rng(seed), 5)
    # a prediction: the same boxes drawn with jitter and other ids, one dropped, one extra
    pred = boxes(np.random.default_rng(seed), 5, jitter=2, ids=[11, 12, 13, 14, 15])
    pred[pred == 12] = 0
    pred[3, 28:, 28:] = 20
    if rng.random() < 0.5:
        pred[pred == 13] = 14  # a merge
    ref = reference_scores(gt, pred, t)
    scores, matches = match_instances(overlap_table(gt, pred), t)
    assert (scores.tp, scores.fp, scores.fn) == (ref["tp"], ref["fp"], ref["fn"])
    assert scores.f1 == pytest.approx(ref["f1"]) and scores.accuracy == pytest.approx(ref["accuracy"])
    assert scores.panoptic_quality == pytest.approx(ref["pq"])
    assert score_table(overlap_table(gt, pred))["foreground_iou"] == pytest.approx(ref["fg"])
    assert len({m[0] for m in matches}) == len({m[1] for m in matches}) == len(matches), "one-to-one"


def test_hand_cases():
    gt = np.zeros((1, 10, 10), np.uint32)
    gt[0, :4, :4] = 1
    gt[0, 6:, 6:] = 2
    same = gt * 7  # renumbered: perfect
    s, _ = match_instances(overlap_table(gt, same), 0.5)
    assert (s.tp, s.fp, s.fn, s.f1, s.panoptic_quality) == (2, 0, 0, 1.0, 1.0)
    merged = (gt > 0).astype(np.uint32)  # both objects one id: IoU 0.5 with each, one match at most
    s, _ = match_instances(overlap_table(gt, merged), 0.5)
    assert (s.tp, s.fp, s.fn) == (1, 0, 1)
    s, _ = match_instances(overlap_table(gt, merged), 0.75)
    assert (s.tp, s.fp, s.fn, s.accuracy) == (0, 1, 2, 0.0)
    empty = np.zeros_like(gt)
    assert match_instances(overlap_table(empty, empty), 0.5)[0].f1 == 1.0
    assert match_instances(overlap_table(gt, empty), 0.5)[0].f1 == 0.0
    with pytest.raises(ValueError):
        match_instances(overlap_table(gt, gt), 0.0)


def test_blockwise_volume_scores_equal_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    gt, _ = ndimage.label(ndimage.gaussian_filter(rng.random((12, 40, 40)), 2) > 0.52)
    pred, _ = ndimage.label(ndimage.binary_erosion(gt > 0))
    img = create_image(tmp_path / "img.zarr", shape=gt.shape, dtype="uint8", chunks=(4, 16, 16), voxel_size_nm=(8, 8, 8), levels=1)
    g, p = create_labels(img.url, "gt"), create_labels(img.url, "pred")
    g.write(g.bounds, gt.astype(np.uint32))
    p.write(p.bounds, pred.astype(np.uint32))
    got = evaluate_volumes(g.url, p.url, block_shape=(4, 16, 16))
    assert got == score_table(overlap_table(gt, pred))
    region = Box((2, 5, 0), (10, 40, 33))
    assert evaluate_volumes(g.url, p.url, block_shape=(4, 16, 16), region=region) == score_table(overlap_table(gt[region.slices], pred[region.slices]))


# --------------------------------------------------------------------------------------------- #
# inputs that are not label images are refused before any block is read
# --------------------------------------------------------------------------------------------- #
class NoBlocks:
    """A runner that fails the test if evaluation reaches the block pass."""

    def map(self, *args, **kwargs):
        raise AssertionError("a block was read before the inputs were checked")


def tree_hashes(path) -> dict[str, str]:
    import hashlib
    from pathlib import Path

    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def label_like(image_url: str, name: str, data: np.ndarray, *, label_metadata: bool = True) -> str:
    """A volume of any dtype beside the image (``create_labels`` only makes unsigned ones), with NGFF
    ``image-label`` metadata unless ``label_metadata`` is false."""
    import zarr

    from alseg.io import store as st

    url = str(image_url) + f"-{name}.zarr"
    vol = create_image(url, shape=data.shape, dtype=data.dtype, chunks=(4, 16, 16), voxel_size_nm=(8, 8, 8), levels=1)
    vol.write(vol.bounds, data)
    if label_metadata:
        group = zarr.open_group(st.zarr_store(url, read_only=False), mode="r+")
        group.attrs["ome"] = {**dict(group.attrs["ome"]), "image-label": {}}
    return url


@pytest.fixture
def gt_volume(tmp_path):
    rng = np.random.default_rng(0)
    gt, _ = ndimage.label(ndimage.gaussian_filter(rng.random((8, 32, 32)), 2) > 0.52)
    img = create_image(tmp_path / "img.zarr", shape=gt.shape, dtype="uint8", chunks=(4, 16, 16), voxel_size_nm=(8, 8, 8), levels=1)
    img.write(img.bounds, (rng.random(gt.shape) * 255).astype(np.uint8))
    g = create_labels(img.url, "gt")
    g.write(g.bounds, gt.astype(np.uint32))
    return img.url, g.url, gt


def test_float_labels_are_refused_before_any_block_is_read(gt_volume):
    from alseg.errors import DataError

    img, gt_url, gt = gt_volume
    pred = label_like(img, "float", (gt + 0.3 * (gt % 2)).astype(np.float32))  # truncation would merge ids
    before = tree_hashes(pred)
    with pytest.raises(DataError, match="integers.*float32"):
        evaluate_volumes(gt_url, pred, runner=NoBlocks())
    with pytest.raises(DataError, match="integers.*float32"):
        evaluate_volumes(pred, gt_url, runner=NoBlocks())
    assert tree_hashes(pred) == before


def test_negative_ids_are_refused(gt_volume):
    from alseg.errors import DataError

    img, gt_url, gt = gt_volume
    signed = gt.astype(np.int32)
    signed[signed == 0] = -1  # -1 as background would become object 2**64 - 1
    pred = label_like(img, "neg", signed)
    before, gt_before = tree_hashes(pred), tree_hashes(gt_url)
    with pytest.raises(DataError, match="negative"):
        evaluate_volumes(gt_url, pred, block_shape=(4, 16, 16))
    assert tree_hashes(pred) == before and tree_hashes(gt_url) == gt_before
    # signed labels without negative values are fine, and score as their unsigned twin
    ok = label_like(img, "pos", gt.astype(np.int64))
    assert evaluate_volumes(gt_url, ok, block_shape=(4, 16, 16)) == score_table(overlap_table(gt, gt))
    with pytest.raises(DataError, match="negative"):
        overlap_table(gt, signed)


def test_em_image_passed_as_labels_is_refused(gt_volume):
    from alseg.errors import DataError

    img, gt_url, gt = gt_volume
    before = tree_hashes(img)
    with pytest.raises(DataError, match="image-label"):
        evaluate_volumes(gt_url, img, runner=NoBlocks())
    with pytest.raises(DataError, match="image-label"):
        evaluate_volumes(img, gt_url, runner=NoBlocks())
    assert tree_hashes(img) == before
    # a label volume stored as a plain image (no image-label metadata) in a label-sized dtype is accepted
    plain = label_like(img, "plain", gt.astype(np.uint32), label_metadata=False)
    assert evaluate_volumes(gt_url, plain)["at"]["0.5"]["f1"] == 1.0


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan"), float("inf")])
def test_iou_threshold_outside_unit_interval_is_a_spec_error_before_any_block(gt_volume, bad):
    from alseg.errors import SpecError

    _, gt_url, _ = gt_volume
    with pytest.raises(SpecError, match=r"\(0, 1\]"):
        evaluate_volumes(gt_url, gt_url, thresholds=(0.5, bad), runner=NoBlocks())
    with pytest.raises(SpecError):
        match_instances(overlap_table(np.ones((1, 2, 2), np.uint8), np.ones((1, 2, 2), np.uint8)), bad)


def test_ground_truth_level_matches_a_coarser_prediction(tmp_path):
    """A job at input.level 1 predicts on level 1: its labels are scored against the ground truth's level 1."""
    from alseg.io.omezarr import create_label_image, open_volume
    from alseg.pyramid import build_pyramid

    rng = np.random.default_rng(1)
    gt, _ = ndimage.label(ndimage.gaussian_filter(rng.random((8, 64, 64)), 2) > 0.52)
    img = create_image(tmp_path / "img.zarr", shape=gt.shape, dtype="uint8", chunks=(4, 16, 16), voxel_size_nm=(8, 8, 8),
                       levels=2)
    g = create_labels(img.url, "gt")
    g.write(g.bounds, gt.astype(np.uint32))
    build_pyramid(g.url, kind="mode")
    coarse = open_volume(g.url, level=1).read()
    assert coarse.shape != gt.shape
    p = create_label_image(tmp_path / "pred.zarr", like=open_volume(img.url, level=1), chunks=(4, 16, 16), name="pred")
    pred, _ = ndimage.label(ndimage.binary_erosion(coarse > 0))
    p.write(p.bounds, pred.astype(np.uint32))
    assert evaluate_volumes(g.url, p.url, gt_level=1) == score_table(overlap_table(coarse, pred))
    with pytest.raises(Exception, match="differ in shape"):
        evaluate_volumes(g.url, p.url)
