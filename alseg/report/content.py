"""The report's content as a list of neutral blocks, rendered alike to HTML and Markdown.

Building the content once and rendering it twice keeps the two twins equal: every number, table
and picture of one is in the other. Blocks hold plain text (renderers escape it) and PNG bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from alseg.io import store as st
from alseg.report import figures
from alseg.report.model import RoundResult, RunSummary, metric_label, metric_order, selection_line
from alseg.report.sources import read_measurements, read_png, read_sections

# Metrics on the learning curve: the paper's headline scores, when a run has them.
CURVE_BASES = ("f1", "accuracy", "pq", "ap75", "ap")
CURVE_MAX = 6
FIRST_PASS_PERCENT = 90.0  # the paper marks where a score first reaches 90 % of the best


@dataclass(frozen=True)
class Cell:
    text: str
    bold: bool = False
    code: bool = False


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str
    link: tuple[str, str] | None = None
    """``(label, relative href)`` after the text."""


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    first_column_header: bool = True  # the first cell of each row names the row
    align: str = ""  # per column "l" or "r"; default: the first left, the others right (numbers)

    def alignment(self) -> str:
        return self.align or "l" + "r" * (len(self.header) - 1)


@dataclass(frozen=True)
class Figure:
    key: str  # name in write_report's result
    filename: str  # the Markdown twin's PNG beside it
    caption: str
    png: bytes = field(repr=False)


@dataclass(frozen=True)
class Code:
    summary: str  # the collapsed <details> line in HTML
    language: str
    text: str


Block = Heading | Para | Table | Figure | Code


def _score(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def _percent(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def duration(seconds: float | None) -> str:
    """``12.3 s``, ``4 min 05 s``, ``2 h 03 min``; ``–`` when unknown."""
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def round_table(rounds: Sequence[RoundResult], metrics: Sequence[str]) -> Table:
    """The paper's Tab. 1: a column per round, a score row and a "% of best" row per metric.

    A score is bold in the first round where it reaches 90 % of the best round's score.
    """
    rows: list[tuple[Cell, ...]] = [
        (Cell("Annotated patches"), *(Cell(str(r.n_annotated_patches)) for r in rounds)),
        (Cell("% of pool annotated"), *(Cell(_percent(100 * r.fraction_annotated)) for r in rounds)),
    ]
    for name in metrics:
        values = [r.metrics.get(name) for r in rounds]
        rel = figures.percent_of_best(values)
        first = next((i for i, p in enumerate(rel) if p is not None and p >= FIRST_PASS_PERCENT - 1e-9), None)
        rows.append((Cell(metric_label(name)), *(Cell(_score(v), bold=(i == first)) for i, v in enumerate(values))))
        rows.append((Cell("% of best"), *(Cell(_percent(p)) for p in rel)))
    header = ("", *(f"round {r.round}" for r in rounds))
    return Table(header, tuple(rows))


def curve_metrics(names: Sequence[str]) -> list[str]:
    """The learning curve's metrics: the headline ones present, else the first few."""
    headline = [n for n in names if n.partition("@")[0] in CURVE_BASES]
    return (headline or list(names))[:CURVE_MAX]


def _rounds(summary: RunSummary) -> list[Block]:
    if not summary.rounds:
        return [Heading("Active-learning rounds"), Para("No round has been evaluated yet.")]
    names = summary.metric_names
    out: list[Block] = [
        Heading("Active-learning rounds"),
        Para("Scores of each round's model on the held-out region. Round 0 is the model pretrained on "
             "pseudo-labels alone; each later round is fine-tuned on every patch annotated so far. "
             "Each score is followed by its percentage of the best round's score; bold marks the first "
             f"round that reaches {FIRST_PASS_PERCENT:.0f} % of it."),
        round_table(summary.rounds, names),
    ]
    if names:
        out.append(Figure("learning_curve", "learning-curve.png",
                          "Learning curve: score against the share of the candidate pool annotated.",
                          figures.learning_curve(summary.rounds, curve_metrics(names))))
    return out


def _selection(summary: RunSummary) -> list[Block]:
    out: list[Block] = []
    previous = 0
    for r in summary.rounds:
        picked = r.n_annotated_patches - previous
        previous = r.n_annotated_patches
        if r.selection_diagnostics is not None:
            out.append(Para(f"Round {r.round}: {selection_line(r.selection_diagnostics)}."))
        if r.selection_picture is None:
            continue
        out.append(Figure(f"selection_round_{r.round:02d}", f"selection-round-{r.round:02d}.png",
                          f"Round {r.round}: {picked} patch(es) selected ({r.n_annotated_patches} annotated in all), "
                          "in the embedding store's PCA projection.", read_png(r.selection_picture)))
    if not out:
        return []
    intro: list[Block] = []
    if any(r.selection_diagnostics is not None for r in summary.rounds):
        intro.append(Para("Pseudo-label foreground: the share of a patch's voxels inside a pseudo-labelled object, "
                          "averaged over the round's picks and over the whole candidate pool. Content bins: the "
                          "empty patches, and the others split at the quantiles of their foreground (quartiles by default); "
                          "covered bins "
                          "hold at least one pick."))
    return [Heading("Selected patches"), *intro, *out]


def _num(v: object, fmt: str = ".2f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and np.isfinite(v) else "–"


def _embedding(summary: RunSummary) -> list[Block]:
    q = summary.embedding_quality
    if not q:
        return []
    emb, pix = q.get("embedding", {}), q.get("pixels", {})
    rows = []
    for key, label in (("r2_pseudolabels", "R² of pseudo-label foreground (cross-validated)"),
                       ("r2_ground_truth", "R² of ground-truth foreground (cross-validated)"),
                       ("neighbour_ratio_pseudolabels", "nearest-neighbour content ratio, pseudo-labels (1 = random)"),
                       ("neighbour_ratio_ground_truth", "nearest-neighbour content ratio, ground truth (1 = random)"),
                       ("participation_ratio", "participation ratio (directions in use)"),
                       ("mean_cosine", "mean cosine similarity")):
        if key in emb:
            rows.append((Cell(label), Cell(_num(emb[key])), Cell(_num(pix.get(key)))))
    out: list[Block] = [
        Heading("Embedding space"),
        Para(f"Source: {q.get('source')}; measured on {q.get('patches')} of the {q.get('pool')} pool patches against "
             "the pixels baseline (a PCA of the downsampled sections). A space that beats pixels places patches of "
             "similar content together, so a k-center core-set on it is chosen, not drawn."),
        Table(("measure", str(q.get("source")), "pixels"), tuple(rows)),
    ]
    if q.get("heldout_ratio") is not None:
        out.append(Para(f"MAE on held-out sections: masked-reconstruction loss {_num(q.get('heldout_loss'), '.4f')}, "
                        f"the mean predictor's {_num(q.get('heldout_mean_predictor'), '.4f')} (ratio "
                        f"{_num(q['heldout_ratio'], '.3f')}; 1.0 would be the trivial solution)."))
    for w in q.get("warnings", []):
        out.append(Para(f"Warning: {w}."))
    if q.get("reconstructions"):
        out.append(Figure("reconstructions", "reconstructions.png", "MAE reconstructions of pool sections (random masks): "
                          "section, masked input, reconstruction, target.", read_png(q["reconstructions"])))
    return out


def _overlays(summary: RunSummary) -> list[Block]:
    src = summary.overlays
    if src is None:
        return []
    sections = read_sections(src)
    what = "raw, prediction" + (" and ground truth" if src.ground_truth_url is not None else "")
    return [
        Heading("Held-out slices"),
        Para(f"{len(sections)} z section(s) of the held-out region {src.region} (level-0 voxels, zyx) at pyramid "
             f"level {src.level}: {what}. Instances are drawn as translucent colours with outlines."),
        Figure("overlays", "overlays.png", f"Held-out sections: {what}.", figures.overlays(sections, level=src.level)),
    ]


def _measurements(summary: RunSummary) -> list[Block]:
    if summary.measurements_csv is None:
        return []
    m = read_measurements(summary.measurements_csv)
    v = m.volumes_um3
    stats = [("instances", str(m.count))]
    if m.count:
        stats += [("median volume (µm³)", f"{np.median(v):.4g}"), ("mean volume (µm³)", f"{np.mean(v):.4g}"),
                  ("smallest / largest (µm³)", f"{np.min(v):.4g} / {np.max(v):.4g}"),
                  ("total volume (µm³)", f"{np.sum(v):.4g}")]
    if m.touching_border is not None:
        stats.append(("touching the volume border", str(m.touching_border)))
    out: list[Block] = [
        Heading("Instances"),
        Para(f"Summary of the per-instance measurement table {st.redact(summary.measurements_csv)}."),
        Table(("quantity", "value"), tuple((Cell(k), Cell(val)) for k, val in stats)),
    ]
    if m.count:
        out.append(Figure("instance_sizes", "instance-sizes.png", "Instance volumes.", figures.size_histogram(v)))
    return out


def _pseudolabels(summary: RunSummary) -> list[Block]:
    scores = summary.pseudolabel_scores
    if scores is None:
        return []
    rows = tuple((Cell(metric_label(k)), Cell(_score(scores[k]))) for k in metric_order(set(scores)))
    return [Heading("Pseudo-labels"), Para("Pseudo-labels scored against the ground truth."),
            Table(("metric", "score"), rows)]


def _stages(summary: RunSummary) -> list[Block]:
    if not summary.stages:
        return []
    rows = [(Cell(s.name), Cell(s.status), Cell(duration(s.wall_s))) for s in summary.stages]
    known = [s.wall_s for s in summary.stages if s.wall_s is not None]
    rows.append((Cell("total", bold=True), Cell(""), Cell(duration(sum(known)) if known else "–", bold=True)))
    return [Heading("Stages"), Table(("stage", "status", "wall time"), tuple(rows), align="llr")]


def _outputs(summary: RunSummary) -> list[Block]:
    if not summary.outputs:
        return []
    rows = tuple((Cell(k), Cell(st.redact(v), code=True)) for k, v in summary.outputs.items())
    return [Heading("Outputs"), Table(("output", "location"), rows, align="ll")]


def _viewer(summary: RunSummary) -> list[Block]:
    if summary.run_dir is None:
        return []
    return [Heading("Viewer"),
            Para(f"The whole volume in neuroglancer (image, pseudo-labels, instances with these measurements on "
                 f"selection, ground truth, held-out region, every round's core-set): run `alseg view {summary.run_dir}`. "
                 f"After `alseg view {summary.run_dir} --state-only`, the viewer state to share is here:",
                 link=("view/state.json", "../view/state.json"))]


def build(summary: RunSummary) -> list[Block]:
    """Every block of the report, in order."""
    head: list[Block] = [Heading(f"alseg run report: {summary.name}", level=1)]
    if summary.created:
        head.append(Para(f"Created {summary.created}."))
    spec = [Heading("Job spec"), Code("the job spec (YAML)", "yaml", summary.spec_yaml)]
    return [*head, *_rounds(summary), *_overlays(summary), *_measurements(summary), *_selection(summary), *_embedding(summary),
            *_pseudolabels(summary), *_stages(summary), *_outputs(summary), *_viewer(summary), *spec]
