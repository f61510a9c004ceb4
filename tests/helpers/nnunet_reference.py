"""A plain reference for whole-volume nnU-Net prediction: every sliding-window tile of nnU-Net's own
placement, nnU-Net's own network call and Gaussian, summed in float32 over the whole array.

nnU-Net's ``predict_sliding_window_return_logits`` does the same but accumulates in float16, which
flips the argmax of a few near-tie voxels (about 0.1 % on a barely trained model); this reference
isolates what alseg's blockwise prediction must reproduce. Blockwise prediction sums the same tiles
in another order (a block's overhang is added to its neighbour's sum), so float32 rounding may still
flip a voxel whose two best classes tie to within rounding: ``assert_same_classes`` allows exactly
those and no other.
"""

from __future__ import annotations

import numpy as np
import torch


def whole_volume_logits(predictor, data: np.ndarray) -> np.ndarray:
    """Gaussian-weighted mean logits of every tile, (classes, *data.shape), float32."""
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
    return acc / weight


def whole_volume_classes(predictor, data: np.ndarray) -> np.ndarray:
    return whole_volume_logits(predictor, data).argmax(0).astype(np.uint8)


def assert_same_classes(classes: np.ndarray, logits: np.ndarray, rtol: float = 1e-5, max_ties: float = 1e-3) -> None:
    """``classes`` is the argmax of ``logits`` wherever the best class leads every other by more
    than float32 summation order can move them (``rtol`` of the logits' magnitude); at the rest any
    class within that distance of the best is right. Ties must stay rare (at most ``max_ties`` of
    the voxels), or the comparison would test little. Prints how many voxels were ties."""
    assert classes.shape == logits.shape[1:], f"class map {classes.shape} against logits {logits.shape}"
    best = logits.max(0)
    tol = rtol * np.maximum(np.abs(best), 1.0)
    picked = np.take_along_axis(logits, classes[None].astype(np.intp), 0)[0]
    wrong = picked < best - tol
    assert not wrong.any(), f"{int(wrong.sum())} voxels differ from the reference away from any tie, e.g. {np.argwhere(wrong)[:3].tolist()}"
    tie = (logits >= (best - tol)[None]).sum(0) > 1
    assert tie.mean() <= max_ties, f"{tie.mean():.2%} of the voxels are ties: the comparison would test little"
    print(f"{int(tie.sum())} near-tie voxels, {int((classes != logits.argmax(0)).sum())} of them resolved the other way")


def wavefront_logits(predictor, data: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
    """Blockwise global tiling as it first ran, in wavefront order, written plainly: a block's
    voxels are the Gaussian-weighted sums of the tiles that start in it (in nnU-Net's order), then
    of each lower neighbour's tiles (neighbour offsets in ``itertools.product`` order), divided.
    The same float32 operations in the same order as alseg's two-phase version, so its result must
    equal this one bit for bit."""
    import itertools

    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None]
    patch = tuple(predictor.configuration_manager.patch_size)
    gauss = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float32, device=torch.device("cpu")).numpy()
    n_cls = predictor.label_manager.num_segmentation_heads
    grid = tuple(-(-s // b) for s, b in zip(data.shape, block))
    own: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, tuple[int, ...]]] = {}
    slicers = list(predictor._internal_get_sliding_window_slicers(data.shape))
    with torch.inference_mode():
        for index in itertools.product(*map(range, grid)):
            lo = tuple(i * b for i, b in zip(index, block))
            mine = [sl for sl in slicers if all(lo[a] <= sl[a + 1].start < lo[a] + block[a] for a in range(3))]
            hi = tuple(max([min(lo[a] + block[a], data.shape[a])] + [sl[a + 1].stop for sl in mine]) for a in range(3))
            acc = np.zeros((n_cls, *(h - l for h, l in zip(hi, lo))), np.float32)
            weight = np.zeros(acc.shape[1:], np.float32)
            for sl in mine:
                local = tuple(slice(sl[a + 1].start - lo[a], sl[a + 1].stop - lo[a]) for a in range(3))
                out = predictor._internal_maybe_mirror_and_predict(x[sl][None])[0].float().numpy()
                acc[(slice(None),) + local] += out * gauss
                weight[local] += gauss
            own[index] = (acc, weight, lo)
    logits = np.zeros((n_cls, *data.shape), np.float32)
    for index, (acc, weight, lo) in own.items():
        stop = tuple(min(l + b, s) for l, b, s in zip(lo, block, data.shape))
        region = tuple(slice(0, t - l) for t, l in zip(stop, lo))
        total, w = acc[(slice(None),) + region].copy(), weight[region].copy()
        for d in itertools.product((0, 1), repeat=3):
            nb = tuple(i - di for i, di in zip(index, d))
            if not any(d) or min(nb) < 0:
                continue
            nacc, nweight, nlo = own[nb]
            # the neighbour's sums over this block's region (where they reach)
            src = tuple(slice(l - n, min(t - n, s)) for l, t, n, s in zip(lo, stop, nlo, nweight.shape))
            if any(s.stop <= s.start for s in src):
                continue
            dst = tuple(slice(0, s.stop - s.start) for s in src)
            total[(slice(None),) + dst] += nacc[(slice(None),) + src]
            w[dst] += nweight[src]
        logits[(slice(None),) + tuple(slice(l, t) for l, t in zip(lo, stop))] = total / w
    return logits
