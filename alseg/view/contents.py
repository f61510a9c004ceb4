"""What a run directory holds for a viewer: the volumes, the boxes and the measurement table.

:func:`run_contents` reads the job that owns the run directory (its ``alseg-run.json``) and
finds, without loading any voxel beyond the coarsest pyramid level of the image (for its
contrast), what exists: the input image, the pseudo-labels, a round's (or the final) predicted
instances, the ground truth, the held-out region, every round's core-set patches, and the final
instances' measurements. What a finished run would show and this one lacks is listed in
:attr:`RunContents.missing`, so a viewer opens what exists and says what is not there yet.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

import numpy as np

from alseg.annotate.cli import spec_of_run
from alseg.errors import DataError
from alseg.geometry import Box
from alseg.io import store as st
from alseg.io.omezarr import open_volume
from alseg.measure.table import CSV_NAME
from alseg.preflight import holdout_of
from alseg.spec import JobSpec, ground_truth_url

ROUND_COLOURS = ("#ff8c00", "#00bfff", "#ff1493", "#7cfc00", "#ffd700", "#ba55d3", "#00ced1", "#ff6347")
HOLDOUT_COLOUR = "#ffffff"
MEASURED = ("volume_um3", "surface_um2", "centroid_z_nm", "centroid_y_nm", "centroid_x_nm", "voxels")
"""The measurement columns a selected segment shows, in this order."""


@dataclass(frozen=True)
class Layer:
    """An OME-Zarr image (``kind="image"``) or label image (``"segmentation"``) shown as one layer."""

    name: str
    url: str
    kind: str


@dataclass(frozen=True)
class Annotated:
    """One box in voxels of level 0 (``zyx``, stop exclusive) and what selecting it says."""

    box: Box
    description: str


@dataclass(frozen=True)
class BoxLayer:
    name: str
    colour: str
    boxes: tuple[Annotated, ...]


@dataclass
class RunContents:
    spec: JobSpec
    rundir: str
    image: Layer
    shape: tuple[int, int, int]
    voxel_size_nm: tuple[float, float, float]
    contrast: tuple[float, float]
    """The image's display range: its 0.5 and 99.5 percentiles on the coarsest pyramid level."""
    segmentations: list[Layer] = field(default_factory=list)
    box_layers: list[BoxLayer] = field(default_factory=list)
    measurements: dict[int, dict[str, float]] | None = None
    """Per segment id of the instances layer: :data:`MEASURED` (the final prediction's table)."""
    instances_layer: str | None = None
    missing: list[str] = field(default_factory=list)


def _round_dirs(rundir: str) -> dict[int, str]:
    fs, path = st.filesystem(st.join(rundir, "rounds"))
    try:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return {}
    out = {}
    for name in names:
        m = re.fullmatch(r"round-(\d+)", name)
        if m and st.exists(st.join(rundir, "rounds", name, "instances.zarr", "zarr.json")):
            out[int(m.group(1))] = st.join(rundir, "rounds", name, "instances.zarr")
    return out


def _is_image(url: str) -> bool:
    return st.exists(st.join(url, "zarr.json")) or st.exists(st.join(url, ".zattrs"))


CONTRAST_VOXELS = 2**24
"""At most this many voxels are read for the contrast (a central box of the coarsest level)."""


def _contrast(url: str, level: int) -> tuple[float, float]:
    """The 0.5 and 99.5 percentiles of the coarsest level, or of a central box of it of at most
    :data:`CONTRAST_VOXELS` (an image without a pyramid is not read whole)."""
    coarse = open_volume(url, level=level)
    last = open_volume(url, level=len(coarse.level_paths) - 1)
    shape = np.array(last.shape)
    while int(np.prod(shape)) > CONTRAST_VOXELS:
        shape[int(np.argmax(shape))] //= 2
    start = (np.array(last.shape) - shape) // 2
    values = last.read(Box(tuple(start), tuple(start + shape))).astype(np.float32)
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    return (lo, hi if hi > lo else lo + 1.0)


def _selections(spec: JobSpec) -> dict[int, dict]:
    fs, path = st.filesystem(st.join(spec.run.dir, "selection"))
    out = {}
    try:
        files = fs.glob(f"{path.rstrip('/')}/round-*.json")
    except FileNotFoundError:
        return out
    for f in files:
        m = re.search(r"round-(\d+)\.json$", f)
        if m:
            out[int(m.group(1))] = st.read_json(st.join(spec.run.dir, "selection", f"round-{m.group(1)}.json"))
    return dict(sorted(out.items()))


def _core_set(round_index: int, record: dict, colour: str) -> BoxLayer:
    ids, boxes = record.get("patch_ids", []), record.get("boxes", [])
    detail = record.get("detail") or {}
    per_pick = {k: v for k, v in detail.items() if isinstance(v, list) and len(v) == len(ids)
                and all(isinstance(x, (int, float)) for x in v)}
    out = []
    for i, (pid, b) in enumerate(zip(ids, boxes)):
        scores = ", ".join(f"{k} {float(v[i]):.4g}" for k, v in sorted(per_pick.items()))
        text = f"patch {pid}, round {round_index}, {record.get('method', '?')}" + (f", {scores}" if scores else "")
        out.append(Annotated(Box(tuple(b[:3]), tuple(b[3:])), text))
    return BoxLayer(f"core-set round {round_index}", colour, tuple(out))


def _measurements(csv_url: str) -> dict[int, dict[str, float]]:
    text = st.read_bytes(csv_url).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    out = {}
    for row in rows:
        key = {k.strip('"'): v for k, v in row.items()}
        out[int(key["id"])] = {c: float(key[c]) for c in MEASURED if c in key}
    return out


def _scaled(box: Box, scale: tuple[float, ...]) -> Box:
    return Box(tuple(int(round(a * f)) for a, f in zip(box.start, scale)), tuple(int(round(b * f)) for b, f in zip(box.stop, scale)))


def run_contents(rundir: str, round_index: int | None = None) -> RunContents:
    """What ``rundir`` holds to look at. ``round_index``: that round's predicted instances
    (0: the pretrained model's) instead of the final prediction; :class:`DataError` naming the
    rounds there are when it has none."""
    spec = spec_of_run(rundir)
    rundir = spec.run.dir
    image_url = spec.input.url
    level0 = open_volume(image_url, level=0)
    contents = RunContents(spec=spec, rundir=rundir, image=Layer("image", image_url, "image"), shape=level0.shape,
                           voxel_size_nm=level0.voxel_size_nm, contrast=_contrast(image_url, spec.input.level))
    missing = contents.missing
    pseudo = st.join(rundir, "pseudolabels.zarr")
    if _is_image(pseudo):
        contents.segmentations.append(Layer("pseudo-labels", pseudo, "segmentation"))
    else:
        missing.append("pseudo-labels (the pseudolabels stage has not run)")
    rounds = _round_dirs(rundir)
    final = st.join(rundir, "prediction", "instances.zarr")
    if round_index is not None:
        if round_index not in rounds:
            have = ", ".join(map(str, sorted(rounds))) or "none yet"
            raise DataError(f"{st.redact(rundir)}: round {round_index} has no predicted instances (rounds with them: {have})")
        contents.segmentations.append(Layer(f"instances round {round_index}", rounds[round_index], "segmentation"))
        contents.instances_layer = f"instances round {round_index}"
    elif _is_image(final):
        contents.segmentations.append(Layer("instances", final, "segmentation"))
        contents.instances_layer = "instances"
        table = st.join(rundir, "prediction", CSV_NAME)
        if st.exists(table):
            contents.measurements = _measurements(table)
        else:
            missing.append("the instances' measurements (the measure stage has not run)")
    elif rounds:
        last = max(rounds)
        contents.segmentations.append(Layer(f"instances round {last}", rounds[last], "segmentation"))
        contents.instances_layer = f"instances round {last}"
        missing.append(f"the final prediction (showing round {last}'s instances)")
    else:
        missing.append("predicted instances (no round has been evaluated and the predict stage has not run)")
    gt = ground_truth_url(spec)
    if gt is not None:
        if _is_image(gt):
            contents.segmentations.append(Layer("ground truth", gt, "segmentation"))
        else:
            missing.append(f"the ground truth ({st.redact(gt)} cannot be read)")
    # holdout and patches are boxes of the level the job works on: shown in level-0 voxels
    working = level0 if spec.input.level == 0 else open_volume(image_url, level=spec.input.level)
    scale = tuple(w / z for w, z in zip(working.voxel_size_nm, level0.voxel_size_nm))
    hold = holdout_of(spec, working.shape)
    if hold is not None:
        contents.box_layers.append(BoxLayer("held-out region", HOLDOUT_COLOUR,
                                            (Annotated(_scaled(hold, scale), "held-out region: every round is scored here"),)))
    picks = _selections(spec)
    for r, record in picks.items():
        layer = _core_set(r, record, ROUND_COLOURS[(r - 1) % len(ROUND_COLOURS)])
        contents.box_layers.append(BoxLayer(layer.name, layer.colour,
                                            tuple(Annotated(_scaled(a.box, scale), a.description) for a in layer.boxes)))
    if not picks:
        missing.append("core-set patches (no round has selected any)")
    return contents
