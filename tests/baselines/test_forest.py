"""The ilastik-style random-forest baseline, against independent oracles.

Features are checked against a plain numpy reference (own sampled-Gaussian kernels, symmetric
padding, ``np.convolve``, ``np.linalg.eigvalsh`` on per-pixel 2 x 2 matrices) and against
scipy's own LoG / gradient-magnitude filters; the classifier against a global Otsu threshold and
against a forest trained on shuffled labels, on a seeded synthetic volume.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import threshold_otsu

from alseg.baselines import ForestClassifier, feature_names, filter_features
from alseg.errors import DataError, SpecError
from alseg.geometry import Box
from alseg.synth import SynthParams, SyntheticVolume

SIGMAS = (0.7, 1.0, 1.6, 3.5, 5.0)
ISO = (50.0, 4.6, 4.6)


# ------------------------------------------------------------------------------------------- #
# a plain reference of the features
# ------------------------------------------------------------------------------------------- #
def _kernel(sigma: float, order: int) -> np.ndarray:
    """The sampled, normalised Gaussian (radius 4 sigma) or its analytic 1st / 2nd derivative."""
    x = np.arange(-int(4.0 * sigma + 0.5), int(4.0 * sigma + 0.5) + 1, dtype=float)
    g = np.exp(-0.5 * x**2 / sigma**2)
    g /= g.sum()
    return {0: g, 1: -x / sigma**2 * g, 2: (x**2 / sigma**4 - 1 / sigma**2) * g}[order]


def _conv(img: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    r = len(kernel) // 2
    pad = [(0, 0)] * img.ndim
    pad[axis] = (r, r)
    padded = np.pad(img, pad, mode="symmetric")  # numpy "symmetric" is scipy's "reflect"
    return np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="valid"), axis, padded)


def _deriv(img: np.ndarray, s: float, oy: int, ox: int, ky: float, kx: float) -> np.ndarray:
    """d^(oy+ox) / dy^oy dx^ox of the smoothed image, in units of the finer in-plane pixel."""
    out = _conv(_conv(img, _kernel(s * ky, oy), 0), _kernel(s * kx, ox), 1)
    return out * ky**oy * kx**ox


def _eig_desc(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    mats = np.stack([np.stack([a, b], -1), np.stack([b, c], -1)], -2)
    return np.linalg.eigvalsh(mats)[..., ::-1]  # eigvalsh: ascending


def _reference(img: np.ndarray, sigmas, voxel_size_nm) -> np.ndarray:
    unit = min(voxel_size_nm[1:])
    ky, kx = unit / voxel_size_nm[1], unit / voxel_size_nm[2]
    img = img.astype(float)

    def smooth(a: np.ndarray, t: float) -> np.ndarray:
        return _deriv(a, t, 0, 0, ky, kx)

    feats = [img]
    for s in sigmas:
        d = {(oy, ox): _deriv(img, s, oy, ox, ky, kx) for oy, ox in [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]}
        gy, gx = d[1, 0], d[0, 1]
        st = _eig_desc(smooth(gy * gy, 0.5 * s), smooth(gy * gx, 0.5 * s), smooth(gx * gx, 0.5 * s))
        he = _eig_desc(d[2, 0], d[1, 1], d[0, 2])
        feats += [d[0, 0], d[2, 0] + d[0, 2], np.sqrt(gy**2 + gx**2), d[0, 0] - smooth(img, 0.66 * s),
                  st[..., 0], st[..., 1], he[..., 0], he[..., 1]]
    return np.stack(feats, -1)


@pytest.mark.parametrize("voxel_size_nm", [ISO, (50.0, 9.2, 4.6)], ids=["isotropic-plane", "anisotropic-plane"])
def test_features_match_plain_reference(voxel_size_nm):
    img = np.random.default_rng(0).random((1, 46, 44)).astype(np.float32) * 100  # not square: catches swapped axes
    got = filter_features(img, voxel_size_nm, SIGMAS)
    ref = _reference(img[0], SIGMAS, voxel_size_nm)
    names = feature_names(SIGMAS)
    assert got.shape == (1, 46, 44, len(names)) == (1, 46, 44, 1 + 8 * len(SIGMAS)) and got.dtype == np.float32
    assert len(set(names)) == len(names)
    for i, name in enumerate(names):
        np.testing.assert_allclose(got[0, ..., i], ref[..., i], rtol=1e-4, atol=1e-4 * max(1.0, np.abs(ref[..., i]).max()), err_msg=name)


def test_features_match_scipy_filters():
    img = np.random.default_rng(1).random((1, 40, 40)) * 100
    got = filter_features(img, ISO, (1.6,))[0]
    names = feature_names((1.6,))
    col = {n: got[..., names.index(n)] for n in names}
    tol = dict(rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(col["raw"], img[0].astype(np.float32))
    np.testing.assert_allclose(col["gaussian_s1.6"], ndimage.gaussian_filter(img[0], 1.6), **tol)
    np.testing.assert_allclose(col["log_s1.6"], ndimage.gaussian_laplace(img[0], 1.6), **tol)
    np.testing.assert_allclose(col["gradmag_s1.6"], ndimage.gaussian_gradient_magnitude(img[0], 1.6), **tol)
    np.testing.assert_allclose(col["dog_s1.6"], ndimage.gaussian_filter(img[0], 1.6) - ndimage.gaussian_filter(img[0], 1.6 * 0.66), **tol)
    # eigenvalues: ordered, and their sum is the trace (Hessian: the LoG)
    assert np.all(col["st_ev0_s1.6"] >= col["st_ev1_s1.6"]) and np.all(col["st_ev1_s1.6"] >= -1e-3)
    assert np.all(col["hessian_ev0_s1.6"] >= col["hessian_ev1_s1.6"])
    np.testing.assert_allclose(col["hessian_ev0_s1.6"] + col["hessian_ev1_s1.6"], col["log_s1.6"], **tol)


def test_features_are_per_section():
    stack = (np.random.default_rng(2).random((3, 32, 30)) * 255).astype(np.uint8)
    whole = filter_features(stack, ISO)
    for z in range(3):
        np.testing.assert_array_equal(whole[z], filter_features(stack[z : z + 1], ISO)[0])
    # the z voxel size plays no part
    np.testing.assert_array_equal(whole, filter_features(stack, (5.0, 4.6, 4.6)))


# ------------------------------------------------------------------------------------------- #
# the classifier on a synthetic volume
# ------------------------------------------------------------------------------------------- #
def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    return float((pred & truth).sum() / (pred | truth).sum())


@pytest.fixture(scope="module")
def halves():
    """A seeded synthetic volume split in z: (train image, train labels, test image, test labels)."""
    p = SynthParams.preset("medium", shape=(16, 96, 96), seed=3, mito_per_um3=30.0)
    image, labels = SyntheticVolume(p).block(Box.from_shape(p.shape))
    return p.voxel_size_nm, image[:8], labels[:8], image[8:], labels[8:]


def test_forest_beats_otsu_and_shuffled_labels(halves):
    vox, tr_img, tr_lab, te_img, te_lab = halves
    truth = te_lab > 0
    assert 0.02 < truth.mean() < 0.5 and (tr_lab > 0).any()
    otsu = _iou(te_img < threshold_otsu(te_img), truth)  # mitochondria are dark
    forest = _iou(ForestClassifier(vox, n_estimators=50).fit([tr_img], [tr_lab], max_samples_per_class=5000).predict_proba(te_img) > 0.5, truth)
    shuffled_lab = np.random.default_rng(0).permutation(tr_lab.ravel()).reshape(tr_lab.shape)
    shuffled = _iou(ForestClassifier(vox, n_estimators=50).fit([tr_img], [shuffled_lab], max_samples_per_class=5000).predict_proba(te_img) > 0.5, truth)
    # measured: forest 0.95, Otsu 0.28, shuffled labels 0.06
    assert forest > 0.85, (forest, otsu, shuffled)
    assert forest > otsu + 0.4, (forest, otsu, shuffled)
    assert shuffled < forest - 0.6, (forest, otsu, shuffled)


def test_fit_samples_balanced_and_seeded(halves):
    vox, tr_img, tr_lab, te_img, _ = halves

    def fit(seed: int) -> ForestClassifier:  # two patches, so sampling spans patches
        clf = ForestClassifier(vox, n_estimators=8, random_state=0)
        return clf.fit([tr_img[:4], tr_img[4:]], [tr_lab[:4], tr_lab[4:]], max_samples_per_class=500, seed=seed)

    a, b, c = fit(0), fit(0), fit(1)
    pa = a.predict_proba(te_img[:2])
    assert pa.shape == te_img[:2].shape and pa.dtype == np.float32 and 0 <= pa.min() and pa.max() <= 1
    np.testing.assert_array_equal(pa, b.predict_proba(te_img[:2]))
    assert not np.array_equal(pa, c.predict_proba(te_img[:2]))  # the sampling seed matters
    assert a._forest.estimators_[0].tree_.weighted_n_node_samples[0] == 1000  # 500 per class, both classes
    assert np.array_equal(a._forest.estimators_[0].tree_.value[0].ravel() > 0, [True, True])


def test_bytes_round_trip(halves):
    vox, tr_img, tr_lab, te_img, _ = halves
    model = ForestClassifier(vox, sigmas=(1.0, 3.5), n_estimators=8).fit([tr_img], [tr_lab], max_samples_per_class=500)
    back = ForestClassifier.from_bytes(model.to_bytes())
    assert back.sigmas == (1.0, 3.5) and back.voxel_size_nm == tuple(vox)
    np.testing.assert_array_equal(back.predict_proba(te_img), model.predict_proba(te_img))


# ------------------------------------------------------------------------------------------- #
# errors
# ------------------------------------------------------------------------------------------- #
def test_errors():
    img = np.zeros((2, 16, 16), np.uint8)
    lab = np.zeros((2, 16, 16), np.uint32)
    lab[:, 4:8, 4:8] = 7
    clf = ForestClassifier(ISO, n_estimators=2)
    with pytest.raises(SpecError, match="no training patches"):
        clf.fit([], [])
    with pytest.raises(SpecError, match="one label volume per image"):
        clf.fit([img], [lab, lab])
    with pytest.raises(DataError, match=r"patch 1: image shape \(2, 16, 16\) differs from labels shape \(2, 16, 15\)"):
        clf.fit([img, img], [lab, lab[..., :15]])
    with pytest.raises(DataError, match="no foreground"):
        clf.fit([img, img], [np.zeros_like(lab), np.zeros_like(lab)])
    with pytest.raises(DataError, match="no background"):
        clf.fit([img], [np.ones_like(lab)])
    with pytest.raises(DataError, match=r"patch 0 image: expected 3 axes zyx, got shape \(16, 16\)"):
        clf.fit([img[0]], [lab[0]])
    with pytest.raises(DataError, match=r"patch 0 labels: expected 3 axes zyx, got shape \(1, 2, 16, 16\)"):
        clf.fit([img], [lab[None]])
    with pytest.raises(DataError, match="integer or bool"):
        clf.fit([img], [lab.astype(np.float32)])
    with pytest.raises(SpecError, match="not fitted"):
        clf.predict_proba(img)
    with pytest.raises(SpecError, match="not fitted"):
        clf.to_bytes()
    clf.fit([img], [lab])
    with pytest.raises(DataError, match="expected 3 axes zyx"):
        clf.predict_proba(img[0])
    with pytest.raises(DataError, match="expected 3 axes zyx"):
        filter_features(img[0], ISO)
    with pytest.raises(DataError, match="not a stored ForestClassifier"):
        ForestClassifier.from_bytes(b"not a pickle")
    with pytest.raises(SpecError, match="voxel_size_nm"):
        ForestClassifier((4.6, 4.6))
    with pytest.raises(SpecError, match="sigmas"):
        filter_features(img, ISO, sigmas=(1.0, 0.0))
