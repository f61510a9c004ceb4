"""Plain reference k-center greedy implementations for the tests and the benchmark.

``reference_kcenter`` spells the definition out on whole arrays, one step at a time;
``sklearn_kcenter`` is the greedy "written the usual way": sklearn's ``pairwise_distances``
from every row to the new centre on every step (it re-normalises all rows each time).
Both share the plain greedy loop and differ only in how they get one centre's distances.
"""

from __future__ import annotations

import numpy as np


def _greedy(n, distances_to, budget, starts, annotated=(), exclude=()):
    nearest = np.full(n, np.inf, dtype=np.float32)
    taken = np.zeros(n, dtype=bool)
    taken[list(exclude)] = True

    def add(c):
        nonlocal nearest
        nearest = np.minimum(nearest, distances_to(c))
        taken[c] = True

    for c in annotated:
        add(c)
    picks = []
    for c in ([] if len(annotated) else starts):
        picks.append(int(c))
        add(c)
    while len(picks) < budget:
        c = int(np.argmax(np.where(taken, -1, nearest)))
        picks.append(c)
        add(c)
    return np.asarray(picks)


def reference_kcenter(x, budget, starts, *, annotated=(), exclude=(), metric="cosine"):
    x = np.asarray(x, dtype=np.float32)
    sq = np.einsum("ij,ij->i", x, x)

    def distances_to(c):
        if metric == "cosine":
            return np.clip(1 - x @ x[c], 0, 2)
        return np.maximum(sq - 2 * (x @ x[c]) + sq[c], 0)

    return _greedy(len(x), distances_to, budget, starts, annotated, exclude)


def sklearn_kcenter(raw, budget, starts):
    """Cosine k-center on raw (not normalised) rows, one ``pairwise_distances`` call per step."""
    from sklearn.metrics import pairwise_distances

    return _greedy(raw.shape[0], lambda c: pairwise_distances(raw, raw[c : c + 1], metric="cosine")[:, 0], budget, starts)
