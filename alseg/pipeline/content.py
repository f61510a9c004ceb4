"""What the candidate patches contain, by a label volume: foreground fractions and what a
selection covered of them.

:func:`foreground_fractions` reads one box of a label volume at a time (bounded memory, any
store); :func:`selection_diagnostics` compares a round's picks with the pool they came from.

Content bins. Most patches of an EM pool hold no (pseudo-labelled) object at all, so quantiles of
the raw fractions collapse onto 0. Bin 0 is therefore "empty" (fraction exactly 0), and the
non-empty patches are split at the ``quantiles``-quantiles of their own fractions (quartiles by
default): bin ``k`` holds the fractions in ``(edge[k-1], edge[k]]``, with 0 below the first edge
and the largest fraction above the last. Equal edges (ties) would make bins nobody can fall in, so
only the bins that hold at least one pool patch count: "bins covered" is how many of those hold a
pick. A pool whose non-empty patches all share one fraction has two bins, empty and that one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from alseg.errors import DataError
from alseg.geometry import Box
from alseg.io.omezarr import open_volume
from alseg.progress import progress_bar


def foreground_fractions(label_url: str, boxes: Sequence[Box], *, level: int = 0, missing_chunks: str = "error",
                         progress: bool = False) -> np.ndarray:
    """For each box, the fraction of its voxels > 0 in the label volume at ``label_url`` (float64).

    Boxes are in the voxels of pyramid ``level`` of the label volume: for labels on the image's
    grid (ground truth under the image's ``labels/``) the patch grid's boxes with
    ``level=input.level``; for pseudo-labels (written at ``input.level`` as their level 0) the same
    boxes with ``level=0``. ``missing_chunks``: what an absent chunk means
    (:func:`~alseg.io.omezarr.open_volume`; ``"empty"`` for label images written without their
    empty chunks). One box is read at a time.
    """
    vol = open_volume(label_url, level=level, missing_chunks=missing_chunks)  # type: ignore[arg-type]
    out = np.empty(len(boxes), dtype=np.float64)
    bar = progress_bar(total=len(boxes), desc="foreground fractions", unit="patch", disable=not progress)
    try:
        for i, box in enumerate(boxes):
            if box.empty:
                raise DataError(f"foreground fraction of an empty box {box}")
            out[i] = np.count_nonzero(vol.read(box)) / box.size
            bar.update(1)
    finally:
        bar.close()
    return out


def content_bins(pool_fractions: np.ndarray, quantiles: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``(edges, bin of each pool patch)`` by the module's rule: bin 0 empty, bins ``1..quantiles``
    split at ``edges`` (the ``quantiles``-quantiles of the non-empty fractions, linear interpolation)."""
    f = np.asarray(pool_fractions, dtype=np.float64)
    if quantiles < 1:
        raise ValueError(f"quantiles must be >= 1, got {quantiles}")
    if f.ndim != 1 or not np.all(np.isfinite(f)) or np.any((f < 0) | (f > 1)):
        raise ValueError("pool fractions must be a 1D array of numbers in [0, 1]")
    nonempty = f[f > 0]
    edges = np.quantile(nonempty, np.arange(1, quantiles) / quantiles) if nonempty.size else np.empty(0)
    bins = np.where(f > 0, 1 + np.searchsorted(edges, f, side="left"), 0)
    return edges, bins


def selection_diagnostics(pool_fractions: np.ndarray, pick_rows: Sequence[int], *, quantiles: int = 4) -> dict[str, Any]:
    """What the picks (rows of the pool) hold against the pool, as JSON-able figures.

    Means and shares with any foreground for the pool and the picks (``None`` for no picks), the
    content quantile edges, each bin that holds pool patches (bounds ``lo`` exclusive and ``hi``
    inclusive, ``[0, 0]`` for the empty bin, counts of pool patches and picks) and how many of them
    hold a pick (see the module docstring for the bins).
    """
    f = np.asarray(pool_fractions, dtype=np.float64)
    edges, bins = content_bins(f, quantiles)
    rows = np.asarray([int(i) for i in pick_rows], dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= f.size):
        raise ValueError(f"pick rows must lie in 0..{f.size - 1}, got {rows.tolist()}")
    picked = f[rows]
    top = float(f.max()) if f.size else 0.0
    table = []
    for k in range(quantiles + 1):
        in_pool = int(np.count_nonzero(bins == k))
        if not in_pool:
            continue
        lo = 0.0 if k <= 1 else float(edges[k - 2])
        hi = 0.0 if k == 0 else (float(edges[k - 1]) if k < quantiles else top)
        table.append({"bin": "empty" if k == 0 else f"q{k}", "lo": lo, "hi": hi, "pool": in_pool,
                      "picks": int(np.count_nonzero(bins[rows] == k))})

    def mean(x: np.ndarray) -> float | None:
        return float(x.mean()) if x.size else None

    return {"pool": int(f.size), "picks": int(rows.size),
            "pool_mean_foreground": mean(f), "picks_mean_foreground": mean(picked),
            "pool_any_foreground": mean((f > 0).astype(np.float64)),
            "picks_any_foreground": mean((picked > 0).astype(np.float64)),
            "quantiles": int(quantiles), "quantile_edges": [float(e) for e in edges], "bins": table,
            "bins_covered": sum(1 for b in table if b["picks"]), "bins_total": len(table)}
