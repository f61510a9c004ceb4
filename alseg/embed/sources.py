"""Embedding sources behind one interface: a trained MAE, the pixels baseline, nnU-Net features.

Each source is a fitted model saved as one checkpoint (``kind`` names the source) and loaded once
per worker as an :class:`Embedder`: ``embed_patch`` turns one candidate patch into a raw feature
vector; the worker standardises it with the per-dimension centre and scale fitted on the pool
(so that cosine distances compare patterns, not the offset every feature shares) and
L2-normalises it into the store. One store and one selection path serve every source.

- ``mae``: the MAE's embedding of the patch's ``slices_per_patch`` sections, averaged.
- ``pixels``: the sections averaged, area-resampled to the MAE's input side, PCA-projected
  (components fitted on a seeded sample of the pool). The baseline every other source must beat.
- ``nnunet``: the pretrained nnU-Net's encoder on the whole 3D patch; per-channel mean and
  standard deviation of one stage's features (:mod:`alseg.nnunet.features`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from alseg.embed.data import patch_inputs
from alseg.embed.train import load_bytes
from alseg.errors import SpecError
from alseg.geometry import Box
from alseg.io import store as st
from alseg.progress import progress_bar


class Embedder(Protocol):
    dim: int

    def embed_patch(self, volume: Any, valid: Box, nominal: Sequence[int], norm: Any) -> np.ndarray: ...


class MAEEmbedder:
    def __init__(self, model: Any, spec: Any, slices: int, device: str) -> None:
        self.model, self.spec, self.slices, self.device = model.to(device).eval(), spec, slices, device
        self.dim = int(model.embed_dim)

    def embed_patch(self, volume: Any, valid: Box, nominal: Sequence[int], norm: Any) -> np.ndarray:
        inputs = patch_inputs(volume, valid, nominal[1:], norm, self.slices, self.spec.img_size_px)
        with torch.no_grad():
            return self.model.embed(inputs.to(self.device)).float().mean(dim=0).cpu().numpy()


def pixel_features(volume: Any, valid: Box, nominal: Sequence[int], norm: Any, slices: int, side: int) -> np.ndarray:
    """The patch's sections averaged and area-resampled to ``side`` x ``side``, flattened."""
    return patch_inputs(volume, valid, nominal[1:], norm, slices, side).float().mean(dim=0).flatten().numpy()


class PixelsEmbedder:
    def __init__(self, mean: np.ndarray, components: np.ndarray, side: int, slices: int) -> None:
        self.mean, self.components, self.side, self.slices = mean, components, side, slices
        self.dim = int(components.shape[0])

    def embed_patch(self, volume: Any, valid: Box, nominal: Sequence[int], norm: Any) -> np.ndarray:
        x = pixel_features(volume, valid, nominal, norm, self.slices, self.side)
        return ((x - self.mean) @ self.components.T).astype(np.float32)


def fit_pixels(volume: Any, patches: Sequence[Any], norm: Any, *, side: int, slices: int, dim: int, seed: int,
               max_patches: int = 2048, progress: bool = False) -> dict[str, Any]:
    """PCA of the pixel features of a seeded sample of the pool: the ``pixels`` checkpoint."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(patches), size=min(len(patches), max_patches), replace=False))
    rows = []
    with progress_bar(total=len(idx), desc="pixels PCA", unit="patch", disable=not progress) as bar:
        for i in idx:
            p = patches[int(i)]
            rows.append(pixel_features(volume, p.valid, p.box.shape, norm, slices, side))
            bar.update(1)
    x = np.stack(rows).astype(np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    components = np.zeros((dim, x.shape[1]))
    components[: min(dim, len(vt))] = vt[:dim]
    return {"kind": "pixels", "mean": mean.astype(np.float32), "components": components.astype(np.float32),
            "side": int(side), "slices": int(slices), "fitted_on": int(len(idx))}


def fit_standardisation(embedder: Embedder, volume: Any, patches: Sequence[Any], norm: Any, *, seed: int,
                        max_patches: int = 1024, progress: bool = False) -> dict[str, np.ndarray]:
    """Per-dimension centre and scale of the raw features over a seeded sample of the pool."""
    rng = np.random.default_rng(seed + 11)
    idx = np.sort(rng.choice(len(patches), size=min(len(patches), max_patches), replace=False))
    rows = []
    with progress_bar(total=len(idx), desc="embedding centre", unit="patch", disable=not progress) as bar:
        for i in idx:
            p = patches[int(i)]
            rows.append(embedder.embed_patch(volume, p.valid, p.box.shape, norm))
            bar.update(1)
    x = np.stack(rows).astype(np.float64)
    scale = x.std(axis=0)
    scale[scale < 1e-6 * max(1.0, float(scale.max(initial=0.0)))] = 1.0
    return {"centre": x.mean(axis=0).astype(np.float32), "scale": scale.astype(np.float32)}


def load_embedder(checkpoint_url: str, device: str = "cpu", *, slices: int | None = None) -> tuple[Embedder, dict[str, Any]]:
    """The embedder a checkpoint holds and the checkpoint's standardisation (``centre``, ``scale``; may be absent)."""
    ckpt = load_bytes(checkpoint_url)
    kind = ckpt.get("kind", "mae")
    std = {k: np.asarray(ckpt[k], dtype=np.float32) for k in ("centre", "scale") if ckpt.get(k) is not None}
    if kind == "pixels":
        return PixelsEmbedder(np.asarray(ckpt["mean"]), np.asarray(ckpt["components"]), ckpt["side"], slices or ckpt["slices"]), std
    if kind == "nnunet":
        from alseg.nnunet.features import NnunetFeatures

        return NnunetFeatures(ckpt["model_folder"], ckpt["norm"], stage=ckpt["stage"], device=device), std
    from alseg.embed.mae import build_mae
    from alseg.spec import EmbeddingSpec

    spec = EmbeddingSpec.model_validate(ckpt["embedding_spec"])
    model = build_mae(spec)
    model.load_state_dict(ckpt["model"])
    if "centre" in std and len(std["centre"]) != model.embed_dim:
        raise SpecError(f"{st.redact(checkpoint_url)} standardises {len(std['centre'])} features but its model embeds "
                        f"{model.embed_dim} (a checkpoint of an earlier alseg, which pooled other stages): train the "
                        "MAE again (remove embedding.weights_path) or use the alseg that wrote it")
    return MAEEmbedder(model, spec, slices or spec.slices_per_patch, device), std


def standardise(row: np.ndarray, std: dict[str, np.ndarray]) -> np.ndarray:
    if "centre" not in std:
        return row
    return (row - std["centre"]) / std["scale"]
