"""Absent and corrupt chunks: an image read fails naming the array and the chunk; a label image
reads absent chunks as background; alseg's own images store every chunk, empty ones included."""

from __future__ import annotations

import numpy as np
import pytest

from alseg.errors import DataError
from alseg.geometry import Box
from alseg.io import store as st
from alseg.io.omezarr import create_image, create_labels, open_volume


def _image(root: str, data: np.ndarray) -> str:
    url = st.join(root, "img.zarr")
    vol = create_image(url, shape=data.shape, dtype=data.dtype, chunks=(4, 8, 8), voxel_size_nm=(30, 8, 8), levels=1)
    vol.write(vol.bounds, data)
    return url


def _chunk(root_url: str, key: str) -> str:
    return st.join(root_url, *key.split("/"))


def test_missing_image_chunk_is_an_error_naming_the_chunk(store_root):
    data = np.random.default_rng(0).integers(1, 255, (8, 16, 16), dtype=np.uint8)
    url = _image(store_root, data)
    fs, path = st.filesystem(_chunk(url, "s0/c/1/0/1"))
    fs.rm(path)
    vol = open_volume(url)
    assert vol.missing_chunks == "error"
    assert np.array_equal(vol.read(Box((0, 0, 0), (4, 16, 16))), data[:4]), "chunks that are there still read"
    with pytest.raises(DataError, match=r"chunk 's0/c/1/0/1' is missing.*input.missing_chunks: empty") as err:
        vol.read()
    assert st.redact(url) in str(err.value)
    # a volume whose absent chunks mean empty opts in
    lenient = open_volume(url, missing_chunks="empty").read()
    assert not lenient[4:, :8, 8:].any() and np.array_equal(lenient[:4], data[:4])


def test_corrupt_chunk_is_an_error_naming_the_chunk(tmp_path):
    data = np.random.default_rng(1).integers(1, 255, (8, 16, 16), dtype=np.uint8)
    url = _image(str(tmp_path), data)
    (tmp_path / "img.zarr" / "s0" / "c" / "0" / "1" / "0").write_bytes(b"not zstd at all")
    with pytest.raises(DataError, match=r"cannot read chunk 's0/c/0/1/0'.*") as err:
        open_volume(url).read(Box((0, 0, 0), (8, 16, 16)))
    assert "Traceback" not in str(err.value) and str(tmp_path) in str(err.value)


def test_label_images_read_absent_chunks_as_background(tmp_path):
    data = np.random.default_rng(2).integers(1, 255, (8, 16, 16), dtype=np.uint8)
    url = _image(str(tmp_path), data)
    lab = create_labels(url, "cells", chunks=(4, 8, 8))
    truth = np.zeros((8, 16, 16), np.uint32)
    truth[1:3, 2:5, 2:5] = 7
    lab.write(lab.bounds, truth)
    written = sorted(p.name for p in (tmp_path / "img.zarr" / "labels" / "cells" / "s0" / "c").rglob("*") if p.is_file())
    assert len(written) < 8, "zarr leaves out a label image's empty chunks"
    got = open_volume(st.join(url, "labels", "cells"))
    assert got.missing_chunks == "empty" and np.array_equal(got.read(), truth)


def test_alseg_images_store_every_chunk_so_they_read_back_strictly(tmp_path):
    data = np.zeros((8, 16, 16), np.uint8)
    data[:4, :8, :8] = 9  # one chunk with content, seven all-zero chunks
    url = _image(str(tmp_path), data)
    files = [p for p in (tmp_path / "img.zarr" / "s0" / "c").rglob("*") if p.is_file()]
    assert len(files) == 8
    assert np.array_equal(open_volume(url).read(), data)
