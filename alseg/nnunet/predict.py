"""Whole-volume prediction with a trained nnU-Net, block by block.

A :class:`BlockPredictor` (one per worker: a Ray actor per GPU, or CPU workers) loads the model
folder once, then for each block reads the write region grown by the halo (clipped at the
volume's edge, as nnU-Net's own predictor sees no voxels beyond it), normalises it with the
dataset's :class:`~alseg.nnunet.dataset.IntensityNorm`, runs nnU-Net's sliding window with
Gaussian weighting (its tile placement, network call and Gaussian; the tiles in batches, summed in
float32: :mod:`alseg.nnunet.tiles`; mirroring optional; bf16 autocast on GPU), and writes the write
region of the argmax class map (and, if asked, the foreground probability) into chunk-aligned
OME-Zarr outputs. Memory follows the block, never
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
from alseg.geometry import Block, BlockGrid, Box
from alseg.io import store as st
from alseg.nnunet.dataset import IntensityNorm
from alseg.nnunet.models import CHECKPOINT, local_model
from alseg.nnunet.paths import NnUNetDirs
from alseg.nnunet.tiles import TileRunner
from alseg.runtime import Resources, Runner, SerialRunner



def load_predictor(model_folder: str, *, device: str = "cpu", mirroring: bool = False, checkpoint: str = CHECKPOINT,
                   dirs_root: str | None = None, threads: int | None = None, tile_step: float = 0.5):
    """nnU-Net's predictor for fold ``all`` of ``model_folder`` (a local folder, or a model published
    to a run directory on object storage, fetched once per node: :func:`~alseg.nnunet.models.local_model`;
    alseg's trainer found through a scoped environment); ``tile_step`` is its ``tile_step_size``."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    if threads:
        torch.set_num_threads(threads)
    model_folder = local_model(model_folder)
    with contextlib.redirect_stdout(io.StringIO()):  # on CPU it prints that it stays on CPU
        predictor = nnUNetPredictor(tile_step_size=tile_step, use_gaussian=True, use_mirroring=mirroring,
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
    missing_chunks: str = "error"


@dataclass(frozen=True)
class _TileJob:
    """A block of global tiling's first phase: the tiles whose start lies in it (see
    :func:`predict_volume`)."""

    image: str
    level: int
    classes: str
    probability: str | None
    block: Block
    grid_shape: tuple[int, int, int]
    steps: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    patch: tuple[int, int, int]
    pieces: str  # folder of overhang pieces
    missing_chunks: str = "error"


@dataclass(frozen=True)
class _SeamJob:
    """A block of global tiling's second phase: its seam (what lower neighbours' tiles reach) summed
    from its own piece and theirs; no model."""

    classes: str
    probability: str | None
    block: Block
    steps: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    patch: tuple[int, int, int]
    pieces: str


def _piece_path(folder: str, index: Sequence[int], d: Sequence[int]) -> str:
    """The piece block ``index`` receives from its neighbour ``index - d`` (``d`` 000: its own seam):
    under the work directory's URL, so a block on another node reads it."""
    return st.join(folder, "b_" + "_".join(map(str, index)), "d" + "".join(map(str, d)) + ".npz")


def _save(url: str, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    st.write_bytes(url, buf.getvalue())  # a temporary name, then moved: a piece is whole or absent


def _load(url: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(st.read_bytes(url))) as data:
        return {k: data[k] for k in data.files}


def _write(job, logits: np.ndarray, box: Box | None = None) -> dict[str, Any]:
    """Classes (and the foreground probability) of ``logits`` into ``box`` (default: the block's write region)."""
    from alseg.io.omezarr import open_volume

    box = job.block.write if box is None else box
    classes = logits.argmax(0).astype(np.uint8)
    if job.probability is not None:
        e = np.exp(logits - logits.max(0, keepdims=True))
        open_volume(job.probability, mode="r+").write(box, (e[1] / e.sum(0)).astype(np.float32))
    open_volume(job.classes, mode="r+").write(box, classes)
    return {"foreground": int((classes == 1).sum())}


def _tiles_of(job: _TileJob):
    w = job.block.write
    own = [[s for s in steps if w.start[a] <= s < w.stop[a]] for a, steps in enumerate(job.steps)]
    stop = tuple(max([w.stop[a]] + [s + job.patch[a] for s in own[a]]) for a in range(3))
    return own, stop


def seam_depths(write: Box, steps: Sequence[Sequence[int]], patch: Sequence[int]) -> tuple[int, int, int]:
    """Per axis: how deep into ``write`` the tiles starting before it reach (0: none). Blocks at
    least a patch wide: only the adjacent lower block's tiles can."""
    return tuple(min(write.shape[a], max([0] + [s + patch[a] - write.start[a] for s in steps[a] if s < write.start[a]]))
                 for a in range(3))


def expected_pieces(write: Box, steps: Sequence[Sequence[int]], patch: Sequence[int]) -> list[tuple[int, int, int]]:
    """The offsets ``d`` (in ``itertools.product`` order) of the lower neighbours ``index - d``
    whose tiles reach into ``write``: on every axis where ``d`` is 1 its tiles reach this far
    (seam depth > 0), and on the others it has tiles at all (a block narrower than the patch at the
    volume's far edge holds no tile start: nnU-Net's last tile starts before it)."""
    import itertools

    depth = seam_depths(write, steps, patch)
    has = [any(write.start[a] <= s < write.stop[a] for s in steps[a]) for a in range(3)]
    return [d for d in itertools.product((0, 1), repeat=3)
            if any(d) and all(depth[a] > 0 if d[a] else has[a] for a in range(3))]


def seam_boxes(shape: Sequence[int], depth: Sequence[int]) -> list[Box]:
    """The seam of a write region of ``shape`` as disjoint boxes (local coordinates): the slab of
    ``depth[0]`` sections, then of ``depth[1]`` rows below it, then of ``depth[2]`` columns. The
    rest, the box from ``depth`` to ``shape``, no lower neighbour's tile reaches."""
    dz, dy, dx = depth
    z, y, x = shape
    boxes = [Box((0, 0, 0), (dz, y, x)), Box((dz, 0, 0), (z, dy, x)), Box((dz, dy, 0), (z, y, dx))]
    return [b for b in boxes if b.size]


def _seam(job: _SeamJob) -> dict[str, Any]:
    """Phase 2 of global tiling: each seam box's own sums plus every lower neighbour's piece, added
    in the order the one-pass sum used (own tiles, then the pieces by neighbour offset), divided."""
    w = job.block.write
    depth = seam_depths(w, job.steps, job.patch)
    pieces = {}
    for d in expected_pieces(w, job.steps, job.patch):
        path = _piece_path(job.pieces, job.block.index, d)
        if not st.exists(path):
            raise RuntimeError(f"block {job.block.key}: the overhang piece from its neighbour at offset -{d} is missing "
                               f"({st.redact(path)}): its first phase did not finish")
        pieces[d] = path
    own = _load(_piece_path(job.pieces, job.block.index, (0, 0, 0)))
    parts = [(own[f"acc{i}"], own[f"weight{i}"]) for i in range(len(seam_boxes(w.shape, depth)))]
    loaded = {}
    for d, path in pieces.items():
        piece = _load(path)
        loaded[d] = (piece["acc"], piece["weight"])
    foreground = 0
    for box, (acc, weight) in zip(seam_boxes(w.shape, depth), parts):
        for d, (pacc, pweight) in loaded.items():
            inter = box.intersect(Box((0, 0, 0), pweight.shape))
            if inter.empty:
                continue
            here = tuple(slice(a - b, c - b) for a, b, c in zip(inter.start, box.start, inter.stop))
            acc[(slice(None),) + here] += pacc[(slice(None),) + inter.slices]
            weight[here] += pweight[inter.slices]
        if not (weight > 0).all():
            raise RuntimeError(f"block {job.block.key}: some voxels are covered by no tile")
        foreground += _write(job, acc / weight, Box(tuple(w.start[a] + box.start[a] for a in range(3)),
                                                    tuple(w.start[a] + box.stop[a] for a in range(3))))["foreground"]
    return {"foreground": foreground}


class BlockPredictor:
    """A trained nnU-Net, loaded once per worker, predicting blocks."""

    def __init__(self, model_folder: str, norm: dict[str, float], device: str = "cpu", mirroring: bool = False,
                 checkpoint: str = CHECKPOINT, tile_step: float = 0.5, batch_tiles: int = 0) -> None:
        self.predictor = load_predictor(model_folder, device=device, mirroring=mirroring, checkpoint=checkpoint, tile_step=tile_step)
        self.norm = IntensityNorm(**norm)
        self.tiles_runner = TileRunner(self.predictor, batch_tiles)

    def logits(self, data: np.ndarray) -> np.ndarray:
        """nnU-Net's sliding window over the (raw) ``data``, its tiles in batches: (classes, *data.shape) float32."""
        return self.tiles_runner.window(self.norm(data))

    def __call__(self, job: _PredictJob | _TileJob) -> dict[str, Any]:
        if isinstance(job, _TileJob):
            return self.tiles(job)
        from alseg.io.omezarr import open_volume

        b = job.block
        logits = self.logits(open_volume(job.image, level=job.level, missing_chunks=job.missing_chunks).read(b.read))
        return _write(job, logits[(slice(None),) + b.write_in_read.slices])

    def tiles(self, job: _TileJob) -> dict[str, Any]:
        """Phase 1 of global tiling: own tiles once each, Gaussian-weighted; the overhangs saved for
        the upper neighbours and the seam's own sums for phase 2; the rest of the block written."""
        import itertools

        from alseg.io.omezarr import open_volume

        w = job.block.write
        own, stop = _tiles_of(job)
        ext = Box(w.start, stop)
        data = self.norm(open_volume(job.image, level=job.level, missing_chunks=job.missing_chunks).read(ext))
        n_cls = self.predictor.label_manager.num_segmentation_heads
        acc = np.zeros((n_cls, *ext.shape), np.float32)
        weight = np.zeros(ext.shape, np.float32)
        if tuple(job.patch) != self.tiles_runner.patch:
            raise SpecError(f"block {job.block.key}: tiles of {job.patch} for a model with patch {self.tiles_runner.patch}")
        corners = [tuple(s - w.start[a] for a, s in enumerate(start)) for start in itertools.product(*own)]
        self.tiles_runner.accumulate(data, corners, acc, weight)
        # hand the overhangs (beyond the write region) to the upper neighbours, each its piece
        wshape = w.shape
        for d in itertools.product((0, 1), repeat=3):
            if not any(d):
                continue
            target = tuple(i + di for i, di in zip(job.block.index, d))
            if any(t >= g for t, g in zip(target, job.grid_shape)):
                continue
            sl = tuple(slice(wshape[a], None) if d[a] else slice(0, wshape[a]) for a in range(3))
            if weight[sl].size and weight[sl].any():
                _save(_piece_path(job.pieces, target, d), acc=acc[(slice(None),) + sl], weight=weight[sl])
        # the seam (what lower neighbours' tiles reach) waits for phase 2: its own sums are saved
        depth = seam_depths(w, job.steps, job.patch)
        seams = seam_boxes(wshape, depth)
        if seams:
            parts = {}
            for i, box in enumerate(seams):
                parts[f"acc{i}"], parts[f"weight{i}"] = acc[(slice(None),) + box.slices], weight[box.slices]
            _save(_piece_path(job.pieces, job.block.index, (0, 0, 0)), **parts)
        # the rest is final: no other block's tile reaches it
        rest = Box(depth, wshape)
        if rest.empty:
            return {"foreground": 0}
        acc, weight = acc[(slice(None),) + rest.slices], weight[rest.slices]
        if not (weight > 0).all():
            raise RuntimeError(f"block {job.block.key}: some voxels are covered by no tile")
        return _write(job, acc / weight, Box(tuple(w.start[a] + depth[a] for a in range(3)), w.stop))


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
    tiling: str = "global",
    missing_chunks: str = "error",
    region: Box | Sequence[Box] | None = None,
    tile_step: float = 0.5,
    batch_tiles: int = 0,
) -> dict[str, Any]:
    """Predict the class map of the image into ``classes_url`` (created here on the image's grid,
    a label image of uint8 classes), block by block; resumable with ``work_dir``.

    ``tiling="global"`` (default): nnU-Net's sliding-window tiles are placed on the whole volume,
    as nnU-Net's own predictor places them; each tile is computed once, by the block that holds
    its start. It runs in two phases whatever the block grid, every block of a phase independent
    of the others: (1) each block computes its tiles, writes the part of its write region that no
    other block's tile reaches, and saves the Gaussian-weighted sums of the rest (its *seam*, the
    slabs along its lower faces) and of its overhang into each upper neighbour; (2) each block adds
    its lower neighbours' overhangs to its seam in the order a one-pass sum would and writes it.
    The result is nnU-Net's whole-array prediction; no halo is read, so nothing is computed twice,
    and a missing overhang fails its block.
    Blocks must be at least one patch wide (or span the axis). ``tiling="halo"``: every block
    runs its own sliding window over the write region grown by ``halo`` (simpler, recomputes the
    border tiles). ``work_dir`` (needed for global tiling) holds the overhang pieces.

    ``region`` (a box or several): predict only the blocks whose write box meets it (halo tiling,
    each block with the context its halo gives; the rest of ``classes_url`` stays 0), e.g. the
    held-out evaluation region of an active-learning round, or the patches picked for annotation.
    ``tile_step`` is nnU-Net's ``tile_step_size`` in both tilings (0.5, its default: tiles half a
    patch apart; 1.0: abutting tiles, the fewest). ``batch_tiles`` tiles run through the network
    per forward pass (0: automatic, :class:`~alseg.nnunet.tiles.TileRunner`)."""

    from alseg.io.omezarr import create_image, create_label_image, open_volume

    if not 0 < tile_step <= 1:
        raise SpecError(f"tile_step must be in (0, 1], got {tile_step}")
    image = open_volume(image_url, level=level)
    grid = BlockGrid(image.shape, block_shape, halo)
    regions = [region] if isinstance(region, Box) else list(region or [])
    plans = st.read_json(st.join(model_folder, "plans.json"))  # the driver needs the plans, not the weights
    configuration = os.path.basename(os.path.normpath(model_folder)).split("__")[-1]
    if configuration not in plans["configurations"]:
        raise SpecError(f"{model_folder} is not an nnU-Net model folder (<trainer>__<plans>__<configuration>)")
    spacing = [float(s) for s in plans["configurations"][configuration]["spacing"]]
    # a 2d configuration plans the in-plane (y, x) spacing only: compare the trailing axes
    if any(abs(a - b) > 1e-3 * b for a, b in zip(image.voxel_size_nm[-len(spacing):], spacing)):
        raise SpecError(f"the model was trained at {spacing} nm, the volume has {image.voxel_size_nm} nm voxels: "
                        "predict on the pyramid level that matches (input.level)")
    runner = runner or SerialRunner(progress=False)
    if not st.exists(st.join(classes_url, "zarr.json")):
        create_label_image(classes_url, like=image, chunks=grid.block_shape, dtype="uint8", name="classes", kind="prediction")
    out = open_volume(classes_url)
    check_aligned(grid.block_shape, out.chunks, image.shape)
    if probability_url is not None and not st.exists(st.join(probability_url, "zarr.json")):
        create_image(probability_url, shape=image.shape, dtype="float32", chunks=grid.block_shape,
                     voxel_size_nm=image.voxel_size_nm, levels=1, name="probability")
    worker = (BlockPredictor, (model_folder, norm.to_json(), device, mirroring, CHECKPOINT, float(tile_step), int(batch_tiles)))
    patch = tuple(int(p) for p in plans["configurations"][configuration]["patch_size"])
    fits = len(patch) == 3 and all(s >= p for s, p in zip(image.shape, patch))
    # global tiling places 3D tiles; a 2d model predicts section by section with halo tiling
    if tiling == "global" and fits and region is None:
        import tempfile

        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

        tiles_grid = BlockGrid(image.shape, block_shape, 0)
        narrow = [a for a in range(3) if tiles_grid.block_shape[a] < patch[a] and tiles_grid.block_shape[a] < image.shape[a]]
        if narrow:
            raise SpecError(f"blocks {tiles_grid.block_shape} are narrower than the patch {patch} on axes {narrow}: "
                            "make them at least one patch wide")
        steps = tuple(tuple(int(s) for s in axis) for axis in compute_steps_for_sliding_window(image.shape, patch, tile_step))
        # the pieces go through the work directory's URL (object storage on a cluster); without one, a
        # local folder of this call's own, which serves a single machine only
        pieces = st.join(work_dir, "overhangs") if work_dir else tempfile.mkdtemp(prefix="alseg-overhangs-")
        gshape = tiles_grid.grid_shape
        try:
            # phase 1: every block its own tiles, all blocks at once (the model loaded once per worker)
            tiled = run_blocks(
                None, tiles_grid,
                payload=lambda b: _TileJob(image_url, level, classes_url, probability_url, b, gshape, steps, patch, pieces,
                                           missing_chunks),
                runner=runner, work_dir=work_dir, name="predict-tiles", desc="nnU-Net tiles",
                worker=worker, workers=workers, resources=resources,
            )
            # phase 2: every block's seam from its own sums and its lower neighbours' overhangs (no model)
            seams = run_blocks(
                _seam, tiles_grid, payload=lambda b: _SeamJob(classes_url, probability_url, b, steps, patch, pieces),
                runner=runner, work_dir=work_dir, name="predict-seams", desc="nnU-Net seams",
                select=lambda b: bool(seam_boxes(b.write.shape, seam_depths(b.write, steps, patch))),
            )
        finally:
            if not work_dir:  # nothing to resume from: the pieces are this call's alone
                import shutil

                shutil.rmtree(pieces, ignore_errors=True)
        results = {k: {"foreground": r["foreground"] + seams.get(k, {}).get("foreground", 0)} for k, r in tiled.items()}
    else:
        results = run_blocks(
            None, grid, payload=lambda b: _PredictJob(image_url, level, classes_url, probability_url, b, missing_chunks),
            runner=runner, work_dir=work_dir, name="predict", desc="nnU-Net blocks",
            worker=worker, workers=workers, resources=resources,
            select=None if region is None else (lambda b: any(b.write.overlaps(r) for r in regions)),
        )
    return {"blocks": len(results), "foreground_voxels": sum(r["foreground"] for r in results.values()), "url": classes_url}

