"""A small OME-Zarr volume whose patches differ by construction: two background textures (fine and
coarse grain, same mean and contrast) and, in half of the patches of each texture, mitochondria
(a dark membrane ring around a striped interior whose mean is the background's). So neither the
mean intensity nor the contrast tells the kinds apart; structure does."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from alseg.geometry import Box
from alseg.io.omezarr import create_image, create_labels
from alseg.pyramid import build_pyramid

PATCH = (6, 64, 64)
GRID = (1, 8, 8)


def _texture(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    t = ndi.gaussian_filter(rng.normal(size=shape), (0, sigma, sigma))
    return (t - t.mean()) / t.std()


def two_kinds_volume(url: str, seed: int = 0) -> np.ndarray:
    """Write the volume (uint8 image, label ``mitochondria``) at ``url``; returns the label array."""
    rng = np.random.default_rng(seed)
    shape = tuple(p * g for p, g in zip(PATCH, GRID))
    img = np.empty(shape, np.float64)
    half = shape[2] // 2
    img[..., :half] = _texture(rng, (shape[0], shape[1], half), 1.0)
    img[..., half:] = _texture(rng, (shape[0], shape[1], shape[2] - half), 4.0)
    labels = np.zeros(shape, np.uint32)
    yy, xx = np.mgrid[: PATCH[1], : PATCH[2]]
    obj = 0
    for gx in range(GRID[2]):
        rows = rng.permutation(GRID[1])[: GRID[1] // 2]  # half the patches of each column hold mitochondria
        for gy in rows:
            for _ in range(int(rng.integers(1, 3))):
                obj += 1
                cy, cx = rng.uniform(18, PATCH[1] - 18, size=2)
                ry, rx = rng.uniform(9, 15, size=2)
                angle = rng.uniform(0, np.pi)
                dy, dx = yy - cy, xx - cx
                u = (dy * np.cos(angle) + dx * np.sin(angle)) / ry
                v = (-dy * np.sin(angle) + dx * np.cos(angle)) / rx
                r = np.sqrt(u**2 + v**2)
                inside, ring = r < 1.0, (r >= 0.8) & (r < 1.0)
                stripes = np.sin(2 * np.pi * (dy * np.cos(angle) + dx * np.sin(angle)) / 5.0)
                sl = (slice(None), slice(gy * PATCH[1], (gy + 1) * PATCH[1]), slice(gx * PATCH[2], (gx + 1) * PATCH[2]))
                block = img[sl]
                block[:, inside & ~ring] = 0.3 * block[:, inside & ~ring] + 1.2 * stripes[inside & ~ring]
                block[:, ring] = -2.5 + 0.3 * block[:, ring]
                labels[sl][:, inside] = obj
    data = np.clip(128 + 30 * img, 0, 255).astype(np.uint8)
    vol = create_image(url, shape=shape, dtype="uint8", chunks=(PATCH[0], 128, 128), voxel_size_nm=(30, 8, 8), levels=2)
    vol.write(Box((0, 0, 0), shape), data)
    build_pyramid(url, kind="mean")
    lab = create_labels(url, "mitochondria")
    lab.write(lab.bounds, labels)
    return labels
