"""Whole-volume prediction with a trained nnU-Net, block by block.

A :class:`BlockPredictor` (one per worker: a Ray actor per GPU, or CPU workers) loads the model
folder once, then for each block reads the write region grown by the halo (clipped at the
volume's edge, as nnU-Net's own predictor sees no voxels beyond it), normalises it with the
dataset's :class:`~alseg.nnunet.dataset.IntensityNorm`, runs nnU-Net's sliding window with
Gaussian weighting (``predict_sliding_window_return_logits``; mirroring optional; mixed precision
on GPU as nnU-Net does it), and writes the write region of the argmax class map (and, if asked,
the foreground probability) into chunk-aligned OME-Zarr outputs. Memory follows the block, never
the volume: nnU-Net's own whole-array predictor holds logits for the entire volume.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alseg.blockwise import check_aligned, run_blocks
from alseg.errors import SpecError
from alseg.geometry import Block, BlockGrid
from alseg.nnunet.dataset import IntensityNorm
from alseg.nnunet.paths import NnUNetDirs
from alseg.runtime import Resources, Runner, SerialRunner


def load_predictor(model_folder: str, *, device: str = "cpu", mirroring: bool = False, checkpoint: str = "checkpoint_final.pth",
                   dirs_root: str | None = None, threads: int | None = None):
    """nnU-Net's predictor for fold ``all`` of ``model_folder`` (alseg's trainer found through a scoped environment)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    if threads:
        torch.set_num_threads(threads)
    with contextlib.redirect_stdout(io.StringIO()):  # on CPU it prints that it stays on CPU
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                    perform_everything_on_device=device.startswith("cuda"), device=torch.device(device),
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    if not os.path.isfile(os.path.join(model_folder, "fold_all", checkpoint)):
        raise SpecError(f"no trained model at {model_folder}/fold_all/{checkpoint}")
    chatter = io.StringIO()  # nnU-Net prints its trainer search; keep it for errors only
    try:
        with NnUNetDirs(dirs_root or os.path.dirname(os.path.dirname(os.path.dirname(model_folder)))).scoped(), \
                contextlib.redirect_stdout(chatter):
            predictor.initialize_from_trained_model_folder(model_folder, use_folds=("all",), checkpoint_name=checkpoint)
    except Exception as err:
        raise SpecError(f"cannot load the nnU-Net model at {model_folder}: {err}\n{chatter.getvalue()[-2000:]}") from err
    return predictor


@dataclass(frozen=True)
class _PredictJob:
    image: str
    level: int
    classes: str  # uint8 class map
    probability: str | None  # float32 foreground probability (optional)
    block: Block


class BlockPredictor:
    """A trained nnU-Net, loaded once per worker, predicting blocks."""

    def __init__(self, model_folder: str, norm: dict[str, float], device: str = "cpu", mirroring: bool = False,
                 checkpoint: str = "checkpoint_final.pth") -> None:
        self.predictor = load_predictor(model_folder, device=device, mirroring=mirroring, checkpoint=checkpoint)
        self.norm = IntensityNorm(**norm)

    def logits(self, data: np.ndarray) -> np.ndarray:
        import torch

        tensor = torch.from_numpy(self.norm(data)[None])
        with torch.no_grad():
            out = self.predictor.predict_sliding_window_return_logits(tensor)
        return out.float().cpu().numpy() if hasattr(out, "cpu") else np.asarray(out, dtype=np.float32)

    def __call__(self, job: _PredictJob) -> dict[str, Any]:
        from alseg.io.omezarr import open_volume

        b = job.block
        logits = self.logits(open_volume(job.image, level=job.level).read(b.read))
        before = tuple(w - r for w, r in zip(b.write.start, b.read.start))
        inner = (slice(None),) + tuple(slice(p, p + n) for p, n in zip(before, b.write.shape))
        logits = logits[inner]
        classes = logits.argmax(0).astype(np.uint8)
        if job.probability is not None:
            e = np.exp(logits - logits.max(0, keepdims=True))
            fg = (e[1] / e.sum(0)).astype(np.float32)
            open_volume(job.probability, mode="r+").write(b.write, fg)
        open_volume(job.classes, mode="r+").write(b.write, classes)
        return {"foreground": int((classes == 1).sum())}


def predict_volume(
    model_folder: str,
    image_url: str,
    classes_url: str,
    *,
    norm: IntensityNorm,
    block_shape: Sequence[int],
    halo: Sequence[int],
    probability_url: str | None = None,
    level: int = 0,
    runner: Runner | None = None,
    work_dir: str | None = None,
    workers: int = 1,
    resources: Resources | None = None,
    device: str = "cpu",
    mirroring: bool = False,
) -> dict[str, Any]:
    """Predict the class map of the image into ``classes_url`` (created here on the image's grid,
    a label image of uint8 classes), block by block; resumable with ``work_dir``."""
    import json

    from alseg.io.omezarr import create_image, create_label_image, open_volume

    image = open_volume(image_url, level=level)
    grid = BlockGrid(image.shape, block_shape, halo)
    with open(os.path.join(model_folder, "plans.json")) as fh:
        plans = json.load(fh)
    configuration = os.path.basename(os.path.normpath(model_folder)).split("__")[-1]
    if configuration not in plans["configurations"]:
        raise SpecError(f"{model_folder} is not an nnU-Net model folder (<trainer>__<plans>__<configuration>)")
    spacing = [float(s) for s in plans["configurations"][configuration]["spacing"]]
    if any(abs(a - b) > 1e-3 * b for a, b in zip(image.voxel_size_nm, spacing)):
        raise SpecError(f"the model was trained at {spacing} nm, the volume has {image.voxel_size_nm} nm voxels: "
                        "predict on the pyramid level that matches (input.level)")
    runner = runner or SerialRunner(progress=False)
    if not os.path.exists(os.path.join(classes_url, "zarr.json")):
        create_label_image(classes_url, like=image, chunks=grid.block_shape, dtype="uint8", name="classes")
    out = open_volume(classes_url)
    check_aligned(grid.block_shape, out.chunks, image.shape)
    if probability_url is not None and not os.path.exists(os.path.join(probability_url, "zarr.json")):
        create_image(probability_url, shape=image.shape, dtype="float32", chunks=grid.block_shape,
                     voxel_size_nm=image.voxel_size_nm, levels=1, name="probability")
    results = run_blocks(
        None, grid, payload=lambda b: _PredictJob(image_url, level, classes_url, probability_url, b),
        runner=runner, work_dir=work_dir, name="predict", desc="nnU-Net blocks",
        worker=(BlockPredictor, (model_folder, norm.to_json(), device, mirroring)), workers=workers, resources=resources,
    )
    return {"blocks": len(results), "foreground_voxels": sum(r["foreground"] for r in results.values()), "url": classes_url}
