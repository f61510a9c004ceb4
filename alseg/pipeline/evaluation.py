"""Scores of a label volume against the spec's ground truth."""

from __future__ import annotations

from typing import Any

from alseg.spec import JobSpec


def evaluate(spec: JobSpec, labels_url: str, *, runner: Any = None, holdout_only: bool = False) -> dict[str, Any]:
    """Score a label volume against the spec's ground truth at its IoU thresholds (on the held-out
    evaluation region only, with ``holdout_only``), on the grid of ``input.level``."""
    from alseg.errors import SpecError
    from alseg.evaluate.metrics import evaluate_volumes
    from alseg.spec import ground_truth_url

    gt = ground_truth_url(spec)
    if gt is None:
        raise SpecError("input.ground_truth is not set: nothing to evaluate against")
    region = None
    if holdout_only:
        from alseg.io.omezarr import open_volume
        from alseg.preflight import holdout_of

        region = holdout_of(spec, open_volume(labels_url).shape)
    return evaluate_volumes(gt, labels_url, thresholds=spec.evaluation.iou_thresholds, runner=runner, region=region,
                            gt_level=spec.input.level)
