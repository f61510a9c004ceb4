"""Exact k-center greedy (farthest-point) selection on cosine or Euclidean distance.

The greedy keeps, for every candidate, its distance to the nearest chosen centre; each step picks
the candidate farthest from all centres (the first index among equal distances) and lowers the
kept distances by one pass over the embeddings: one matrix-vector product per step, O(n d) work
and O(n) extra memory. The reference code this replaces built a full n x n matrix and looped in
Python (O(n k^2)); a step written "the usual way" with sklearn's ``pairwise_distances``
re-normalises every row on every step.

Distances, defined once and used by every implementation that must agree bit for bit:

* ``cosine``: ``clip(1 - <x, c>, 0, 2)`` on L2-normalised float32 rows (``normalize_rows``);
  this is exactly what ``sklearn.metrics.pairwise_distances(..., metric="cosine")`` returns for
  the raw rows.
* ``euclidean``: the squared distance ``max(|x|^2 - 2 <x, c> + |c|^2, 0)`` (monotone in the
  distance, so the picks are the same).

Starts. Without annotated centres the greedy needs a first pick: ``start="random"`` draws
``n_initial`` seeded random candidates (the paper's k = 3); ``"central"`` takes the one candidate
nearest the mean of the candidates and ``"outlier"`` the one farthest from it, both by the metric's
own distance (cosine: to the mean of the normalised rows). The deterministic starts cost two
streamed passes over the rows (the mean, then the distances to it, in float64: another chunking
could change the pick only on a tie to ~1e-15) and spend one pick, not three, on a choice that is
not a core-set step: with a budget of 4, random starts leave the greedy one pick.

Chosen points and excluded points get a distance of -1 and are never picked again (duplicates of a
chosen point keep their own, tiny, distance and are picked only when nothing else is left).

Which product is fastest was measured, not assumed (``benchmarks/coreset.py``, 2-core CPU, one
million rows of 256): a greedy step is one BLAS ``sgemv`` per chunk of rows, kept in cache while
the minimum is updated (55 ms; ``faiss.pairwise_distances`` 65 ms, ``torch.mv`` 148 ms). The
distances to an annotated set are one ``sgemm`` per chunk (0.90 s for 256 centres; FAISS's flat
index 1.00 s; one sgemv per centre 15.6 s). Rows larger than ``max_memory_bytes`` are streamed
from the store (a zarr array) on every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from alseg.errors import SpecError
from alseg.progress import progress_bar

Metric = Literal["cosine", "euclidean"]
Start = Literal["random", "central", "outlier"]
MASKED = np.float32(-1.0)


@dataclass(frozen=True)
class KCenterResult:
    picks: np.ndarray
    """Indices of the selected rows in the order they were picked (starts first)."""
    distance: np.ndarray
    """For each pick, its distance to the nearest earlier centre when picked (NaN for starts)."""
    n_initial: int
    """How many of ``picks`` were starts (random, central, outlier or given) rather than greedy steps."""
    start: str = "random"
    """How the greedy started: ``random``, ``central``, ``outlier``, ``given`` (``starts``) or
    ``annotated`` (from annotated centres, no start picks)."""


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, in float32 (zero rows stay zero), as sklearn's ``normalize``."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0.0] = 1.0
    return x / norms[:, None]


class _Rows:
    """Row chunks of an in-memory array or of a row-chunked store array read on demand."""

    def __init__(self, data: Any, chunk_rows: int, max_memory_bytes: int) -> None:
        if len(getattr(data, "shape", ())) != 2:
            raise SpecError(f"embeddings must be a 2D array (rows x features), got shape {getattr(data, 'shape', None)}")
        self.n, self.d = (int(s) for s in data.shape)
        nbytes = self.n * self.d * 4
        if isinstance(data, np.ndarray) or nbytes <= max_memory_bytes:
            self.data = np.ascontiguousarray(self._load(data), dtype=np.float32)
            self.in_memory = True
        else:
            self.data = data
            self.in_memory = False
        # in memory: chunks that stay in cache; streamed: the store's own row chunks
        self.chunk_rows = max(1, int(chunk_rows if self.in_memory else getattr(data, "chunks", (chunk_rows,))[0]))

    @staticmethod
    def _load(data: Any) -> np.ndarray:
        if isinstance(data, np.ndarray):
            return data
        out = np.empty(data.shape, dtype=np.float32)
        step = getattr(data, "chunks", (65536,))[0]
        for a in range(0, data.shape[0], step):
            out[a : a + step] = data[a : a + step]
        return out

    def chunks(self):
        for a in range(0, self.n, self.chunk_rows):
            b = min(self.n, a + self.chunk_rows)
            block = self.data[a:b] if self.in_memory else np.asarray(self.data[a:b], dtype=np.float32)
            yield a, b, block

    def row(self, i: int) -> np.ndarray:
        return np.array(self.data[i], dtype=np.float32)


def start_row(rows: Any, start: Literal["central", "outlier"], *, metric: Metric = "cosine",
              blocked: np.ndarray | None = None, chunk_rows: int = 16384, max_memory_bytes: int = 8 * 2**30) -> int:
    """The candidate (a row not in the boolean mask ``blocked``) nearest (``central``) or farthest
    (``outlier``) from the mean of the candidates, by ``metric``; the first such row on ties.

    Streams the rows twice (the mean, then the distances), so a store larger than memory works."""
    r = rows if isinstance(rows, _Rows) else _Rows(rows, chunk_rows, max_memory_bytes)
    if start not in ("central", "outlier"):
        raise SpecError(f"k-center start: expected 'central' or 'outlier', got {start!r}")
    if metric not in ("cosine", "euclidean"):
        raise SpecError(f"k-center distance: expected 'cosine' or 'euclidean', got {metric!r}")
    free = np.ones(r.n, dtype=bool) if blocked is None else ~np.asarray(blocked, dtype=bool)
    if free.shape != (r.n,):
        raise SpecError(f"k-center start: blocked must be a boolean mask of the {r.n} rows, got shape {free.shape}")
    count = int(free.sum())
    if count == 0:
        raise SpecError("k-center start: no candidate rows left")
    total = np.zeros(r.d, dtype=np.float64)
    for a, b, block in r.chunks():
        total += block[free[a:b]].sum(axis=0, dtype=np.float64)
    mean = total / count
    if metric == "cosine":
        norm = float(np.sqrt(mean @ mean))
        mean = mean / norm if norm > 0 else mean  # a zero mean: every row at distance 1, the first wins
    best_i, best = -1, np.inf
    sign = 1.0 if start == "central" else -1.0  # the smallest of sign * distance wins
    for a, b, block in r.chunks():
        if not free[a:b].any():
            continue
        x = np.asarray(block, dtype=np.float64)
        d = np.clip(1.0 - x @ mean, 0.0, 2.0) if metric == "cosine" else ((x - mean) ** 2).sum(axis=1)
        d = np.where(free[a:b], sign * d, np.inf)
        j = int(np.argmin(d))
        if d[j] < best:
            best_i, best = a + j, float(d[j])
    return best_i


class _Greedy:
    """The kept distances and the one-pass update shared by every start and step."""

    def __init__(self, rows: _Rows, metric: Metric) -> None:
        if metric not in ("cosine", "euclidean"):
            raise SpecError(f"k-center distance: expected 'cosine' or 'euclidean', got {metric!r}")
        self.rows, self.metric = rows, metric
        self.mind = np.full(rows.n, np.inf, dtype=np.float32)
        self.buf = np.empty(rows.chunk_rows, dtype=np.float32)
        self.sqnorm = None
        if metric == "euclidean":
            self.sqnorm = np.empty(rows.n, dtype=np.float32)
            for a, b, block in rows.chunks():
                self.sqnorm[a:b] = np.einsum("ij,ij->i", block, block)

    def add_center(self, i: int) -> None:
        c = self.rows.row(i)
        cc = None if self.sqnorm is None else self.sqnorm[i]
        for a, b, block in self.rows.chunks():
            s = np.matmul(block, c, out=self.buf[: b - a])
            if self.metric == "cosine":
                np.subtract(np.float32(1.0), s, out=s)
                np.clip(s, 0.0, 2.0, out=s)
            else:
                s *= np.float32(-2.0)
                s += self.sqnorm[a:b]
                s += cc
                np.maximum(s, 0.0, out=s)
            np.minimum(self.mind[a:b], s, out=self.mind[a:b])
        self.mind[i] = MASKED

    def add_centers(self, idx: Sequence[int], batch: int = 512) -> None:
        """Many centres at once (the annotated set): one sgemm per chunk of rows and of centres.

        The same distances as :meth:`add_center` one by one, up to the last bit of the dot
        products (sgemm and sgemv sum in different orders); 17x faster for 256 centres on a
        million rows (``benchmarks/coreset.py``).
        """
        idx = [int(i) for i in idx]
        for c0 in range(0, len(idx), batch):
            sel = idx[c0 : c0 + batch]
            cen = np.stack([self.rows.row(i) for i in sel])
            for a, b, block in self.rows.chunks():
                s = block @ cen.T
                if self.metric == "cosine":
                    d = np.subtract(np.float32(1.0), s.max(axis=1))
                    np.clip(d, 0.0, 2.0, out=d)
                else:
                    s *= np.float32(-2.0)
                    s += self.sqnorm[a:b, None]
                    s += self.sqnorm[sel][None, :]
                    d = np.maximum(s.min(axis=1), 0.0)
                np.minimum(self.mind[a:b], d, out=self.mind[a:b])
        self.mind[idx] = MASKED

    def mask(self, blocked: np.ndarray) -> None:
        self.mind[blocked] = MASKED

    def farthest(self) -> tuple[int, float]:
        i = int(np.argmax(self.mind))
        return i, float(self.mind[i])


class _TorchGreedy:
    """The same greedy with the rows on a torch device (a GPU): one ``mv`` per step.

    Exact in its own arithmetic; the dot products may differ from the CPU's BLAS in the last bit,
    so picks agree with the CPU path except where two candidates tie to float precision.
    """

    def __init__(self, rows: _Rows, metric: Metric, device: str) -> None:
        import torch

        if not rows.in_memory:
            raise SpecError("k-center on a GPU needs the rows in memory: raise max_memory_bytes or use device 'cpu'")
        if metric not in ("cosine", "euclidean"):
            raise SpecError(f"k-center distance: expected 'cosine' or 'euclidean', got {metric!r}")
        self.torch, self.metric = torch, metric
        self.x = torch.from_numpy(rows.data).to(device)
        self.mind = torch.full((rows.n,), float("inf"), dtype=torch.float32, device=device)
        self.sqnorm = (self.x * self.x).sum(dim=1) if metric == "euclidean" else None

    def _distances(self, s, cidx):
        if self.metric == "cosine":
            return (1.0 - s).clamp_(0.0, 2.0)
        sq = self.sqnorm[cidx]
        return (self.sqnorm[:, None] - 2.0 * s + sq[None, :]).clamp_(min=0.0) if s.ndim == 2 else \
            (self.sqnorm - 2.0 * s + sq).clamp_(min=0.0)

    def add_center(self, i: int) -> None:
        d = self._distances(self.torch.mv(self.x, self.x[i]), i)
        self.torch.minimum(self.mind, d, out=self.mind)
        self.mind[i] = float(MASKED)

    def add_centers(self, idx: Sequence[int], batch: int = 512) -> None:
        idx = [int(i) for i in idx]
        for c0 in range(0, len(idx), batch):
            sel = self.torch.as_tensor(idx[c0 : c0 + batch], device=self.x.device)
            d = self._distances(self.x @ self.x[sel].T, sel).min(dim=1).values
            self.torch.minimum(self.mind, d, out=self.mind)
        self.mind[self.torch.as_tensor(idx, device=self.x.device)] = float(MASKED)

    def mask(self, blocked: np.ndarray) -> None:
        self.mind[self.torch.from_numpy(blocked).to(self.mind.device)] = float(MASKED)

    def farthest(self) -> tuple[int, float]:
        i = int(self.torch.argmax(self.mind))  # the first of equal maxima, as numpy
        return i, float(self.mind[i])


def kcenter_greedy(
    embeddings: Any,
    budget: int,
    *,
    annotated: Sequence[int] = (),
    starts: Sequence[int] | None = None,
    n_initial: int = 3,
    start: Start = "random",
    seed: int = 0,
    metric: Metric = "cosine",
    exclude: Sequence[int] | np.ndarray | None = None,
    chunk_rows: int = 16384,
    max_memory_bytes: int = 8 * 2**30,
    device: str = "cpu",
    progress: bool = False,
) -> KCenterResult:
    """Pick ``budget`` rows of ``embeddings`` by k-center greedy.

    ``annotated`` rows are centres already (the points labelled in earlier rounds): the greedy
    starts from them. Without any, it starts from ``starts`` (given first picks) or else as
    ``start`` says: ``n_initial`` rows drawn at random (seeded) from the candidates, or the one
    candidate nearest to (``central``) or farthest from (``outlier``) the candidates' mean
    (:func:`start_row`); starts count towards the budget. ``exclude`` rows are never picked. For
    ``cosine`` the rows must be L2-normalised (:func:`normalize_rows`; the embedding store keeps
    them so). ``device`` ``"cpu"`` runs on numpy / BLAS; a torch device (``"cuda"``) keeps the
    rows there; ``"auto"`` takes CUDA when torch sees a GPU.
    """
    rows = _Rows(embeddings, chunk_rows, max_memory_bytes)
    n = rows.n
    if budget <= 0:
        raise SpecError(f"k-center budget must be positive, got {budget}")
    annotated = [int(i) for i in annotated]
    blocked = np.zeros(n, dtype=bool)
    if exclude is not None:
        ex = np.asarray(exclude)
        blocked[ex if ex.dtype != bool else np.flatnonzero(ex)] = True
    for i in annotated:
        if not 0 <= i < n:
            raise SpecError(f"annotated index {i} outside the {n} embeddings")
    blocked[annotated] = True
    available = int(n - blocked.sum())
    if budget > available:
        raise SpecError(f"k-center budget {budget} exceeds the {available} candidates left (of {n})")
    if metric == "cosine" and rows.in_memory and n:
        probe = rows.data[:: max(1, n // 1024)]
        norms = np.sqrt(np.einsum("ij,ij->i", probe, probe))
        if not np.allclose(norms[norms > 0], 1.0, atol=1e-3):
            raise SpecError("cosine k-center needs L2-normalised rows: pass normalize_rows(embeddings)")

    if start not in ("random", "central", "outlier"):
        raise SpecError(f"k-center start: expected 'random', 'central' or 'outlier', got {start!r}")

    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    g = _Greedy(rows, metric) if device == "cpu" else _TorchGreedy(rows, metric, device)
    g.mask(blocked)
    picks: list[int] = []
    dists: list[float] = []
    n_starts = 0
    how = "annotated"
    if len(annotated) == 1:
        g.add_center(annotated[0])
    elif annotated:
        g.add_centers(annotated)
    if not annotated:
        if starts is not None:
            how = "given"
            starts = [int(i) for i in starts]
            n_starts = len(starts)
            if n_starts > budget or len(set(starts)) != n_starts or any(not 0 <= i < n or blocked[i] for i in starts):
                raise SpecError(f"k-center starts {starts}: expected at most {budget} distinct candidate indices")
        elif start == "random":
            how = "random"
            n_starts = min(n_initial, budget)
            starts = np.random.default_rng(seed).choice(np.flatnonzero(~blocked), size=n_starts, replace=False)
        else:
            how, n_starts = start, 1
            starts = [start_row(rows, start, metric=metric, blocked=blocked)]
        for i in starts:
            picks.append(int(i))
            dists.append(float("nan"))
            if len(picks) < budget:
                g.add_center(int(i))

    bar = progress_bar(total=budget, initial=len(picks), desc="k-center", unit="pick", disable=not progress)
    try:
        while len(picks) < budget:
            i, dist = g.farthest()
            picks.append(i)
            dists.append(dist)
            if len(picks) < budget:
                g.add_center(i)
            bar.update(1)
    finally:
        bar.close()
    return KCenterResult(np.asarray(picks, dtype=np.int64), np.asarray(dists, dtype=np.float32), n_starts, how)
