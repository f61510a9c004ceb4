"""TEST DOUBLE of the CellSAM package (github.com/vanvalenlab/cellSAM), which cannot be installed
here (not on PyPI, weights behind a token). It mirrors the published Python API that alseg calls:
``get_local_model(path)``, ``get_model()`` and ``segment_cellular_image(img, model, normalize,
bbox_threshold, device) -> (mask, embedding, boxes)``, and it asserts CellSAM's input
conventions (an (H, W, 3) float image in [0, 1], nuclear channel empty). Its "model" thresholds
the whole-cell channel and labels the dark components, so results are checkable.
"""

from __future__ import annotations

import os

import numpy as np
from scipy import ndimage

IS_TEST_DOUBLE = True
calls: list[dict] = []


class _Model:
    def __init__(self, source: str) -> None:
        self.source = source
        self.device = "cpu"

    def to(self, device):
        self.device = device
        return self

    def eval(self):
        return self


def get_local_model(path: str) -> _Model:
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    return _Model(path)


def get_model(model=None) -> _Model:
    if not os.environ.get("DEEPCELL_ACCESS_TOKEN"):
        raise ValueError("DEEPCELL_ACCESS_TOKEN not found")
    return _Model("download")


def segment_cellular_image(img, model=None, normalize=False, postprocess=False, remove_boundaries=False,
                           bounding_boxes=None, bbox_threshold=0.4, device="cpu"):
    img = np.asarray(img)
    assert img.ndim == 3 and img.shape[-1] == 3, f"CellSAM takes (H, W, 3), got {img.shape}"
    assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() <= 1.0
    assert not img[..., 1].any(), "EM has no nuclear channel"
    calls.append({"shape": img.shape, "normalize": normalize, "bbox_threshold": bbox_threshold, "device": device})
    if os.environ.get("CELLSAM_DOUBLE_FAIL"):
        raise RuntimeError("simulated CellSAM failure")
    mask, _ = ndimage.label(img[..., 2] < 0.5)
    return mask.astype(np.int32), np.zeros((1, 4)), None
