"""Where the annotation artefacts live, and the small pieces export, import and the store share.

Run directory::

    <run dir>/annotations.zarr                  every annotated patch's labels at its box (NGFF labels)
    <run dir>/annotation/imports.json           what was stored: per round, patch ids, boxes, source, sha256, time
    <run dir>/annotation/round-NN/              the package a person annotates (see alseg.annotate.export)
        manifest.json                           provenance: patch ids, boxes, voxel size, round, job digest
        README.txt                              the commands to type
        images/patch-<id>.tif                   raw crop (z, y, x)          micro-SAM's images folder
        initial/patch-<id>.tif                  starting labels (uint32)    micro-SAM's initial-segmentation folder
        edited/patch-<id>.tif                   the edited labels           micro-SAM's output folder
        zarr/patch-<id>.ome.zarr                image + labels/initial      napari (napari-ome-zarr)

File names are the same in ``images/`` and ``initial/``: micro-SAM's image-series annotator pairs
the two folders by sorting each folder's glob, and saves each image's labels in its output folder
under the image's own name with a ``.tif`` suffix (``micro_sam/sam_annotator/image_series_annotator.py``,
``_get_save_path``), so ``edited/patch-<id>.tif`` is exactly what it writes.

Patch labels are hashed as C-ordered little-endian uint32 (:func:`labels_sha256`), the dtype of
the annotation store: a record's ``sha256`` can be checked against the store and against the file
that was imported, independently of how that file stored them.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence

import numpy as np

from alseg.errors import DataError
from alseg.geometry import Box
from alseg.io import store as st
from alseg.io.omezarr import Volume, open_volume
from alseg.spec import JobSpec

FORMAT = "alseg-annotation-round"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
README = "README.txt"
IMAGES = "images"
INITIAL = "initial"
EDITED = "edited"
ZARR = "zarr"
EMBEDDINGS = "embeddings"  # micro-SAM's embedding cache (made by micro-SAM when asked to, derived data)
INITIAL_LABELS = "initial"  # label image of a zarr package holding the starting labels
EDITED_LABELS = "annotation"  # label image of a zarr package holding edited labels (when no TIFF is given)
LABEL_DTYPE = np.dtype("uint32")
_STEM = re.compile(r"^patch-(\d+)$")


def annotation_dir(spec: JobSpec) -> str:
    return st.join(spec.run.dir, "annotation")


def round_dir(spec: JobSpec, round_index: int) -> str:
    """``<run dir>/annotation/round-NN``: the package of one round."""
    return st.join(annotation_dir(spec), f"round-{round_index:02d}")


def imports_url(spec: JobSpec) -> str:
    return st.join(annotation_dir(spec), "imports.json")


def selection_url(spec: JobSpec, round_index: int) -> str:
    """The selection record of a round (written by the selection stage)."""
    return st.join(spec.run.dir, "selection", f"round-{round_index:02d}.json")


def run_record_url(spec: JobSpec) -> str:
    return st.join(spec.run.dir, "alseg-run.json")


def patch_stem(patch_id: int) -> str:
    return f"patch-{int(patch_id):06d}"


def patch_id_of(name: str) -> int | None:
    """The patch id a file or folder name (``patch-000012.tif``, ``patch-000012.ome.zarr``) carries, or None."""
    stem = name.split(".", 1)[0]
    m = _STEM.match(stem)
    return int(m.group(1)) if m else None


def box_to_list(box: Box) -> list[int]:
    """``[z0, y0, x0, z1, y1, x1]``: the selection record's form of a box."""
    return [*box.start, *box.stop]


def box_from_list(values: Sequence[int], where: str) -> Box:
    vals = list(values) if isinstance(values, (list, tuple)) else []
    if len(vals) != 6 or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise DataError(f"{where}: expected a box [z0, y0, x0, z1, y1, x1] of integers, got {values!r}")
    try:
        return Box(tuple(vals[:3]), tuple(vals[3:]))
    except ValueError as err:
        raise DataError(f"{where}: {err}") from err


def ids_text(ids: Sequence[int], limit: int = 12) -> str:
    """Patch ids for a message: the first ``limit``, then how many in all."""
    shown = ", ".join(str(i) for i in list(ids)[:limit])
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > limit else "")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_bytes(url: str, data: bytes) -> None:
    fs, path = st.filesystem(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, data)


def listdir(url: str) -> list[str]:
    """Names in a folder (empty if it does not exist)."""
    fs, path = st.filesystem(url)
    if not fs.exists(path):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))


def labels_sha256(labels: np.ndarray) -> str:
    """sha256 of labels as C-ordered little-endian uint32 (the store's dtype)."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<u4").tobytes()).hexdigest()


def check_labels(data: np.ndarray, box: Box, where: str) -> tuple[np.ndarray | None, list[str]]:
    """``(labels as uint32, [])`` when ``data`` fits as the labels of ``box``, else ``(None, problems)``.

    Labels must have the box's shape (a 2D array is accepted for a box one slice deep), an integer
    dtype (not bool, not float), no negative ids and no id beyond uint32.
    """
    arr = np.asarray(data)
    if arr.ndim == 2 and box.shape[0] == 1:
        arr = arr[None]
    problems = []
    if tuple(arr.shape) != tuple(box.shape):
        problems.append(f"{where}: shape {tuple(arr.shape)}, expected the patch's {tuple(box.shape)} (box {box})")
    if arr.dtype.kind not in "iu":
        problems.append(f"{where}: dtype {arr.dtype}, expected integer label ids")
    elif arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0:
            problems.append(f"{where}: negative label ids (smallest {lo}); ids are >= 0, 0 is background")
        if hi > np.iinfo(LABEL_DTYPE).max:
            problems.append(f"{where}: label id {hi} does not fit the store's {LABEL_DTYPE}")
    if problems:
        return None, problems
    return arr.astype(LABEL_DTYPE, copy=False), []


def input_volume(spec: JobSpec) -> Volume:
    """The spec's input image (lazily), read as ``input.missing_chunks`` says."""
    return open_volume(spec.input.url, level=spec.input.level, missing_chunks=spec.input.missing_chunks)


def label_volume(url: str, like: Volume, what: str, *, level: int = 0) -> Volume:
    """Level ``level`` of a label image, on the grid of ``like``; :class:`DataError` when the shapes differ."""
    vol = open_volume(url, level=level)
    if vol.shape != like.shape:
        raise DataError(f"{what} {st.redact(url)}: shape {vol.shape}, expected the input's {like.shape}")
    if vol.dtype.kind not in "iu":
        raise DataError(f"{what} {st.redact(url)}: dtype {vol.dtype}, expected integer labels")
    return vol
