"""2D instances to 3D: link instances of consecutive slices by overlap, with optimal matching.

Two instances in neighbouring slices are linked when an optimal one-to-one assignment (maximum
summed IoU, :func:`scipy.optimize.linear_sum_assignment`) pairs them with IoU of at least
``min_iou``. So a split (one object becomes two) continues the object through the larger
overlap and starts a new one for the other part; a merge ends the smaller branch; objects that
appear or vanish start or end. :func:`link_stack` is the in-memory version; the blockwise
pipeline (:mod:`alseg.pseudolabel.volume`) uses the same :func:`match_planes` inside blocks and
across block faces.
"""

from __future__ import annotations

import numpy as np


def match_planes(a: np.ndarray, b: np.ndarray, min_iou: float, *, measure: str = "iou") -> list[tuple[int, int]]:
    """Optimally matched ``(id in a, id in b)`` pairs of two label arrays of one shape scoring at least
    ``min_iou``: by IoU, or with ``measure="overlap"`` by the overlap coefficient
    ``|a & b| / min(|a|, |b|)`` (cross-sections of one object on the two sides of a tile border
    differ where its outline curves; a narrow row inside a wide one still belongs to it)."""
    from scipy.optimize import linear_sum_assignment

    if a.shape != b.shape:
        raise ValueError(f"planes of shapes {a.shape} and {b.shape} cannot be matched")
    fa, fb = a.ravel(), b.ravel()
    both = (fa > 0) & (fb > 0)
    if not both.any():
        return []
    pairs, inter = np.unique(np.stack([fa[both], fb[both]]).astype(np.uint64), axis=1, return_counts=True)
    ids_a, size_a = np.unique(fa[fa > 0], return_counts=True)
    ids_b, size_b = np.unique(fb[fb > 0], return_counts=True)
    sa = size_a[np.searchsorted(ids_a, pairs[0])]
    sb = size_b[np.searchsorted(ids_b, pairs[1])]
    if measure == "iou":
        iou = inter / (sa + sb - inter)
    elif measure == "overlap":
        iou = inter / np.minimum(sa, sb)
    else:
        raise ValueError(f"unknown overlap measure {measure!r}")
    keep = iou >= min_iou
    if not keep.any():
        return []
    pa, pb, iou = pairs[0][keep], pairs[1][keep], iou[keep]
    ua, ia = np.unique(pa, return_inverse=True)
    ub, ib = np.unique(pb, return_inverse=True)
    weight = np.zeros((len(ua), len(ub)))
    weight[ia, ib] = iou
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return [(int(ua[r]), int(ub[c])) for r, c in zip(rows, cols) if weight[r, c] >= min_iou]


def link_stack(masks: np.ndarray, min_iou: float, min_size_vox: int = 0, *, measure: str = "iou") -> np.ndarray:
    """3D instances (uint32, consecutive ids in order of first appearance) from per-slice 2D instances."""
    from alseg.postprocess.stitch import UnionFind

    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected a stack of 2D masks (Z, Y, X), got shape {masks.shape}")
    unique = np.zeros(masks.shape, dtype=np.int64)
    offset = 0
    for z, m in enumerate(masks):
        unique[z] = np.where(m > 0, m.astype(np.int64) + offset, 0)
        offset += int(m.max()) if m.size else 0
    uf = UnionFind()
    for z in range(len(masks) - 1):
        for a, b in match_planes(unique[z], unique[z + 1], min_iou, measure=measure):
            uf.union(a, b)
    ids = np.unique(unique[unique > 0])
    roots = np.array([uf.find(int(i)) for i in ids], dtype=np.int64)
    # consecutive ids by each object's first (smallest) member
    order: dict[int, int] = {}
    for r in roots:
        order.setdefault(int(r), len(order) + 1)
    lut = np.zeros(offset + 1, dtype=np.uint32)
    lut[ids] = [order[int(r)] for r in roots]
    out = lut[unique]
    if min_size_vox:
        sizes = np.bincount(out.ravel())
        small = sizes < min_size_vox
        small[0] = False
        out[small[out]] = 0
        from skimage.segmentation import relabel_sequential

        out = relabel_sequential(out)[0].astype(np.uint32)
    return out
