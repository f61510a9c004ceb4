"""How much of the volume's structure an embedding carries, measured without (or with) labels.

- :func:`ridge_r2` — cross-validated R^2 of a per-patch content figure (the pseudo-labels' or the
  ground truth's foreground fraction) predicted from the embedding by ridge regression (features
  standardised on the training folds, the penalty chosen on them by leave-one-out error).
- :func:`neighbour_ratio` — how close in content a patch's nearest neighbour (cosine) is, against
  random pairs: 1.0 means the neighbours know nothing of content, 0 that they share it exactly.
- :func:`participation_ratio`, :func:`mean_cosine` — the spread of the space: how many directions
  the rows really use, and how alike they all are (near 1: collinear rows, k-center chases noise).
- :func:`cv_auc` — for two kinds of patches (a test's constructed volume), the cross-validated
  area under the ROC curve of a ridge score separating them.

Plain numpy; the tests compare with scikit-learn.
"""

from __future__ import annotations

import numpy as np

ALPHAS = np.logspace(-3, 4, 15)


def _folds(n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(n), min(k, n))


def _ridge_fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Ridge on standardised features with an intercept; the penalty minimising the leave-one-out error."""
    mu, sd = x_train.mean(axis=0), x_train.std(axis=0)
    sd[sd < 1e-12] = 1.0
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    ym = y_train.mean()
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    uty = u.T @ (y_train - ym)
    best, best_err = None, np.inf
    for alpha in ALPHAS:
        f = s**2 / (s**2 + alpha)
        fitted = u @ (f * uty)
        hat = (u**2) @ f + 1.0 / len(y_train)  # the intercept's leverage included
        loo = (y_train - ym - fitted) / np.maximum(1.0 - hat, 1e-12)
        err = float(np.mean(loo**2))
        if err < best_err:
            best, best_err = alpha, err
    coef = vt.T @ ((s / (s**2 + best)) * uty)
    return b @ coef + ym


def ridge_r2(x: np.ndarray, y: np.ndarray, *, folds: int = 5, repeats: int = 10, seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation over ``repeats`` shuffles of the ``folds``-fold R^2 of ``y`` from ``x``."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(y) < 2 * folds or float(y.var()) == 0.0:
        return float("nan"), float("nan")
    scores = []
    rng = np.random.default_rng(seed)
    for _ in range(repeats):
        pred = np.empty_like(y)
        for test in _folds(len(y), folds, rng):
            train = np.setdiff1d(np.arange(len(y)), test)
            pred[test] = _ridge_fit_predict(x[train], y[train], x[test])
        scores.append(1.0 - float(((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()))
    return float(np.mean(scores)), float(np.std(scores))


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half)."""
    score, positive = np.asarray(score, dtype=np.float64), np.asarray(positive, dtype=bool)
    pos, neg = score[positive], score[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def cv_auc(x: np.ndarray, positive: np.ndarray, *, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated AUC of a ridge score (regression on the 0/1 class) separating two kinds of rows."""
    x, yb = np.asarray(x, dtype=np.float64), np.asarray(positive, dtype=bool)
    rng = np.random.default_rng(seed)
    score = np.empty(len(yb))
    for test in _folds(len(yb), folds, rng):
        train = np.setdiff1d(np.arange(len(yb)), test)
        score[test] = _ridge_fit_predict(x[train], yb[train].astype(np.float64), x[test])
    return auc(score, yb)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def neighbour_ratio(x: np.ndarray, y: np.ndarray) -> float:
    """Mean content difference to each row's nearest neighbour (cosine) over that of random pairs."""
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if n < 3:
        return float("nan")
    u = _unit(x)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    nearest = sim.argmax(axis=1)
    pairs = np.abs(y[:, None] - y[None, :]).sum() / (n * (n - 1))
    return float(np.abs(y - y[nearest]).mean() / pairs) if pairs > 0 else float("nan")


def participation_ratio(x: np.ndarray) -> float:
    """``(sum of covariance eigenvalues)^2 / sum of their squares``: the number of directions in use."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    c = x - x.mean(axis=0)
    ev = np.clip(np.linalg.eigvalsh(c.T @ c / (len(x) - 1)), 0.0, None)
    return float(ev.sum() ** 2 / (ev**2).sum()) if ev.sum() > 0 else 0.0


def mean_cosine(x: np.ndarray) -> float:
    """Mean cosine similarity over all pairs of distinct rows."""
    u = _unit(x)
    n = len(u)
    if n < 2:
        return float("nan")
    s = u.sum(axis=0)
    return float((s @ s - (u * u).sum()) / (n * (n - 1)))
