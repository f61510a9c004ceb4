"""The rows every experiment table carries besides the strategies, each scored on the held-out
region exactly as a configuration is (the job's post-processing into 3D instances, then the
evaluation stage's metrics):

* ``ceiling``: the ground-truth mask itself through the post-processing (what the split allows);
* ``pseudolabels``: the pseudo-label instances alone;
* ``forest``: an ilastik-style pixel classifier (:mod:`alseg.baselines.forest`) trained on the
  ground truth of a configuration's picked patches, at the same budget (picks of one class only
  train nothing: the prediction is that class everywhere, as a one-class classifier's would be).

Masks are written block by block over the blocks that meet the held-out region, so memory
follows the block, not the volume.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from alseg.errors import SpecError
from alseg.geometry import BlockGrid, Box
from alseg.io import store as st
from alseg.io.omezarr import create_label_image, open_volume
from alseg.pipeline.common import input_volume, pseudolabels_url
from alseg.pipeline.evaluation import evaluate
from alseg.pipeline.predict import instances_of_mask
from alseg.preflight import holdout_of
from alseg.runtime import Runner, SerialRunner
from alseg.spec import JobSpec, ground_truth_url


def _holdout(spec: JobSpec) -> Box:
    region = holdout_of(spec, input_volume(spec).shape)
    if region is None:
        raise SpecError("an experiment scores configurations on the held-out region: set patches.holdout in the base spec")
    return region


def _gt(spec: JobSpec):
    url = ground_truth_url(spec)
    if url is None:
        raise SpecError("an experiment needs input.ground_truth (the simulated annotator and the scores read it)")
    return open_volume(url, level=spec.input.level)


def _region_mask(spec: JobSpec, out_dir: str, mask_of: Callable[[Box], np.ndarray]) -> str:
    """``mask_of(box)`` over the blocks of ``postprocess.block_shape_vox`` that meet the held-out
    region (0 elsewhere) into ``<out_dir>/mask.zarr``."""
    region = _holdout(spec)
    image = input_volume(spec)
    url = st.join(out_dir, "mask.zarr")
    out = create_label_image(url, like=image, chunks=spec.postprocess.block_shape_vox, dtype="uint8", name="mitochondria-mask",
                             kind="prediction", overwrite=st.exists(st.join(url, "zarr.json")))
    for block in BlockGrid(image.shape, spec.postprocess.block_shape_vox):
        box = block.write
        if not box.overlaps(region):
            continue
        inside = box.intersect(region)
        data = np.zeros(box.shape, np.uint8)
        local = tuple(slice(a - b, c - b) for a, b, c in zip(inside.start, box.start, inside.stop))
        data[local] = mask_of(inside) > 0
        out.write(box, data)
    return url


def scored_mask(spec: JobSpec, out_dir: str, mask_of: Callable[[Box], np.ndarray], *, runner: Runner | None = None) -> dict[str, Any]:
    """A held-out mask through the job's post-processing and evaluation: ``{"objects", "scores"}``."""
    runner = runner or SerialRunner(progress=False)
    mask = _region_mask(spec, out_dir, mask_of)
    inst = instances_of_mask(spec, mask, st.join(out_dir, "instances.zarr"), work_dir=st.join(out_dir, "work"), runner=runner)
    return {"objects": inst["objects"], "scores": evaluate(spec, inst["url"], runner=runner, holdout_only=True)}


def ceiling_scores(spec: JobSpec, out_dir: str, *, runner: Runner | None = None) -> dict[str, Any]:
    """The ground-truth mask through the post-processing: the best any model can score on this split."""
    gt = _gt(spec)
    return scored_mask(spec, out_dir, lambda box: gt.read(box) > 0, runner=runner)


def pseudolabel_scores(spec: JobSpec, *, runner: Runner | None = None) -> dict[str, Any]:
    """The pseudo-label instances (the run's own ``pseudolabels.zarr``) on the held-out region."""
    url = pseudolabels_url(spec)
    if not st.exists(st.join(url, "zarr.json")):
        raise SpecError(f"no pseudo-labels at {st.redact(url)}: run the pseudo-label stage first")
    return {"scores": evaluate(spec, url, runner=runner, holdout_only=True)}


def forest_scores(spec: JobSpec, boxes: list[Box], out_dir: str, *, seed: int = 0, runner: Runner | None = None) -> dict[str, Any]:
    """An ilastik-style random forest trained on the ground truth of ``boxes`` (the picked
    patches), applied to the held-out region section by section (a y-x halo of four times its
    largest filter scale, so block edges see what a whole section would), post-processed and
    scored. The fitted model is kept as ``<out_dir>/forest.pkl``."""
    from alseg.baselines.forest import ForestClassifier

    image, gt = input_volume(spec), _gt(spec)
    if not boxes:
        raise SpecError("the pixel classifier needs at least one annotated patch")
    images = [image.read(b) for b in boxes]
    labels = [gt.read(b) for b in boxes]
    fg = int(sum(int((lab > 0).sum()) for lab in labels))
    if fg == 0 or fg == sum(lab.size for lab in labels):
        # one class only: nothing to train a classifier on; it predicts the one class it saw
        only = fg > 0
        return {**scored_mask(spec, out_dir, lambda box: np.full(box.shape, only), runner=runner), "patches": len(boxes),
                "foreground_voxels": fg, "trained": False}
    forest = ForestClassifier(tuple(image.voxel_size_nm), random_state=seed).fit(images, labels, seed=seed)
    st.write_bytes(st.join(out_dir, "forest.pkl"), forest.to_bytes())
    halo = int(np.ceil(4 * max(forest.sigmas)))

    def mask_of(box: Box) -> np.ndarray:
        grown = Box((box.start[0], max(0, box.start[1] - halo), max(0, box.start[2] - halo)),
                    (box.stop[0], min(image.shape[1], box.stop[1] + halo), min(image.shape[2], box.stop[2] + halo)))
        prob = forest.predict_proba(image.read(grown))
        crop = tuple(slice(a - g, a - g + n) for a, g, n in zip(box.start, grown.start, box.shape))
        return prob[crop] > 0.5

    return {**scored_mask(spec, out_dir, mask_of, runner=runner), "patches": len(boxes), "foreground_voxels": fg, "trained": True}
