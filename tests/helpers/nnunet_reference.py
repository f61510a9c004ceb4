"""A plain reference for whole-volume nnU-Net prediction: every sliding-window tile of nnU-Net's own
placement, nnU-Net's own network call and Gaussian, summed in float32 over the whole array.

nnU-Net's ``predict_sliding_window_return_logits`` does the same but accumulates in float16, which
flips the argmax of a few near-tie voxels (about 0.1 % on a barely trained model); this reference
isolates what alseg's blockwise prediction must reproduce exactly.
"""

from __future__ import annotations

import numpy as np
import torch


def whole_volume_classes(predictor, data: np.ndarray) -> np.ndarray:
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None]
    patch = tuple(predictor.configuration_manager.patch_size)
    gauss = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float32, device=torch.device("cpu")).numpy()
    acc = np.zeros((predictor.label_manager.num_segmentation_heads, *data.shape), np.float32)
    weight = np.zeros(data.shape, np.float32)
    with torch.inference_mode():
        for sl in predictor._internal_get_sliding_window_slicers(data.shape):
            out = predictor._internal_maybe_mirror_and_predict(x[sl][None])[0].float().numpy()
            acc[sl] += out * gauss
            weight[sl[1:]] += gauss
    return (acc / weight).argmax(0).astype(np.uint8)
