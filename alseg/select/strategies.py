"""Active-learning strategies: which candidate patches to annotate next.

One entry point, :func:`select_patches`, takes a strategy from the job spec (a discriminated union
on ``method``) and the per-candidate inputs it needs: embeddings (diversity: ``kcenter``,
``kmeans``, ``hybrid``) and/or uncertainty scores (``entropy``, ``least_confidence``, ``bald``,
``hybrid``). Every strategy is seeded and deterministic; ties go to the lower index; annotated and
excluded rows are never picked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alseg.errors import SpecError
from alseg.select.kcenter import kcenter_greedy

DIVERSITY = ("kcenter", "kmeans", "hybrid")
UNCERTAINTY = ("entropy", "least_confidence", "bald")


@dataclass(frozen=True)
class Selection:
    picks: np.ndarray
    """Selected candidate rows, in the order chosen."""
    method: str
    detail: dict[str, Any] = field(default_factory=dict)


def needs_embeddings(strategy: Any) -> bool:
    return strategy.method in DIVERSITY


def needs_pseudolabels(strategy: Any) -> bool:
    """Whether a strategy weighs or filters patches by their pseudo-label foreground (``scores["foreground"]``)."""
    return strategy.method == "foreground_random" or (strategy.method == "kcenter" and strategy.foreground_min is not None)


def _fractions(scores: dict[str, np.ndarray] | None, n: int, method: str) -> np.ndarray:
    if scores is None or "foreground" not in scores:
        raise SpecError(f"selection method {method!r} needs the pseudo-label foreground of every candidate")
    fractions = np.asarray(scores["foreground"], dtype=np.float64)
    if fractions.shape != (n,) or not np.isfinite(fractions).all() or (fractions < 0).any():
        raise SpecError(f"foreground fractions of shape {fractions.shape} for {n} candidates (finite, >= 0 expected)")
    return fractions


def foreground_random_picks(fractions: np.ndarray, budget: int, blocked: np.ndarray, *, min_fraction: float,
                            seed: int) -> tuple[np.ndarray, int]:
    """``budget`` rows drawn without replacement with probability in proportion to ``fractions``
    among the rows above ``min_fraction``; when fewer are left, all of them and the rest uniformly
    from the others. Returns the picks and how many came from the uniform fill."""
    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(~blocked & (fractions > min_fraction))
    if len(eligible) >= budget:
        w = fractions[eligible]
        return rng.choice(eligible, size=budget, replace=False, p=w / w.sum()).astype(np.int64), 0
    rest = np.flatnonzero(~blocked & ~(fractions > min_fraction))
    fill = rng.choice(rest, size=budget - len(eligible), replace=False)
    return np.concatenate([rng.permutation(eligible), fill]).astype(np.int64), int(len(fill))


def uncertainty_measure(strategy: Any) -> str | None:
    """The uncertainty score a strategy ranks by (None for pure diversity / random)."""
    if strategy.method == "hybrid":
        return strategy.uncertainty
    return strategy.method if strategy.method in UNCERTAINTY else None


def _blocked(n: int, annotated: Sequence[int], exclude: Any) -> np.ndarray:
    blocked = np.zeros(n, dtype=bool)
    if exclude is not None:
        ex = np.asarray(exclude)
        blocked[ex if ex.dtype != bool else np.flatnonzero(ex)] = True
    blocked[np.asarray(list(annotated), dtype=np.int64)] = True
    return blocked


def _top(score: np.ndarray, blocked: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` highest scores among unblocked rows, highest first, ties to the lower index."""
    if not np.all(np.isfinite(score[~blocked])):
        raise SpecError("uncertainty scores must be finite for every candidate")
    order = np.lexsort((np.arange(len(score)), -score.astype(np.float64)))
    order = order[~blocked[order]]
    return order[:k]


def rows_of(embeddings: Any, rows: np.ndarray) -> np.ndarray:
    """``embeddings[rows]`` as float32, for in-memory arrays and zarr arrays (read in sorted order)."""
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(embeddings, np.ndarray):
        return np.ascontiguousarray(embeddings[rows], dtype=np.float32)
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), embeddings.shape[1]), dtype=np.float32)
    if len(rows):
        out[order] = embeddings.oindex[rows[order], :]
    return out


def kmeans_picks(embeddings: np.ndarray, budget: int, blocked: np.ndarray, *, iterations: int, seed: int,
                 spherical: bool) -> tuple[np.ndarray, np.ndarray]:
    """FAISS k-means with ``budget`` centroids on the candidates; for each centroid (in order) the
    closest candidate not taken yet. Returns ``(picks, centroids)``.

    Centroids start from farthest-point seeds (k-center greedy from the seeded random first
    pick, the deterministic cousin of k-means++) rather than FAISS's random rows, which on
    separated clusters often leave a cluster without a centroid.
    """
    import faiss

    cand = np.flatnonzero(~blocked)
    x = np.ascontiguousarray(embeddings[cand], dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], budget, niter=iterations, seed=seed, spherical=spherical, verbose=False,
                      max_points_per_centroid=256)
    metric = "cosine" if spherical else "euclidean"
    seeds = kcenter_greedy(x, budget, n_initial=1, seed=seed, metric=metric).picks
    km.train(x, init_centroids=x[seeds])
    index = faiss.IndexFlatIP(x.shape[1]) if spherical else faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    taken = np.zeros(len(cand), dtype=bool)
    picks = []
    k_nn = min(len(cand), 32)
    _, nn = index.search(km.centroids, k_nn)
    for c, row in enumerate(nn):
        free = [int(j) for j in row if j >= 0 and not taken[j]]
        if not free:  # every near neighbour was taken by an earlier centroid: exhaustive search
            if spherical:
                d = -(x @ km.centroids[c])
            else:
                d = ((x - km.centroids[c]) ** 2).sum(axis=1)
            d[taken] = np.inf
            free = [int(np.argmin(d))]
        taken[free[0]] = True
        picks.append(int(cand[free[0]]))
    return np.asarray(picks, dtype=np.int64), km.centroids.copy()


def select_patches(
    strategy: Any,
    *,
    n: int,
    embeddings: Any = None,
    scores: dict[str, np.ndarray] | None = None,
    annotated: Sequence[int] = (),
    exclude: Any = None,
    seed: int = 0,
    budget: int | None = None,
    device: str = "auto",
    progress: bool = False,
) -> Selection:
    """Pick ``budget`` (default: the strategy's) of ``n`` candidates by ``strategy`` (k-center on
    ``device``: ``auto`` takes a GPU when torch sees one)."""
    budget = int(budget if budget is not None else strategy.budget)
    method = strategy.method
    blocked = _blocked(n, annotated, exclude)
    available = int((~blocked).sum())
    if budget > available:
        raise SpecError(f"selection budget {budget} exceeds the {available} candidates left (of {n})")
    if needs_embeddings(strategy):
        if embeddings is None:
            raise SpecError(f"selection method {method!r} needs embeddings (run the embedding stage)")
        if embeddings.shape[0] != n:
            raise SpecError(f"{embeddings.shape[0]} embeddings for {n} candidates")
    measure = uncertainty_measure(strategy)
    score = None
    if measure is not None:
        if scores is None or measure not in scores:
            raise SpecError(f"selection method {method!r} needs {measure!r} scores from a trained model")
        score = np.asarray(scores[measure], dtype=np.float64)
        if score.shape != (n,):
            raise SpecError(f"{measure} scores of shape {score.shape} for {n} candidates")

    if method == "random":
        picks = np.random.default_rng(seed).choice(np.flatnonzero(~blocked), size=budget, replace=False)
        return Selection(picks.astype(np.int64), method)
    if method == "foreground_random":
        fractions = _fractions(scores, n, method)
        picks, filled = foreground_random_picks(fractions, budget, blocked, min_fraction=strategy.min_fraction, seed=seed)
        return Selection(picks, method, {"foreground": fractions[picks].tolist(), "uniform_fill": filled})
    if method == "kcenter":
        detail: dict[str, Any] = {}
        candidates = blocked
        if strategy.foreground_min is not None:
            # foreground-aware: the greedy covers the patches that hold mitochondria, not the empty ones
            fractions = _fractions(scores, n, method)
            outside = blocked | ~(fractions > strategy.foreground_min)
            restricted = int((~outside).sum()) >= budget
            candidates = outside if restricted else blocked
            detail["foreground_only"] = restricted
        res = kcenter_greedy(embeddings, budget, annotated=annotated if strategy.initial == "annotated" else (),
                             n_initial=strategy.n_initial, start=strategy.start, seed=seed, metric=strategy.distance,
                             exclude=candidates, device=device, progress=progress)
        if strategy.foreground_min is not None:
            detail["foreground"] = fractions[res.picks].tolist()
        return Selection(res.picks, method, {"distance": res.distance.tolist(), "start": res.start,
                                             "random_starts": res.n_initial if res.start == "random" else 0, **detail})
    if method == "kmeans":
        emb = embeddings if isinstance(embeddings, np.ndarray) else embeddings[:]
        picks, _ = kmeans_picks(emb, budget, blocked, iterations=strategy.iterations, seed=seed, spherical=True)
        return Selection(picks, method)
    if method in UNCERTAINTY:
        picks = _top(score, blocked, budget)
        return Selection(picks, method, {measure: score[picks].tolist()})
    if method == "hybrid":
        shortlist = _top(score, blocked, min(available, budget * strategy.shortlist_factor))
        ann = np.asarray(list(annotated), dtype=np.int64)
        rows = np.concatenate([ann, shortlist])
        res = kcenter_greedy(rows_of(embeddings, rows), budget, annotated=range(len(ann)), starts=None if len(ann) else [0],
                             metric="cosine", device=device, progress=progress)
        picks = rows[res.picks]
        return Selection(picks, method, {measure: score[picks].tolist(), "shortlist": len(shortlist)})
    raise SpecError(f"unknown selection method {method!r}")
