"""Pipeline stages driven by a job spec. Each reads its inputs and writes its artefacts under the
run directory, and is skipped on rerun when its signature is unchanged.

Today: pseudo-labels and evaluation; nnU-Net, embeddings, selection and prediction join as they land.
"""

from __future__ import annotations

from typing import Any

from alseg.io import store as st


def pseudolabels_url(spec: Any) -> str:
    return st.join(spec.run.dir, "pseudolabels.zarr")


def run_pseudolabels(spec: Any, *, runner: Any = None, progress: bool = True) -> dict[str, Any]:
    """Stage 2: pseudo-labels of the input volume into ``<run dir>/pseudolabels.zarr``."""
    from alseg.pseudolabel import pseudolabel_volume
    from alseg.runtime import Resources, runner_from_spec

    own = runner is None
    runner = runner or runner_from_spec(spec.resources, progress=progress)
    try:
        res = Resources.from_spec(spec.resources.pseudolabel)
        workers = spec.resources.pseudolabel.workers or runner.capacity(res)
        p = spec.pseudolabel
        return pseudolabel_volume(
            spec.input.url, pseudolabels_url(spec), p, work_dir=st.join(spec.run.dir, "work", "pseudolabel"),
            block_shape=p.block_shape_vox, halo_yx=p.halo_px, level=spec.input.level, runner=runner,
            workers=workers, resources=res,
        )
    finally:
        if own:
            runner.close()


def ground_truth_url(spec: Any) -> str | None:
    """The ground-truth label image a spec names (a label inside the image, or its own URL)."""
    gt = spec.input.ground_truth
    if gt is None:
        return None
    return gt if ("/" in gt or ":" in gt) else st.join(spec.input.url, "labels", gt)


def evaluate(spec: Any, labels_url: str, *, runner: Any = None) -> dict[str, Any]:
    """Score a label volume against the spec's ground truth at its IoU thresholds."""
    from alseg.errors import SpecError
    from alseg.evaluate.metrics import evaluate_volumes

    gt = ground_truth_url(spec)
    if gt is None:
        raise SpecError("input.ground_truth is not set: nothing to evaluate against")
    return evaluate_volumes(gt, labels_url, thresholds=spec.evaluation.iou_thresholds, runner=runner)
