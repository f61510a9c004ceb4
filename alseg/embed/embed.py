"""Embeddings of every candidate patch, computed by workers that load the embedding model once, into the store.

A work item is one chunk of store rows (``rows_per_chunk`` patches): its worker embeds each patch
on its own (one batch per patch: the batch shape never depends on how patches are spread over
workers, so a row is bit-identical however the work was split), standardises the row with the
model's fitted centre and scale, L2-normalises, and writes the chunk whole. Completion records make a rerun compute
only missing chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from alseg.embed.sources import load_embedder, standardise
from alseg.embed.store import EmbeddingStore
from alseg.geometry import Box
from alseg.select.kcenter import normalize_rows


@dataclass(frozen=True)
class _EmbedJob:
    image: str
    level: int
    store: str
    start: int
    boxes: list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
    """Per patch: valid start, valid stop, nominal patch shape."""
    norm: dict[str, float]
    missing_chunks: str = "error"


class EmbedWorker:
    """One embedding model per worker (one per GPU), loaded once, fed chunks of store rows."""

    def __init__(self, checkpoint_url: str, device: str = "cpu", slices: int | None = None) -> None:
        if device.startswith("cuda"):
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.device = device
        self.embedder, self.std = load_embedder(checkpoint_url, device, slices=slices)

    def __call__(self, job: _EmbedJob) -> dict[str, Any]:
        from alseg.io.omezarr import open_volume
        from alseg.nnunet.dataset import IntensityNorm

        volume = open_volume(job.image, level=job.level, missing_chunks=job.missing_chunks)
        norm = IntensityNorm(**job.norm)
        rows = np.empty((len(job.boxes), self.embedder.dim), dtype=np.float32)
        for k, (start, stop, shape) in enumerate(job.boxes):
            rows[k] = standardise(self.embedder.embed_patch(volume, Box(tuple(start), tuple(stop)), shape, norm), self.std)
        EmbeddingStore.open(job.store, mode="r+").write_rows(job.start, normalize_rows(rows))
        return {"rows": len(rows)}


def embed_patches(
    store: EmbeddingStore,
    image_url: str,
    patches: list[Any],
    *,
    checkpoint_url: str,
    norm: dict[str, float],
    slices: int,
    level: int = 0,
    runner: Any,
    work_dir: str,
    workers: int = 1,
    resources: Any = None,
    device: str = "cpu",
    missing_chunks: str = "error",
) -> None:
    """Fill ``store`` (created for ``patches``) with their embeddings, chunk by chunk."""
    from alseg.runtime import CompletionMarkers, WorkItem

    items = []
    for a, b in store.chunk_ranges():
        boxes = [(p.valid.start, p.valid.stop, p.box.shape) for p in patches[a:b]]
        items.append(WorkItem(f"rows-{a:09d}", _EmbedJob(image_url, level, store.url, a, boxes, norm, missing_chunks)))
    runner.map_workers(EmbedWorker, (checkpoint_url, device, slices), items, workers=workers, resources=resources,
                       markers=CompletionMarkers(work_dir), desc="embeddings", weight=lambda it: len(it.payload.boxes),
                       unit="patch")
