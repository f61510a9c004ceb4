"""Evaluation: instance matching metrics over whole volumes, block by block."""

from alseg.evaluate.metrics import InstanceScores, OverlapTable, evaluate_volumes, match_instances, overlap_table

__all__ = ["InstanceScores", "OverlapTable", "evaluate_volumes", "match_instances", "overlap_table"]
