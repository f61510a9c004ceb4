"""Stage 7: a volume (or a region of it) through a trained nnU-Net, block by block, then 3D instances."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from alseg.blockwise import map_volume
from alseg.errors import SpecError
from alseg.geometry import Box
from alseg.io import store as st
from alseg.io.omezarr import create_label_image
from alseg.pipeline.common import device_for, input_volume, pretrain_record
from alseg.pipeline.records import Signature, field_values
from alseg.pyramid import build_pyramid
from alseg.rundir import claim
from alseg.runtime import Runner
from alseg.spec import JobSpec


def _classes_to_mask(classes: np.ndarray, value: int = 1) -> np.ndarray:
    return (classes == value).astype(np.uint8)


def pretrained_model(spec: JobSpec) -> tuple[str, dict[str, float]]:
    """The pretrained nnU-Net's model folder and intensity normalisation (from ``pretrain.json``)."""
    record = pretrain_record(spec, needed_by="prediction")
    return record["model_folder"], record["norm"]


def run_predict(spec: JobSpec, *, model_folder: str | None = None, norm: dict | None = None, runner: Runner | None = None,
                progress: bool = True, out_dir: str | None = None, region: Box | list[Box] | None = None,
                work_key: str | None = None) -> dict[str, Any]:
    """Stage 7: the volume through a trained nnU-Net, block by block, then 3D instances.

    Writes ``classes.zarr`` (uint8 class map), ``mask.zarr`` (mitochondria class) and
    ``instances.zarr`` (stitched instances, optionally split by the seeded watershed) into
    ``out_dir`` (default ``<run dir>/prediction``), each an OME-Zarr label image with a pyramid.
    Uses the pretrained model unless ``model_folder`` (and its ``norm``) are given. ``region``
    predicts only the blocks that meet it (a round's held-out region, or the patches to annotate). Resumable:
    block records live under ``<run dir>/work/predict/<work_key>`` (default: the model's dataset),
    so a new ``work_key`` recomputes every block into the same outputs.
    """
    from alseg.nnunet import IntensityNorm
    from alseg.nnunet.predict import predict_volume
    from alseg.runtime import runner_from_spec

    claim(spec)
    if model_folder is None:
        model_folder, norm = pretrained_model(spec)
    if norm is None:
        raise SpecError("predicting with a given model folder needs its intensity normalisation")
    own = runner is None
    runner = runner or runner_from_spec(spec.resources, progress=progress)
    out_dir = out_dir or st.join(spec.run.dir, "prediction")
    work = st.join(spec.run.dir, "work", "predict", work_key or f"{os.path.basename(os.path.dirname(model_folder))}-{prediction_key(spec)}")
    try:
        res, device = device_for(spec.resources.prediction, spec.nnunet.device, label="resources.prediction")
        workers = spec.resources.prediction.workers or runner.capacity(res)
        p = spec.prediction
        classes_url = st.join(out_dir, "classes.zarr")
        predict_volume(model_folder, spec.input.url, classes_url, norm=IntensityNorm(**norm), block_shape=p.block_shape_vox,
                       halo=p.halo_vox, level=spec.input.level, runner=runner, work_dir=work, workers=workers, resources=res,
                       device=device, mirroring=p.mirroring, tiling=p.tiling, missing_chunks=spec.input.missing_chunks,
                       region=region, tile_step=p.tile_step, batch_tiles=p.batch_tiles)
        build_pyramid(classes_url, kind="mode", runner=runner, work_dir=work)
        q = spec.postprocess
        mask_url = st.join(out_dir, "mask.zarr")
        if not st.exists(st.join(mask_url, "zarr.json")):
            create_label_image(mask_url, like=input_volume(spec), chunks=q.block_shape_vox, dtype="uint8", name="mitochondria-mask",
                               kind="prediction")
        map_volume(_classes_to_mask, [classes_url], mask_url, block_shape=q.block_shape_vox, runner=runner, work_dir=work, name="mask")
        info = instances_of_mask(spec, mask_url, st.join(out_dir, "instances.zarr"), work_dir=st.join(work, "instances"), runner=runner)
        return {"classes": classes_url, "mask": mask_url, "instances": info["url"], "objects": info["objects"], "model_folder": model_folder}
    finally:
        if own:
            runner.close()


def prediction_key(spec: JobSpec) -> str:
    """12 hex digits of the fields that shape a prediction and its instances (``input.level``,
    ``prediction``, ``postprocess``): block records kept under a key with it are never reused by a
    job that predicts differently (e.g. another ``prediction.tile_step``)."""
    return Signature(field_values(spec, ("input.level", "prediction", "postprocess")), {}).sha[:12]


def instances_of_mask(spec: JobSpec, mask_url: str, instances_url: str, *, work_dir: str, runner: Runner) -> dict[str, Any]:
    """The post-processing stage on a foreground mask (on the grid of ``input.level``): 3D
    instances (``postprocess``: connectivity, small objects dropped, optional distance watershed)
    into ``instances_url``; ``{"url", "objects"}``. Resumable through ``work_dir``."""
    from alseg.postprocess.stitch import label_components

    q = spec.postprocess
    if not st.exists(st.join(instances_url, "zarr.json")):
        create_label_image(instances_url, like=input_volume(spec), chunks=q.block_shape_vox, name="mitochondria", kind="prediction")
    if q.watershed == "none":
        info = label_components(mask_url, instances_url, block_shape=q.block_shape_vox, work_dir=work_dir,
                                connectivity=q.connectivity, min_size_vox=q.min_size_vox, runner=runner)
    elif q.watershed == "distance":
        from alseg.postprocess.watershed import split_instances

        info = split_instances(mask_url, instances_url, block_shape=q.block_shape_vox, halo=q.halo_vox, work_dir=work_dir,
                               seed_distance_nm=q.seed_distance_nm, connectivity=q.connectivity, min_size_vox=q.min_size_vox, runner=runner)
    else:
        raise SpecError("postprocess.watershed: boundary needs a boundary probability map, which prediction does not write yet; use distance")
    return {"url": instances_url, "objects": info["objects"]}
