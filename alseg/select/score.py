"""Uncertainty of every candidate patch under a trained nnU-Net, by workers that load it once.

For each patch the worker reads its valid box, runs nnU-Net's sliding window (Gaussian
weighting, as for prediction) and turns the logits into class probabilities; the three measures
of :mod:`alseg.select.uncertainty` are averaged over the patch's voxels. How the stochastic
predictions that BALD needs are drawn (``mode``):

* ``tta`` (default): the patch under nnU-Net's mirror flips (the axes it trained with, all
  ``2^axes`` combinations, identity first, ``samples`` of them). nnU-Net's networks have no
  dropout, so their disagreement under the augmentations they were trained to be invariant to
  is the model uncertainty that can be had from them.
* ``mc_dropout``: dropout layers kept active at inference, ``samples`` seeded passes. Refused
  for a network without dropout layers (every pass would be the same model).
* ``none``: one plain prediction (entropy and least confidence need no more).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from alseg.errors import SpecError
from alseg.select.uncertainty import UncertaintySums

DROPOUT_TYPES = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout")


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def flips(axes: tuple[int, ...], samples: int) -> list[tuple[int, ...]]:
    """Mirror combinations of ``axes`` (identity first, then by number of axes), at most ``samples``."""
    combos = [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
    return combos[: max(1, samples)]


@dataclass(frozen=True)
class _ScoreJob:
    image: str
    level: int
    patch_id: int
    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    missing_chunks: str = "error"


class PatchScorer:
    """One nnU-Net per worker, scoring patches."""

    def __init__(self, model_folder: str, norm: dict[str, float], device: str = "cpu", mode: str = "none",
                 samples: int = 1, seed: int = 0) -> None:
        from alseg.nnunet.predict import BlockPredictor

        if mode not in ("none", "tta", "mc_dropout"):
            raise SpecError(f"uncertainty mode: expected none, tta or mc_dropout, got {mode!r}")
        # MC dropout draws a mask per tile of a batch: one tile at a time, so a seed gives the same
        # scores whatever batch a device would pick
        self.block = BlockPredictor(model_folder, norm, device=device, mirroring=False, batch_tiles=1 if mode == "mc_dropout" else 0)
        self.mode, self.samples, self.seed = mode, samples, seed
        network = self.block.predictor.network
        self.dropout = [m for m in network.modules() if type(m).__name__ in DROPOUT_TYPES and getattr(m, "p", 0) > 0]
        if mode == "mc_dropout" and not self.dropout:
            raise SpecError("selection.mode mc_dropout: this nnU-Net has no dropout layers, so every pass would be the "
                            "same model; use mode: tta (disagreement over mirror flips)")
        # nnU-Net puts the network in eval mode on every sliding-window call: switch the dropout
        # layers back on just before they run, while sampling
        self._sampling = False
        for m in self.dropout:
            m.register_forward_pre_hook(self._dropout_on)
        axes = getattr(self.block.predictor, "allowed_mirroring_axes", None)
        # a 2d model mirrors the axes of its sections: (y, x) of the 3D patch
        offset = 3 - len(self.block.predictor.configuration_manager.patch_size)
        self.axes = tuple(int(a) + offset for a in (axes if axes is not None else (0, 1, 2)[offset:]))

    def _dropout_on(self, module: Any, _inputs: Any) -> None:
        module.train(self._sampling)

    def probabilities(self, data: np.ndarray, patch_id: int) -> np.ndarray:
        """``(T, C, z, y, x)`` class probabilities of one patch (``T`` = 1 for mode none)."""
        import torch

        if self.mode == "tta":
            out = []
            for f in flips(self.axes, self.samples):
                x = np.flip(data, axis=f) if f else data
                logits = self.block.logits(np.ascontiguousarray(x))
                out.append(softmax(np.flip(logits, axis=tuple(a + 1 for a in f)) if f else logits))
            return np.stack(out)
        if self.mode == "mc_dropout":
            out = []
            self._sampling = True
            try:
                for t in range(self.samples):
                    torch.manual_seed(self.seed * 1_000_003 + patch_id * 1009 + t)
                    out.append(softmax(self.block.logits(data)))
            finally:
                self._sampling = False
            return np.stack(out)
        return softmax(self.block.logits(data))[None]

    def __call__(self, job: _ScoreJob) -> dict[str, Any]:
        from alseg.geometry import Box
        from alseg.io.omezarr import open_volume

        data = open_volume(job.image, level=job.level, missing_chunks=job.missing_chunks).read(Box(job.start, job.stop))
        acc = UncertaintySums().add(self.probabilities(data, job.patch_id), samples=True)
        return {"patch_id": job.patch_id, **acc.scores()}


def score_patches(model_folder: str, image_url: str, patches: list[Any], *, norm: dict[str, float], mode: str = "none",
                  samples: int = 1, seed: int = 0, level: int = 0, runner: Any = None, work_dir: str | None = None,
                  workers: int = 1, resources: Any = None, device: str = "cpu",
                  missing_chunks: str = "error") -> dict[str, np.ndarray]:
    """``{measure: (N,) scores}`` for the pool ``patches`` (ids 0..N-1, in order)."""
    from alseg.runtime import CompletionMarkers, SerialRunner, WorkItem

    runner = runner or SerialRunner(progress=False)
    items = [WorkItem(f"patch-{p.id:09d}", _ScoreJob(image_url, level, p.id, p.valid.start, p.valid.stop, missing_chunks)) for p in patches]
    results = runner.map_workers(PatchScorer, (model_folder, norm, device, mode, samples, seed), items, workers=workers,
                                 resources=resources, markers=None if work_dir is None else CompletionMarkers(work_dir),
                                 desc=f"uncertainty ({mode})", unit="patch")
    rows = [results[it.key] for it in items]
    return {k: np.asarray([r[k] for r in rows], dtype=np.float64) for k in ("entropy", "least_confidence", "bald")}
