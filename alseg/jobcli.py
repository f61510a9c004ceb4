"""The job commands of the command line: ``alseg run``, ``alseg status`` and the demo's loop.

``alseg run SPEC`` runs (or resumes) every stage of the job; ``alseg status RUNDIR|SPEC`` says
what is done, stale (and which field made it so) or pending, with wall times; both print the
round table (the paper's shape: each metric and its % of the best round) and a line per selected
round on what its picks hold (pseudo-label foreground and content bins against the pool's).
"""

from __future__ import annotations

from typing import Any, Callable

from alseg.annotate.cli import spec_of_run
from alseg.io import store as st
from alseg.pipeline import job_status, run_job
from alseg.pipeline.graph import JobOutcome
from alseg.pipeline.records import read_record
from alseg.pipeline.rounds import round_scores
from alseg.report.model import selection_line
from alseg.rundir import RECORD
from alseg.spec import JobSpec, load_spec

METRICS = (("f1", 0.5), ("f1", 0.75), ("panoptic_quality", 0.5), ("accuracy", 0.75))


def spec_of(target: str) -> JobSpec:
    """The spec of a YAML file, or the one recorded in a run directory (``alseg-run.json``)."""
    if target.endswith((".yaml", ".yml")) or not st.exists(st.join(target, RECORD)):
        return load_spec(target)
    return spec_of_run(target)


def round_rows(spec: JobSpec, records: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per evaluated round: annotated patches, % of the pool, the metrics."""
    rows = []
    for rs in round_scores(spec, records):
        row: dict[str, Any] = {"round": rs.round, "annotated": rs.annotated, "pool_percent": 100.0 * rs.annotated / max(rs.pool, 1)}
        for name, t in METRICS:
            at = rs.scores["at"].get(str(t))
            if at is not None and name in at:
                row[f"{name}@{t}"] = at[name]
        for key in ("ap75", "foreground_iou"):
            if key in rs.scores:
                row[key] = rs.scores[key]
        rows.append(row)
    return rows


def selection_lines(spec: JobSpec, records: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """A line per selected round whose record has diagnostics (the job has pseudo-labels)."""
    out = []
    for r in range(1, spec.selection.rounds + 1):
        key = f"select-{r:02d}"
        rec = (records or {}).get(key) or read_record(spec, key)
        if rec is None:
            break
        diagnostics = rec["result"].get("diagnostics")
        if diagnostics is not None:
            out.append(f"round {r} selection: {selection_line(diagnostics)}")
    return out


def print_round_table(rows: list[dict[str, Any]], say: Callable[[str], None] = print) -> None:
    if not rows:
        say("no round evaluated yet (evaluation needs input.ground_truth)")
        return
    keys = [k for k in rows[0] if k not in ("round", "annotated", "pool_percent")]
    best = {k: max(row.get(k, 0.0) for row in rows) for k in keys}
    say(f"{'round':<14} annotated  % pool  " + "  ".join(f"{k:>18}" for k in keys))
    for row in rows:
        cells = []
        for k in keys:
            v = row.get(k)
            cells.append(f"{'-':>18}" if v is None else f"{v:>7.3f} ({100 * v / best[k] if best[k] else 0:5.1f}%)".rjust(18))
        label = "0 (pretrained)" if row["round"] == 0 else str(row["round"])
        say(f"{label:<14} {row['annotated']:>9}  {row['pool_percent']:>5.1f}%  " + "  ".join(cells))


def summarise(spec: JobSpec, outcome: JobOutcome, say: Callable[[str], None] = print) -> None:
    """The end of a run: the round table and where the outputs are."""
    print_round_table(round_rows(spec, outcome.records), say)
    for line in selection_lines(spec, outcome.records):
        say(line)
    pred = outcome.records.get("predict")
    if pred is not None:
        res = pred["result"]
        say(f"final prediction -> {res['instances']} ({res['objects']} instances); classes {res['classes']}")
        say(f"open in napari: napari --plugin napari-ome-zarr {spec.input.url} {res['instances']}")
    say(f"run directory: {st.redact(spec.run.dir)} (alseg status {st.redact(spec.run.dir)})")


def run_spec(spec: JobSpec, *, progress: bool, echo: Callable[[str], None] | None, say: Callable[[str], None] = print) -> int:
    outcome = run_job(spec, progress=progress, echo=echo, say=say)
    if outcome.paused:
        say(outcome.paused)
        return 0
    summarise(spec, outcome, say)
    return 0


def print_status(spec: JobSpec, say: Callable[[str], None] = print) -> int:
    """Each stage's state; exit 0."""
    total = 0.0
    for s in job_status(spec):
        wall = "" if s.wall_s is None else f"{s.wall_s:8.1f} s"
        if s.state == "done":
            total += s.wall_s or 0.0
        say(f"{s.key:<20} {s.state:<8} {wall:>10}  {s.title}" + (f"  [{s.detail}]" if s.detail and s.state != "done" else ""))
    say(f"wall time of the stages done: {total:.1f} s")
    print_round_table(round_rows(spec), say)
    for line in selection_lines(spec):
        say(line)
    return 0
