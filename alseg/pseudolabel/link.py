"""2D instances to 3D: link instances of consecutive slices by overlap, with optimal matching.

Two instances in neighbouring slices are linked when an optimal one-to-one assignment (maximum
summed IoU, :func:`scipy.optimize.linear_sum_assignment`) pairs them with IoU of at least
``min_iou``. So a split (one object becomes two) continues the object through the larger
overlap and starts a new one for the other part; a merge ends the smaller branch; objects that
appear or vanish start or end. :func:`link_stack` is the in-memory version; the blockwise
pipeline (:mod:`alseg.pseudolabel.volume`) uses the same :func:`match_planes` inside blocks and
across block faces. With gap closing (``link_gap: 1``), a piece left without a link to the next
section is matched, by the same rule, to a piece two sections on left without a link back: a
section where the labeller missed the object no longer cuts it in two.
"""

from __future__ import annotations

import numpy as np


def plane_overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every overlapping ``(id in a, id in b)`` pair of two label arrays of one shape with its
    intersection in pixels."""
    if a.shape != b.shape:
        raise ValueError(f"planes of shapes {a.shape} and {b.shape} cannot be matched")
    fa, fb = a.ravel(), b.ravel()
    both = (fa > 0) & (fb > 0)
    if not both.any():
        empty = np.zeros(0, np.uint64)
        return empty, empty, np.zeros(0, np.int64)
    pairs, inter = np.unique(np.stack([fa[both], fb[both]]).astype(np.uint64), axis=1, return_counts=True)
    return pairs[0], pairs[1], inter


def score(inter, size_a, size_b, measure: str):
    """IoU, or with ``measure="overlap"`` the overlap coefficient ``|a & b| / min(|a|, |b|)``."""
    if measure == "iou":
        return inter / (size_a + size_b - inter)
    if measure == "overlap":
        return inter / np.minimum(size_a, size_b)
    raise ValueError(f"unknown overlap measure {measure!r}")


def plane_scores(a: np.ndarray, b: np.ndarray, *, measure: str = "iou") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every overlapping ``(id in a, id in b)`` pair of two label arrays of one shape with its
    :func:`score`."""
    pa, pb, inter = plane_overlaps(a, b)
    if not len(inter):
        return pa, pb, np.zeros(0)
    fa, fb = a.ravel(), b.ravel()
    ids_a, size_a = np.unique(fa[fa > 0], return_counts=True)
    ids_b, size_b = np.unique(fb[fb > 0], return_counts=True)
    sa = size_a[np.searchsorted(ids_a, pa)]
    sb = size_b[np.searchsorted(ids_b, pb)]
    return pa, pb, score(inter, sa, sb, measure)


def assign(ids_a: np.ndarray, ids_b: np.ndarray, score: np.ndarray, min_score: float) -> list[tuple[int, int]]:
    """The one-to-one pairing of maximum summed score among candidate pairs scoring at least
    ``min_score`` (:func:`scipy.optimize.linear_sum_assignment`)."""
    from scipy.optimize import linear_sum_assignment

    ids_a, ids_b, score = np.asarray(ids_a, np.uint64), np.asarray(ids_b, np.uint64), np.asarray(score, float)
    keep = score >= min_score
    if not keep.any():
        return []
    pa, pb, score = ids_a[keep], ids_b[keep], score[keep]
    ua, ia = np.unique(pa, return_inverse=True)
    ub, ib = np.unique(pb, return_inverse=True)
    weight = np.zeros((len(ua), len(ub)))
    weight[ia, ib] = score
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return [(int(ua[r]), int(ub[c])) for r, c in zip(rows, cols) if weight[r, c] >= min_score]


def match_planes(a: np.ndarray, b: np.ndarray, min_iou: float, *, measure: str = "iou") -> list[tuple[int, int]]:
    """Optimally matched ``(id in a, id in b)`` pairs of two label arrays of one shape scoring at least
    ``min_iou``: by IoU, or with ``measure="overlap"`` by the overlap coefficient
    ``|a & b| / min(|a|, |b|)`` (cross-sections of one object on the two sides of a tile border
    differ where its outline curves; a narrow row inside a wide one still belongs to it)."""
    return assign(*plane_scores(a, b, measure=measure), min_iou)


def gap_links(candidates: list[tuple[int, int, int, float]], links: list[tuple[int, int]], min_iou: float) -> list[tuple[int, int]]:
    """Gap closing over one section: of the candidate pairs ``(z, id in section z, id in section
    z + 2, score)``, those whose first piece has no link to the next section and whose second has
    none from the previous one (``links``: the consecutive-section links), optimally matched per
    section pair as :func:`match_planes` matches neighbours."""
    forward = {int(a) for a, _ in links}
    backward = {int(b) for _, b in links}
    by_z: dict[int, list[tuple[int, int, float]]] = {}
    for z, a, b, score in candidates:
        if int(a) not in forward and int(b) not in backward:
            by_z.setdefault(int(z), []).append((int(a), int(b), float(score)))
    out: list[tuple[int, int]] = []
    for z in sorted(by_z):
        a, b, score = zip(*by_z[z])
        out += assign(np.array(a, np.uint64), np.array(b, np.uint64), np.array(score), min_iou)
    return out


def gap_links_of_pieces(overlaps: list[tuple[int, int, int, int]], sizes: dict[int, int], links: list[tuple[int, int]],
                        joins: list[tuple[int, int]], min_iou: float, *, measure: str = "iou") -> list[tuple[int, int]]:
    """:func:`gap_links` where 2D objects come in pieces (cut by tile borders and joined by ``joins``):
    ``overlaps`` lists ``(z, piece in z, piece in z + 2, pixels in common)``, ``sizes`` each piece's
    area. Links, overlaps and sizes are summed over each object's pieces first, so an object has a
    link forward when any of its pieces has, and scores are those of whole objects."""
    from alseg.postprocess.stitch import UnionFind

    uf = UnionFind()
    for a, b in joins:
        uf.union(int(a), int(b))
    inter: dict[tuple[int, int, int], int] = {}
    for z, a, b, n in overlaps:
        key = (int(z), uf.find(int(a)), uf.find(int(b)))
        inter[key] = inter.get(key, 0) + int(n)
    area: dict[int, int] = {}
    for piece in {int(p) for pair in joins for p in pair} | {int(p) for o in overlaps for p in o[1:3]}:
        root = uf.find(piece)
        area[root] = area.get(root, 0) + int(sizes[piece])
    candidates = [(z, a, b, float(score(n, area[a], area[b], measure))) for (z, a, b), n in inter.items()]
    return gap_links(candidates, [(uf.find(int(a)), uf.find(int(b))) for a, b in links], min_iou)


def link_stack(masks: np.ndarray, min_iou: float, min_size_vox: int = 0, *, measure: str = "iou", gap: int = 0) -> np.ndarray:
    """3D instances (uint32, consecutive ids in order of first appearance) from per-slice 2D instances;
    ``gap=1`` also bridges one section where an object is missed (:func:`gap_links`)."""
    if gap not in (0, 1):
        raise ValueError(f"gap closing bridges at most one section, got gap={gap}")
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
    links = [pair for z in range(len(masks) - 1) for pair in match_planes(unique[z], unique[z + 1], min_iou, measure=measure)]
    if gap:
        candidates = [(z, int(a), int(b), float(score)) for z in range(len(masks) - 2)
                      for a, b, score in zip(*plane_scores(unique[z], unique[z + 2], measure=measure))]
        links += gap_links(candidates, links, min_iou)
    for a, b in links:
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
