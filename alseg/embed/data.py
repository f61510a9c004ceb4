"""2D slices of candidate patches as MAE inputs: read, normalise, pad, resize; training augmentation.

A patch's slices are its ``slices_per_patch`` evenly spaced z sections. Each is read over the
patch's valid box, mapped through the volume's global intensity normalisation (so patches stay
comparable), padded by mirroring to the nominal patch size (edge patches), and resized to
``img_size`` x ``img_size`` (area averaging when shrinking, bilinear when growing). Inputs are
standardised as ``(x - 0.5) / 0.25`` of the normalised intensity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# re-exported (they lived here): torch-free, so that alseg plan sizes the MAE's inputs without torch
from alseg.embed.sizes import granularity as granularity, input_side as input_side
from alseg.geometry import Box
from alseg.progress import progress_bar

MEAN, STD = 0.5, 0.25


def slice_indices(valid: Box, slices: int) -> list[int]:
    """``slices`` evenly spaced z indices inside ``valid`` (repeats when the patch is thinner)."""
    z0, z1 = valid.start[0], valid.stop[0]
    return [int(v) for v in np.round(np.linspace(z0, z1 - 1, slices)).astype(int)]


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, 1, H, W)`` to ``(N, 1, size, size)``."""
    if images.shape[-2:] == (size, size):
        return images
    shrink = images.shape[-2] >= size and images.shape[-1] >= size
    if shrink:
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def prepare(sections: np.ndarray, norm: Any, nominal_yx: Sequence[int], img_size: int) -> torch.Tensor:
    """Raw sections ``(S, h, w)`` of a patch to standardised model inputs ``(S, 1, img, img)``."""
    x = norm(sections).astype(np.float32)
    pad = [(0, 0)] + [(0, int(n) - s) for s, n in zip(x.shape[1:], nominal_yx)]
    if any(p[1] > 0 for p in pad):
        x = np.pad(x, pad, mode="symmetric")
    t = torch.from_numpy(np.ascontiguousarray(x))[:, None]
    return (resize(t, img_size) - MEAN) / STD


def read_sections(volume: Any, valid: Box, zs: Sequence[int]) -> np.ndarray:
    """The sections ``zs`` of ``valid`` (one read of the z range they span)."""
    lo, hi = min(zs), max(zs) + 1
    block = volume.read(Box((lo, *valid.start[1:]), (hi, *valid.stop[1:])))
    return block[[z - lo for z in zs]]


def patch_inputs(volume: Any, valid: Box, nominal_yx: Sequence[int], norm: Any, slices: int, img_size: int) -> torch.Tensor:
    """Model inputs of one candidate patch (its ``valid`` box, its nominal y x size):
    ``(slices, 1, img_size, img_size)``."""
    return prepare(read_sections(volume, valid, slice_indices(valid, slices)), norm, nominal_yx, img_size)


def context_box(patch: Any, context: float, bounds: Box, avoid: Box | None) -> tuple[Box, tuple[int, int]]:
    """The patch's valid box widened in y and x to ``context`` times its nominal side, centred on
    it and shifted to stay inside ``bounds`` (the volume); its nominal y x size. The patch itself
    when ``context`` is 1 or the widened box would reach into ``avoid`` (a held-out box)."""
    nominal = tuple(int(n) for n in patch.box.shape[1:])
    if context <= 1.0:
        return patch.valid, nominal
    want = [int(round(n * context)) for n in nominal]
    start, stop = [patch.valid.start[0]], [patch.valid.stop[0]]
    for a, w in zip((1, 2), want):
        lo, hi = bounds.start[a], bounds.stop[a]
        w = min(w, hi - lo)
        centre = (patch.box.start[a] + patch.box.stop[a]) // 2
        s0 = min(max(lo, centre - w // 2), hi - w)
        start.append(s0)
        stop.append(s0 + w)
    box = Box(tuple(start), tuple(stop))
    if avoid is not None and box.overlaps(avoid):
        return patch.valid, nominal
    return box, tuple(want)


def training_slices(volume: Any, patches: Sequence[Any], norm: Any, img_size: int, max_slices: int, seed: int,
                    progress: bool = False, *, context: float = 1.0, avoid: Box | None = None) -> torch.Tensor:
    """Up to ``max_slices`` pool sections drawn without replacement (seeded), prepared, as float16
    ``(N, 1, S, S)``: each its patch's section, or with ``context`` > 1 the area ``context`` times
    the patch's side around it (:func:`context_box`), at the same pixel size
    (``S = round(img_size * context)``), so training crops can be drawn at random positions."""

    pairs = [(i, z) for i, p in enumerate(patches) for z in range(p.valid.start[0], p.valid.stop[0])]
    if len(pairs) > max_slices:
        rng = np.random.default_rng(seed)
        pairs = [pairs[j] for j in sorted(rng.choice(len(pairs), max_slices, replace=False))]
    side = int(round(img_size * max(1.0, context)))
    out = torch.empty((len(pairs), 1, side, side), dtype=torch.float16)
    by_patch: dict[int, list[tuple[int, int]]] = {}
    for row, (i, z) in enumerate(pairs):
        by_patch.setdefault(i, []).append((row, z))
    bounds = Box((0, 0, 0), tuple(volume.shape))
    with progress_bar(total=len(pairs), desc="MAE training slices", unit="slice", disable=not progress) as bar:
        for i, rows in by_patch.items():
            box, nominal = context_box(patches[i], context, bounds, avoid)
            imgs = prepare(read_sections(volume, box, [z for _, z in rows]), norm, nominal, side)
            out[[r for r, _ in rows]] = imgs.to(torch.float16)
            bar.update(len(rows))
    return out


def centre_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` of ``(N, 1, H, W)`` images."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    y0, x0 = (h - size) // 2, (w - size) // 2
    return images[..., y0 : y0 + size, x0 : x0 + size]


def crop_augment(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """A ``size`` x ``size`` crop at a random position of each image (no rescaling: the pixel size
    is kept), flips and 90-degree turns; parameters drawn on the CPU from ``generator`` for the
    whole batch, in a fixed order, as :func:`augment` does."""
    n, _, h, w = images.shape
    u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
    out = torch.empty((n, images.shape[1], size, size), dtype=images.dtype)
    for k in range(n):
        y0 = int(float(u[k, 0]) * (h - size + 1))
        x0 = int(float(u[k, 1]) * (w - size + 1))
        crop = images[k, :, y0 : y0 + size, x0 : x0 + size]
        if u[k, 2] < 0.5:
            crop = torch.flip(crop, dims=(-1,))
        out[k] = torch.rot90(crop, int(float(u[k, 3]) * 4) % 4, dims=(-2, -1))
    return out


def augment(images: torch.Tensor, generator: torch.Generator, *, min_scale: float = 0.35) -> torch.Tensor:
    """Random resized crop (scale ``min_scale``-1, aspect 3/4-4/3), flips and 90-degree turns.

    Parameters are drawn on the CPU from ``generator`` for the whole batch, in a fixed order, so
    the same generator state gives the same batch on every rank and device.
    """
    n, _, h, w = images.shape
    u = torch.rand(n, 6, generator=generator, dtype=torch.float64)
    out = torch.empty_like(images)
    for k in range(n):
        scale = min_scale + (1.0 - min_scale) * float(u[k, 0])
        aspect = float(np.exp(np.log(3 / 4) + (np.log(4 / 3) - np.log(3 / 4)) * float(u[k, 1])))
        ch = max(1, min(h, int(round(np.sqrt(scale * h * w / aspect)))))
        cw = max(1, min(w, int(round(np.sqrt(scale * h * w * aspect)))))
        y0 = int(float(u[k, 2]) * (h - ch + 1))
        x0 = int(float(u[k, 3]) * (w - cw + 1))
        crop = images[k : k + 1, :, y0 : y0 + ch, x0 : x0 + cw].float()
        crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
        if u[k, 4] < 0.5:
            crop = torch.flip(crop, dims=(-1,))
        crop = torch.rot90(crop, int(float(u[k, 5]) * 4) % 4, dims=(-2, -1))
        out[k] = crop[0].to(out.dtype)
    return out
