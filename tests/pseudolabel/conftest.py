"""Synthetic EM-like slices for the pseudo-label tests."""

from __future__ import annotations

import numpy as np


def em_like(shape=(6, 96, 96), seed=0, disks=((30, 30, 10), (60, 66, 12), (20, 75, 8)), noise=6.0, membranes=True):
    """Bright cytoplasm with dark round organelles drifting slowly in z and thin dark membranes."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    img = np.full(shape, 190.0)
    for k, (cy, cx, r) in enumerate(disks):
        img[(y - cy) ** 2 + (x - (cx + z * (1 if k % 2 else -1))) ** 2 <= r * r] = 60.0
    if membranes:
        img[:, :, 47:49] = 40.0  # a membrane: dark but two pixels thin
        img[:, 5:7, :] = 40.0
    img += rng.normal(0, noise, shape)
    return np.clip(img, 0, 255).astype(np.uint8)
