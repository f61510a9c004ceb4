"""Instance segmentation metrics: matching at IoU thresholds, F1, accuracy, panoptic quality, IoU.

Everything is computed from an *overlap table* (voxel counts of every ground-truth / prediction
id pair, plus each object's size). Tables of blocks add up, so a volume of any size is scored
block by block (:func:`evaluate_volumes`) with memory bounded by the number of objects.

Definitions (counted over object ids actually present, background 0 excluded):

* a ground-truth and a predicted object *match* at threshold ``t`` when paired one-to-one with
  ``IoU >= t``; pairs are chosen by optimal assignment maximising the summed IoU (for
  ``t > 0.5`` the pairing is unique anyway);
* ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``, ``F1 = 2TP / (2TP + FP + FN)``,
  ``accuracy = TP / (TP + FP + FN)`` (the cell-tracking / StarDist convention);
* ``PQ = sum of matched IoUs / (TP + FP / 2 + FN / 2)`` (Kirillov et al.);
* foreground ``IoU`` of the binary masks ``gt > 0`` and ``pred > 0``;
* the MitoEM challenge's scores at IoU 0.75, whatever the thresholds asked for (definitions and
  sources in :mod:`alseg.evaluate.mitoem`): ``ap75``, COCO-style average precision with predicted
  sizes as scores (101-point interpolation), and ``accuracy75``, ``TP / (TP + FP + FN)``. The
  latter equals ``at["0.75"]["accuracy"]`` when 0.75 is among the thresholds; it is named apart
  so that a flat ``accuracy`` never stands for one threshold silently.

Empty cases are defined, never NaN: no objects on either side scores 1.0, objects on one side only 0.0.

**Inputs are checked before any block is read**: IoU thresholds must lie in (0, 1] (else a
:class:`~alseg.errors.SpecError`), and both volumes must hold label ids, which the metadata says
(else a :class:`~alseg.errors.DataError`):

* integer voxels only: float labels would be truncated (ids 1.2 and 1.7 merged into one object);
* a volume with NGFF ``image-label`` metadata (as alseg's ground truth, pseudo-labels and
  predictions all carry) is a label image; one without it is an *image* by NGFF's rules, accepted
  as labels only in a dtype of 16 bits or more (other tools store label volumes so); 8-bit
  volumes without it are refused: that is what an EM image is (a 16-bit grey image without the
  metadata cannot be told from labels by its metadata and is accepted);
* signed ids must not be negative (-1 as background would become object 2**64 - 1). The dtype
  says nothing about values, so the one block pass that builds the overlap table also reports
  each block's smallest id and the volume is refused when the pass ends: one read of the data,
  not a checking pass before the scoring pass.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from alseg.errors import DataError, SpecError
from alseg.evaluate.mitoem import challenge_scores
from alseg.geometry import BlockGrid, Box
from alseg.io.omezarr import Volume, open_volume


@dataclass
class OverlapTable:
    """Voxel counts that every metric here derives from; ``a + b`` merges two tables."""

    pairs: dict[tuple[int, int], int] = field(default_factory=dict)  # (gt id, pred id) -> voxels, both > 0
    gt_sizes: dict[int, int] = field(default_factory=dict)
    pred_sizes: dict[int, int] = field(default_factory=dict)
    voxels: int = 0

    def __add__(self, other: OverlapTable) -> OverlapTable:
        out = OverlapTable(dict(self.pairs), dict(self.gt_sizes), dict(self.pred_sizes), self.voxels)
        out += other
        return out

    def __iadd__(self, other: OverlapTable) -> OverlapTable:
        for src, dst in ((other.pairs, self.pairs), (other.gt_sizes, self.gt_sizes), (other.pred_sizes, self.pred_sizes)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
        self.voxels += other.voxels
        return self

    def to_json(self) -> dict[str, Any]:
        return {"pairs": [[a, b, c] for (a, b), c in self.pairs.items()], "gt": list(self.gt_sizes.items()),
                "pred": list(self.pred_sizes.items()), "voxels": self.voxels}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OverlapTable:
        return cls({(int(a), int(b)): int(c) for a, b, c in d["pairs"]}, {int(k): int(v) for k, v in d["gt"]},
                   {int(k): int(v) for k, v in d["pred"]}, int(d["voxels"]))


def check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    """The IoU thresholds as floats, each in (0, 1], or a :class:`SpecError` naming the bad ones."""
    try:
        values = tuple(float(t) for t in thresholds)
    except (TypeError, ValueError) as err:
        raise SpecError(f"IoU thresholds must be numbers in (0, 1], got {thresholds!r}") from err
    bad = [t for t in values if not 0 < t <= 1]  # NaN fails this too
    if bad:
        raise SpecError(f"IoU thresholds must lie in (0, 1], got {', '.join(f'{t:g}' for t in bad)}")
    return values


def _check_ids(arr: np.ndarray, what: str) -> None:
    if arr.dtype.kind not in "ui":
        raise DataError(f"{what}: label ids must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise DataError(f"{what}: label ids must not be negative, found {int(arr.min())}")


def overlap_table(gt: np.ndarray, pred: np.ndarray) -> OverlapTable:
    """The overlap table of two label arrays of the same shape (non-negative integer ids)."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    _check_ids(gt, "ground truth")
    _check_ids(pred, "prediction")
    g, p = gt.ravel().astype(np.uint64, copy=False), pred.ravel().astype(np.uint64, copy=False)
    both = (g > 0) & (p > 0)
    table = OverlapTable(voxels=int(g.size))
    if both.any():
        uniq, counts = np.unique(np.stack([g[both], p[both]]), axis=1, return_counts=True)
        table.pairs = {(int(a), int(b)): int(c) for (a, b), c in zip(uniq.T, counts)}
    for arr, sizes in ((g, table.gt_sizes), (p, table.pred_sizes)):
        ids, counts = np.unique(arr[arr > 0], return_counts=True)
        sizes.update((int(i), int(c)) for i, c in zip(ids, counts))
    return table


@dataclass(frozen=True)
class InstanceScores:
    threshold: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    accuracy: float
    panoptic_quality: float
    mean_matched_iou: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _ratio(num: float, den: float, empty: float) -> float:
    return float(num / den) if den else empty


def match_instances(table: OverlapTable, threshold: float) -> tuple[InstanceScores, list[tuple[int, int, float]]]:
    """Scores at one IoU threshold and the matched ``(gt id, pred id, IoU)`` pairs."""
    from scipy.optimize import linear_sum_assignment

    (threshold,) = check_thresholds((threshold,))
    cand = []
    for (g, p), inter in table.pairs.items():
        iou = inter / (table.gt_sizes[g] + table.pred_sizes[p] - inter)
        if iou >= threshold:
            cand.append((g, p, iou))
    matches: list[tuple[int, int, float]] = []
    if cand:
        gs = sorted({c[0] for c in cand})
        ps = sorted({c[1] for c in cand})
        gi, pi = {g: i for i, g in enumerate(gs)}, {p: i for i, p in enumerate(ps)}
        weight = np.zeros((len(gs), len(ps)))
        for g, p, iou in cand:
            weight[gi[g], pi[p]] = iou
        rows, cols = linear_sum_assignment(weight, maximize=True)
        matches = [(gs[r], ps[c], float(weight[r, c])) for r, c in zip(rows, cols) if weight[r, c] >= threshold]
    tp = len(matches)
    n_gt, n_pred = len(table.gt_sizes), len(table.pred_sizes)
    fp, fn = n_pred - tp, n_gt - tp
    empty = 1.0 if n_gt == n_pred == 0 else 0.0
    iou_sum = sum(m[2] for m in matches)
    scores = InstanceScores(
        threshold=float(threshold), tp=tp, fp=fp, fn=fn,
        precision=_ratio(tp, tp + fp, empty), recall=_ratio(tp, tp + fn, empty),
        f1=_ratio(2 * tp, 2 * tp + fp + fn, empty), accuracy=_ratio(tp, tp + fp + fn, empty),
        panoptic_quality=_ratio(iou_sum, tp + fp / 2 + fn / 2, empty), mean_matched_iou=_ratio(iou_sum, tp, empty),
    )
    return scores, matches


def foreground_iou(table: OverlapTable) -> float:
    inter = sum(table.pairs.values())
    union = sum(table.gt_sizes.values()) + sum(table.pred_sizes.values()) - inter
    return _ratio(inter, union, 1.0)


def score_table(table: OverlapTable, thresholds: Sequence[float] = (0.5, 0.75)) -> dict[str, Any]:
    """Every metric of a table: ``{"foreground_iou", "objects_gt", "objects_pred", "ap75", "accuracy75",
    "at": {t: scores}}``."""
    thresholds = check_thresholds(thresholds)
    challenge = challenge_scores(table)
    return {
        "foreground_iou": foreground_iou(table),
        "objects_gt": len(table.gt_sizes),
        "objects_pred": len(table.pred_sizes),
        "ap75": challenge.ap,
        "accuracy75": challenge.accuracy,
        "at": {f"{t:g}": match_instances(table, t)[0].as_dict() for t in thresholds},
    }


def check_label_volume(vol: Volume, what: str) -> None:
    """Refuse, from its metadata alone, a volume that cannot hold label ids (see the module docs)."""
    where = f"{what} {vol.url}"
    if vol.dtype.kind not in "ui":
        raise DataError(f"{where}: label ids must be integers, got dtype {vol.dtype} (float ids would be truncated, "
                        "merging objects); write the labels as unsigned integers")
    if not vol.is_label_image and vol.dtype.itemsize == 1:
        raise DataError(f"{where}: an 8-bit image without NGFF 'image-label' metadata looks like a grey-value (EM) "
                        "image, not labels; pass a label image (e.g. <image>/labels/<name>), or write these labels "
                        "as one (alseg's create_labels) or as 16-bit or wider integers")


def _table_block(job: tuple[str, str, Any, int]) -> dict[str, Any]:
    gt_url, pred_url, box, gt_level = job
    gt, pred = open_volume(gt_url, level=gt_level).read(box), open_volume(pred_url).read(box)
    negative = {role: int(a.min()) for role, a in (("gt", gt), ("pred", pred)) if a.dtype.kind == "i" and a.size and a.min() < 0}
    if negative:  # reported, not raised: a data error is not worth the runner's retries
        return {"negative": negative}
    return overlap_table(gt, pred).to_json()


def evaluate_volumes(
    gt_url: str | os.PathLike[str],
    pred_url: str | os.PathLike[str],
    *,
    thresholds: Sequence[float] = (0.5, 0.75),
    block_shape: Sequence[int] | None = None,
    region: Any = None,
    runner: Any = None,
    gt_level: int = 0,
) -> dict[str, Any]:
    """Score the label volume ``pred_url`` against ``gt_url`` (same grid), block by block.

    ``gt_level``: the ground truth's pyramid level on the prediction's grid (a job run at
    ``input.level`` 1 predicts on level 1; its scores are against the ground truth's level 1).

    ``region`` (a :class:`alseg.geometry.Box`) restricts scoring to a sub-volume, e.g. the held-out
    evaluation region. Objects cut by the region are scored by their part inside it. Thresholds and
    label dtypes are checked before any block is read; negative ids during the one block pass.
    """
    from alseg.runtime import SerialRunner, WorkItem

    thresholds = check_thresholds(thresholds)
    gt, pred = open_volume(gt_url, level=gt_level), open_volume(pred_url)
    check_label_volume(gt, "ground truth")
    check_label_volume(pred, "labels")
    if gt.shape != pred.shape:
        raise DataError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    region = region or gt.bounds
    block = tuple(block_shape) if block_shape is not None else tuple(min(4 * c, s) for c, s in zip(gt.chunks, region.shape))
    grid = BlockGrid(region.shape, block)
    items, boxes = [], {}
    for b in grid:
        box = Box(tuple(s + o for s, o in zip(b.write.start, region.start)), tuple(s + o for s, o in zip(b.write.stop, region.start)))
        boxes[b.key] = box
        items.append(WorkItem(b.key, (os.fspath(gt_url), os.fspath(pred_url), box, gt_level)))
    runner = runner or SerialRunner(progress=False)
    results = runner.map(_table_block, items, desc="score blocks")
    negative = sorted((k, r["negative"]) for k, r in results.items() if "negative" in r)
    if negative:
        key, found = negative[0]
        names = {"gt": f"ground truth {gt.url}", "pred": f"labels {pred.url}"}
        which = "; ".join(f"{names[role]} holds {low}" for role, low in found.items())
        raise DataError(f"label ids must not be negative: {which} (in block {boxes[key]}"
                        + (f" and {len(negative) - 1} more block(s)" if len(negative) > 1 else "") + ")")
    table = OverlapTable()
    for r in results.values():
        table += OverlapTable.from_json(r)
    return score_table(table, thresholds)
