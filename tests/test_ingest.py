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


# --------------------------------------------------------------------------------------------- #
# nothing lost, nothing leaked: a failed ingest reads its source, leaves no output that looks
# complete, never touches the old output or user data, and does not block a later good ingest
# --------------------------------------------------------------------------------------------- #
def tree_hashes(path) -> dict[str, str]:
    """sha256 of every file under ``path`` (or of the file itself), by relative path."""
    import hashlib
    from pathlib import Path

    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)) if p != path else p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def truncated_tiff(folder, cut: float = 0.5, name: str = "cut.tif", data: np.ndarray = STACK) -> str:
    """A real multi-page TIFF cut after the fraction ``cut`` of its bytes (a negative whole number:
    that many bytes off its end, inside the page table that tifffile writes after the pixels)."""
    full = folder / f"full-{name}"
    tifffile.imwrite(full, data)
    blob = full.read_bytes()
    p = folder / name
    p.write_bytes(blob[: int(cut) if cut < 0 else int(len(blob) * cut)])
    return str(p)


def broken_slices(folder, data: np.ndarray = STACK):
    """A folder of PNG slices ``l0.png`` ... whose slice 9 is cut short: opening it works (the first
    slice is fine), the write pass fails."""
    folder.mkdir()
    for i, s in enumerate(data):
        iio.imwrite(folder / f"l{i}.png", s)
    blob = (folder / "l9.png").read_bytes()
    (folder / "l9.png").write_bytes(blob[: len(blob) // 2])
    return folder


def assert_no_output(url) -> None:
    """Nothing at ``url``, or at least nothing that alseg would take for a complete output."""
    from pathlib import Path

    assert not Path(url).exists(), sorted(str(p) for p in Path(url).rglob("*"))


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.85, -100])
def test_truncated_tiff_is_one_data_error_and_leaves_no_output(tmp_path, cut):
    src = truncated_tiff(tmp_path, cut)
    before = tree_hashes(src)
    with pytest.raises(DataError, match=r"cut\.tif.*(page|slice)"):
        source = open_source(src)
        try:
            ingest(source, tmp_path / "out.zarr", voxel_size_nm=(1, 1, 1), chunks=(4, 16, 16))
        finally:
            source.close()
    assert tree_hashes(src) == before
    assert_no_output(tmp_path / "out.zarr")
    # the failure blocks nothing: a good ingest to the same output works without --overwrite
    good = open_source(write_source("tiff", tmp_path))
    vol = ingest(good, tmp_path / "out.zarr", voxel_size_nm=(1, 1, 1), chunks=(4, 16, 16))
    good.close()
    assert np.array_equal(vol.read(), STACK) and vol.provenance()["complete"] is True


@pytest.mark.parametrize("header", [b"", b"II*\x00", b"MM\x00*"])
def test_garbage_tiff_is_a_data_error(tmp_path, header):
    p = tmp_path / "garbage.tif"
    p.write_bytes(header + np.random.default_rng(7).bytes(4096))
    before = tree_hashes(p)
    with pytest.raises(DataError, match="garbage.tif"):
        source = open_source(p)
        try:
            ingest(source, tmp_path / "out.zarr", voxel_size_nm=(1, 1, 1))
        finally:
            source.close()
    assert tree_hashes(p) == before
    assert_no_output(tmp_path / "out.zarr")


def test_stack_of_inconsistent_pages_or_slices_is_refused(tmp_path):
    # a multi-page TIFF whose last page has another shape
    p = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(p) as tw:
        tw.write(STACK[:4], photometric="minisblack")
        tw.write(np.zeros((8, 8), np.uint8), photometric="minisblack")
    with pytest.raises(DataError, match="mixed.tif"):
        source = open_source(p)
        try:
            ingest(source, tmp_path / "a.zarr", voxel_size_nm=(1, 1, 1))
        finally:
            source.close()
    assert_no_output(tmp_path / "a.zarr")
    # a folder of slices where one slice has another dtype (it would wrap around silently)
    folder = tmp_path / "slices"
    folder.mkdir()
    for i, s in enumerate(STACK[:4]):
        tifffile.imwrite(folder / f"s{i}.tif", s)
    tifffile.imwrite(folder / "s4.tif", (STACK[4].astype(np.uint16) * 300))
    before = tree_hashes(folder)
    source = open_source(folder)
    with pytest.raises(DataError, match=r"s4\.tif.*uint16"):
        ingest(source, tmp_path / "b.zarr", voxel_size_nm=(1, 1, 1), chunks=(2, 16, 16))
    assert tree_hashes(folder) == before
    assert_no_output(tmp_path / "b.zarr")


def test_overwrite_keeps_the_old_output_until_the_new_one_is_complete(tmp_path):
    good = open_source(write_source("npy", tmp_path))
    ingest(good, tmp_path / "out.zarr", voxel_size_nm=(1, 1, 1), chunks=(4, 16, 16))
    old = tree_hashes(tmp_path / "out.zarr")
    bad = truncated_tiff(tmp_path, 0.5)
    with pytest.raises(DataError, match="cut.tif"):
        source = open_source(bad)
        try:
            ingest(source, tmp_path / "out.zarr", voxel_size_nm=(2, 2, 2), overwrite=True)
        finally:
            source.close()
    assert tree_hashes(tmp_path / "out.zarr") == old, "the old output is untouched"
    # a source that fails halfway through the write pass: the new output was staged, and goes
    broken = broken_slices(tmp_path / "broken")
    with pytest.raises(DataError, match=r"l9\.png"):
        ingest(open_source(broken), tmp_path / "out.zarr", voxel_size_nm=(2, 2, 2), chunks=(4, 16, 16), overwrite=True)
    assert tree_hashes(tmp_path / "out.zarr") == old, "the old output is untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["vol.npy", "out.zarr", "full-cut.tif", "cut.tif", "broken"]), "no staging left"
    # a good replacement does replace it
    other = STACK[::-1].copy()
    np.save(tmp_path / "other.npy", other)
    vol = ingest(open_source(tmp_path / "other.npy"), tmp_path / "out.zarr", voxel_size_nm=(2, 2, 2), overwrite=True)
    assert np.array_equal(open_volume(tmp_path / "out.zarr").read(), other) and vol.voxel_size_nm == (2.0, 2.0, 2.0)
    assert open_volume(tmp_path / "out.zarr").provenance()["complete"] is True


def test_output_without_alseg_provenance_is_never_removed(tmp_path):
    import zarr

    from alseg.io.omezarr import create_image

    src = open_source(write_source("npy", tmp_path))
    # an OME-Zarr image someone else wrote, and a folder of other files
    theirs = create_image(tmp_path / "theirs.zarr", shape=(2, 4, 4), dtype="uint8", chunks=(2, 4, 4), voxel_size_nm=(1, 1, 1))
    theirs.write(theirs.bounds, np.full((2, 4, 4), 7, np.uint8))
    zarr.open_group(str(tmp_path / "theirs.zarr"), mode="r+").attrs.pop("alseg", None)  # written by another tool
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "paper.txt").write_text("my thesis")
    for name in ("theirs.zarr", "notes"):
        before = tree_hashes(tmp_path / name)
        for overwrite in (False, True):
            with pytest.raises(OutputExistsError, match="alseg did not write"):
                ingest(src, tmp_path / name, voxel_size_nm=(1, 1, 1), overwrite=overwrite)
            assert tree_hashes(tmp_path / name) == before


_CRASH = """
import os, sys
import numpy as np
from alseg.ingest import NpySource, ingest

class Crashing(NpySource):
    def read(self, z0, z1):
        if z0 >= 4:
            os._exit(3)  # a hard kill in the middle of the write pass
        return super().read(z0, z1)

ingest(Crashing(sys.argv[1]), sys.argv[2], voxel_size_nm=(1, 1, 1), chunks=(4, 16, 16))
"""


def test_half_written_output_of_a_killed_ingest_does_not_block_a_good_one(tmp_path):
    import subprocess
    import sys

    npy = write_source("npy", tmp_path)
    out = tmp_path / "out.zarr"
    res = subprocess.run([sys.executable, "-c", _CRASH, npy, str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 3, res.stderr
    # whatever the kill left is marked incomplete, never complete
    for left in [out, tmp_path / "out.zarr.alseg-partial"]:
        if left.exists():
            assert open_volume(left).provenance().get("complete") is False
    vol = ingest(open_source(npy), out, voxel_size_nm=(1, 1, 1), chunks=(4, 16, 16))
    assert np.array_equal(vol.read(), STACK) and vol.provenance()["complete"] is True


def test_failed_labels_ingest_leaves_no_label_image_and_keeps_the_old_one(tmp_path):
    from alseg.io.omezarr import list_labels

    ingest(open_source(write_source("npy", tmp_path)), tmp_path / "img.zarr", voxel_size_nm=(1, 1, 1), chunks=(4, 16, 16))
    image_before = tree_hashes(tmp_path / "img.zarr")
    truncated = truncated_tiff(tmp_path, 0.5, name="labels.tif", data=(STACK > 128).astype(np.uint8))
    broken = broken_slices(tmp_path / "broken", (STACK > 128).astype(np.uint8))  # fails in the write pass
    inputs = {**tree_hashes(truncated), **tree_hashes(broken)}
    for bad, name in ((truncated, r"labels\.tif"), (broken, r"l9\.png")):
        with pytest.raises(DataError, match=name):
            source = open_source(bad)
            try:
                ingest_labels(source, tmp_path / "img.zarr", "mito")
            finally:
                source.close()
        assert list_labels(tmp_path / "img.zarr") == []
        assert tree_hashes(tmp_path / "img.zarr") == image_before
    # good labels, then a failed replacement keeps them
    good = (STACK > 200).astype(np.uint8)
    np.save(tmp_path / "good.npy", good)
    lab = ingest_labels(open_source(tmp_path / "good.npy"), tmp_path / "img.zarr", "mito")
    assert lab.provenance()["complete"] is True
    with_labels = tree_hashes(tmp_path / "img.zarr")
    for bad, name in ((truncated, r"labels\.tif"), (broken, r"l9\.png")):
        with pytest.raises(DataError, match=name):
            source = open_source(bad)
            try:
                ingest_labels(source, tmp_path / "img.zarr", "mito", overwrite=True)
            finally:
                source.close()
        assert tree_hashes(tmp_path / "img.zarr") == with_labels
    assert {**tree_hashes(truncated), **tree_hashes(broken)} == inputs
    assert list_labels(tmp_path / "img.zarr") == ["mito"]
    assert np.array_equal(open_labels(tmp_path / "img.zarr", "mito").read(), good)
    # and a good replacement replaces them
    np.save(tmp_path / "new.npy", good * 2)
    ingest_labels(open_source(tmp_path / "new.npy"), tmp_path / "img.zarr", "mito", overwrite=True)
    assert list_labels(tmp_path / "img.zarr") == ["mito"]
    assert np.array_equal(open_labels(tmp_path / "img.zarr", "mito").read(), good * 2)


def test_negative_label_anywhere_is_refused(tmp_path):
    """Every slice is checked, not a sample: a -1 in one slice of 20 would wrap to 2**64 - 1."""
    from alseg.io.omezarr import list_labels

    image = np.zeros((20, 8, 8), np.uint8)
    np.save(tmp_path / "img.npy", image)
    ingest(open_source(tmp_path / "img.npy"), tmp_path / "img.zarr", voxel_size_nm=(1, 1, 1), chunks=(4, 8, 8))
    labels = np.ones((20, 8, 8), np.int32)
    labels[13, 2, 2] = -1
    np.save(tmp_path / "lab.npy", labels)
    with pytest.raises(DataError, match=r"lab\.npy.*non-negative.*13"):
        ingest_labels(open_source(tmp_path / "lab.npy"), tmp_path / "img.zarr", "lab")
    assert list_labels(tmp_path / "img.zarr") == []
    assert not (tmp_path / "img.zarr" / "labels" / "lab").exists()


def test_image_and_labels_are_one_output_complete_only_with_both(tmp_path):
    """Labels that fail in the write pass (a damaged slice) leave no complete image behind."""
    folder = broken_slices(tmp_path / "labels", (STACK > 128).astype(np.uint8))
    before = tree_hashes(folder)
    src, lsrc = open_source(write_source("npy", tmp_path)), open_source(folder)
    with pytest.raises(DataError, match=r"l9\.png"):
        ingest(src, tmp_path / "out.zarr", voxel_size_nm=(1, 1, 1), chunks=(4, 16, 16), labels={"mito": lsrc})
    assert tree_hashes(folder) == before
    assert_no_output(tmp_path / "out.zarr")
    good = (STACK > 200).astype(np.uint8)
    np.save(tmp_path / "good.npy", good)
    vol = ingest(src, tmp_path / "out.zarr", voxel_size_nm=(1, 1, 1), labels={"mito": open_source(tmp_path / "good.npy")})
    assert vol.provenance()["complete"] is True
    assert np.array_equal(open_labels(tmp_path / "out.zarr", "mito").read(), good)


def fake_vnc(root, n: int = 3) -> None:
    (root / "raw").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        tifffile.imwrite(root / "raw" / f"{i:02d}.tif", rng.integers(0, 255, (64, 64), dtype=np.uint8))
        lab = np.zeros((64, 64), np.uint8)
        lab[10:20, 10 + i:20 + i] = 191
        iio.imwrite(root / "labels" / f"labels{i:08d}.png", lab)


@pytest.mark.parametrize("broken", ["raw/01.tif", "labels/labels00000002.png"])
def test_vnc_ingest_with_a_broken_slice_leaves_nothing(tmp_path, broken):
    root = tmp_path / "vnc"
    fake_vnc(root)
    assert ingest_vnc(root, tmp_path / "ok.zarr", chunks=(2, 32, 32))["instances"] == 1
    blob = (root / broken).read_bytes()
    (root / broken).write_bytes(blob[: len(blob) // 2])
    before = tree_hashes(root)
    with pytest.raises(DataError, match=broken.split("/")[1].replace(".", r"\.")):
        ingest_vnc(root, tmp_path / "vnc.zarr", chunks=(2, 32, 32))
    assert tree_hashes(root) == before
    assert_no_output(tmp_path / "vnc.zarr")
    ok_before = tree_hashes(tmp_path / "ok.zarr")
    with pytest.raises(DataError):
        ingest_vnc(root, tmp_path / "ok.zarr", chunks=(2, 32, 32), overwrite=True)
    assert tree_hashes(tmp_path / "ok.zarr") == ok_before


@pytest.mark.s3
def test_replacement_on_object_storage_is_staged_too(s3_bucket, tmp_path):
    url = f"{s3_bucket}/stack.zarr"
    ingest(open_source(write_source("npy", tmp_path)), url, voxel_size_nm=(1, 1, 1), chunks=(4, 16, 16))
    from alseg.io import store as st

    with pytest.raises(DataError, match=r"l9\.png"):
        ingest(open_source(broken_slices(tmp_path / "broken")), url, voxel_size_nm=(2, 2, 2), chunks=(4, 16, 16), overwrite=True)
    assert np.array_equal(open_volume(url).read(), STACK) and open_volume(url).voxel_size_nm == (1.0, 1.0, 1.0)
    assert not st.exists(url + ".alseg-partial")
    other = STACK[::-1].copy()
    np.save(tmp_path / "other.npy", other)
    vol = ingest(open_source(tmp_path / "other.npy"), url, voxel_size_nm=(2, 2, 2), chunks=(4, 16, 16), overwrite=True)
    assert np.array_equal(open_volume(url).read(), other) and vol.provenance()["complete"] is True

    assert not st.exists(url + ".alseg-partial")
