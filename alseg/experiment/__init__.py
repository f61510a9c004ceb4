"""Sweeps over a base job spec (``alseg experiment``): strategies x budgets x pretraining x seeds,
shared upstream work, baselines, and the tables and curves that say how few annotations suffice."""

from alseg.experiment.spec import ExperimentSpec, Piece, StrategySpec, budget_patches, in_folder, load_experiment
from alseg.experiment.sweep import configurations, run_experiment

__all__ = ["ExperimentSpec", "Piece", "StrategySpec", "budget_patches", "configurations", "in_folder", "load_experiment",
           "run_experiment"]
