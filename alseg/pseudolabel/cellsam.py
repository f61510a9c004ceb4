"""CellSAM (Israel et al.) as a pseudo-labeller for grey EM slices.

CellSAM is not on PyPI. Install it from its repository into alseg's environment (keep CPU or
CUDA torch as it is: install without dependencies, then what it imports)::

    .venv/bin/pip install --no-deps git+https://github.com/vanvalenlab/cellSAM.git
    .venv/bin/pip install segment-anything   # CellSAM builds on it

Weights: pass a local file as ``weights_path`` (loaded with ``cellSAM.get_local_model``), or let
CellSAM fetch its published weights, which needs a DeepCell access token in the environment
variable ``DEEPCELL_ACCESS_TOKEN`` (create one at https://users.deepcell.org); machines without
internet access need the local file.

Input conventions handled here: CellSAM takes an (H, W, 3) float image in [0, 1] with channels
(unused, nuclear, whole-cell); a grey EM slice goes, robustly scaled, into the whole-cell
channel, and CellSAM's own normalisation is switched off so the scaling is ours and
reproducible. CellSAM resizes internally; masks come back at the slice's size.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from alseg.errors import DependencyError
from alseg.pseudolabel.base import PseudoLabelError, check_batch, check_masks, robust_unit

TOKEN_VARIABLE = "DEEPCELL_ACCESS_TOKEN"
INSTALL = "pip install --no-deps git+https://github.com/vanvalenlab/cellSAM.git && pip install segment-anything"


def to_cellsam_input(img: np.ndarray) -> np.ndarray:
    """A grey slice as CellSAM's (H, W, 3) float32 input: robust [0, 1] in the whole-cell channel."""
    out = np.zeros((*img.shape, 3), dtype=np.float32)
    out[..., 2] = robust_unit(img)
    return out


class CellSAMLabeller:
    name = "cellsam"

    def __init__(self, spec: Any, *, device: str | None = None) -> None:
        try:
            import cellSAM
        except ImportError as err:
            raise DependencyError(f"the cellsam pseudo-labeller needs the CellSAM package, which is not on PyPI: {INSTALL}") from err
        self.spec = spec
        self._cellsam = cellSAM
        self.device = device or ("cuda" if _cuda() else "cpu")
        if spec.weights_path is not None:
            if not os.path.isfile(spec.weights_path):
                raise DependencyError(f"CellSAM weights not found at {spec.weights_path}")
            self.model = cellSAM.get_local_model(spec.weights_path)
        elif os.environ.get(TOKEN_VARIABLE):
            self.model = cellSAM.get_model()
        else:
            raise DependencyError(f"CellSAM needs weights: set pseudolabel.weights_path to a local weights file, or export "
                                  f"{TOKEN_VARIABLE} (a DeepCell access token from https://users.deepcell.org) to download them")
        self.model = self.model.to(self.device).eval() if hasattr(self.model, "to") else self.model

    def __call__(self, slices: np.ndarray) -> np.ndarray:
        arr = check_batch(slices)
        out = np.zeros(arr.shape, dtype=np.uint32)
        for i, img in enumerate(arr):
            try:
                mask, _, _ = self._cellsam.segment_cellular_image(
                    to_cellsam_input(img), model=self.model, normalize=False, bbox_threshold=self.spec.bbox_threshold, device=self.device)
            except Exception as err:
                raise PseudoLabelError(f"CellSAM failed on slice {i} of the batch: {type(err).__name__}: {err}") from err
            if mask is None:
                raise PseudoLabelError(f"CellSAM returned no mask for slice {i} of the batch")
            out[i] = check_masks(np.asarray(mask)[None], img[None], "CellSAM")[0]
        return out


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        return False
