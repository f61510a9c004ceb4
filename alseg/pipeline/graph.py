"""The stage graph of a job, in the paper's order, and the driver that runs it.

pseudo-labels -> nnU-Net pretraining -> MAE -> embeddings -> for each round r = 1..R: selection
-> annotation -> fine-tuning -> evaluation on the held-out region; round 0 evaluates the
pretrained model alone; then the final model predicts the whole volume once.

Every stage names the spec fields it reads and the stages whose artefacts it reads
(:mod:`alseg.pipeline.records`); :func:`run_job` skips a stage whose signature is unchanged and
re-runs one whose fields or upstream changed, and with it everything downstream.
:func:`job_status` says, without running anything, which stages are done, stale (and why) or
pending.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from alseg.io import store as st
from alseg.pipeline.embedding import run_embed, run_mae
from alseg.pipeline.embedquality import run_embedding_quality
from alseg.pipeline.evaluation import evaluate
from alseg.pipeline.finetune import run_finetune
from alseg.pipeline.predict import run_predict
from alseg.pipeline.pretrain import run_pretrain
from alseg.pipeline.pseudolabels import run_pseudolabels
from alseg.pipeline.records import Signature, field_values, read_record, write_record
from alseg.pipeline.report import run_measure, run_report
from alseg.pipeline.rounds import AwaitingAnnotation, picks_of, run_annotation, run_round_evaluation
from alseg.pipeline.selection import run_scores, run_select
from alseg.rundir import claim
from alseg.runtime import Runner, runner_from_spec
from alseg.select import needs_embeddings, needs_pseudolabels, uncertainty_measure
from alseg.spec import JobSpec, ground_truth_url

INPUT = ("input.url", "input.level", "input.missing_chunks")


@dataclass
class Context:
    """What a running stage may use: the job's runner, progress settings and finished records."""

    runner: Runner
    progress: bool
    echo: Callable[[str], None] | None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    signature: Signature | None = None

    def result(self, key: str) -> dict[str, Any]:
        return self.records[key]["result"]


@dataclass(frozen=True)
class Stage:
    key: str
    title: str
    fields: tuple[str, ...]
    upstream: tuple[str, ...]
    action: Callable[[JobSpec, Context], dict[str, Any]]
    exclude: tuple[str, ...] = ()

    def signature(self, spec: JobSpec, tokens: dict[str, str]) -> Signature:
        return Signature(field_values(spec, self.fields, self.exclude), {k: tokens[k] for k in self.upstream})


def _json(result: dict[str, Any]) -> dict[str, Any]:
    """A stage result as its record keeps it (the reuse flags of the stage functions dropped)."""
    return {k: v for k, v in result.items() if k not in ("reused", "mae")}


EMBED_TITLES = {"mae": "MAE", "pixels": "pixels PCA", "nnunet": "pretrained nnU-Net features"}


def _pretrained(spec: JobSpec, ctx: Context) -> dict[str, Any] | None:
    return ctx.result("pretrain") if spec.embedding.source == "nnunet" else None


def _model_key(round_index: int) -> str:
    """The stage whose model a round uses: round 0 is the pretrained model alone."""
    return "pretrain" if round_index == 0 else f"finetune-{round_index:02d}"


def plan(spec: JobSpec) -> list[Stage]:
    """The job's stages in the order they run."""
    sel = spec.selection
    rounds = sel.rounds
    scratch = spec.nnunet.finetune_from == "scratch"
    has_gt = ground_truth_url(spec) is not None
    out: list[Stage] = [
        Stage("pseudolabels", "pseudo-labels", INPUT + ("pseudolabel",), (),
              lambda s, c: _json(run_pseudolabels(s, runner=c.runner, progress=c.progress))),
    ]
    if has_gt:
        out.append(Stage("pseudolabel-scores", "pseudo-label scores", INPUT + ("input.ground_truth", "evaluation"),
                         ("pseudolabels",), lambda s, c: {"scores": evaluate(s, c.result("pseudolabels")["url"], runner=c.runner)}))
    if not scratch:
        out.append(Stage("pretrain", "nnU-Net pretraining on pseudo-labels",
                         INPUT + ("patches", "nnunet.configuration", "nnunet.boundary_class", "nnunet.plan_overrides",
                                  "nnunet.pretrain", "run.seed"), ("pseudolabels",),
                         lambda s, c: _json(run_pretrain(s, progress=c.progress, echo=c.echo))))
    diversity = needs_embeddings(sel)
    if diversity:
        nn_source = spec.embedding.source == "nnunet"
        if nn_source and scratch:
            from alseg.errors import SpecError

            raise SpecError("embedding.source nnunet pools the pretrained nnU-Net's features, and nnunet.finetune_from "
                            "scratch trains none: use source mae or pixels")
        model_up = ("pretrain",) if nn_source else ()
        out.append(Stage("embed-model", f"embedding model ({EMBED_TITLES[spec.embedding.source]})",
                         INPUT + ("patches", "embedding", "run.seed"), model_up,
                         lambda s, c: _json(run_mae(s, runner=c.runner, progress=c.progress, pretrained=_pretrained(s, c))),
                         exclude=("embedding.rows_per_chunk",)))
        out.append(Stage("embed", "embeddings", INPUT + ("patches", "embedding.slices_per_patch", "embedding.rows_per_chunk"),
                         ("embed-model",) + model_up,
                         lambda s, c: _json(run_embed(s, runner=c.runner, progress=c.progress, pretrained=_pretrained(s, c)))))
        out.append(Stage("embed-quality", "embedding quality (against pixels; pseudo-labels, ground truth)",
                         INPUT + ("patches", "input.ground_truth", "embedding.pixels_dim"), ("embed", "embed-model", "pseudolabels"),
                         lambda s, c: run_embedding_quality(s, c.result("embed"), c.result("embed-model"),
                                                            pseudolabel_url=c.result("pseudolabels").get("url"),
                                                            progress=c.progress)))
    eval_fields = INPUT + ("input.ground_truth", "patches.holdout", "prediction", "postprocess", "evaluation")
    if has_gt and not scratch:
        out.append(_evaluation_stage(0, eval_fields))
    for r in range(1, rounds + 1):
        up: list[str] = ["embed"] if diversity else []
        if needs_pseudolabels(sel):
            up.append("pseudolabels")
        if r > 1:
            up.append(f"annotate-{r - 1:02d}")
        if uncertainty_measure(sel) is not None:
            if r == 1 and scratch:
                from alseg.errors import SpecError

                raise SpecError(f"selection.method {sel.method!r} ranks patches by a model's uncertainty, and round 1 "
                                "has none when nnunet.finetune_from is scratch: use a diversity or random first round")
            up.append(_model_key(r - 1))
        out.append(Stage(f"select-{r:02d}", f"round {r}: selection", INPUT + ("patches", "selection", "run.seed"), tuple(up),
                         _select_action(r), exclude=("selection.rounds",)))
        manual_start = spec.annotation.method == "manual" and r > 1  # starting labels: the previous round's model
        out.append(Stage(f"annotate-{r:02d}", f"round {r}: annotation",
                         ("annotation", "input.ground_truth") + (("prediction", "postprocess") if manual_start else ()),
                         (f"select-{r:02d}",) + ((_model_key(r - 1),) if manual_start else ()),
                         lambda s, c, r=r, m=manual_start: run_annotation(
                             s, r, c.result(f"select-{r:02d}"), model=c.result(_model_key(r - 1)) if m else None,
                             runner=c.runner, progress=c.progress)))
        ft_fields = INPUT + ("patches", "nnunet.configuration", "nnunet.boundary_class", "nnunet.finetune", "nnunet.finetune_from")
        ft_up = tuple([] if scratch else ["pretrain"]) + tuple(f"annotate-{q:02d}" for q in range(1, r + 1))
        out.append(Stage(f"finetune-{r:02d}", f"round {r}: fine-tuning" if not scratch else f"round {r}: training from scratch",
                         ft_fields + (("nnunet.plan_overrides",) if scratch else ()), ft_up, _finetune_action(r)))
        if has_gt:
            out.append(_evaluation_stage(r, eval_fields))
    out.append(Stage("predict", "whole-volume prediction (final model)", INPUT + ("prediction", "postprocess"),
                     (_model_key(rounds),), _predict_action))
    out.append(Stage("measure", "measurements of the final instances", ("postprocess.block_shape_vox",), ("predict",),
                     lambda s, c: run_measure(s, c.result("predict"), runner=c.runner,
                                              work_key=c.signature.sha if c.signature else "x")))
    out.append(Stage("report", "report", ("name",), tuple(st_.key for st_ in out), lambda s, c: run_report(s, c.records)))
    return out


def _evaluation_stage(r: int, fields: tuple[str, ...]) -> Stage:
    what = "pretrained model alone" if r == 0 else "fine-tuned model"
    return Stage(f"evaluate-{r:02d}", f"round {r}: evaluation ({what}, held-out region)", fields, (_model_key(r),),
                 lambda s, c: run_round_evaluation(s, r, c.result(_model_key(r)), runner=c.runner, progress=c.progress,
                                                   work_key=f"round-{r:02d}-{c.signature.sha if c.signature else 'x'}"))


def _select_action(r: int) -> Callable[[JobSpec, Context], dict[str, Any]]:
    def action(spec: JobSpec, ctx: Context) -> dict[str, Any]:
        scores = None
        if uncertainty_measure(spec.selection) is not None:
            model = ctx.result(_model_key(r - 1))
            scores = run_scores(spec, model_folder=model["model_folder"], norm=model["norm"], runner=ctx.runner,
                                progress=ctx.progress)["scores"]
        return _json(run_select(spec, round_index=r, scores=scores, progress=ctx.progress, pretrained=_pretrained(spec, ctx)))
    return action


def _finetune_action(r: int) -> Callable[[JobSpec, Context], dict[str, Any]]:
    def action(spec: JobSpec, ctx: Context) -> dict[str, Any]:
        from alseg import annotate

        patches = []
        for q in range(1, r + 1):
            patches += [p for p in picks_of(ctx.result(f"select-{q:02d}")) if p[0] in set(ctx.result(f"annotate-{q:02d}")["patch_ids"])]
        pretrained = None if spec.nnunet.finetune_from == "scratch" else ctx.result("pretrain")
        return run_finetune(spec, r, patches, annotate.annotations_url(spec), pretrained=pretrained, echo=ctx.echo)
    return action


def _predict_action(spec: JobSpec, ctx: Context) -> dict[str, Any]:
    model = ctx.result(_model_key(spec.selection.rounds))
    key = ctx.signature.sha if ctx.signature else "final"
    return run_predict(spec, model_folder=model["model_folder"], norm=model["norm"], runner=ctx.runner, progress=ctx.progress,
                       out_dir=st.join(spec.run.dir, "prediction"), work_key=f"final-{key}")


@dataclass(frozen=True)
class StageState:
    key: str
    title: str
    state: str  # done | stale | pending
    detail: str = ""
    wall_s: float | None = None


@dataclass
class JobOutcome:
    states: list[StageState]
    records: dict[str, dict[str, Any]]
    paused: str | None = None


def job_status(spec: JobSpec) -> list[StageState]:
    """Each stage: done (signature unchanged), stale (which fields or upstream stages changed) or
    pending (never finished, or after a stage that is not done)."""
    tokens: dict[str, str] = {}
    out = []
    blocked: set[str] = set()
    for stage in plan(spec):
        rec = read_record(spec, stage.key)
        waiting = [k for k in stage.upstream if k in blocked]
        if rec is None:
            out.append(StageState(stage.key, stage.title, "pending", "never finished"))
            blocked.add(stage.key)
            continue
        if waiting:
            out.append(StageState(stage.key, stage.title, "stale", f"after {', '.join(waiting)}", rec.get("wall_s")))
            blocked.add(stage.key)
            continue
        sig = stage.signature(spec, tokens)
        if sig.sha == rec["signature_sha"]:
            tokens[stage.key] = rec["token"]
            out.append(StageState(stage.key, stage.title, "done", rec.get("finished", ""), rec.get("wall_s")))
        else:
            changes = sig.changes(rec["signature"])
            out.append(StageState(stage.key, stage.title, "stale", "changed: " + ", ".join(changes[:6])
                                  + (" ..." if len(changes) > 6 else ""), rec.get("wall_s")))
            blocked.add(stage.key)
    return out


def run_job(spec: JobSpec, *, runner: Runner | None = None, progress: bool = True, echo: Callable[[str], None] | None = None,
            until: str | None = None, say: Callable[[str], None] = print) -> JobOutcome:
    """Run every stage of the job that is not done (or only up to and including ``until``).

    Stops cleanly (``paused`` set) when a manual annotation round waits for a person.
    """
    claim(spec)
    own = runner is None
    runner = runner or runner_from_spec(spec.resources, progress=progress)
    ctx = Context(runner=runner, progress=progress, echo=echo)
    states: list[StageState] = []
    tokens: dict[str, str] = {}
    try:
        for stage in plan(spec):
            sig = stage.signature(spec, tokens)
            rec = read_record(spec, stage.key)
            if rec is not None and rec["signature_sha"] == sig.sha:
                say(f"[{stage.key}] {stage.title}: done before, reused")
                states.append(StageState(stage.key, stage.title, "reused", "", rec.get("wall_s")))
            else:
                why = "" if rec is None else f" (changed: {', '.join(sig.changes(rec['signature'])[:6])})"
                say(f"[{stage.key}] {stage.title}{why} ...")
                ctx.signature = sig
                t0 = time.perf_counter()
                try:
                    result = stage.action(spec, ctx)
                except AwaitingAnnotation as pause:
                    states.append(StageState(stage.key, stage.title, "waiting", str(pause)))
                    return JobOutcome(states, ctx.records, paused=str(pause))
                rec = write_record(spec, stage.key, sig, result, time.perf_counter() - t0)
                say(f"[{stage.key}] done in {rec['wall_s']:.1f} s")
                states.append(StageState(stage.key, stage.title, "ran", "", rec["wall_s"]))
            ctx.records[stage.key] = rec
            tokens[stage.key] = rec["token"]
            if until is not None and stage.key == until:
                break
        return JobOutcome(states, ctx.records)
    finally:
        if own:
            runner.close()
