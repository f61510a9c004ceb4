"""segment-anything's automatic mask generator as a pseudo-labeller.

Weights come from a local checkpoint (``checkpoint``, the ``.pth`` files Meta publishes for
``vit_b``, ``vit_l``, ``vit_h``); nothing is downloaded. A grey EM slice is robustly scaled to
uint8 and repeated into three channels (SAM's input); SAM resizes internally. Its masks may
overlap: they are painted largest first, so a smaller mask inside a larger one stays visible,
and ids are renumbered ``1..k`` per slice.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from alseg.errors import DependencyError
from alseg.pseudolabel.base import PseudoLabelError, check_batch, robust_uint8


def to_sam_input(img: np.ndarray) -> np.ndarray:
    return np.repeat(robust_uint8(img)[..., None], 3, axis=-1)


def _plain_batched_nms(boxes, scores, idxs, iou_threshold):
    """Greedy non-maximum suppression per category in plain torch (torchvision's definition), for
    installs where torchvision's compiled operators cannot load (CPU torch beside a CUDA-built
    torchvision): segment-anything's mask generator needs it."""
    import torch

    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    # boxes of different categories never overlap once shifted apart
    shifted = boxes + (idxs.to(boxes) * (boxes.max() + 1))[:, None]
    x1, y1, x2, y2 = shifted.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = torch.argsort(scores, descending=True)
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    keep = []
    for rank in range(len(order)):
        if suppressed[rank]:
            continue
        i = order[rank]
        keep.append(i)
        rest = order[rank + 1:]
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        suppressed[rank + 1:] |= inter / (areas[i] + areas[rest] - inter) > iou_threshold
    return torch.stack(keep).to(torch.int64)


def ensure_nms(*modules: Any) -> None:
    """Use torchvision's NMS where its operators load, the plain one where they cannot, in each of
    ``modules`` (modules that imported torchvision's ``batched_nms`` by name)."""
    import torch
    from torchvision.ops.boxes import batched_nms

    try:
        batched_nms(torch.zeros((1, 4)), torch.ones(1), torch.zeros(1, dtype=torch.int64), 0.5)
    except RuntimeError:
        for module in modules:
            module.batched_nms = _plain_batched_nms


def _ensure_nms() -> None:
    import segment_anything.automatic_mask_generator as amg

    ensure_nms(amg)


def paint(masks: list[dict[str, Any]], shape: tuple[int, ...], min_area: int = 0) -> np.ndarray:
    """Overlapping boolean masks to one instance map: largest first, consecutive ids."""
    out = np.zeros(shape, dtype=np.uint32)
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i]["area"]))
    k = 0
    for i in order:
        seg = np.asarray(masks[i]["segmentation"], dtype=bool)
        if seg.shape != shape:
            raise PseudoLabelError(f"SAM returned a mask of shape {seg.shape} for a slice of shape {shape}")
        if seg.sum() < max(min_area, 1):
            continue
        k += 1
        out[seg] = k
    # masks painted over completely leave gaps in the numbering
    ids = np.unique(out[out > 0])
    lut = np.zeros(k + 1, dtype=np.uint32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    return lut[out]


class SAMLabeller:
    name = "sam"

    def __init__(self, spec: Any, *, device: str | None = None, model: Any = None) -> None:
        try:
            import torch
            from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
        except ImportError as err:  # pragma: no cover - a hard dependency
            raise DependencyError("the sam pseudo-labeller needs segment-anything: pip install segment-anything") from err
        self.spec = spec
        if model is None:
            if not os.path.isfile(spec.checkpoint):
                raise DependencyError(f"SAM checkpoint not found at {spec.checkpoint}: download sam_{spec.model_type} weights "
                                      "(https://github.com/facebookresearch/segment-anything#model-checkpoints) and give their local path")
            try:
                model = sam_model_registry[spec.model_type](checkpoint=spec.checkpoint)
            except Exception as err:
                raise DependencyError(f"{spec.checkpoint} is not a {spec.model_type} SAM checkpoint: {err}") from err
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(self.device).eval()
        _ensure_nms()
        self.generator = SamAutomaticMaskGenerator(
            model, points_per_side=spec.points_per_side, pred_iou_thresh=spec.pred_iou_thresh,
            stability_score_thresh=spec.stability_score_thresh)

    def __call__(self, slices: np.ndarray) -> np.ndarray:
        import torch

        arr = check_batch(slices)
        out = np.zeros(arr.shape, dtype=np.uint32)
        for i, img in enumerate(arr):
            try:
                with torch.inference_mode():
                    masks = self.generator.generate(to_sam_input(img))
            except Exception as err:
                raise PseudoLabelError(f"SAM failed on slice {i} of the batch: {type(err).__name__}: {err}") from err
            out[i] = paint(masks, img.shape, self.spec.min_mask_area_px)
        return out
