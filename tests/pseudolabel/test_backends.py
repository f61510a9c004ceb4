"""Each pseudo-label backend's code path and error paths (CellSAM through its named test double)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import em_like
from scipy import ndimage
from skimage.measure import regionprops

from alseg.errors import DependencyError
from alseg.pseudolabel import PseudoLabelError, make_labeller, signature
from alseg.pseudolabel.base import robust_unit
from alseg.spec import CellSAMPseudoLabel, ClassicalPseudoLabel

DOUBLE = str(Path(__file__).resolve().parents[1] / "helpers" / "cellsam_double")


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_classical_finds_dark_organelles_and_drops_membranes():
    img = em_like()
    lab = make_labeller(ClassicalPseudoLabel(min_area_nm2=100 * 64, threshold="otsu"))
    masks = lab(img)
    assert masks.shape == img.shape and masks.dtype == np.uint32
    z, y, x = np.indices(img.shape)
    for z0 in (0, 5):
        truth = img[z0] < 100
        truth[:, 47:49] = False
        truth[5:7, :] = False
        truth = ndimage.binary_opening(truth, iterations=2)
        got = masks[z0] > 0
        assert iou(got, truth) > 0.85
        assert len(np.unique(masks[z0])) - 1 == 3, "three organelles, membranes dropped"


def test_classical_filter_pieces_keeps_touching_organelles_that_are_not_convex_together():
    # three touching disks in an L (not convex together) and a lone one; no membranes
    disks = ((24, 24, 12), (24, 47, 12), (47, 47, 12), (75, 20, 11))
    img = em_like(shape=(1, 96, 96), disks=disks, membranes=False)
    y, x = np.indices(img.shape[1:])
    # oracle: each disk, cut to the pixels nearer its centre than any other disk's (where touching ones meet)
    dist = np.stack([np.hypot(y - cy, x - cx) for cy, cx, _ in disks])
    truth = [(dist[k] <= r) & (dist.argmin(0) == k) for k, (_, _, r) in enumerate(disks)]
    strict = dict(min_area_nm2=100 * 64, threshold="otsu", min_solidity=0.9)

    whole = make_labeller(ClassicalPseudoLabel(**strict))(img)[0]
    assert len(np.unique(whole)) - 1 == 1, "the L fails the solidity test as one component: only the lone disk is kept"
    assert iou(whole > 0, truth[3]) > 0.85

    pieces = make_labeller(ClassicalPseudoLabel(**strict, filter_pieces=True))(img)[0]
    assert pieces.dtype == np.uint32 and sorted(np.unique(pieces)) == [0, 1, 2, 3, 4]
    for k, disk in enumerate(truth):
        best = max(iou(pieces == i, disk) for i in range(1, 5))
        assert best > 0.8, f"disk {k} is one piece of its own"
    # a piece that fails the solidity test is still dropped: a thick C beside a lone disk, one piece each
    # (seeds 25 px apart: one per object)
    c_img = em_like(shape=(1, 96, 96), disks=((75, 20, 11),), membranes=False)
    r = np.hypot(y - 35, x - 55)
    c_shape = (r >= 6) & (r <= 14) & ~((x > 55) & (np.abs(y - 35) < 4))
    c_img[0][c_shape] = c_img[0][dist[3] <= 11].mean().astype(np.uint8)
    assert regionprops(c_shape.astype(np.uint8))[0].solidity < 0.8, "the oracle's C is not compact"
    one_seed = dict(strict, watershed_min_distance_nm=25 * 8.0)
    kept = make_labeller(ClassicalPseudoLabel(**one_seed, filter_pieces=True))(c_img)[0]
    assert len(np.unique(kept)) - 1 == 1 and iou(kept > 0, truth[3]) > 0.85, "the C is dropped, the disk kept"
    lenient = make_labeller(ClassicalPseudoLabel(**{**one_seed, "min_solidity": 0.0}, filter_pieces=True))(c_img)[0]
    assert (lenient[c_shape] > 0).mean() > 0.8, "without the solidity test the C is kept: it was dropped for its shape"
    # a piece that fails the area test is still dropped
    small = make_labeller(ClassicalPseudoLabel(**{**strict, "min_area_nm2": 415 * 64}, filter_pieces=True))(img)[0]
    assert len(np.unique(small)) - 1 == 3, "the lone disk (about 380 px) is under the minimum area"


def test_classical_rejects_bad_batches():
    lab = make_labeller(ClassicalPseudoLabel())
    with pytest.raises(PseudoLabelError, match="batch of 2D slices"):
        lab(np.zeros((8, 8)))
    with pytest.raises(PseudoLabelError, match="NaN"):
        lab(np.full((1, 8, 8), np.nan, np.float32))
    assert not lab(np.full((2, 32, 32), 7, np.uint8)).any(), "a flat slice has no organelles"


@pytest.fixture
def cellsam_double(monkeypatch):
    """The CellSAM TEST DOUBLE on sys.path (the real package cannot be installed here)."""
    monkeypatch.syspath_prepend(DOUBLE)
    sys.modules.pop("cellSAM", None)
    import cellSAM

    assert cellSAM.IS_TEST_DOUBLE
    cellSAM.calls.clear()
    yield cellSAM
    sys.modules.pop("cellSAM", None)


def test_cellsam_adapter_conventions_and_output(cellsam_double, tmp_path, monkeypatch):
    weights = tmp_path / "cellsam.pt"
    weights.write_bytes(b"weights")
    monkeypatch.delenv("DEEPCELL_ACCESS_TOKEN", raising=False)
    spec = CellSAMPseudoLabel(weights_path=str(weights), bbox_threshold=0.3)
    lab = make_labeller(spec)
    img = em_like(shape=(2, 64, 64), disks=((30, 30, 10),), membranes=False)
    masks = lab(img)
    for i in range(2):
        expected, _ = ndimage.label(robust_unit(img[i]) < 0.5)
        assert np.array_equal(masks[i], expected)
    assert cellsam_double.calls[0] == {"shape": (64, 64, 3), "normalize": False, "bbox_threshold": 0.3, "device": "cpu"}
    import hashlib

    assert signature(spec)["model_sha256"] == hashlib.sha256(b"weights").hexdigest()


def test_cellsam_errors_say_what_to_do(cellsam_double, tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPCELL_ACCESS_TOKEN", raising=False)
    with pytest.raises(DependencyError, match="DEEPCELL_ACCESS_TOKEN"):
        make_labeller(CellSAMPseudoLabel())
    with pytest.raises(DependencyError, match="not found"):
        make_labeller(CellSAMPseudoLabel(weights_path=str(tmp_path / "missing.pt")))
    monkeypatch.setenv("DEEPCELL_ACCESS_TOKEN", "token")
    lab = make_labeller(CellSAMPseudoLabel())
    monkeypatch.setenv("CELLSAM_DOUBLE_FAIL", "1")
    with pytest.raises(PseudoLabelError, match="slice 0"):
        lab(em_like(shape=(1, 32, 32)))


def test_cellsam_missing_package_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cellSAM", None)  # import fails as if absent
    with pytest.raises(DependencyError, match="git\\+https://github.com/vanvalenlab/cellSAM"):
        make_labeller(CellSAMPseudoLabel())
