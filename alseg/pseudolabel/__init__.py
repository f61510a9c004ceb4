"""Pseudo-labels: 2D foundation-model or classical labellers on slices, linked into 3D instances."""

from alseg.pseudolabel.base import Labeller, PseudoLabelError, make_labeller, signature
from alseg.pseudolabel.link import link_stack, match_planes
from alseg.pseudolabel.volume import pseudolabel_volume

__all__ = ["Labeller", "PseudoLabelError", "link_stack", "make_labeller", "match_planes", "pseudolabel_volume", "signature"]
