"""Per-patch uncertainty from a model's class probabilities, accumulated tile by tile.

Every score is a mean over the voxels of a patch, so a patch predicted in tiles adds up its
tiles' sums (:class:`UncertaintySums`) and never holds more than one tile of probabilities.

* ``entropy``: mean voxel entropy ``-sum_c p_c log p_c`` (nats) of the mean prediction.
* ``least_confidence``: mean of ``1 - max_c p_c``.
* ``bald``: the mutual information between prediction and model, estimated from ``T`` stochastic
  predictions ``p_t``: ``H(mean_t p_t) - mean_t H(p_t)`` (Houlsby et al. 2011; Gal et al. 2017).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from alseg.errors import DataError

MEASURES = ("entropy", "least_confidence", "bald")


def _entropy(p: np.ndarray, axis: int) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=axis)


def _check_probs(p: np.ndarray, axis: int) -> None:
    if p.ndim < 2:
        raise DataError(f"class probabilities need a class axis and voxels, got shape {p.shape}")
    if np.any(p < -1e-6) or not np.allclose(p.sum(axis=axis), 1.0, atol=1e-3):
        raise DataError("class probabilities must be non-negative and sum to 1 over the class axis (softmax first)")


@dataclass
class UncertaintySums:
    """Running voxel sums of the three measures for one patch."""

    voxels: int = 0
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MEASURES, 0.0))

    def add(self, probs: np.ndarray, *, samples: bool = False) -> "UncertaintySums":
        """Add one tile: ``probs`` is ``(C, ...)``, or ``(T, C, ...)`` (``T`` stochastic predictions) with ``samples``."""
        probs = np.asarray(probs)
        stack = probs if samples else probs[None]
        _check_probs(stack, axis=1)
        mean = stack.mean(axis=0, dtype=np.float64)
        h_mean = _entropy(mean, axis=0)
        self.sums["entropy"] += float(h_mean.sum())
        self.sums["least_confidence"] += float((1.0 - mean.max(axis=0)).sum())
        self.sums["bald"] += float((h_mean - _entropy(stack, axis=1).mean(axis=0)).sum())
        self.voxels += int(h_mean.size)
        return self

    def scores(self) -> dict[str, float]:
        if self.voxels == 0:
            raise DataError("no voxels were added: cannot score an empty patch")
        return {k: v / self.voxels for k, v in self.sums.items()}


def patch_uncertainty(probs: np.ndarray, *, samples: bool = False) -> dict[str, float]:
    """The three measures of one patch: ``probs`` is ``(C, ...)``, or ``(T, C, ...)`` with ``samples``."""
    return UncertaintySums().add(probs, samples=samples).scores()
