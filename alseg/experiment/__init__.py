"""Sweeps over a base job spec (``alseg experiment``): strategies x budgets x pretraining x seeds,
shared upstream work, baselines, and the tables and curves that say how few annotations suffice."""

from alseg.experiment.spec import ExperimentSpec, StrategySpec, budget_patches, load_experiment, restrict
from alseg.experiment.sweep import configurations, run_experiment

__all__ = ["ExperimentSpec", "StrategySpec", "budget_patches", "configurations", "load_experiment", "restrict",
           "run_experiment"]
