"""The per-round stages that have no module of their own: annotation (simulated, or exported for
a person and read back by ``alseg import``) and the held-out evaluation of a round's model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alseg import annotate
from alseg.errors import AlsegError
from alseg.geometry import Box
from alseg.io import store as st
from alseg.pipeline.common import input_volume, pseudolabels_url
from alseg.pipeline.evaluation import evaluate
from alseg.pipeline.predict import prediction_key, run_predict
from alseg.pipeline.records import read_record
from alseg.preflight import holdout_of, patch_grid_of
from alseg.runtime import Runner
from alseg.spec import JobSpec, ground_truth_url


@dataclass(frozen=True)
class RoundScores:
    """One evaluated round: its number, the patches annotated up to it, the pool, its scores."""

    round: int
    annotated: int
    pool: int
    scores: dict[str, Any]
    selection_picture: str | None
    selection_diagnostics: dict[str, Any] | None = None


def round_scores(spec: JobSpec, records: Mapping[str, dict[str, Any]] | None = None) -> list[RoundScores]:
    """Every evaluated round so far, from the stage records (those given, else the run's)."""
    def record(key: str) -> dict[str, Any] | None:
        return (records or {}).get(key) or read_record(spec, key)

    pool = len(patch_grid_of(spec, input_volume(spec).shape).patches())
    out = []
    annotated = 0
    for r in range(spec.selection.rounds + 1):
        if r > 0:
            ann = record(f"annotate-{r:02d}")
            if ann is None:
                break
            annotated += len(ann["result"]["patch_ids"])
        ev = record(f"evaluate-{r:02d}")
        if ev is None or "scores" not in ev["result"]:
            continue
        selected = (record(f"select-{r:02d}") or {}).get("result", {}) if r > 0 else {}
        out.append(RoundScores(r, annotated, pool, ev["result"]["scores"], selected.get("picture"),
                               selected.get("diagnostics")))
    return out


class AwaitingAnnotation(AlsegError):
    """A round's patches are exported for a person to annotate: the job stops here (exit 0)."""


def picks_of(selection: dict[str, Any]) -> list[tuple[int, Box]]:
    """``(patch id, box)`` of a selection record."""
    return [(int(i), Box(tuple(b[:3]), tuple(b[3:]))) for i, b in zip(selection["patch_ids"], selection["boxes"])]


def run_annotation(spec: JobSpec, round_index: int, selection: dict[str, Any], *, model: dict[str, Any] | None = None,
                   runner: Runner | None = None, progress: bool = True) -> dict[str, Any]:
    """Annotate a round's picks: ground truth copied (``simulated``), or the labels imported by
    ``alseg import`` (``manual``); without an import yet, export the round and stop. The starting
    labels of a manual round are the instances of ``model`` (the previous round's) on the picks,
    or the pseudo-labels in round 1."""
    picks = picks_of(selection)
    if spec.annotation.method == "simulated":
        annotate.simulate_round(spec, round_index, picks)
    else:
        stored = [(pid, box) for pid, box, r in annotate.annotated_patches(spec) if r == round_index]
        if not stored:
            start = pseudolabels_url(spec)
            if model is not None:
                out_dir = st.join(spec.run.dir, "rounds", f"round-{round_index:02d}", "start")
                key = f"start-{round_index:02d}-{selection.get('signature_sha256', 'x')[:12]}-{prediction_key(spec)}"
                start = run_predict(spec, model_folder=model["model_folder"], norm=model["norm"], runner=runner, progress=progress,
                                    out_dir=out_dir, region=[box for _, box in picks], work_key=key)["instances"]
            folder = annotate.export_round(spec, round_index, picks, start)
            raise AwaitingAnnotation(
                f"round {round_index}: {len(picks)} patches to annotate in {st.redact(folder)} (its README.txt says how, "
                f"with napari or micro-SAM); then: alseg import {st.redact(spec.run.dir)} {st.redact(folder)} "
                "and run this job again to fine-tune")
        picks = [p for p in picks if p[0] in {pid for pid, _ in stored}]  # a partial import: what is there
    return {"round": round_index, "patch_ids": [i for i, _ in picks], "method": spec.annotation.method}


def run_round_evaluation(spec: JobSpec, round_index: int, model: dict[str, Any], *, runner: Runner, work_key: str,
                         progress: bool = True) -> dict[str, Any]:
    """A round's model on the held-out region (only the blocks it needs), 3D instances, scores."""
    image = input_volume(spec)
    region = holdout_of(spec, image.shape)
    if ground_truth_url(spec) is None:
        return {"round": round_index, "skipped": "input.ground_truth is not set: nothing to evaluate against"}
    out_dir = st.join(spec.run.dir, "rounds", f"round-{round_index:02d}")
    pred = run_predict(spec, model_folder=model["model_folder"], norm=model["norm"], runner=runner, progress=progress,
                       out_dir=out_dir, region=region, work_key=work_key)
    scores = evaluate(spec, pred["instances"], runner=runner, holdout_only=region is not None)
    return {"round": round_index, "model_folder": model["model_folder"], "instances": pred["instances"],
            "region": None if region is None else [*region.start, *region.stop], "scores": scores}
