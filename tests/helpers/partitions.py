"""Label maps compared as partitions: the same objects whatever their ids."""

from __future__ import annotations

import numpy as np


def same_partition(a, b) -> bool:
    """True when ``a`` and ``b`` have the same background and the same objects, up to relabelling."""
    if not np.array_equal(a > 0, b > 0):
        return False
    fg = a > 0
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[fg])) == len(np.unique(b[fg]))
