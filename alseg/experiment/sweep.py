"""Running a sweep: configurations as one-round jobs that share their upstream work.

Layout of the experiment folder::

    alseg-experiment.json        the experiment spec (the folder's owner)
    shared/seed-<s>[-<source>]-<id>/  per seed (and extra embedding source): a job run only
                                 through the upstream stages: pseudo-labels, pretraining,
                                 embeddings, the pretrained model's evaluation
    runs/<configuration>-<id>/   one job per configuration (strategy, budget, pretraining, seed)
    results/<configuration>.json its scores, written last, keyed by the configuration's signature
                                 (its job less the folder: results carry to another folder)
    baselines/                   ceiling, pseudo-labels and pretrained model per seed (a file each),
                                 the pixel classifier per picks
    tables/                      CSV, Markdown and learning curves (:mod:`alseg.experiment.tables`)

**Shared upstream work.** A configuration's run directory is *seeded* from its seed's shared
directory: every file there (records of the upstream stages and their artefacts) is hard-linked
into it, except the shared job's ownership record. The configuration's own job then finds those
stages done with unchanged signatures and reuses them (the records carry the shared tokens, so a
test can see that pretraining ran once per seed). Before a configuration runs, its upstream
stages must all be ``done``: one that is not would be recomputed into linked files, so the sweep
stops and says which. Stages after the upstream write new files (records are replaced by rename,
never rewritten in place), so the shared directory is never modified through a link.

**Resume.** Each configuration's result is written last, with the digest of its job content; a
rerun skips configurations whose result has the same digest, and within an interrupted
configuration the job's own stage records resume where it stopped. ``<id>`` is a digest of the
job's content less its folder: a changed base spec or strategy runs in new folders, and the old
ones (whose files may be linked to each other) are never rewritten.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from alseg.errors import OutputExistsError, SpecError
from alseg.experiment.spec import ExperimentSpec, Piece, StrategySpec, budget_patches, strategy_name
from alseg.io import store as st
from alseg.pipeline import job_status, run_job
from alseg.pipeline.common import digest, input_volume
from alseg.pipeline.graph import plan
from alseg.pipeline.records import read_record
from alseg.preflight import patch_grid_of
from alseg.rundir import RECORD, claim, overlap_problems
from alseg.select import needs_embeddings
from alseg.spec import JobSpec, TrainingSpec, parse_spec

OWNER = "alseg-experiment.json"
UPSTREAM = ("pseudolabels", "pseudolabel-scores", "pretrain", "embed-model", "embed", "embed-quality", "evaluate-00")
FULL = StrategySpec(name="full", selection={"method": "random"})


@dataclass(frozen=True)
class Config:
    key: str
    strategy: str
    budget: int
    pretrained: bool
    seed: int
    spec: JobSpec
    shared: str  # the shared directory it is seeded from
    forest: bool  # the pixel classifier is trained on its picks too
    embeds: bool  # its strategy ranks by embeddings (else the shared ones are not linked in)

    @property
    def signature(self) -> str:
        """What its result stands for: the job's content less its folder (which the key and that
        content name), so results carried to another folder or machine are still recognised."""
        return digest(_content(self.spec))


def _local(url: str) -> str:
    if not st.is_local(url):
        raise SpecError(f"experiment dir {st.redact(url)}: must be local (nnU-Net trains in it; the input may stay on "
                        "object storage)")
    return str(st.local_path(url))


def _content(spec: JobSpec) -> dict[str, Any]:
    content = spec.job_content()
    content["run"] = {k: v for k, v in content["run"].items() if k != "dir"}
    return content


def content_id(spec: JobSpec) -> str:
    """8 hex digits of the job's content less its run directory (names its folder)."""
    return digest(_content(spec))[:8]


def _job(base: JobSpec, run_dir: str, seed: int, selection: dict[str, Any], *, source: str | None, pretrained: bool,
         serial: bool, what: str = "experiment configuration", training: TrainingSpec | None = None) -> JobSpec:
    """The job of one configuration (or shared upstream) in ``<run_dir>-<content id>``; ``training``
    replaces the base's fine-tuning schedule (the full-annotation baseline's own)."""
    if training is not None:
        base = base.model_copy(update={"nnunet": base.nnunet.model_copy(update={"finetune": training})})
    spec = _job_at(base, run_dir, seed, selection, source=source, pretrained=pretrained, serial=serial, what=what)
    return _job_at(base, f"{run_dir}-{content_id(spec)}", seed, selection, source=source, pretrained=pretrained,
                   serial=serial, what=what)


def _job_at(base: JobSpec, run_dir: str, seed: int, selection: dict[str, Any], *, source: str | None, pretrained: bool,
            serial: bool, what: str) -> JobSpec:
    d = base.model_dump(mode="json")
    d["run"] = {**d["run"], "dir": run_dir, "seed": seed, "overwrite": False}
    d["selection"] = {**selection, "rounds": 1}
    if source is not None:
        d["embedding"] = {**d["embedding"], "source": source}
    d["nnunet"] = {**d["nnunet"], "finetune_from": "pretrained" if pretrained else "scratch"}
    d["annotation"] = {"method": "simulated"}
    if serial:
        d["resources"] = {**d["resources"], "backend": "serial"}
    return parse_spec(d, source=what)


def pool_size(base: JobSpec) -> int:
    return len(patch_grid_of(base, input_volume(base).shape).patches())


def _sources(exp: ExperimentSpec, base: JobSpec) -> list[str]:
    out: list[str] = []
    for s in exp.strategies:
        if needs_embeddings(SimpleNamespace(method=s.selection["method"])):
            src = s.embedding_source or base.embedding.source
            if src not in out:
                out.append(src)
    return out


def _shared_stems(exp: ExperimentSpec, base: JobSpec, seed: int) -> dict[str | None, str]:
    root = _local(exp.dir)
    sources = _sources(exp, base)
    if not sources:
        return {None: os.path.join(root, "shared", f"seed-{seed}")}
    return {src: os.path.join(root, "shared", f"seed-{seed}" + ("" if i == 0 else f"-{src}")) for i, src in enumerate(sources)}


def shared_job(exp: ExperimentSpec, base: JobSpec, seed: int, source: str | None) -> JobSpec:
    """The job that runs a seed's upstream stages (in the base spec's runtime backend)."""
    selection = {"method": "kcenter", "budget": 1, "start": "central"} if source is not None else {"method": "random", "budget": 1}
    # it never fine-tunes: its content (so its folder) does not follow the fine-tuning schedule, and a
    # sweep with another schedule reuses the pretraining and embeddings of the same upstream
    return _job(base, _shared_stems(exp, base, seed)[source], seed, selection, source=source,
                pretrained=any(exp.pretraining), serial=False, what=f"shared upstream of seed {seed}", training=TrainingSpec())


def shared_dirs(exp: ExperimentSpec, base: JobSpec, seed: int) -> dict[str | None, str]:
    """Embedding source (None: no embeddings needed) -> the seed's shared directory for it."""
    return {src: shared_job(exp, base, seed, src).run.dir for src in _shared_stems(exp, base, seed)}


def check_base(exp: ExperimentSpec, base: JobSpec) -> None:
    """What every configuration needs of the base spec, before anything runs or is written."""
    if base.patches.holdout is None:
        raise SpecError("an experiment scores configurations on the held-out region: set patches.holdout in the base spec")
    if base.input.ground_truth is None:
        raise SpecError("an experiment needs input.ground_truth (the simulated annotator and the scores read it)")
    problems = overlap_problems(base.model_copy(update={"run": base.run.model_copy(update={"dir": _local(exp.dir)})}))
    if problems:
        raise SpecError("experiment dir: " + "; ".join(m for _, m in problems))


def configurations(exp: ExperimentSpec, base: JobSpec, piece: Piece | None = None) -> list[Config]:
    """Every configuration of the sweep (or of a ``piece`` of it), checked (a spec error surfaces
    before any work)."""
    root = _local(exp.dir)
    check_base(exp, base)
    pool = pool_size(base)
    if piece is not None:
        return of_piece(configurations(exp, base), exp, piece, pool)
    budgets = sorted({budget_patches(b, pool) for b in exp.budgets})
    scratch = budgets if exp.scratch_budgets is None else sorted({budget_patches(b, pool) for b in exp.scratch_budgets})
    out: list[Config] = []
    for seed in exp.seeds:
        dirs = shared_dirs(exp, base, seed)
        first = next(iter(dirs.values()))
        for pre in exp.pretraining:
            todo = [(s, b) for s in exp.strategies for b in (budgets if pre else scratch)]
            if "full" in exp.baselines and (pre or exp.scratch_budgets is None or True not in exp.pretraining):
                todo.append((FULL, pool))
            for strategy, budget in todo:
                name = strategy_name(strategy)
                key = f"{name}__b{budget:04d}__{'pre' if pre else 'scratch'}__s{seed}"
                spec = _job(base, os.path.join(root, "runs", key), seed, {**strategy.selection, "budget": budget},
                            source=strategy.embedding_source, pretrained=pre, serial=exp.parallel == "ray",
                            what=f"strategy {name} at budget {budget}",
                            training=exp.full_training if strategy is FULL else None)
                source = spec.embedding.source if needs_embeddings(spec.selection) else None
                try:
                    plan(spec)  # raises on combinations the job graph refuses
                except SpecError:
                    if pre:
                        raise
                    continue  # needs the pretrained model (uncertainty in round 1, nnunet features): with pretraining only
                forest = "forest" in exp.baselines and pre == exp.pretraining[0] and name != "full"
                out.append(Config(key, name, budget, pre, seed, spec, dirs.get(source, first), forest, source is not None))
    return out


def of_piece(every: list[Config], exp: ExperimentSpec, piece: Piece, pool: int) -> list[Config]:
    """The configurations of the whole sweep (``every``) that ``piece`` names, after checking it."""
    piece.check(exp, pool)
    return [c for c in every if piece.admits(c.strategy, c.budget, c.pretrained, c.seed, pool)]


# ------------------------------------------------------------------------------------------- #
# seeding a run directory from a shared one
# ------------------------------------------------------------------------------------------- #
def link_tree(src: str, dst: str, *, skip: Callable[[str], bool]) -> int:
    """Hard-link every file under ``src`` into ``dst`` (same relative paths) unless ``skip(rel)``
    or already there; returns how many were linked."""
    n = 0
    for folder, _, files in os.walk(src):
        rel_dir = os.path.relpath(folder, src)
        for name in files:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if skip(rel):
                continue
            target = os.path.join(dst, rel)
            if os.path.lexists(target):
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.link(os.path.join(folder, name), target)
            n += 1
    return n


def _embedding_files(rel: str) -> bool:
    return rel.startswith("embedding" + os.sep) or rel.startswith(os.path.join("stages", "embed"))


def seed_run_dir(spec: JobSpec, shared: str, *, skip_embeddings: bool = False) -> None:
    """Claim ``spec``'s run directory and link the shared upstream into it (module docstring)."""
    claim(spec)
    link_tree(shared, _local(spec.run.dir), skip=lambda rel: rel == RECORD or (skip_embeddings and _embedding_files(rel)))


def check_upstream_done(spec: JobSpec, *, exclude: tuple[str, ...] = ()) -> None:
    pending = [s for s in job_status(spec) if s.key in UPSTREAM and s.key not in exclude and s.state != "done"]
    if pending:
        s = pending[0]
        raise SpecError(f"configuration {os.path.basename(spec.run.dir)}: its upstream stage {s.key} is {s.state} ({s.detail}) "
                        "after seeding from the shared directory; the sweep does not recompute shared work per "
                        "configuration (a base spec field the stage reads differs between them?)")


# ------------------------------------------------------------------------------------------- #
# running
# ------------------------------------------------------------------------------------------- #
def own_folder(exp: ExperimentSpec) -> str:
    """Create or check the experiment folder: it belongs to this experiment (by name) or is new."""
    root = _local(exp.dir)
    owner = os.path.join(root, OWNER)
    if os.path.isfile(owner):
        rec = st.read_json(owner)
        if rec.get("name") != exp.name:
            raise OutputExistsError(f"{root} belongs to experiment {rec.get('name')!r}, not {exp.name!r}: choose another dir")
    elif os.path.isdir(root) and os.listdir(root):
        raise OutputExistsError(f"{root} holds files that no alseg experiment wrote: alseg never writes into it; choose "
                                "another dir")
    st.write_json(owner, {"name": exp.name, "spec": exp.model_dump(mode="json"), "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return root


def run_shared(exp: ExperimentSpec, base: JobSpec, seed: int, *, say: Callable[[str], None], progress: bool,
               needed: set[str] | None = None) -> None:
    """The seed's upstream stages, once: the first source's directory, then each other source's
    seeded from it (pseudo-labels and pretraining linked, embeddings computed); of those other
    sources only the ``needed`` shared directories (None: all)."""
    dirs = shared_dirs(exp, base, seed)
    first = next(iter(dirs))
    for i, source in enumerate(dirs):
        if i > 0 and needed is not None and dirs[source] not in needed:
            continue
        spec = shared_job(exp, base, seed, source)
        if i > 0:
            seed_run_dir(spec, dirs[first], skip_embeddings=True)
            check_upstream_done(spec, exclude=("embed-model", "embed", "embed-quality"))
        stages = [s.key for s in plan(spec) if s.key in UPSTREAM]
        say(f"seed {seed}: shared upstream ({', '.join(stages)}){'' if source is None else ' for ' + source + ' embeddings'}")
        outcome = run_job(spec, progress=progress, until=stages[-1], say=lambda m: say("  " + m))
        if outcome.paused:
            raise SpecError(f"the shared job paused: {outcome.paused}")


def _scores_of(spec: JobSpec, key: str) -> dict[str, Any] | None:
    rec = read_record(spec, key)
    return None if rec is None else rec["result"].get("scores")


def run_config(cfg: Config, *, progress: bool = False, say: Callable[[str], None] = print) -> dict[str, Any]:
    """One configuration: seed, check, run through its round's evaluation; its picks' pixel
    classifier; the result (written last by the caller)."""
    from alseg.experiment.baselines import forest_scores
    from alseg.pipeline.rounds import picks_of

    t0 = time.perf_counter()
    seed_run_dir(cfg.spec, cfg.shared, skip_embeddings=not cfg.embeds)
    check_upstream_done(cfg.spec)
    outcome = run_job(cfg.spec, progress=progress, until="evaluate-01", say=lambda m: None)
    if outcome.paused:
        raise SpecError(f"configuration {cfg.key} paused: {outcome.paused}")
    selection = read_record(cfg.spec, "select-01")["result"]
    result: dict[str, Any] = {
        "key": cfg.key, "strategy": cfg.strategy, "budget": cfg.budget, "pretrained": cfg.pretrained, "seed": cfg.seed,
        "signature": cfg.signature, "patch_ids": selection["patch_ids"], "scores": _scores_of(cfg.spec, "evaluate-01"),
        "tokens": {k: rec["token"] for k in UPSTREAM if (rec := read_record(cfg.spec, k)) is not None},
    }
    if cfg.forest:
        boxes = [box for _, box in picks_of(selection)]
        out = st.join(os.path.dirname(os.path.dirname(cfg.spec.run.dir)), "baselines", "forest", os.path.basename(cfg.spec.run.dir))
        result["forest"] = forest_scores(cfg.spec, boxes, out, seed=cfg.seed)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def result_path(exp: ExperimentSpec, key: str) -> str:
    return os.path.join(_local(exp.dir), "results", f"{key}.json")


def read_result(exp: ExperimentSpec, cfg: Config) -> dict[str, Any] | None:
    path = result_path(exp, cfg.key)
    if not os.path.isfile(path):
        return None
    res = st.read_json(path)
    return res if res.get("signature") == cfg.signature else None


def _write_result(exp: ExperimentSpec, res: dict[str, Any]) -> None:
    st.write_json(result_path(exp, res["key"]), res)


def _config_task(payload: tuple[ExperimentSpec, Config]) -> dict[str, Any]:
    exp, cfg = payload
    res = run_config(cfg)
    _write_result(exp, res)
    return {"key": cfg.key, "wall_s": res["wall_s"]}


def seed_baselines(exp: ExperimentSpec, base: JobSpec, *, say: Callable[[str], None],
                   seeds: set[int] | None = None) -> dict[str, Any]:
    """Per seed: the pretrained model alone and the pseudo-labels alone; once: the ceiling. Each is
    cached in its own file under ``baselines/`` (keyed by what decides it), so adding a seed, or
    restoring an earlier session's files, computes only what is new; ``baselines.json`` is the
    assembled view. Only the ``seeds`` given (None: all) are computed where missing, and only where
    the seed's shared upstream is there (a piece's results may have been carried without it); the
    others are read where cached and left out where not."""
    from alseg.experiment.baselines import ceiling_scores, pseudolabel_scores

    root = _local(exp.dir)

    def cached(name: str, sig: str, compute: Callable[[], dict[str, Any]] | None) -> dict[str, Any] | None:
        path = os.path.join(root, "baselines", name)
        if os.path.isfile(path) and (rec := st.read_json(path)).get("signature") == sig:
            return rec["scores"]
        if compute is None:
            return None
        scores = compute()
        st.write_json(path, {"signature": sig, "scores": scores})
        return scores

    def seed_row(seed: int) -> dict[str, Any]:
        spec = shared_job(exp, base, seed, next(iter(shared_dirs(exp, base, seed))))
        row: dict[str, Any] = {}
        if "pseudolabels" in exp.baselines:
            row["pseudolabels"] = pseudolabel_scores(spec)["scores"]
        if "pretrained" in exp.baselines and any(exp.pretraining):
            row["pretrained"] = _scores_of(spec, "evaluate-00")
        return row

    out: dict[str, Any] = {"seeds": {}}
    for seed in exp.seeds:
        sig = digest({"base": base.job_digest(), "seed": seed, "baselines": sorted(exp.baselines),
                      "pretraining": any(exp.pretraining)})
        computable = (seeds is None or seed in seeds) and os.path.isdir(next(iter(shared_dirs(exp, base, seed).values())))
        row = cached(f"seed-{seed}.json", sig, (lambda seed=seed: seed_row(seed)) if computable else None)
        if row is not None:
            out["seeds"][str(seed)] = row
    if "ceiling" in exp.baselines:
        sig = digest({"base": base.job_digest(), "ceiling": True})
        first = min(seeds) if seeds else exp.seeds[0]  # a seed whose shared upstream is there
        spec = shared_job(exp, base, first, next(iter(shared_dirs(exp, base, first))))
        out["ceiling"] = cached("ceiling.json", sig,
                                lambda: ceiling_scores(spec, os.path.join(root, "baselines", f"ceiling-{sig[:8]}"))["scores"])
        say(f"ceiling (ground truth through the post-processing): F1@0.5 {out['ceiling']['at']['0.5']['f1']:.3f}")
    st.write_json(os.path.join(root, "baselines", "baselines.json"), out)
    return out


def run_experiment(exp: ExperimentSpec, base: JobSpec, *, say: Callable[[str], None] = print, progress: bool = True,
                   runner: Any = None, piece: Piece | None = None) -> dict[str, Any]:
    """The whole sweep, or a ``piece`` of it, resumable: shared upstream per seed, configurations
    (serial, or Ray tasks with ``parallel: ray``), baselines, then the tables over every stored
    result of the sweep (a piece's and the earlier pieces'). Returns ``{"results", "baselines",
    "tables"}`` (``results``: every configuration of the sweep that has one)."""
    from alseg.experiment.tables import write_tables

    every = configurations(exp, base)  # checks everything before the folder is made
    pool = pool_size(base)
    configs = every if piece is None else of_piece(every, exp, piece, pool)
    if not configs:
        raise SpecError(f"the piece names no configuration of experiment {exp.name!r} (a scratch budget or pretraining "
                        "it does not run?): alseg experiment --dry-run lists them")
    own_folder(exp)
    done = {c.key: r for c in every if (r := read_result(exp, c)) is not None}
    todo = [c for c in configs if c.key not in done]
    of = "" if piece is None else f", a piece of the sweep's {len(every)}"
    before = sum(c.key in done for c in configs)
    say(f"experiment {exp.name}: {len(configs)} configurations ({before} done before{of}), pool of {pool} patches")
    for seed in sorted({c.seed for c in todo}):
        run_shared(exp, base, seed, say=say, progress=progress, needed={c.shared for c in todo if c.seed == seed})
    t0 = time.perf_counter()
    if exp.parallel == "ray" and todo:
        from alseg.runtime import Resources, WorkItem, runner_from_spec

        own = runner is None
        runner = runner or runner_from_spec(base.resources.model_copy(update={"backend": "ray"}), progress=progress)
        try:
            res = Resources.from_spec(base.resources.nnunet, label="resources.nnunet")
            runner.map(_config_task, [WorkItem(c.key, (exp, c)) for c in todo], resources=res, desc="configurations")
        finally:
            if own:
                runner.close()
        for c in todo:
            if (r := read_result(exp, c)) is not None:
                done[c.key] = r
    else:
        for i, c in enumerate(todo):
            res = run_config(c, progress=progress, say=say)
            _write_result(exp, res)
            done[c.key] = res
            elapsed = time.perf_counter() - t0
            left = elapsed / (i + 1) * (len(todo) - i - 1)
            f1 = (res.get("scores") or {}).get("at", {}).get("0.5", {}).get("f1")
            say(f"configuration {before + i + 1}/{len(configs)} done: {c.key} (F1@0.5 {f1 if f1 is None else round(f1, 3)}, "
                f"{res['wall_s']:.0f} s); about {left / 60:.0f} min left")
    baselines = seed_baselines(exp, base, say=say, seeds=None if piece is None else {c.seed for c in configs})
    results = [done[c.key] for c in every if c.key in done]
    tables = write_tables(exp, results, baselines, pool=pool)
    say(f"tables: {tables['markdown']}")
    return {"results": results, "baselines": baselines, "tables": tables}
