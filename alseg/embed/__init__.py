"""Embeddings of candidate patches (a self-supervised MAE, the pixels baseline, nnU-Net features) and the embedding store.

The names below are loaded on first use: their modules import torch, and code that only needs the
package's torch-free parts (``alseg.embed.sizes``, the stage graph, ``alseg plan``) must not pay
for it.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "EmbedWorker": "alseg.embed.embed", "embed_patches": "alseg.embed.embed",
    "load_embedder": "alseg.embed.sources",
    "MaskedAutoencoder": "alseg.embed.mae", "build_mae": "alseg.embed.mae", "make_encoder": "alseg.embed.mae",
    "EmbeddingStore": "alseg.embed.store", "StaleEmbeddingsError": "alseg.embed.store",
    "train_mae": "alseg.embed.train",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'alseg.embed' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
