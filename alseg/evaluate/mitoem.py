"""The MitoEM challenge's scores: AP-75 (the 2021 ranking) and accuracy at IoU 0.75 (the current one).

Both come from the same :class:`~alseg.evaluate.metrics.OverlapTable` as every other metric, so
they are exact blockwise: the table holds each object's whole size and every overlap.

**AP-75** follows the MitoEM evaluation code, ``VOL3Deval.accumulate`` of ``mAP_3Dvolume``
(github.com/ygCoconut/mAP_3Dvolume, ``vol3d_eval.py`` / ``vol3d_util.py``; the same file ships in
the challenge's TIMISE toolbox, github.com/danifranco/TIMISE, ``timise/mAP_3Dvolume``), which is
MS-COCO's average precision at one IoU threshold (Wei et al., MICCAI 2020, "MitoEM dataset"):

* the score of a predicted object is its size in voxels (``demo.py``'s default: "sort by size"),
  and predictions are ranked by descending score; equal sizes rank by ascending id (MitoEM's
  ``np.argsort`` leaves ties in an unspecified order; alseg fixes one so scores are reproducible);
* in rank order, a prediction is a true positive when it has an IoU >= 0.75 with a ground-truth
  object not yet matched (the best such one; COCO's greedy one-to-one rule). For thresholds above
  0.5 this equals MitoEM's rule (each prediction's best-IoU object, thresholded), because two
  disjoint predictions cannot both cover more than half of one object;
* precision ``TP_k / k`` and recall ``TP_k / n_gt`` after each of the ``k`` first predictions;
  precision is made non-increasing (each point takes the best precision at any higher recall);
* **101-point interpolation**: AP is the mean, over the recall points ``0.00, 0.01, ..., 1.00``
  (computed as ``0.01 * arange(101)``, as MitoEM and COCO do), of the interpolated precision at
  the first rank whose recall reaches the point, and 0 for points beyond the final recall.

COCO divides by ``TP + FP + eps`` to avoid 0/0, which cannot happen here (every prefix holds at
least one prediction); alseg leaves the eps out (a difference of ~1e-16) so that a perfect
prediction scores exactly 1.0. MitoEM scores a volume without ground-truth objects as -1 (absent);
alseg, as everywhere in :mod:`alseg.evaluate.metrics`, scores it 1.0 when nothing is predicted
either, else 0.0.

**Accuracy** is the challenge's current leaderboard metric (mitoem.grand-challenge.org/Evaluation:
"accuracy, requiring at least 75% intersection over union (IoU) with the ground truth for a
detection to be a true positive", measured with TIMISE's ``matching.py``, adapted from StarDist; why
AP-75 was replaced: Franco-Barranco et al., IEEE TMI 2023, "Current progress and challenges in
large-scale 3D mitochondria instance segmentation", which found it permissive with false positives):
``TP / (TP + FP + FN)`` with objects matched one-to-one at IoU >= 0.75. At that threshold the
matching is unique, so it equals ``accuracy`` at 0.75 of
:func:`~alseg.evaluate.metrics.match_instances`. TIMISE keeps IoUs as float16 (which can round an
IoU just below 0.75 up to it); alseg compares exact float64 ratios. Empty volumes score as above
(TIMISE gives 0 whenever TP = 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # metrics imports this module to score its tables
    from alseg.evaluate.metrics import OverlapTable

CHALLENGE_IOU = 0.75
RECALL_POINTS = 0.01 * np.arange(101)
"""COCO's and MitoEM's 101 recall points, computed as they compute them (``0.01 * arange``)."""


@dataclass(frozen=True)
class RankedMatches:
    """Predictions in score order and whether each is a true positive."""

    pred_ids: np.ndarray  # uint64, ranked: descending size, then ascending id
    scores: np.ndarray  # int64 sizes in voxels, in the same order
    true_positive: np.ndarray  # bool, in the same order
    n_gt: int


def rank_and_match(table: OverlapTable, iou: float = CHALLENGE_IOU) -> RankedMatches:
    """Rank the predictions by size and match them greedily, in rank order, one-to-one at ``iou``."""
    if not 0 < iou <= 1:
        raise ValueError(f"IoU threshold must lie in (0, 1], got {iou}")
    ids = np.fromiter(table.pred_sizes.keys(), dtype=np.uint64, count=len(table.pred_sizes))
    sizes = np.fromiter(table.pred_sizes.values(), dtype=np.int64, count=len(table.pred_sizes))
    order = np.lexsort((ids, -sizes))  # the last key is the primary one
    ids, sizes = ids[order], sizes[order]
    rank = {int(p): r for r, p in enumerate(ids)}
    # candidate ground-truth objects of each prediction, best IoU first (then smallest id)
    cand: dict[int, list[tuple[float, int]]] = {}
    for (g, p), inter in table.pairs.items():
        value = inter / (table.gt_sizes[g] + table.pred_sizes[p] - inter)
        if value >= iou:
            cand.setdefault(p, []).append((-value, g))
    tp = np.zeros(len(ids), dtype=bool)
    matched: set[int] = set()
    for p in sorted(cand, key=rank.__getitem__):
        for _, g in sorted(cand[p]):
            if g not in matched:
                matched.add(g)
                tp[rank[p]] = True
                break
    return RankedMatches(ids, sizes, tp, len(table.gt_sizes))


def interpolated_ap(true_positive: np.ndarray, n_gt: int) -> float:
    """COCO's 101-point interpolated average precision of ranked detections (see the module docs)."""
    n = len(true_positive)
    if n_gt == 0:
        return 1.0 if n == 0 else 0.0
    if n == 0:
        return 0.0
    ctp = np.cumsum(true_positive, dtype=np.int64)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, n + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, RECALL_POINTS, side="left")
    q = np.where(at < n, precision[np.minimum(at, n - 1)], 0.0)
    return float(np.mean(q))


@dataclass(frozen=True)
class ChallengeScores:
    """The MitoEM challenge's scores at one IoU threshold (0.75 in the challenge)."""

    iou: float
    ap: float
    accuracy: float
    tp: int
    fp: int
    fn: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def challenge_scores(table: OverlapTable, iou: float = CHALLENGE_IOU) -> ChallengeScores:
    """AP and accuracy of the MitoEM challenge from an overlap table (see the module docs)."""
    ranked = rank_and_match(table, iou)
    tp = int(ranked.true_positive.sum())
    fp, fn = len(ranked.pred_ids) - tp, ranked.n_gt - tp
    if tp + fp + fn == 0:
        accuracy = 1.0
    else:
        accuracy = tp / (tp + fp + fn)
    return ChallengeScores(float(iou), interpolated_ap(ranked.true_positive, ranked.n_gt), float(accuracy), tp, fp, fn)
