"""The report's pictures as PNG bytes: learning curve, held-out overlays, instance-size histogram.

Drawn with matplotlib's Agg backend (imported lazily, no display needed). Each function returns
the PNG's bytes and writes nothing; the same input gives the same bytes (no time stamp or
software version in the PNG metadata, colours derived from the ids, no randomness).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from alseg.report.model import RoundResult, metric_label
from alseg.report.sources import Section

DPI = 100
_GOLDEN = 0.6180339887498949


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def percent_of_best(values: Sequence[float | None]) -> list[float | None]:
    """Each score as a percentage of the best one (None where a score or a positive best is missing)."""
    present = [v for v in values if v is not None and np.isfinite(v)]
    best = max(present, default=None)
    if best is None or best <= 0:
        return [None] * len(values)
    return [None if v is None or not np.isfinite(v) else 100.0 * v / best for v in values]


def learning_curve(rounds: Sequence[RoundResult], metrics: Sequence[str]) -> bytes:
    """Score and % of the best round's score against % of the pool annotated, one line per metric."""
    plt = _pyplot()
    x = [100.0 * r.fraction_annotated for r in rounds]
    fig, (ax_abs, ax_rel) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in metrics:
        ys = [r.metrics.get(name) for r in rounds]
        keep = [i for i, y in enumerate(ys) if y is not None]
        ax_abs.plot([x[i] for i in keep], [ys[i] for i in keep], marker="o", label=metric_label(name))
        rel = percent_of_best(ys)
        keep = [i for i, y in enumerate(rel) if y is not None]
        ax_rel.plot([x[i] for i in keep], [rel[i] for i in keep], marker="o", label=metric_label(name))
    for r, xr in zip(rounds, x):
        ax_abs.annotate(f"r{r.round}", (xr, 0), xytext=(0, 3), textcoords="offset points", ha="center",
                        fontsize=7, color="0.4")
    ax_abs.set_ylim(0, 1.05)
    ax_abs.set_ylabel("score on the held-out region")
    ax_abs.set_title("score")
    ax_rel.axhline(90, color="0.6", lw=0.8, ls="--")
    ax_rel.set_ylabel("% of the best round's score")
    ax_rel.set_title("relative to the best round")
    for ax in (ax_abs, ax_rel):
        ax.set_xlabel("% of the candidate pool annotated (round 0 = pretrained only)")
        ax.grid(True, color="0.9")
        ax.set_xlim(left=-2)
    ax_abs.legend(loc="lower right", fontsize=8)
    return _png(fig)


def size_histogram(volumes_um3: np.ndarray) -> bytes:
    """Histogram of instance volumes (log-spaced bins when they span more than a decade)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    v = volumes_um3[np.isfinite(volumes_um3)]
    positive = v[v > 0]
    if positive.size and positive.max() > 10 * positive.min():
        bins = np.geomspace(positive.min(), positive.max(), 40)
        ax.hist(positive, bins=bins, color="tab:blue", edgecolor="white", lw=0.4)
        ax.set_xscale("log")
    else:
        ax.hist(v, bins=min(40, max(1, v.size)), color="tab:blue", edgecolor="white", lw=0.4)
    if v.size:
        ax.axvline(float(np.median(v)), color="tab:red", lw=1, label=f"median {np.median(v):.3g} µm³")
        ax.legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_axisbelow(True)
    ax.set_xlabel("instance volume (µm³)")
    ax.set_ylabel("instances")
    ax.set_title(f"{v.size} instance{'s' if v.size != 1 else ''}")
    ax.grid(True, axis="y", color="0.9")
    return _png(fig)


def label_colors(ids: np.ndarray) -> np.ndarray:
    """A bright RGB colour per id, fixed by the id alone (golden-ratio hues); black for 0."""
    from matplotlib.colors import hsv_to_rgb

    ids = np.asarray(ids, dtype=np.uint64)
    hue = np.mod(ids.astype(np.float64) * _GOLDEN, 1.0)
    sat = 0.65 + 0.35 * np.mod(ids.astype(np.float64) * 0.37, 1.0)
    rgb = hsv_to_rgb(np.stack([hue, sat, np.ones_like(hue)], axis=-1))
    rgb[ids == 0] = 0
    return rgb


def _outlines(labels: np.ndarray) -> np.ndarray:
    """Pixels of an instance whose 4-neighbourhood holds another id (inner boundaries)."""
    edge = np.zeros(labels.shape, dtype=bool)
    dy = labels[1:, :] != labels[:-1, :]
    dx = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    return edge & (labels > 0)


def overlay(image: np.ndarray, labels: np.ndarray, *, alpha: float = 0.35) -> np.ndarray:
    """Grey ``image`` (in [0, 1]) with translucent instance colours and opaque outlines, as RGB."""
    grey = np.repeat(image[..., None], 3, axis=-1).astype(np.float64)
    ids, inverse = np.unique(labels, return_inverse=True)
    colors = label_colors(ids)[inverse.reshape(labels.shape)]
    inside = labels > 0
    out = grey.copy()
    out[inside] = (1 - alpha) * grey[inside] + alpha * colors[inside]
    edge = _outlines(labels)
    out[edge] = colors[edge]
    return np.clip(out, 0, 1)


def _count(n: int) -> str:
    return f"{n} instance" + ("" if n == 1 else "s")


def overlays(sections: Sequence[Section], *, level: int = 0) -> bytes:
    """One row per section: raw, prediction over raw, ground truth over raw (when there is one)."""
    plt = _pyplot()
    has_gt = any(s.ground_truth is not None for s in sections)
    cols = 3 if has_gt else 2
    h, w = sections[0].image.shape if sections else (1, 1)
    panel = 3.6
    fig, axes = plt.subplots(len(sections), cols, figsize=(panel * cols, panel * len(sections) * h / max(w, 1) + 0.4),
                             squeeze=False)
    for row, s in zip(axes, sections):
        n_pred = int(np.unique(s.prediction[s.prediction > 0]).size)
        row[0].imshow(s.image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        row[0].set_title(f"raw, z {s.z}" + (f" (level {level})" if level else ""), fontsize=9)
        row[1].imshow(overlay(s.image, s.prediction), interpolation="nearest")
        row[1].set_title(f"prediction ({_count(n_pred)})", fontsize=9)
        if has_gt:
            if s.ground_truth is not None:
                n_gt = int(np.unique(s.ground_truth[s.ground_truth > 0]).size)
                row[2].imshow(overlay(s.image, s.ground_truth), interpolation="nearest")
                row[2].set_title(f"ground truth ({_count(n_gt)})", fontsize=9)
        for ax in row:
            ax.set_axis_off()
    fig.tight_layout()
    return _png(fig)
