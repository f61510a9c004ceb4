"""Per-instance measurements of a label volume, block by block, written as Parquet and CSV.

One row per object id present (background 0 excluded), sorted by id:

=================  =================================================================================
``id``             the label id (uint64)
``voxels``         voxel count
``volume_um3``     ``voxels x`` the voxel volume, in cubic micrometres
``surface_um2``    the exposed voxel faces, each weighted by its physical area, in square
                   micrometres: a face between a voxel of the object and a 6-neighbour that is
                   *not* the object (background, another id, or outside the volume) counts once;
                   faces normal to z weigh ``vy * vx``, to y ``vz * vx``, to x ``vz * vy``. This
                   staircase area is exact blockwise and reproducible; it over-estimates the
                   area of a smooth surface (by up to 3/2 for a sphere), so compare objects
                   measured at one voxel size, not across voxel sizes
``bbox_start_z``   the bounding box in voxels, half-open ``[start, stop)`` per axis ``z, y, x``
... ``bbox_stop_x``
``centroid_z_nm``  the mean voxel index along each axis times the voxel size, in nanometres
... (y, x)         (voxel ``i`` sits at ``i x voxel size``: NGFF's scale; translations are ignored)
``touches_border`` whether the object has a voxel on a face of the volume (it may be cut there)
=================  =================================================================================

**Blockwise.** Every block reads its write region grown by a 1-voxel halo (0 beyond the volume
edge) and returns, per id in its write region, its voxel count, coordinate sums, bounding box and
exposed faces per axis, all integers. The driver adds counts, sums and faces and takes the
minimum / maximum of the boxes over blocks, so an object that crosses blocks is counted once and
every number equals the whole-volume computation exactly (the halo supplies the neighbour of each
face on a block border). The driver holds per-object rows, never voxels. Completion records under
``work_dir`` make an interrupted run resume (one ``work_dir`` per label volume).
"""

from __future__ import annotations

import io
import json
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from alseg.blockwise import read_padded, run_blocks
from alseg.errors import DataError, SpecError
from alseg.evaluate.metrics import check_label_volume
from alseg.geometry import Block, BlockGrid
from alseg.io import store as st
from alseg.io.omezarr import open_volume
from alseg.runtime import Runner

AXES = ("z", "y", "x")
COLUMNS = (
    "id", "voxels", "volume_um3", "surface_um2",
    *(f"bbox_start_{a}" for a in AXES), *(f"bbox_stop_{a}" for a in AXES),
    *(f"centroid_{a}_nm" for a in AXES),
    "touches_border",
)
PARQUET_NAME = "instances.parquet"
CSV_NAME = "instances.csv"


# --------------------------------------------------------------------------------------------- #
# per block (module level: runs in workers)
# --------------------------------------------------------------------------------------------- #
def block_sums(padded: np.ndarray, origin: Sequence[int]) -> dict[str, list]:
    """Integer partial sums of the objects in a block's write region.

    ``padded`` is the write region grown by one voxel on every side (the neighbours; 0 beyond the
    volume), ``origin`` the write region's first voxel in the volume. Returns JSON-ready columns:
    ``ids``, ``voxels``, ``coord_sum`` / ``start`` / ``stop`` / ``faces`` (one list per axis).
    """
    core = padded[1:-1, 1:-1, 1:-1]
    fg = core != 0
    if not fg.any():
        return {"ids": [], "voxels": [], "coord_sum": [[], [], []], "start": [[], [], []], "stop": [[], [], []],
                "faces": [[], [], []]}
    ids, inverse = np.unique(core[fg], return_inverse=True)
    n = len(ids)
    inverse = inverse.ravel()
    compact = np.zeros(core.shape, dtype=np.int32)  # 1..n in place of the ids (a block has < 2**31 voxels)
    compact[fg] = inverse + 1
    voxels = np.bincount(inverse, minlength=n).astype(np.int64)
    coord_sum, faces = [], []
    for axis in range(3):
        index = np.arange(core.shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)])
        # sums of local indices are exact in float64 (< 2**53 for any block below 2**31 voxels)
        local = np.bincount(inverse, weights=np.broadcast_to(index, core.shape)[fg], minlength=n).astype(np.int64)
        coord_sum.append(local + voxels * int(origin[axis]))
        exposed = np.zeros(n + 1, dtype=np.int64)
        for side in (slice(0, -2), slice(2, None)):
            sel = [slice(1, -1)] * 3
            sel[axis] = side
            differs = fg & (core != padded[tuple(sel)])
            exposed += np.bincount(compact[differs], minlength=n + 1)
        faces.append(exposed[1:])
    boxes = ndimage.find_objects(compact, max_label=n)
    start = [[int(b[axis].start) + int(origin[axis]) for b in boxes] for axis in range(3)]
    stop = [[int(b[axis].stop) + int(origin[axis]) for b in boxes] for axis in range(3)]
    return {"ids": [int(i) for i in ids], "voxels": voxels.tolist(), "coord_sum": [c.tolist() for c in coord_sum],
            "start": start, "stop": stop, "faces": [f.tolist() for f in faces]}


@dataclass(frozen=True)
class _MeasureJob:
    labels: str
    block: Block


def _measure_block(job: _MeasureJob) -> dict[str, Any]:
    padded = read_padded(job.labels, job.block, pad_mode="constant")  # 0 beyond the volume: exposed faces
    if padded.dtype.kind == "i" and padded.size and padded.min() < 0:
        return {"negative": int(padded.min())}  # reported, not raised: a data error is not worth retries
    return block_sums(padded, job.block.write.start)


# --------------------------------------------------------------------------------------------- #
# merging and the table
# --------------------------------------------------------------------------------------------- #
def merge_sums(parts: Sequence[dict[str, list]]) -> dict[str, np.ndarray]:
    """Add the partial sums of blocks into one row per id (sorted): ``ids, voxels, coord_sum, start, stop, faces``."""
    ids = np.concatenate([np.asarray(p["ids"], dtype=np.uint64) for p in parts]) if parts else np.zeros(0, np.uint64)
    uniq, inverse = np.unique(ids, return_inverse=True)
    n = len(uniq)

    def column(key: str, axis: int | None = None) -> np.ndarray:
        pieces = [np.asarray(p[key] if axis is None else p[key][axis], dtype=np.int64) for p in parts]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int64)

    def added(values: np.ndarray) -> np.ndarray:
        out = np.zeros(n, dtype=np.int64)
        np.add.at(out, inverse, values)
        return out

    start = np.full((3, n), np.iinfo(np.int64).max, dtype=np.int64)
    stop = np.full((3, n), np.iinfo(np.int64).min, dtype=np.int64)
    for axis in range(3):
        np.minimum.at(start[axis], inverse, column("start", axis))
        np.maximum.at(stop[axis], inverse, column("stop", axis))
    return {
        "ids": uniq,
        "voxels": added(column("voxels")),
        "coord_sum": np.stack([added(column("coord_sum", a)) for a in range(3)]),
        "start": start,
        "stop": stop,
        "faces": np.stack([added(column("faces", a)) for a in range(3)]),
    }


def instance_table(sums: dict[str, np.ndarray], shape: Sequence[int], voxel_size_nm: Sequence[float]) -> dict[str, np.ndarray]:
    """The table's columns (:data:`COLUMNS`) from merged sums of a volume of ``shape`` voxels."""
    vz, vy, vx = (float(v) for v in voxel_size_nm)
    voxels = sums["voxels"]
    face_area_nm2 = np.array([vy * vx, vz * vx, vz * vy])
    cols: dict[str, np.ndarray] = {
        "id": sums["ids"].astype(np.uint64),
        "voxels": voxels,
        "volume_um3": voxels * (vz * vy * vx / 1e9),
        "surface_um2": (sums["faces"].T.astype(np.float64) @ face_area_nm2) / 1e6,
    }
    for axis, a in enumerate(AXES):
        cols[f"bbox_start_{a}"] = sums["start"][axis]
    for axis, a in enumerate(AXES):
        cols[f"bbox_stop_{a}"] = sums["stop"][axis]
    for axis, (a, v) in enumerate(zip(AXES, (vz, vy, vx))):
        cols[f"centroid_{a}_nm"] = sums["coord_sum"][axis] / np.maximum(voxels, 1) * v
    low = (sums["start"] == 0).any(axis=0)
    high = (sums["stop"] == np.asarray(shape, dtype=np.int64)[:, None]).any(axis=0)
    cols["touches_border"] = low | high
    return {c: np.asarray(cols[c]) for c in COLUMNS}


def measure_labels(labels: np.ndarray, voxel_size_nm: Sequence[float]) -> dict[str, np.ndarray]:
    """The table of an in-memory label array (small volumes, tests): the same code as one block."""
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.dtype.kind not in "ui":
        raise DataError(f"expected a 3-D integer label array zyx, got {labels.ndim}-D {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise DataError(f"label ids must not be negative, found {int(labels.min())}")
    vox = _check_voxel_size(voxel_size_nm)
    sums = merge_sums([block_sums(np.pad(labels, 1), (0, 0, 0))])
    return instance_table(sums, labels.shape, vox)


# --------------------------------------------------------------------------------------------- #
# the driver
# --------------------------------------------------------------------------------------------- #
def measure_instances(
    labels_url: str | os.PathLike[str],
    out_url: str | os.PathLike[str],
    *,
    block_shape: tuple[int, int, int],
    runner: Runner | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    voxel_size_nm: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Measure every object of the label volume ``labels_url`` into ``out_url``/instances.{parquet,csv}.

    ``voxel_size_nm`` (``z, y, x``) defaults to the volume's NGFF metadata. ``out_url`` is a folder
    (any store URL), typically beside the labels, never inside them (inputs are read-only); earlier
    tables there are replaced. Returns ``{"instances", "parquet", "csv", "voxel_size_nm", "shape",
    "blocks"}``. Label dtypes are checked before any block is read, negative ids during the pass.
    """
    labels_url, out_url = os.fspath(labels_url), os.fspath(out_url)
    vol = open_volume(labels_url)
    check_label_volume(vol, "labels")
    vox = _check_voxel_size(vol.voxel_size_nm if voxel_size_nm is None else voxel_size_nm)
    _check_outside(out_url, labels_url)
    grid = BlockGrid(vol.shape, block_shape, 1)
    results = run_blocks(
        _measure_block, grid, payload=lambda b: _MeasureJob(labels_url, b),
        runner=runner, work_dir=work_dir, name="measure", desc="measure blocks",
    )
    negative = sorted((k, r["negative"]) for k, r in results.items() if "negative" in r)
    if negative:
        key, low = negative[0]
        raise DataError(f"labels {st.redact(labels_url)}: label ids must not be negative, found {low} (block {key}"
                        + (f" and {len(negative) - 1} more block(s)" if len(negative) > 1 else "") + ")")
    table = instance_table(merge_sums(list(results.values())), vol.shape, vox)
    meta = {"labels": st.redact(labels_url), "shape": list(vol.shape), "voxel_size_nm": list(vox),
            "surface": "exposed voxel faces x face area", "bbox": "voxels, half-open [start, stop)"}
    parquet, csv = write_table(table, out_url, metadata=meta)
    return {"instances": int(len(table["id"])), "parquet": parquet, "csv": csv, "voxel_size_nm": vox,
            "shape": vol.shape, "blocks": len(grid)}


def write_table(table: dict[str, np.ndarray], out_url: str, *, metadata: dict[str, Any] | None = None) -> tuple[str, str]:
    """Write the columns as ``instances.parquet`` (with ``metadata`` under the schema key ``alseg``) and
    ``instances.csv`` into the folder ``out_url``; returns both URLs."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    arrow = pa.table({name: pa.array(values) for name, values in table.items()})
    if metadata is not None:
        arrow = arrow.replace_schema_metadata({"alseg": json.dumps(metadata)})
    urls = st.join(out_url, PARQUET_NAME), st.join(out_url, CSV_NAME)
    for url, write in ((urls[0], pq.write_table), (urls[1], pcsv.write_csv)):
        buf = io.BytesIO()
        write(arrow, buf)
        _put(url, buf.getvalue())
    return urls


def _put(url: str, data: bytes) -> None:
    """Store ``data`` whole: local files through a temporary name and a rename, objects in one put."""
    fs, path = st.filesystem(url)
    if st.is_local(url):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def _check_voxel_size(values: Sequence[float]) -> tuple[float, float, float]:
    try:
        vox = tuple(float(v) for v in values)
    except (TypeError, ValueError) as err:
        raise SpecError(f"voxel_size_nm: expected three numbers z, y, x, got {values!r}") from err
    if len(vox) != 3 or not all(math.isfinite(v) and v > 0 for v in vox):
        raise SpecError(f"voxel_size_nm: expected three positive sizes z, y, x in nanometres, got {vox}")
    return vox  # type: ignore[return-value]


def _check_outside(out_url: str, labels_url: str) -> None:
    def norm(url: str) -> str:
        return str(st.local_path(url).absolute()) if st.is_local(url) else url.rstrip("/")

    out, labels = norm(out_url), norm(labels_url)
    if out == labels or out.startswith(labels + "/"):
        raise SpecError(f"measurement output {st.redact(out_url)} lies inside the label volume {st.redact(labels_url)}: "
                        "inputs are read-only; write the table beside the labels")
