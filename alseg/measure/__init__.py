"""Measurements of segmented objects for the biologist: a per-instance table, computed blockwise."""

from alseg.measure.table import COLUMNS, measure_instances, measure_labels

__all__ = ["COLUMNS", "measure_instances", "measure_labels"]
