"""Ingest of TIFF / PNG / HDF5 / .npy stacks, and the real VNC stack."""

from __future__ import annotations

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from scipy import ndimage

from alseg.errors import DataError, OutputExistsError
from alseg.ingest import ingest, ingest_labels, ingest_vnc, open_source
from alseg.io.omezarr import open_labels, open_volume

STACK = np.random.default_rng(0).integers(0, 255, (11, 40, 33), dtype=np.uint8)


def write_source(kind: str, folder) -> str:
    if kind == "tiff":
        p = folder / "stack.tif"
        tifffile.imwrite(p, STACK)
    elif kind == "tiff-folder":
        p = folder / "slices"
        p.mkdir()
        for i, s in enumerate(STACK):  # natural order: slice_2 before slice_10
            tifffile.imwrite(p / f"slice_{i}.tif", s)
    elif kind == "png-folder":
        p = folder / "pngs"
        p.mkdir()
        for i, s in enumerate(STACK):
            iio.imwrite(p / f"z{i}.png", s)
    elif kind == "hdf5":
        p = folder / "vol.h5"
        with h5py.File(p, "w") as f:
            f.create_dataset("em/raw", data=STACK, chunks=(4, 40, 33))
        return f"{p}:em/raw"
    elif kind == "npy":
        p = folder / "vol.npy"
        np.save(p, STACK)
    else:
        raise AssertionError(kind)
    return str(p)


@pytest.mark.parametrize("kind", ["tiff", "tiff-folder", "png-folder", "hdf5", "npy"])
def test_every_format_roundtrips(kind, tmp_path):
    src = open_source(write_source(kind, tmp_path))
    assert src.shape == STACK.shape
    vol = ingest(src, tmp_path / "out.zarr", voxel_size_nm=(40, 5, 5), chunks=(4, 16, 16))
    src.close()
    assert vol.voxel_size_nm == (40.0, 5.0, 5.0) and vol.chunks == (4, 16, 16)
    assert np.array_equal(vol.read(), STACK)


def test_ingest_to_object_storage(s3_bucket, tmp_path):
    src = open_source(write_source("npy", tmp_path))
    vol = ingest(src, f"{s3_bucket}/stack.zarr", voxel_size_nm=(40, 5, 5), chunks=(4, 16, 16))
    assert np.array_equal(open_volume(vol.url).read(), STACK)


def test_labels_are_ingested_beside_the_image(tmp_path):
    ingest(open_source(write_source("npy", tmp_path)), tmp_path / "img.zarr", voxel_size_nm=(1, 1, 1), chunks=(4, 16, 16))
    labels = (STACK > 200).astype(np.uint16)
    np.save(tmp_path / "lab.npy", labels)
    lab = ingest_labels(open_source(tmp_path / "lab.npy"), tmp_path / "img.zarr", "mask")
    assert lab.dtype == np.uint32  # labels widen to at least uint32
    assert np.array_equal(open_labels(tmp_path / "img.zarr", "mask").read(), labels)
    np.save(tmp_path / "neg.npy", -np.ones(STACK.shape, np.int16))
    with pytest.raises(DataError, match="non-negative"):
        ingest_labels(open_source(tmp_path / "neg.npy"), tmp_path / "img.zarr", "neg")
    np.save(tmp_path / "small.npy", labels[:3])
    with pytest.raises(DataError, match="do not match"):
        ingest_labels(open_source(tmp_path / "small.npy"), tmp_path / "img.zarr", "small")


def test_bad_inputs_get_clear_errors_and_write_nothing(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((1024, 1024), np.uint8))
    with pytest.raises(DataError, match=r"expected 3 axes zyx, got shape \(1024, 1024\)"):
        open_source(tmp_path / "flat.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 4, 4), np.uint8))
    with pytest.raises(DataError, match="empty"):
        open_source(tmp_path / "empty.npy")
    np.save(tmp_path / "strings.npy", np.array([[["a"]]]))
    with pytest.raises(DataError, match="dtype"):
        open_source(tmp_path / "strings.npy")
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="expected 3 axes"):
        open_source(tmp_path / "one.tif")
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    iio.imwrite(rgb / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="grey-scale"):
        open_source(rgb)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    iio.imwrite(mixed / "a0.png", np.zeros((8, 8), np.uint8))
    iio.imwrite(mixed / "a1.png", np.zeros((9, 8), np.uint8))
    src = open_source(mixed)
    with pytest.raises(DataError, match="differs from the first slice"):
        ingest(src, tmp_path / "mixed.zarr", voxel_size_nm=(1, 1, 1))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported"):
        open_source(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="does not exist"):
        open_source(tmp_path / "missing.tif")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="found none"):
        open_source(tmp_path / "nothing")
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = np.zeros((2, 2, 2))
        f["b"] = np.zeros((2, 2, 2))
    with pytest.raises(DataError, match="name the dataset"):
        open_source(tmp_path / "two.h5")
    (tmp_path / "fake.tif").write_bytes(b"not a tiff")
    with pytest.raises(DataError, match="TIFF"):
        open_source(tmp_path / "fake.tif")
    for name in ("flat.zarr", "empty.zarr"):
        assert not (tmp_path / name).exists()


def test_existing_output_is_refused(tmp_path):
    src = open_source(write_source("npy", tmp_path))
    ingest(src, tmp_path / "out.zarr", voxel_size_nm=(1, 1, 1))
    with pytest.raises(OutputExistsError):
        ingest(src, tmp_path / "out.zarr", voxel_size_nm=(2, 2, 2))
    assert open_volume(tmp_path / "out.zarr").voxel_size_nm == (1.0, 1.0, 1.0)


@pytest.mark.slow
def test_vnc_stack_component_counts(vnc_dir, tmp_path):
    """The README's figures: 56 components with 26-connectivity, 65 with 6, 5.38 % foreground."""
    summary = ingest_vnc(vnc_dir, tmp_path / "vnc.zarr")
    assert summary["instances"] == 56
    assert summary["foreground_fraction"] == pytest.approx(0.0538, abs=5e-4)
    vol = open_volume(tmp_path / "vnc.zarr")
    assert vol.shape == (20, 1024, 1024) and vol.voxel_size_nm == (50.0, 4.6, 4.6)
    raw0 = tifffile.imread(vnc_dir / "raw" / "00.tif")
    assert np.array_equal(vol.read()[0], raw0)
    # independent oracle: scipy on the label PNGs read directly
    mask = np.stack([iio.imread(vnc_dir / "labels" / f"labels{i:08d}.png") == 191 for i in range(20)])
    oracle, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    gt = open_labels(tmp_path / "vnc.zarr", "mitochondria").read()
    assert n == 56 and np.array_equal(gt, oracle)
    assert ingest_vnc(vnc_dir, tmp_path / "vnc6.zarr", connectivity=6)["instances"] == 65
