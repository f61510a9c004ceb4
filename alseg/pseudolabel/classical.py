"""A weight-free pseudo-labeller for mitochondria in EM: dark, membrane-bounded, compact organelles.

Per slice: robust intensity scaling, Gaussian denoising, optional local contrast (CLAHE), then the
dark side of a quantile, global (Otsu) or local threshold; a disk opening removes membranes
(dark too, but thin), holes are filled, small or non-compact objects dropped, and a
distance-transform watershed splits touching organelles (with ``filter_pieces``, the watershed
splits first and its pieces are tested: touching organelles are not convex together). Crude next to a foundation model, but
it needs no weights and gives nnU-Net something to pretrain on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from alseg.pseudolabel.base import PseudoLabelError, check_batch, robust_unit


class ClassicalLabeller:
    name = "classical"

    def __init__(self, spec: Any, *, pixel_size_nm: float = 8.0) -> None:
        if not pixel_size_nm > 0:
            raise PseudoLabelError(f"pixel size must be positive, got {pixel_size_nm} nm")
        self.spec = spec
        self.pixel_size_nm = float(pixel_size_nm)

    def px(self, nm: float) -> float:
        return nm / self.pixel_size_nm

    def __call__(self, slices: np.ndarray) -> np.ndarray:
        arr = check_batch(slices)
        out = np.zeros(arr.shape, dtype=np.uint32)
        for i, img in enumerate(arr):
            try:
                out[i] = self.segment(img)
            except Exception as err:  # a failing slice fails the batch, loudly
                raise PseudoLabelError(f"classical pseudo-labelling failed on slice {i} of the batch: {err}") from err
        return out

    def mask(self, img: np.ndarray) -> np.ndarray:
        """The dark, opened and hole-filled pixels of a slice, before any object is tested."""
        from skimage import exposure, filters, morphology

        p = self.spec
        unit = robust_unit(img)
        if np.ptp(unit) == 0:
            return np.zeros(unit.shape, bool)
        if p.denoise_sigma_nm > 0:
            unit = ndimage.gaussian_filter(unit, self.px(p.denoise_sigma_nm))
        window = int(min(max(round(self.px(p.contrast_window_nm)), 3), max(min(unit.shape) - 1, 3)))
        if p.local_contrast:
            unit = exposure.equalize_adapthist(np.clip(unit, 0, 1), kernel_size=window, clip_limit=0.01)
        if p.threshold == "quantile":
            dark = unit < np.quantile(unit, p.dark_fraction)
        elif p.threshold == "otsu":
            dark = unit < filters.threshold_otsu(unit)
        else:
            block = window if window % 2 else window + 1
            dark = unit < filters.threshold_local(unit, block_size=block, offset=0.02)
        radius = int(round(self.px(p.opening_radius_nm)))
        if radius:
            dark = ndimage.binary_opening(dark, structure=morphology.disk(radius))
        return ndimage.binary_fill_holes(dark)

    def passing(self, labels: np.ndarray) -> np.ndarray:
        """Per id of ``labels`` (0 included, never kept): whether the object is large and compact enough."""
        from skimage import measure

        keep = np.zeros(int(labels.max()) + 1, bool)
        min_area = self.px(self.px(self.spec.min_area_nm2))
        for region in measure.regionprops(labels):
            keep[region.label] = region.area >= min_area and region.solidity >= self.spec.min_solidity
        return keep

    def foreground(self, img: np.ndarray) -> np.ndarray:
        """The pixels the labeller keeps: the mask's objects that pass (or, with ``filter_pieces``, its
        watershed pieces that do)."""
        if self.spec.filter_pieces:
            return self.segment(img) > 0
        from skimage import measure

        labels = measure.label(self.mask(img))
        return self.passing(labels)[labels]

    def segment(self, img: np.ndarray) -> np.ndarray:
        from skimage.feature import peak_local_max
        from skimage.segmentation import relabel_sequential, watershed

        # with filter_pieces, whole components are split first and each piece is tested: touching
        # organelles fail the solidity test together but pass it one by one
        fg = self.mask(img) if self.spec.filter_pieces else self.foreground(img)
        if not fg.any():
            return np.zeros(fg.shape, np.uint32)
        dist = ndimage.distance_transform_edt(fg)
        components, _ = ndimage.label(fg)
        peaks = peak_local_max(dist, min_distance=max(1, int(round(self.px(self.spec.watershed_min_distance_nm)))), labels=components, exclude_border=False)
        markers = np.zeros(fg.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = watershed(-dist, markers=markers, mask=fg)
        # components without a peak (rare: flat plateaus) keep their own id
        missing = fg & (labels == 0)
        if missing.any():
            extra, _ = ndimage.label(missing)
            labels = np.where(missing, extra + labels.max(), labels)
        if self.spec.filter_pieces:
            labels = np.where(self.passing(labels)[labels], labels, 0)
        if labels.max() >= 2**32 - 1:
            raise PseudoLabelError("too many objects in one slice")
        return relabel_sequential(labels.astype(np.uint32))[0]
