"""Annotation: the simulated oracle, and the round trip through people and their tools.

* :func:`simulate_round` (``annotation.method: simulated``) copies the ground truth of a round's
  picks into the run's annotation store (benchmarks, tests, the demo).
* :func:`export_round` (``annotation.method: manual``) writes ``<run dir>/annotation/round-NN/``:
  each pick's raw crop and starting labels as an OME-Zarr package for napari and as TIFF stacks in
  micro-SAM's image-series layout, a manifest and a README with the commands to type.
* :func:`import_round` (``alseg import RUNDIR FOLDER``) reads the edited labels back, checks them
  all, and stores them.

The store (:func:`annotations_url`, ``<run dir>/annotations.zarr``) holds every annotated patch's
labels at its box; ``<run dir>/annotation/imports.json`` records them (:func:`annotated_patches`).
napari and micro-SAM are needed only by the people annotating (``pip install 'alseg[annotate]'``);
nothing here imports them.
"""

from alseg.annotate.export import export_round
from alseg.annotate.importer import import_round
from alseg.annotate.store import annotated_patches, annotation_labels, annotations_url, simulate_round

__all__ = ["annotated_patches", "annotation_labels", "annotations_url", "export_round", "import_round",
           "simulate_round"]
