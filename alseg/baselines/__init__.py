"""Baselines that alseg's models are benchmarked against.

``forest``: an ilastik-style pixel classifier (random forest on standard filter features), i.e.
what a biologist gets from the same annotated patches without deep learning.
"""

from alseg.baselines.forest import ForestClassifier, feature_names, filter_features

__all__ = ["ForestClassifier", "feature_names", "filter_features"]
