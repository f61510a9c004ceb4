"""OME-Zarr I/O on a local folder and on an S3-compatible server on 127.0.0.1, checked with
ome-zarr's own reader and ome-zarr-models."""

from __future__ import annotations

import http.server
import threading
from functools import partial

import numpy as np
import pytest

from alseg.errors import DataError, NotOmeZarrError, OutputExistsError, StoreError
from alseg.geometry import Box
from alseg.io import store as st
from alseg.io.omezarr import (
    create_image,
    create_labels,
    list_labels,
    open_labels,
    open_volume,
    output_record,
    pyramid_factors,
)
from alseg.pyramid import build_pyramid, downsample


def mean_pool_oracle(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """A plain reference: average every f-block that lies fully or partly inside ``a``."""
    out = np.empty(tuple(-(-s // k) for s, k in zip(a.shape, f)))
    for idx in np.ndindex(out.shape):
        out[idx] = a[tuple(slice(i * k, (i + 1) * k) for i, k in zip(idx, f))].mean()
    return out


def make_image(root: str, name: str = "img.zarr", shape=(12, 70, 45), levels=3):
    url = st.join(root, name)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, shape, dtype=np.uint8)
    vol = create_image(url, shape=shape, dtype="uint8", chunks=(4, 32, 32), voxel_size_nm=(30, 8, 8), levels=levels)
    for z in range(0, shape[0], 4):  # write slab by slab, chunk-aligned
        box = Box((z, 0, 0), (min(z + 4, shape[0]), shape[1], shape[2]))
        vol.write(box, data[box.slices])
    build_pyramid(url, kind="mean")
    return url, data


def test_roundtrip_pyramid_and_metadata(store_root):
    url, data = make_image(store_root)
    vol = open_volume(url)
    assert vol.shape == data.shape and vol.dtype == np.uint8 and vol.chunks == (4, 32, 32)
    assert vol.voxel_size_nm == (30.0, 8.0, 8.0)
    assert np.array_equal(vol.read(), data)
    box = Box((3, 10, 5), (9, 50, 40))
    assert np.array_equal(vol.read(box), data[box.slices])
    assert np.array_equal(np.asarray(vol.to_dask()[2:5]), data[2:5])
    # levels: y and x halve; z stays (30 nm is coarser than 16 nm), the voxel size follows
    lvl1, lvl2 = open_volume(url, level=1), open_volume(url, level=2)
    assert lvl1.shape == (12, 35, 23) and lvl1.voxel_size_nm == (30.0, 16.0, 16.0)
    assert lvl2.voxel_size_nm == (30.0, 32.0, 32.0)
    oracle = np.rint(mean_pool_oracle(data.astype(float), (1, 2, 2)))
    assert np.max(np.abs(lvl1.read().astype(int) - oracle)) <= 1  # rounding of .5 ties
    assert "voxel size" in vol.summary()


def test_labels_keep_wide_integer_types(store_root):
    url, _ = make_image(store_root)
    for dtype, value in (("uint32", 2**31 + 5), ("uint64", 2**40 + 7)):
        lab = create_labels(url, f"lab_{dtype}", dtype=dtype)
        arr = np.zeros(lab.shape, dtype)
        arr[2:5, 10:20, 10:20] = value
        lab.write(lab.bounds, arr)
        build_pyramid(lab.url, kind="nearest")
        back = open_labels(url, f"lab_{dtype}")
        assert back.dtype == np.dtype(dtype)
        assert int(back.read().max()) == value
        lvl1 = open_labels(url, f"lab_{dtype}", level=1).read()
        assert set(np.unique(lvl1)) <= {0, value}, "nearest downsampling never invents label values"
    assert list_labels(url) == ["lab_uint32", "lab_uint64"]
    with pytest.raises(DataError, match="unsigned integer"):
        create_labels(url, "signed", dtype="int32")
    with pytest.raises(DataError, match="no label image"):
        open_labels(url, "missing")


def test_ome_zarr_reader_and_models_accept_the_metadata(tmp_path):
    url, _ = make_image(str(tmp_path))
    lab = create_labels(url, "mito", dtype="uint32")
    lab.write(lab.bounds, np.ones(lab.shape, np.uint32))
    build_pyramid(lab.url, kind="nearest")

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    nodes = list(Reader(parse_url(url))())
    image = nodes[0]
    assert any(isinstance(s, Multiscales) for s in image.specs)
    assert [tuple(d.shape) for d in image.data] == [(12, 70, 45), (12, 35, 23), (12, 18, 12)]
    label_nodes = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert len(label_nodes) == 1 and label_nodes[0].data[0].dtype == np.uint32

    import zarr
    from ome_zarr_models import open_ome_zarr
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    group = open_ome_zarr(zarr.open_group(url, mode="r"))
    assert isinstance(group, Image)
    scales = [d.coordinateTransformations[0].scale for d in group.attributes.ome.multiscales[0].datasets]
    assert scales == [[30.0, 8.0, 8.0], [30.0, 16.0, 16.0], [30.0, 32.0, 32.0]]
    label_group = open_ome_zarr(zarr.open_group(lab.url, mode="r"))
    assert isinstance(label_group, ImageLabel)


def test_existing_output_is_not_overwritten(store_root):
    url, data = make_image(store_root)
    open_volume(url, mode="r+").set_provenance({"complete": True})  # a finished output
    with pytest.raises(OutputExistsError, match="already holds data"):
        create_image(url, shape=(2, 2, 2), dtype="uint8", chunks=(2, 2, 2), voxel_size_nm=(1, 1, 1))
    assert np.array_equal(open_volume(url).read(), data), "the refused call must leave the data alone"
    vol = create_image(url, shape=(2, 3, 4), dtype="uint16", chunks=(2, 2, 2), voxel_size_nm=(1, 1, 1), overwrite=True)
    assert vol.shape == (2, 3, 4) and vol.dtype == np.uint16
    lab = create_labels(url, "x")
    lab.set_provenance({"complete": True})
    with pytest.raises(OutputExistsError):
        create_labels(url, "x")
    assert lab.shape == (2, 3, 4)


def test_only_alseg_own_outputs_of_the_same_kind_are_ever_replaced(store_root, tmp_path):
    import zarr

    # an incomplete output of the same kind (a failed write) is replaced without overwrite
    url, _ = make_image(store_root, "half.zarr")
    assert output_record(url) == {"kind": "image", "complete": False}
    assert create_image(url, shape=(2, 2, 2), dtype="uint8", chunks=(2, 2, 2), voxel_size_nm=(1, 1, 1)).shape == (2, 2, 2)
    # an output of another kind is not, even with overwrite
    other = st.join(store_root, "synthetic.zarr")
    create_image(other, shape=(2, 2, 2), dtype="uint8", chunks=(2, 2, 2), voxel_size_nm=(1, 1, 1), kind="synthetic")
    with pytest.raises(OutputExistsError, match="alseg's synthetic output, not a image"):
        create_image(other, shape=(2, 2, 2), dtype="uint8", chunks=(2, 2, 2), voxel_size_nm=(1, 1, 1), overwrite=True)
    # data alseg did not write is never replaced, whatever overwrite says, and stays byte-identical
    foreign = st.join(store_root, "user.zarr")
    g = zarr.open_group(st.zarr_store(foreign, read_only=False), mode="w")
    g.create_array("raw", shape=(4, 4, 4), dtype="u1")[:] = 7
    before = _tree_digest(foreign)
    with pytest.raises(OutputExistsError, match="alseg did not write"):
        create_image(foreign, shape=(2, 2, 2), dtype="uint8", chunks=(2, 2, 2), voxel_size_nm=(1, 1, 1), overwrite=True)
    assert _tree_digest(foreign) == before
    # nor an alseg image holding a label image somebody else added
    url2, _ = make_image(store_root, "annotated.zarr")
    open_volume(url2, mode="r+").set_provenance({"complete": True})
    create_labels(url2, "theirs")
    zarr.open_group(st.zarr_store(st.join(url2, "labels", "theirs"), read_only=False), mode="r+").attrs.pop("alseg")
    with pytest.raises(OutputExistsError, match="label images that alseg did not write"):
        create_image(url2, shape=(2, 2, 2), dtype="uint8", chunks=(2, 2, 2), voxel_size_nm=(1, 1, 1), overwrite=True)
    # a plain file is not alseg's either
    (tmp_path / "notes.zarr").write_text("mine")
    with pytest.raises(OutputExistsError, match="alseg did not write"):
        create_image(str(tmp_path / "notes.zarr"), shape=(2, 2, 2), dtype="uint8", chunks=(2, 2, 2), voxel_size_nm=(1, 1, 1), overwrite=True)
    assert (tmp_path / "notes.zarr").read_text() == "mine"


def _tree_digest(url: str) -> dict[str, str]:
    """sha256 of every object under ``url``: the oracle for "left byte-identical"."""
    import hashlib

    fs, path = st.filesystem(url)
    return {f[len(path):]: hashlib.sha256(fs.cat_file(f)).hexdigest() for f in sorted(fs.find(path))}


def test_missing_and_non_ome_stores(store_root):
    with pytest.raises(StoreError, match="does not exist"):
        open_volume(st.join(store_root, "nothing.zarr"))
    import zarr

    plain = st.join(store_root, "plain.zarr")
    zarr.open_group(st.zarr_store(plain, read_only=False), mode="w").create_array("a", shape=(4, 4, 4), dtype="u1")
    with pytest.raises(NotOmeZarrError, match="not an OME-Zarr image"):
        open_volume(plain)


def test_bad_shapes_axes_and_levels(tmp_path):
    with pytest.raises(DataError, match="expected 3 axes zyx"):
        create_image(tmp_path / "a.zarr", shape=(1024, 1024), dtype="uint8", chunks=(1, 1, 1), voxel_size_nm=(1, 1, 1))
    with pytest.raises(DataError, match="non-empty"):
        create_image(tmp_path / "b.zarr", shape=(0, 4, 4), dtype="uint8", chunks=(1, 1, 1), voxel_size_nm=(1, 1, 1))
    with pytest.raises(DataError, match="voxel sizes"):
        create_image(tmp_path / "c.zarr", shape=(4, 4, 4), dtype="uint8", chunks=(1, 1, 1), voxel_size_nm=(0, 1, 1))
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists(), "nothing written on error"

    # an NGFF image whose axes alseg cannot work on
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    g = zarr.open_group(str(tmp_path / "weird.zarr"), mode="w")
    g.create_array("s0", shape=(3, 4, 5), dtype="u1")
    tr = [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]
    write_multiscales_metadata(g, [{"path": "s0", "coordinateTransformations": tr}], fmt=FormatV05(),
                               axes=[{"name": "t", "type": "time"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}])
    with pytest.raises(DataError, match="expected axes zyx"):
        open_volume(tmp_path / "weird.zarr")

    url, _ = make_image(str(tmp_path), "ok.zarr")
    with pytest.raises(DataError, match="level 7"):
        open_volume(url, level=7)
    vol = open_volume(url)
    with pytest.raises(DataError, match="outside|bounds"):
        vol.read(Box((0, 0, 0), (13, 1, 1)))
    with pytest.raises(DataError, match="does not fit"):
        open_volume(url, mode="r+").write(Box((0, 0, 0), (1, 2, 2)), np.zeros((2, 2, 2), np.uint8))


def test_micrometre_units_and_singleton_channel(tmp_path):
    """Images written by other tools: 0.4-style top-level metadata, micrometres, a c axis of 1."""
    import zarr

    g = zarr.open_group(str(tmp_path / "czyx.zarr"), mode="w", zarr_format=2)
    arr = g.create_array("0", shape=(1, 3, 4, 5), dtype="u2")
    arr[:] = np.arange(60, dtype="u2").reshape(1, 3, 4, 5)
    g.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "c", "type": "channel"}] + [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.05, 0.004, 0.004]}]}],
    }]
    vol = open_volume(tmp_path / "czyx.zarr")
    assert vol.shape == (3, 4, 5)
    assert vol.voxel_size_nm == pytest.approx((50.0, 4.0, 4.0))
    assert np.array_equal(vol.read(), np.arange(60).reshape(3, 4, 5))


def test_downsample_matches_plain_reference():
    rng = np.random.default_rng(1)
    a = rng.random((5, 7, 9))
    for f in [(1, 2, 2), (2, 2, 2), (3, 1, 4)]:
        assert np.allclose(downsample(a, f, kind="mean"), mean_pool_oracle(a, f))
        assert np.array_equal(downsample(a, f, kind="nearest"), a[:: f[0], :: f[1], :: f[2]])


def test_pyramid_factors_handle_anisotropy():
    # MitoEM: 30 x 8 x 8 nm; z halves once y has reached 32 nm
    f = pyramid_factors((1000, 4096, 4096), (30, 8, 8), levels=5)
    assert f == [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert pyramid_factors((10, 200, 200), (8, 8, 8)) == []
    assert len(pyramid_factors((10, 4096, 4096), (8, 8, 8))) == 4  # down to 256


def test_http_store_is_read_only(tmp_path):
    url, data = make_image(str(tmp_path), "web.zarr")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        web = f"http://127.0.0.1:{server.server_address[1]}/web.zarr"
        vol = open_volume(web)
        assert vol.shape == data.shape
        assert np.array_equal(vol.read(Box((0, 0, 0), (4, 32, 32))), data[:4, :32, :32])
        with pytest.raises(StoreError, match="read-only"):
            st.zarr_store(web, read_only=False)
    finally:
        server.shutdown()
        server.server_close()


def test_urls_are_redacted_and_credentials_never_logged(s3_bucket, s3_server, caplog):
    assert st.redact("s3://key:secret@bucket/a.zarr?X-Amz-Signature=abc") == "s3://bucket/a.zarr"
    assert st.redact("/data/x.zarr") == "/data/x.zarr"
    with pytest.raises(StoreError) as info:
        open_volume(f"{s3_bucket}/absent.zarr")
    assert s3_server["AWS_SECRET_ACCESS_KEY"] not in str(info.value)
    assert s3_server["AWS_SECRET_ACCESS_KEY"] not in caplog.text
    # storage options come from alseg's time-outs merged under fsspec's configuration
    opts = st.storage_options("s3://b/x")
    assert opts["config_kwargs"]["connect_timeout"] == 5
    assert "key" not in opts and "secret" not in opts
