"""Patches of an OME-Zarr volume and a labels volume as an nnU-Net raw dataset.

Each patch becomes one training case: ``imagesTr/<case>_0000.tif`` (float32, intensities already
normalised by alseg, see :class:`IntensityNorm`), ``labelsTr/<case>.tif`` (uint8 classes) and the
spacing (nm, from the OME-Zarr voxel size) in ``<case>.json`` files, read by nnU-Net's
``Tiff3DIO``. Classes: background 0, mitochondria 1, optionally an instance boundary class 2 (so
touching objects can be separated after prediction), and nnU-Net's ignore label (last) for
voxels nobody annotated.

Normalisation is alseg's, not nnU-Net's: nnU-Net's z-score works per case, so a block of a volume
would be scaled differently from the whole; its CT scheme clips to the *foreground* range, which
for dark mitochondria throws away the bright cytoplasm. alseg maps intensities with one affine
map per volume (robust percentiles of a coarse pyramid level), written to the run directory and
applied again at prediction, and tells nnU-Net ``noNorm``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from alseg.errors import DataError
from alseg.geometry import Box
from alseg.nnunet.paths import NnUNetDirs, dataset_name

CHANNEL = "noNorm"


@dataclass(frozen=True)
class IntensityNorm:
    """``(x - low) / (high - low)``: one affine map for a whole volume."""

    low: float
    high: float

    def __call__(self, data: np.ndarray) -> np.ndarray:
        return ((np.asarray(data, dtype=np.float32) - self.low) / (self.high - self.low)).astype(np.float32)

    @classmethod
    def of_volume(cls, url: str, *, low_pct: float = 0.5, high_pct: float = 99.5, max_voxels: int = 2**24,
                  missing_chunks: str = "error") -> "IntensityNorm":
        """From the finest pyramid level with at most ``max_voxels`` voxels (bounded memory)."""
        from alseg.io.omezarr import open_volume

        top = open_volume(url)
        level = len(top.level_paths) - 1
        for i in range(len(top.level_paths)):
            if int(np.prod(open_volume(url, level=i).shape)) <= max_voxels:
                level = i
                break
        vol = open_volume(url, level=level, missing_chunks=missing_chunks)
        data = vol.read() if int(np.prod(vol.shape)) <= max_voxels else vol.read(Box((0, 0, 0), tuple(min(s, 256) for s in vol.shape)))
        lo, hi = np.percentile(data, [low_pct, high_pct])
        if hi <= lo:
            lo, hi = float(data.min()), float(data.max()) + 1.0
        return cls(float(lo), float(hi))

    def to_json(self) -> dict[str, float]:
        return asdict(self)


def targets(labels: np.ndarray, *, boundary: bool) -> np.ndarray:
    """Classes of an instance patch: 1 inside objects, 2 on their inner boundaries (if asked)."""
    out = (labels > 0).astype(np.uint8)
    if boundary and out.any():
        from skimage.segmentation import find_boundaries

        out[find_boundaries(labels, mode="inner") & (labels > 0)] = 2
    return out


def export_dataset(
    dirs: NnUNetDirs,
    dataset_id: int,
    name: str,
    image_url: str,
    labels_url: str,
    boxes: Sequence[Box],
    *,
    norm: IntensityNorm,
    boundary: bool = False,
    annotated_url: str | None = None,
    level: int = 0,
    labels_level: int = 0,
    missing_chunks: str = "error",
) -> dict[str, Any]:
    """Write the raw dataset ``Dataset<id>_<name>``; returns its dataset.json plus its folder.

    ``level`` is the image's pyramid level; ``labels_level`` the labels' level on the same grid
    (0 for what alseg writes at the job's level: pseudo-labels, the annotation store; ``level``
    for a ground truth with its own pyramid). ``annotated_url`` is read at its level 0.

    ``annotated_url`` (optional, a 0/1 volume) marks annotated voxels; the rest of each patch
    gets the ignore label, so sparse annotations train only where they exist.
    """
    import tifffile

    from alseg.io.omezarr import open_volume

    if not boxes:
        raise DataError("no patches to export: an nnU-Net dataset needs at least one case")
    image = open_volume(image_url, level=level, missing_chunks=missing_chunks)
    labels = open_volume(labels_url, level=labels_level)
    if labels.shape != image.shape:
        raise DataError(f"labels of shape {labels.shape} (level {labels_level}) do not match the image {image.shape} (level {level})")
    annotated = open_volume(annotated_url) if annotated_url else None
    if annotated is not None and annotated.shape != image.shape:
        raise DataError(f"the annotated-voxel mask of shape {annotated.shape} does not match the image {image.shape} (level {level})")
    folder = os.path.join(dirs.make().raw, dataset_name(dataset_id, name))
    images_tr, labels_tr = os.path.join(folder, "imagesTr"), os.path.join(folder, "labelsTr")
    os.makedirs(images_tr, exist_ok=True)
    os.makedirs(labels_tr, exist_ok=True)
    spacing = [float(v) for v in image.voxel_size_nm]
    classes = {"background": 0, "mitochondria": 1}
    if boundary:
        classes["boundary"] = 2
    ignore = len(classes)
    if annotated is not None:
        classes["ignore"] = ignore
    cases = []
    foreground = 0
    for i, box in enumerate(boxes):
        if not image.bounds.contains(box):
            raise DataError(f"patch {box} lies outside the volume {image.shape}")
        case = f"{name}_{i:05d}"
        seg = targets(labels.read(box), boundary=boundary)
        foreground += int(np.count_nonzero(seg == 1))
        if annotated is not None:
            seg[annotated.read(box) == 0] = ignore
        tifffile.imwrite(os.path.join(images_tr, f"{case}_0000.tif"), norm(image.read(box)))
        tifffile.imwrite(os.path.join(labels_tr, f"{case}.tif"), seg)
        for d in (images_tr, labels_tr):
            with open(os.path.join(d, f"{case}.json"), "w") as fh:
                json.dump({"spacing": spacing}, fh)
        cases.append({"case": case, "box": [list(box.start), list(box.stop)]})
    meta = {
        "channel_names": {"0": CHANNEL},
        "labels": classes,
        "numTraining": len(cases),
        "file_ending": ".tif",
        "overwrite_image_reader_writer": "Tiff3DIO",
        "alseg": {"image": image_url, "labels": labels_url, "level": level, "norm": norm.to_json(), "cases": cases},
    }
    with open(os.path.join(folder, "dataset.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
    return {**meta, "folder": folder, "foreground_voxels": foreground}
