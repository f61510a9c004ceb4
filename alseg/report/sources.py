"""Reading what the report shows from the run's stores: pictures, held-out slices, measurements.

Everything is read through :mod:`alseg.io` (any fsspec URL). Reads are bounded by what is drawn,
not by the volume: one z section of the held-out region per overlay, shrunk to at most
``max_px`` pixels a side, and one float per instance of the measurement table.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

import numpy as np

from alseg.errors import DataError
from alseg.geometry import Box
from alseg.io import store as st
from alseg.io.omezarr import Volume, open_volume
from alseg.report.model import OverlaySource

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOLUME_COLUMN = "volume_um3"
BORDER_COLUMN = "touches_border"


def read_png(url: str) -> bytes:
    """The bytes of the PNG at ``url``; a missing or non-PNG file is a :class:`DataError`."""
    try:
        fs, path = st.filesystem(url)
        with fs.open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError as err:
        raise DataError(f"picture {st.redact(url)} does not exist") from err
    except OSError as err:
        raise DataError(f"cannot read picture {st.redact(url)}: {st._short(err)}") from err
    if not data.startswith(PNG_SIGNATURE):
        raise DataError(f"picture {st.redact(url)} is not a PNG file")
    return data


@dataclass(frozen=True)
class Section:
    """One z section of the held-out region: grey values and label ids on the same (shrunk) grid."""

    z: int  # level-0 z of the section
    image: np.ndarray  # float32 in [0, 1]
    prediction: np.ndarray  # label ids
    ground_truth: np.ndarray | None


def _level_region(region: Box, full: Volume, vol: Volume) -> tuple[Box, tuple[int, int, int]]:
    """``region`` (level-0 voxels) on the grid of ``vol`` (a coarser level), and the level's factors."""
    factors = tuple(max(1, round(b / a)) for a, b in zip(full.voxel_size_nm, vol.voxel_size_nm))
    start = tuple(s // f for s, f in zip(region.start, factors))
    stop = tuple(-(-s // f) for s, f in zip(region.stop, factors))
    box = Box(start, stop).intersect(vol.bounds)
    if box.empty:
        raise DataError(f"overlay region {region} lies outside {st.redact(full.url)} (level-0 shape {full.shape})")
    return box, factors  # type: ignore[return-value]


def _step(shape: tuple[int, ...], max_px: int) -> tuple[int, int]:
    step = max(1, math.ceil(max(shape) / max_px))
    return min(step, shape[0]), min(step, shape[1])


def shrink_image(section: np.ndarray, max_px: int) -> np.ndarray:
    """Block means over ``step x step`` pixels so that no side exceeds ``max_px``."""
    sy, sx = _step(section.shape, max_px)
    h, w = section.shape[0] // sy, section.shape[1] // sx
    crop = np.asarray(section[: h * sy, : w * sx], dtype=np.float32)
    return crop.reshape(h, sy, w, sx).mean(axis=(1, 3))


def shrink_labels(section: np.ndarray, max_px: int) -> np.ndarray:
    """The centre pixel of each block of :func:`shrink_image` (ids stay ids)."""
    sy, sx = _step(section.shape, max_px)
    h, w = section.shape[0] // sy, section.shape[1] // sx
    return np.asarray(section[sy // 2 :: sy, sx // 2 :: sx][:h, :w])


def _normalise(image: np.ndarray) -> np.ndarray:
    """Grey values stretched between their 1st and 99th percentiles."""
    if image.size == 0:
        return image.astype(np.float32)
    lo, hi = np.percentile(image, (1, 99))
    if hi <= lo:
        hi = lo + 1
    return np.clip((image - lo) / (hi - lo), 0, 1).astype(np.float32)


def read_sections(src: OverlaySource, *, max_px: int = 512) -> list[Section]:
    """``src.n_slices`` z sections evenly spaced through the held-out region, shrunk to ``max_px``."""
    full = open_volume(src.image_url)
    image = full if src.level == 0 else open_volume(src.image_url, level=src.level)
    if not full.bounds.contains(src.region):
        raise DataError(f"overlay region {src.region} lies outside {st.redact(src.image_url)} (shape {full.shape})")
    box, factors = _level_region(src.region, full, image)
    others = {"prediction": open_volume(src.prediction_url, level=src.level)}
    if src.ground_truth_url is not None:
        others["ground truth"] = open_volume(src.ground_truth_url, level=src.level)
    for what, vol in others.items():
        if vol.shape != image.shape:
            raise DataError(f"{what} {st.redact(vol.url)} has shape {vol.shape} at level {src.level}, "
                            f"the image {image.shape}: overlays need one grid")
        if vol.dtype.kind not in "ui":
            raise DataError(f"{what} {st.redact(vol.url)}: label ids must be integers, got dtype {vol.dtype}")
    depth = box.shape[0]
    n = min(src.n_slices, depth)
    zs = sorted({box.start[0] + int((k + 0.5) * depth / n) for k in range(n)})
    sections = []
    for z in zs:
        plane = Box((z, *box.start[1:]), (z + 1, *box.stop[1:]))
        labels = {what: shrink_labels(vol.read(plane)[0], max_px) for what, vol in others.items()}
        sections.append(Section(z=z * factors[0], image=_normalise(shrink_image(image.read(plane)[0], max_px)),
                                prediction=labels["prediction"], ground_truth=labels.get("ground truth")))
    return sections


@dataclass(frozen=True)
class Measurements:
    """What the report says about the per-instance table: instance volumes, border contacts."""

    volumes_um3: np.ndarray
    touching_border: int | None  # None when the table has no such column

    @property
    def count(self) -> int:
        return int(self.volumes_um3.size)


_TRUE = {"1", "true", "yes", "t", "y"}


def read_measurements(url: str) -> Measurements:
    """The ``volume_um3`` column (and ``touches_border``, if present) of the CSV table at ``url``."""
    try:
        fs, path = st.filesystem(url)
        with fs.open(path, "rb") as fh:
            text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            reader = csv.DictReader(text)
            columns = reader.fieldnames or []
            if VOLUME_COLUMN not in columns:
                raise DataError(f"measurement table {st.redact(url)} has no {VOLUME_COLUMN!r} column "
                                f"(columns: {', '.join(columns) or 'none'})")
            border = BORDER_COLUMN in columns
            volumes, touching = [], 0
            for line, row in enumerate(reader, start=2):
                try:
                    volumes.append(float(row[VOLUME_COLUMN]))
                except (TypeError, ValueError) as err:
                    raise DataError(f"measurement table {st.redact(url)}, line {line}: {VOLUME_COLUMN} "
                                    f"{row[VOLUME_COLUMN]!r} is not a number") from err
                if border and str(row[BORDER_COLUMN]).strip().lower() in _TRUE:
                    touching += 1
    except FileNotFoundError as err:
        raise DataError(f"measurement table {st.redact(url)} does not exist") from err
    except DataError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read measurement table {st.redact(url)}: {st._short(err)}") from err
    return Measurements(np.asarray(volumes, dtype=np.float64), touching if border else None)
