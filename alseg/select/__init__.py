"""Core-set selection: exact k-center greedy, k-means, uncertainty and hybrid strategies."""

from alseg.select.kcenter import KCenterResult, kcenter_greedy, normalize_rows
from alseg.select.strategies import Selection, needs_embeddings, needs_pseudolabels, select_patches, uncertainty_measure
from alseg.select.uncertainty import UncertaintySums, patch_uncertainty

__all__ = ["KCenterResult", "Selection", "UncertaintySums", "kcenter_greedy", "needs_embeddings", "needs_pseudolabels",
           "normalize_rows",
           "patch_uncertainty", "select_patches", "uncertainty_measure"]
