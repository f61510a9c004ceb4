"""The embedding model's input size, from the spec alone: plain arithmetic, no torch.

Kept apart from :mod:`alseg.embed.data` (which needs torch to read and resize sections) so that
``alseg plan`` sizes the MAE's inputs without loading torch; :mod:`alseg.embed.data` re-exports both.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any


def granularity(spec: Any) -> int:
    """The input side must be a multiple of this: the conv MAE's mask block and stride, or the ViT's patch."""
    if spec.model == "conv":
        return math.lcm(int(spec.mask_block_px), 8)
    size = spec.backbone_args.get("patch_size")
    if size is None:
        found = re.search(r"patch(\d+)", spec.backbone)
        size = int(found.group(1)) if found else 16
    return int(size)


def input_side(spec: Any, patch_yx: Sequence[int], voxel_yx_nm: Sequence[float]) -> int:
    """The model's square input side: ``spec.img_size_px`` when given, else the patch's larger y-x
    side resampled to ``spec.pixel_size_nm``, rounded to the nearest multiple of :func:`granularity`
    (at least one)."""
    if spec.img_size_px is not None:
        return int(spec.img_size_px)
    g = granularity(spec)
    side = max(int(n) * float(v) for n, v in zip(patch_yx, voxel_yx_nm)) / float(spec.pixel_size_nm)
    return int(max(g, g * round(side / g)))
