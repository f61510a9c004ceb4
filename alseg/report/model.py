"""What a run report shows: small frozen records the pipeline builds from its stage records.

The report renders these and reads nothing else but the URLs they name (selection pictures, the
held-out volumes for overlays, the measurement table), so it can be written for a run on any store
and tested without running a pipeline.

Metrics are flat ``name -> score`` maps. Names are free, but the report recognises alseg's:
``<metric>@<IoU threshold>`` for the matching scores (``f1@0.5``, ``accuracy@0.75``, ``pq@0.5``,
``precision@0.5``, ...), plain names for the rest (``ap75``, ``foreground_iou``). Every metric is
read as higher-is-better (the table's "% of best" and the learning curve assume it), so counts
such as ``fp@0.5`` belong in the run's metrics files, not here. :func:`flatten_scores` turns the
nested dict of :func:`alseg.evaluate.metrics.evaluate_volumes` into this form.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alseg.geometry import Box

__all__ = ["OverlaySource", "RoundResult", "RunSummary", "StageTiming", "flatten_scores", "selection_line"]

# short names of the per-threshold scores of alseg.evaluate.metrics.InstanceScores
_SHORT = {"panoptic_quality": "pq", "mean_matched_iou": "matched_iou"}
# per-threshold entries that are not higher-is-better scores
_NOT_SCORES = {"threshold", "tp", "fp", "fn"}


def flatten_scores(scores: Mapping[str, Any]) -> dict[str, float]:
    """``evaluate_volumes``' nested score dict as flat higher-is-better metrics.

    ``{"foreground_iou": .9, "objects_gt": 12, "at": {"0.5": {"f1": .8, "tp": 9, ...}}}`` becomes
    ``{"foreground_iou": .9, "f1@0.5": .8, ...}``: the per-threshold scores under ``<name>@<t>``
    (panoptic quality as ``pq``), other top-level numbers as they are (``ap75``), object counts
    and TP/FP/FN left out. An already flat map passes through.
    """
    out: dict[str, float] = {}
    for key, value in scores.items():
        if key == "at" and isinstance(value, Mapping):
            for threshold, per in value.items():
                for name, score in per.items():
                    if name not in _NOT_SCORES and _is_number(score):
                        out[f"{_SHORT.get(name, name)}@{threshold}"] = float(score)
        elif _is_number(value) and not str(key).startswith("objects_"):
            out[str(key)] = float(value)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metrics(values: Mapping[str, Any], what: str) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        if not isinstance(key, str) or not _is_number(value):
            raise ValueError(f"{what}: expected metric name -> number, got {key!r}: {value!r}")
        out[key] = float(value)
    return out


@dataclass(frozen=True)
class StageTiming:
    """One stage of the run: its name, how it ended (``done``, ``reused``, ``pending``, ...), wall time."""

    name: str
    status: str
    wall_s: float | None = None

    def __post_init__(self) -> None:
        if self.wall_s is not None and not (math.isfinite(self.wall_s) and self.wall_s >= 0):
            raise ValueError(f"stage {self.name!r}: wall_s must be a non-negative number of seconds, got {self.wall_s}")


@dataclass(frozen=True)
class RoundResult:
    """One active-learning round scored on the held-out region.

    Round 0 is the pretrained model alone (``n_annotated_patches = 0``); round ``r`` the model
    fine-tuned on every patch annotated up to and including round ``r``. ``pool_patches`` is the
    size of the candidate pool (the denominator of the annotated fraction). ``selection_picture``
    is the URL of the round's picture of the embedding store (``select/round-NN.png``), if any;
    ``selection_diagnostics`` what its picks hold against the pool
    (:func:`alseg.pipeline.content.selection_diagnostics`), if the run has pseudo-labels.
    """

    round: int
    n_annotated_patches: int
    pool_patches: int
    metrics: Mapping[str, float]
    selection_picture: str | None = None
    selection_diagnostics: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.round < 0:
            raise ValueError(f"round must be >= 0, got {self.round}")
        if self.pool_patches < 1:
            raise ValueError(f"round {self.round}: pool_patches must be >= 1, got {self.pool_patches}")
        if not 0 <= self.n_annotated_patches <= self.pool_patches:
            raise ValueError(f"round {self.round}: n_annotated_patches must lie in [0, pool_patches={self.pool_patches}], "
                             f"got {self.n_annotated_patches}")
        object.__setattr__(self, "metrics", _metrics(self.metrics, f"round {self.round} metrics"))
        if self.selection_diagnostics is not None:
            missing = [k for k in DIAGNOSTIC_KEYS if k not in self.selection_diagnostics]
            if missing:
                raise ValueError(f"round {self.round}: selection_diagnostics lack {', '.join(missing)}")

    @property
    def fraction_annotated(self) -> float:
        """The share of the candidate pool annotated so far, in [0, 1]."""
        return self.n_annotated_patches / self.pool_patches


DIAGNOSTIC_KEYS = ("picks", "picks_mean_foreground", "pool_mean_foreground", "bins_covered", "bins_total")


def selection_line(diagnostics: Mapping[str, Any]) -> str:
    """One line on a round's picks: ``picks: 4, mean pseudo-label foreground 12.3 % (pool 5.4 %),
    content bins covered 3/5``."""
    d = diagnostics
    picks, pool = d["picks_mean_foreground"], d["pool_mean_foreground"]
    fg = "–" if picks is None else f"{100 * picks:.1f} %"
    pool_fg = "–" if pool is None else f"{100 * pool:.1f} %"
    return (f"picks: {d['picks']}, mean pseudo-label foreground {fg} (pool {pool_fg}), "
            f"content bins covered {d['bins_covered']}/{d['bins_total']}")


@dataclass(frozen=True)
class OverlaySource:
    """Where the overlays come from: OME-Zarr image, predicted instances, ground truth (optional).

    ``region`` is the held-out region in level-0 voxels (``zyx``); the slices are read at
    pyramid ``level`` of all three volumes, which must share that level's grid. ``n_slices``
    z sections evenly spaced through the region are drawn.
    """

    image_url: str
    prediction_url: str
    ground_truth_url: str | None
    region: Box
    level: int = 0
    n_slices: int = 3

    def __post_init__(self) -> None:
        if self.region.ndim != 3 or self.region.empty:
            raise ValueError(f"overlay region must be a non-empty 3D box (zyx), got {self.region}")
        if self.level < 0 or self.n_slices < 1:
            raise ValueError(f"overlay level must be >= 0 and n_slices >= 1, got {self.level} and {self.n_slices}")


@dataclass(frozen=True)
class RunSummary:
    """Everything one run report shows.

    ``spec_yaml`` is the job spec as YAML, already redacted by the caller (it is shown verbatim).
    ``pseudolabel_scores`` are the pseudo-labels' flat metrics against ground truth (None when the
    run has none). ``measurements_csv`` is the URL of the per-instance table (a ``volume_um3``
    column is required). ``outputs`` maps a name to the URL of each artefact worth pointing at.
    ``created`` is shown as given (the report adds no time stamp of its own, so the same summary
    always gives the same bytes).
    """

    name: str
    spec_yaml: str
    stages: Sequence[StageTiming] = ()
    rounds: Sequence[RoundResult] = ()
    pseudolabel_scores: Mapping[str, float] | None = None
    overlays: OverlaySource | None = None
    measurements_csv: str | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)
    created: str | None = None
    embedding_quality: Mapping[str, Any] | None = None
    """The embedding-quality stage's figures (``<run dir>/embedding/quality.json``), if it ran."""
    run_dir: str | None = None
    """The run directory (redacted), for the viewer section; the report lives in its ``report`` folder."""

    def __post_init__(self) -> None:
        stages, rounds = tuple(self.stages), tuple(self.rounds)
        if not all(isinstance(s, StageTiming) for s in stages):
            raise ValueError("stages must be StageTiming records")
        if not all(isinstance(r, RoundResult) for r in rounds):
            raise ValueError("rounds must be RoundResult records")
        numbers = [r.round for r in rounds]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"rounds must be numbered uniquely, got {numbers}")
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "rounds", tuple(sorted(rounds, key=lambda r: r.round)))
        if self.pseudolabel_scores is not None:
            object.__setattr__(self, "pseudolabel_scores", _metrics(self.pseudolabel_scores, "pseudolabel_scores"))
        object.__setattr__(self, "outputs", {str(k): str(v) for k, v in self.outputs.items()})

    @property
    def metric_names(self) -> list[str]:
        """Every metric some round has, in the report's order (see :func:`metric_order`)."""
        return metric_order({k for r in self.rounds for k in r.metrics})


_FIRST = ("f1", "accuracy", "pq", "precision", "recall", "ap75", "ap", "foreground_iou")


def metric_order(names: Sequence[str] | set[str]) -> list[str]:
    """The paper's order (F1, accuracy, panoptic quality, precision, ...), then the rest by name."""

    def key(name: str) -> tuple[int, str, float, str]:
        base, _, threshold = name.partition("@")
        rank = _FIRST.index(base) if base in _FIRST else len(_FIRST)
        try:
            t = float(threshold) if threshold else -1.0
        except ValueError:
            t = math.inf
        return rank, base, t, name

    return sorted(names, key=key)


_LABELS = {"f1": "F1", "accuracy": "Accuracy", "pq": "Panoptic quality", "precision": "Precision",
           "recall": "Recall", "ap75": "AP-75", "foreground_iou": "Foreground IoU", "matched_iou": "Matched IoU"}


def metric_label(name: str) -> str:
    """``f1@0.5`` -> ``F1 (IoU 0.5)``; unknown names are shown as they are."""
    base, at, threshold = name.partition("@")
    label = _LABELS.get(base, base)
    return f"{label} (IoU {threshold})" if at else label
