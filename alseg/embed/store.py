"""The embedding store: one L2-normalised row per candidate patch, in a chunked zarr group.

Layout (a zarr v3 group, local or on object storage)::

    embeddings   float32 (N, D), chunks (rows_per_chunk, D): row i is patch i of the pool
    patch_boxes  int64   (N, 6): the patch's valid box (z0, y0, x0, z1, y1, x1) in the volume
    attrs        {"alseg_embeddings": {format, signature, signature_sha256, complete, ...}}

The signature names everything the rows depend on (input data, model checkpoint, parameters,
alseg version); opening with another signature raises :class:`StaleEmbeddingsError`, so a cache
computed from other inputs is never read as if it were current. Rows are written one whole chunk
per work item (no two writers share a chunk); ``complete`` is set only after every chunk landed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from alseg.errors import AlsegError
from alseg.io import store as st

FORMAT = 1
ATTR = "alseg_embeddings"


class StaleEmbeddingsError(AlsegError):
    """The store was computed from other inputs than the ones asked for."""


def signature_sha256(signature: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(signature, sort_keys=True, default=str).encode()).hexdigest()


class EmbeddingStore:
    def __init__(self, url: str, group: Any) -> None:
        self.url, self._group = url, group

    # -- creation and opening ------------------------------------------------------------- #
    @classmethod
    def create(cls, url: str, *, boxes: np.ndarray, dim: int, rows_per_chunk: int, signature: dict[str, Any]) -> "EmbeddingStore":
        """A new, empty store (an existing one at ``url`` is replaced: the caller decided it is stale)."""
        import zarr

        boxes = np.asarray(boxes, dtype=np.int64)
        if boxes.ndim != 2 or boxes.shape[1] != 6:
            raise ValueError(f"patch boxes must be (N, 6), got {boxes.shape}")
        st.remove(url)
        group = zarr.open_group(store=st.zarr_store(url, read_only=False), mode="w")
        n = len(boxes)
        group.create_array("embeddings", shape=(n, dim), chunks=(max(1, min(rows_per_chunk, n)), dim), dtype="float32",
                           fill_value=np.nan)
        pb = group.create_array("patch_boxes", shape=boxes.shape, chunks=boxes.shape if n else (1, 6), dtype="int64")
        if n:
            pb[:] = boxes
        group.attrs[ATTR] = {"format": FORMAT, "signature": signature, "signature_sha256": signature_sha256(signature),
                             "complete": False, "rows": n, "dim": dim}
        return cls(url, group)

    @classmethod
    def open(cls, url: str, *, signature: dict[str, Any] | None = None, mode: str = "r") -> "EmbeddingStore":
        """Open a store; with ``signature``, refuse one computed from anything else."""
        import zarr

        from alseg.errors import StoreError

        if not st.exists(st.join(url, "zarr.json")):
            raise StoreError(f"no embedding store at {st.redact(url)}")
        group = zarr.open_group(store=st.zarr_store(url, read_only=mode == "r"), mode=mode)
        meta = dict(group.attrs.get(ATTR, {}))
        if meta.get("format") != FORMAT:
            raise StaleEmbeddingsError(f"{st.redact(url)} is not an alseg embedding store of format {FORMAT}")
        if signature is not None and meta.get("signature_sha256") != signature_sha256(signature):
            changed = sorted(k for k in set(signature) | set(meta.get("signature", {}))
                             if json.dumps(signature.get(k), sort_keys=True, default=str)
                             != json.dumps(meta.get("signature", {}).get(k), sort_keys=True, default=str))
            raise StaleEmbeddingsError(f"embedding store {st.redact(url)} was computed from other inputs "
                                       f"(changed: {', '.join(changed) or 'unknown'}); recompute it")
        return cls(url, group)

    # -- access --------------------------------------------------------------------------- #
    @property
    def meta(self) -> dict[str, Any]:
        return dict(self._group.attrs[ATTR])

    @property
    def complete(self) -> bool:
        return bool(self.meta["complete"])

    @property
    def embeddings(self) -> Any:
        """The (N, D) zarr array (read rows lazily: ``store.embeddings[a:b]``)."""
        return self._group["embeddings"]

    @property
    def boxes(self) -> np.ndarray:
        return np.asarray(self._group["patch_boxes"][:])

    @property
    def rows_per_chunk(self) -> int:
        return int(self.embeddings.chunks[0])

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def chunk_ranges(self) -> list[tuple[int, int]]:
        n, r = len(self), self.rows_per_chunk
        return [(a, min(n, a + r)) for a in range(0, n, r)]

    def write_rows(self, start: int, rows: np.ndarray) -> None:
        if start % self.rows_per_chunk:
            raise ValueError(f"rows must start on a chunk boundary ({self.rows_per_chunk}), got {start}")
        self.embeddings[start : start + len(rows)] = np.asarray(rows, dtype=np.float32)

    def mark_complete(self, **extra: Any) -> None:
        meta = self.meta
        meta.update(complete=True, **extra)
        self._group.attrs[ATTR] = meta

    def load(self, *, max_memory_bytes: int = 8 * 2**30) -> Any:
        """All rows as a numpy array when they fit ``max_memory_bytes``, else the lazy zarr array."""
        arr = self.embeddings
        if arr.shape[0] * arr.shape[1] * 4 > max_memory_bytes:
            return arr
        out = np.empty(arr.shape, dtype=np.float32)
        for a, b in self.chunk_ranges():
            out[a:b] = arr[a:b]
        return out
