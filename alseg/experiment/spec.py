"""The experiment spec (``alseg experiment EXP.yaml``): a sweep over a base job spec.

Strategies x budgets x pretraining x seeds, each a configuration run as a one-round job; plus the
baselines every table carries (full annotation, pseudo-labels alone, the pretrained model alone,
the pixel classifier at each budget, the ground truth through the same post-processing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alseg.errors import SpecError
from alseg.spec import JobSpec, TrainingSpec, load_spec, parse_spec, problems_of

BASELINES = ("full", "pseudolabels", "pretrained", "forest", "ceiling")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StrategySpec(_Model):
    """One selection strategy of the sweep: a ``selection`` section (its budget and rounds are the
    sweep's) and, for diversity strategies, the embedding source it ranks by."""

    name: str | None = Field(None, description="its name in tables and folders (default: method, and source for diversity)")
    selection: dict[str, Any] = Field(description="the job spec's selection section without budget and rounds, e.g. {method: kcenter}")
    embedding_source: Literal["mae", "nnunet", "pixels"] | None = Field(
        None, description="diversity strategies: the embedding source (default: the base spec's)")

    @field_validator("selection")
    @classmethod
    def _no_budget(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "method" not in v:
            raise ValueError("selection needs a method (kcenter, random, foreground_random, entropy, hybrid, ...)")
        for key in ("budget", "rounds"):
            if key in v:
                raise ValueError(f"selection.{key} is set by the sweep (budgets; one round per configuration)")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError(f"strategy name {v!r}: letters, digits, '_', '.', '-' only (it names folders)")
        return v


Budget = int | str


class ExperimentSpec(_Model):
    version: Literal[1] = 1
    name: str = Field("experiment", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    base: str | dict[str, Any] = Field(description="the base job spec: a YAML path (relative to this file) or the spec inline")
    dir: str = Field(description="experiment folder (local: nnU-Net trains there); one per experiment")
    strategies: list[StrategySpec] = Field(min_length=1)
    budgets: list[Budget] = Field(min_length=1, description="patches per configuration: counts, or percentages of the "
                                  "candidate pool written '5%' (they must come to whole patches)")
    pretraining: list[bool] = Field([True], min_length=1, description="fine-tune the model pretrained on pseudo-labels "
                                    "(true) or train from scratch on the annotated patches (false); strategies that "
                                    "need the pretrained model (uncertainty, hybrid, nnunet embeddings) run with true only")
    scratch_budgets: list[Budget] | None = Field(
        None, description="budgets at which the configurations without pretraining run (default: every budget); one "
        "budget is enough for the strategy x pretraining table. With it, full annotation runs with pretraining only, and the "
        "rows without pretraining are given as % of it")
    seeds: list[int] = Field([0], min_length=1)
    baselines: list[Literal["full", "pseudolabels", "pretrained", "forest", "ceiling"]] = Field(list(BASELINES))
    full_training: TrainingSpec | None = Field(
        None, description="the full-annotation baseline's training (the base spec's nnunet.finetune fields); default: "
        "the base's, as for every configuration. A few patches converge in fewer steps and smaller batches than the "
        "whole pool: give full annotation the schedule its learning curve flattens at")
    parallel: Literal["serial", "ray"] = Field(
        "serial", description="ray: configurations run as Ray tasks (each with resources.nnunet's request), the "
        "shared upstream work per seed first; serial: one after another")

    @field_validator("budgets", "scratch_budgets")
    @classmethod
    def _budgets(cls, v: list[Budget] | None) -> list[Budget] | None:
        for b in v or ():
            if isinstance(b, str):
                if not re.fullmatch(r"\d+(\.\d+)?%", b.strip()) or not 0 < float(b.strip()[:-1]) <= 100:
                    raise ValueError(f"budget {b!r}: a patch count or a percentage of the pool such as '5%'")
            elif b <= 0:
                raise ValueError(f"budget {b}: at least one patch")
        return v

    @model_validator(mode="after")
    def _unique(self) -> "ExperimentSpec":
        names = [strategy_name(s) for s in self.strategies]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"strategy names must differ: {', '.join(dup)} (give them names)")
        if "full" in names:
            raise ValueError("the strategy name 'full' is the full-annotation reference's: choose another")
        if len(set(self.pretraining)) != len(self.pretraining):
            raise ValueError("pretraining lists true and/or false, each once")
        if self.scratch_budgets is not None:
            if False not in self.pretraining:
                raise ValueError("scratch_budgets needs pretraining to list false")
            extra = [b for b in self.scratch_budgets if b not in self.budgets]
            if extra:
                raise ValueError(f"scratch_budgets {extra} are not among the budgets {self.budgets}")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ValueError("seeds must be distinct and >= 0")
        return self


def strategy_name(s: StrategySpec) -> str:
    if s.name:
        return s.name
    method = str(s.selection["method"]).replace("_", "-")
    return f"{method}-{s.embedding_source}" if s.embedding_source else method


@dataclass(frozen=True)
class Piece:
    """Part of a sweep (``alseg experiment --seeds --budgets --strategies --pretraining``): the
    configurations of the whole sweep that match every field given (None: any). The configurations
    are the whole sweep's, not a smaller sweep's: the same keys, folders, shared upstream
    directories and pixel-classifier runs, so pieces run apart add up to the sweep, and the tables
    a piece writes cover every stored result of the sweep. Full annotation belongs to every piece
    that names its seed and pretraining (``--strategies full`` runs it alone)."""

    seeds: tuple[int, ...] | None = None
    budgets: tuple[Budget, ...] | None = None
    strategies: tuple[str, ...] | None = None
    pretraining: tuple[bool, ...] | None = None

    def check(self, exp: ExperimentSpec, pool: int) -> None:
        """Each value named must be one of the sweep's (a piece never extends the sweep)."""
        known = [strategy_name(s) for s in exp.strategies] + (["full"] if "full" in exp.baselines else [])
        budgets = {budget_patches(b, pool) for b in exp.budgets}
        for what, named, allowed, hint in (
                ("strategies", self.strategies, known, "by their table names"),
                ("seeds", self.seeds, exp.seeds, ""),
                ("budgets", None if self.budgets is None else [budget_patches(b, pool) for b in self.budgets], budgets,
                 f"in patches of a pool of {pool}"),
                ("pretraining", self.pretraining, exp.pretraining, "")):
            extra = [v for v in named or () if v not in allowed]
            if extra:
                raise SpecError(f"{what} {extra} are not in experiment {exp.name!r} ({hint + ': ' if hint else ''}it has "
                                f"{', '.join(map(str, sorted(allowed, key=str)))}): a piece runs part of the sweep; "
                                "add them to the experiment spec to extend it")

    def admits(self, strategy: str, budget: int, pretrained: bool, seed: int, pool: int) -> bool:
        if self.seeds is not None and seed not in self.seeds:
            return False
        if self.pretraining is not None and pretrained not in self.pretraining:
            return False
        if strategy == "full":
            return True  # the reference of every piece of its seed and pretraining
        if self.strategies is not None and strategy not in self.strategies:
            return False
        return self.budgets is None or budget in {budget_patches(b, pool) for b in self.budgets}


def in_folder(exp: ExperimentSpec, folder: str) -> ExperimentSpec:
    """``exp`` with its experiment folder replaced (relative to the working directory)."""
    return exp.model_copy(update={"dir": str(Path(folder).expanduser().resolve())})


def load_experiment(path: str | Path) -> tuple[ExperimentSpec, JobSpec]:
    """The experiment spec of a YAML file and its validated base job spec."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError as err:
        raise SpecError(f"experiment spec {p} does not exist") from err
    except yaml.YAMLError as err:
        raise SpecError(f"{p}: not YAML: {err}") from err
    if not isinstance(data, dict):
        raise SpecError(f"{p}: expected a mapping (base, dir, strategies, budgets, ...)")
    try:
        exp = ExperimentSpec.model_validate(data)
    except ValidationError as err:
        lines = "\n".join(f"  {a}: {b}" for a, b in problems_of(err))
        raise SpecError(f"{p}: invalid experiment spec:\n{lines}", problems_of(err)) from None
    base = load_spec(p.parent / exp.base) if isinstance(exp.base, str) else parse_spec(exp.base, source=f"{p}: base")
    # the folder, like the base, is relative to this file, and absolute from here on (run
    # directories and so the configurations' digests name it)
    folder = Path(exp.dir).expanduser()
    if "://" in exp.dir and not exp.dir.startswith("file://"):
        raise SpecError(f"{p}: dir {exp.dir}: an experiment folder must be local (nnU-Net trains in it)")
    folder = Path(exp.dir[len("file://"):]) if exp.dir.startswith("file://") else folder
    exp = exp.model_copy(update={"dir": str((p.parent / folder).resolve())})
    return exp, base


def budget_patches(budget: Budget, pool: int) -> int:
    """A budget in patches: a count as given, a percentage of the ``pool`` that must be whole."""
    if isinstance(budget, int):
        if budget > pool:
            raise SpecError(f"budget {budget} exceeds the candidate pool of {pool} patches")
        return budget
    pct = float(budget.strip()[:-1])
    n = pct * pool / 100
    if abs(n - round(n)) > 1e-9 or round(n) < 1:
        raise SpecError(f"budget {budget} of a pool of {pool} patches is {n:g} patches: choose percentages that "
                        f"are whole patches (multiples of {100 / pool:g} %), or patch counts")
    return int(round(n))
