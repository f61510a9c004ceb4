"""Chunks that are not there, and chunks that do not decode: errors that name them.

zarr reads an absent chunk as the array's fill value, which is right for label images (zarr's
writers leave out chunks that hold only background) and silently wrong for an image: a deleted
or never-uploaded chunk of an EM volume would read as black and give empty pseudo-labels and
predictions that look complete. :class:`StrictChunkStore` wraps the store of a volume opened for
reading and raises :class:`MissingChunkError` for an absent chunk key instead, at no extra
request (it looks at the answer of the read zarr makes anyway). :func:`failing_chunk` finds the
key of a chunk that does not decode, by reading the chunks of a failed region one at a time
(only after a failure).
"""

from __future__ import annotations

import itertools
from typing import Any

from zarr.storage import WrapperStore

from alseg.errors import DataError

METADATA_KEYS = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})


class MissingChunkError(DataError, KeyError):
    """A chunk of a volume read strictly is absent from its store."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"chunk {self.key!r} is missing"


class StrictChunkStore(WrapperStore):
    """A read-only store whose absent chunks are errors once :attr:`strict` is set (metadata never is)."""

    strict = False

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        found = await self._store.get(key, prototype, byte_range)
        if found is None and self.strict and key.rsplit("/", 1)[-1] not in METADATA_KEYS:
            raise MissingChunkError(key)
        return found


def chunk_key(array: Any, coords: tuple[int, ...]) -> str:
    """The store key of the chunk at grid position ``coords`` of a zarr array (v2 or v3 encoding)."""
    return f"{array.path}/{array.metadata.encode_chunk_key(tuple(int(c) for c in coords))}".lstrip("/")


def failing_chunk(array: Any, selection: tuple[Any, ...]) -> tuple[str, BaseException] | None:
    """``(key, error)`` of the first chunk under ``selection`` (slices and integers) that cannot be read."""
    ranges = []
    for sel, size, chunk in zip(selection, array.shape, array.chunks):
        if isinstance(sel, slice):
            start, stop, _ = sel.indices(size)
            ranges.append(range(start // chunk, max(start // chunk, (stop - 1) // chunk) + 1))
        else:
            ranges.append(range(int(sel) // chunk, int(sel) // chunk + 1))
    for coords in itertools.product(*ranges):
        try:
            array.get_block_selection(coords)
        except Exception as err:  # noqa: BLE001 - any failure of this one chunk is what we look for
            return chunk_key(array, coords), err
    return None
