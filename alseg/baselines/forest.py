"""An ilastik-style pixel classifier: a random forest on standard 2D filter features.

The benchmark's "no deep learning" baseline: what a biologist gets from ilastik's pixel
classification trained on the same annotated patches as alseg's nnU-Net.

Features (:func:`filter_features`) are computed in 2D, one z-section at a time, as ilastik users
choose for strongly anisotropic stacks (e.g. 50 x 4.6 x 4.6 nm). For each section ``I`` and each
scale ``s`` (in in-plane pixels; ``G_s`` a Gaussian of standard deviation ``s``, derivatives of
``G_s * I`` written ``I_y``, ``I_xy``, ...):

* ``gaussian``: ``G_s * I``;
* ``log``: Laplacian of Gaussian, ``I_xx + I_yy``;
* ``gradmag``: Gaussian gradient magnitude, ``sqrt(I_x**2 + I_y**2)``;
* ``dog``: difference of Gaussians, ``G_s * I - G_{0.66 s} * I``;
* ``st_ev0 >= st_ev1``: eigenvalues of the structure tensor ``G_{0.5 s} * (grad I grad I^T)``,
  gradient at the inner scale ``s``, smoothed at the outer scale ``0.5 s``;
* ``hessian_ev0 >= hessian_ev1``: eigenvalues of the Hessian ``[[I_yy, I_xy], [I_xy, I_xx]]``.

Plus ``raw``, the intensity as given (cast to float32). Filters use scipy.ndimage with its
``reflect`` border mode and kernels truncated at 4 standard deviations; derivative kernels are the
analytic derivatives of the sampled Gaussian. Eigenvalues come in closed form, larger first, as in
vigra (ilastik's filter library). When the two in-plane voxel sizes differ, scales and derivatives
are in units of the finer in-plane pixel, so the filters are round in nm; the z size is not used.

The classifier samples voxels class-balanced (the same number of foreground and background
voxels), so its probabilities assume equal priors; they are thresholded at 0.5 like ilastik's.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from alseg.errors import DataError, SpecError

DEFAULT_SIGMAS: tuple[float, ...] = (0.7, 1.0, 1.6, 3.5, 5.0)
_PER_SIGMA = ("gaussian", "log", "gradmag", "dog", "st_ev0", "st_ev1", "hessian_ev0", "hessian_ev1")
_FORMAT = "alseg.baselines.forest/1"


def _check_sigmas(sigmas: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(s) for s in sigmas)
    if not out or any(not np.isfinite(s) or s <= 0 for s in out):
        raise SpecError(f"sigmas: expected one or more positive scales in pixels, got {tuple(sigmas)}")
    return out


def _plane_scale(voxel_size_nm: Sequence[float]) -> tuple[float, float]:
    """Per in-plane axis (y, x): the finer in-plane pixel size over this axis' size."""
    vox = tuple(float(v) for v in voxel_size_nm)
    if len(vox) != 3 or any(not np.isfinite(v) or v <= 0 for v in vox):
        raise SpecError(f"voxel_size_nm: expected 3 positive sizes (z, y, x) in nm, got {tuple(voxel_size_nm)}")
    unit = min(vox[1], vox[2])
    return unit / vox[1], unit / vox[2]


def _check_volume(array: np.ndarray, what: str, kinds: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise DataError(f"{what}: expected 3 axes zyx, got shape {array.shape}")
    if array.dtype.kind not in kinds:
        raise DataError(f"{what}: expected a real {'integer or bool' if 'f' not in kinds else 'numeric'} dtype, got {array.dtype}")
    return array


def feature_names(sigmas: Sequence[float] = DEFAULT_SIGMAS) -> list[str]:
    """Names of the features of :func:`filter_features`, in the order of its last axis."""
    return ["raw"] + [f"{name}_s{s:g}" for s in _check_sigmas(sigmas) for name in _PER_SIGMA]


def _eig2(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (larger, smaller) of the symmetric 2 x 2 matrices ``[[a, b], [b, c]]``."""
    mean = (a + c) / 2
    radius = np.sqrt(((a - c) / 2) ** 2 + b**2)
    return mean + radius, mean - radius


def _section_features(section: np.ndarray, sigmas: tuple[float, ...], scale: tuple[float, float]) -> np.ndarray:
    """Features of one 2D section, shape (Y, X, F)."""
    ky, kx = scale

    def gauss(img: np.ndarray, s: float, order: tuple[int, int] = (0, 0)) -> np.ndarray:
        out = ndimage.gaussian_filter(img, sigma=(s * ky, s * kx), order=order, mode="reflect", truncate=4.0)
        return out * (ky ** order[0] * kx ** order[1]) if order != (0, 0) else out

    sec = section.astype(np.float64)
    out = np.empty(sec.shape + (1 + len(_PER_SIGMA) * len(sigmas),), np.float32)
    out[..., 0] = section.astype(np.float32)
    i = 1
    for s in sigmas:
        smooth = gauss(sec, s)
        gy, gx = gauss(sec, s, (1, 0)), gauss(sec, s, (0, 1))
        hyy, hxy, hxx = gauss(sec, s, (2, 0)), gauss(sec, s, (1, 1)), gauss(sec, s, (0, 2))
        tensor = (gauss(gy * gy, 0.5 * s), gauss(gy * gx, 0.5 * s), gauss(gx * gx, 0.5 * s))
        for feature in (smooth, hyy + hxx, np.hypot(gy, gx), smooth - gauss(sec, 0.66 * s), *_eig2(*tensor), *_eig2(hyy, hxy, hxx)):
            out[..., i] = feature
            i += 1
    return out


def filter_features(image: np.ndarray, voxel_size_nm: tuple[float, float, float], sigmas: Sequence[float] = DEFAULT_SIGMAS) -> np.ndarray:
    """ilastik's standard features of a zyx volume, per z-section in 2D: shape (Z, Y, X, F), float32.

    ``F == len(feature_names(sigmas))``; definitions in the module docstring.
    """
    image = _check_volume(image, "image", "biuf")
    sig, scale = _check_sigmas(sigmas), _plane_scale(voxel_size_nm)
    return np.stack([_section_features(section, sig, scale) for section in image])


class ForestClassifier:
    """Foreground (label > 0) vs background random forest on :func:`filter_features`.

    ``voxel_size_nm`` and ``sigmas`` fix the features; apply a model only to data of that voxel
    size. ``random_state`` seeds the forest, ``fit``'s ``seed`` the voxel sampling.
    """

    def __init__(self, voxel_size_nm: tuple[float, float, float], *, sigmas: Sequence[float] = DEFAULT_SIGMAS,
                 n_estimators: int = 100, max_depth: int | None = None, random_state: int = 0, n_jobs: int = 1) -> None:
        self._scale = _plane_scale(voxel_size_nm)
        self.voxel_size_nm = tuple(float(v) for v in voxel_size_nm)
        self.sigmas = _check_sigmas(sigmas)
        if n_estimators < 1 or (max_depth is not None and max_depth < 1) or n_jobs == 0:
            raise SpecError(f"expected n_estimators >= 1, max_depth None or >= 1, n_jobs != 0; got {n_estimators}, {max_depth}, {n_jobs}")
        self.n_estimators, self.max_depth, self.random_state, self.n_jobs = n_estimators, max_depth, random_state, n_jobs
        self._forest = None

    @property
    def fitted(self) -> bool:
        return self._forest is not None

    def fit(self, images: list[np.ndarray], labels: list[np.ndarray], *, max_samples_per_class: int = 20000, seed: int = 0) -> "ForestClassifier":
        """Train on voxels of annotated patches: ``min(max_samples_per_class, #fg, #bg)`` per class."""
        from sklearn.ensemble import RandomForestClassifier

        if len(images) == 0:
            raise SpecError("no training patches: expected at least one image with its labels")
        if len(images) != len(labels):
            raise SpecError(f"expected one label volume per image, got {len(images)} images and {len(labels)} label volumes")
        if max_samples_per_class < 1:
            raise SpecError(f"max_samples_per_class must be >= 1, got {max_samples_per_class}")
        images = [_check_volume(im, f"patch {i} image", "biuf") for i, im in enumerate(images)]
        masks = [_check_volume(lab, f"patch {i} labels", "biu") > 0 for i, lab in enumerate(labels)]
        for i, (im, mask) in enumerate(zip(images, masks)):
            if im.shape != mask.shape:
                raise DataError(f"patch {i}: image shape {im.shape} differs from labels shape {mask.shape}")
        n_fg = np.array([np.count_nonzero(m) for m in masks], np.int64)
        n_bg = np.array([m.size for m in masks], np.int64) - n_fg
        for name, counts in (("foreground (label > 0)", n_fg), ("background (label 0)", n_bg)):
            if counts.sum() == 0:
                raise DataError(f"the training patches hold no {name} voxel: a classifier needs both classes")
        n = int(min(max_samples_per_class, n_fg.sum(), n_bg.sum()))

        rng = np.random.default_rng(seed)
        picked: list[list[np.ndarray]] = [[] for _ in masks]  # per patch: flat indices, bg then fg
        for counts, want in ((n_bg, False), (n_fg, True)):
            ranks = np.sort(rng.choice(int(counts.sum()), size=n, replace=False))
            starts = np.concatenate([[0], np.cumsum(counts)])
            patch_of = np.searchsorted(starts, ranks, side="right") - 1
            for p in np.unique(patch_of):
                picked[p].append(np.flatnonzero(masks[p] == want)[ranks[patch_of == p] - starts[p]])
        rows, ys = [], []
        for im, mask, idx in zip(images, masks, picked):
            idx = np.sort(np.concatenate(idx)) if idx else np.zeros(0, np.int64)
            plane = mask.shape[1] * mask.shape[2]
            for z in np.unique(idx // plane):
                in_plane = idx[idx // plane == z] - z * plane
                feats = _section_features(im[z], self.sigmas, self._scale)
                rows.append(feats.reshape(plane, -1)[in_plane])
                ys.append(mask[z].reshape(-1)[in_plane])
        forest = RandomForestClassifier(n_estimators=self.n_estimators, max_depth=self.max_depth,
                                        random_state=self.random_state, n_jobs=self.n_jobs)
        forest.fit(np.concatenate(rows), np.concatenate(ys).astype(np.uint8))
        self._forest = forest
        return self

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """Foreground probability of every voxel: float32, same shape as ``image``."""
        if self._forest is None:
            raise SpecError("this ForestClassifier is not fitted: call fit() first")
        image = _check_volume(image, "image", "biuf")
        column = list(self._forest.classes_).index(1)
        out = np.empty(image.shape, np.float32)
        for z, section in enumerate(image):  # one section's features at a time bounds memory
            feats = _section_features(section, self.sigmas, self._scale)
            out[z] = self._forest.predict_proba(feats.reshape(-1, feats.shape[-1]))[:, column].reshape(section.shape)
        return out

    def to_bytes(self) -> bytes:
        """The fitted model as bytes (a pickle: load only bytes you wrote, pickle runs code)."""
        import sklearn

        if self._forest is None:
            raise SpecError("this ForestClassifier is not fitted: nothing to store")
        params = dict(voxel_size_nm=self.voxel_size_nm, sigmas=self.sigmas, n_estimators=self.n_estimators,
                      max_depth=self.max_depth, random_state=self.random_state, n_jobs=self.n_jobs)
        payload = {"format": _FORMAT, "sklearn": sklearn.__version__, "params": params, "forest": self._forest}
        return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, data: bytes) -> "ForestClassifier":
        """A model stored by :meth:`to_bytes`."""
        try:
            payload = pickle.loads(data)
        except Exception as err:  # unpickling raises many types; all mean "not a stored model"
            raise DataError(f"not a stored ForestClassifier: {type(err).__name__}: {err}") from err
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise DataError(f"not a stored ForestClassifier: expected format {_FORMAT!r}")
        params = dict(payload["params"])
        model = cls(params.pop("voxel_size_nm"), **params)
        model._forest = payload["forest"]
        return model
