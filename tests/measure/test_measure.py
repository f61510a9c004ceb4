"""The per-instance table against whole-volume oracles: scikit-image's regionprops and plain numpy."""

from __future__ import annotations

import io

import numpy as np
import pytest
from scipy import ndimage

from alseg.errors import DataError, SpecError
from alseg.io import store as st
from alseg.io.omezarr import create_image, create_labels
from alseg.measure import COLUMNS, measure_instances, measure_labels
from alseg.runtime import SerialRunner

VOXEL = (30.0, 8.0, 4.0)  # anisotropic, z y x in nm


def labels_volume() -> np.ndarray:
    """Blobs that cross block borders, one object split into two parts, objects on the volume faces."""
    rng = np.random.default_rng(3)
    lab, _ = ndimage.label(ndimage.gaussian_filter(rng.random((10, 30, 34)), 2) > 0.52)
    lab = lab.astype(np.uint32) * 3  # sparse ids
    lab[4:6, 10:20, 2:4] = 1000
    lab[7:9, 25:28, 20:30] = 1000  # the same id in two places: one object, two parts
    lab[0, 0, :] = 77  # a rod on the volume's edge
    return lab


def write_labels(root, lab: np.ndarray, voxel=VOXEL, chunks=(2, 6, 8)) -> str:
    img = create_image(f"{root}/img.zarr", shape=lab.shape, dtype="uint8", chunks=chunks, voxel_size_nm=voxel, levels=1)
    lbl = create_labels(img.url, "cells", dtype=lab.dtype)
    lbl.write(lbl.bounds, lab)
    return lbl.url


def reference_regionprops(lab: np.ndarray, voxel) -> dict[int, dict]:
    from skimage.measure import regionprops

    out = {}
    for r in regionprops(lab):
        z0, y0, x0, z1, y1, x1 = r.bbox
        out[int(r.label)] = {"voxels": int(r.area), "bbox": (z0, y0, x0, z1, y1, x1),
                             "centroid_nm": tuple(c * v for c, v in zip(r.centroid, voxel))}
    return out


def reference_surface_um2(lab: np.ndarray, voxel) -> dict[int, float]:
    """Faces between an object's voxel and a 6-neighbour that is not the object (outside included)."""
    vz, vy, vx = voxel
    area = {0: vy * vx, 1: vz * vx, 2: vz * vy}
    padded = np.pad(lab, 1)  # outside the volume: not the object
    out = {}
    for i in np.unique(lab[lab > 0]):
        mask = np.pad(lab == i, 1)
        total = 0.0
        for axis in range(3):
            for shift in (1, -1):
                neighbour_is_other = np.roll(padded, shift, axis=axis) != i
                total += np.count_nonzero(mask & neighbour_is_other) * area[axis]
        out[int(i)] = total / 1e6
    return out


def reference_touches(lab: np.ndarray) -> dict[int, bool]:
    faces = np.zeros(lab.shape, bool)
    faces[[0, -1]] = True
    faces[:, [0, -1]] = True
    faces[:, :, [0, -1]] = True
    return {int(i): bool(np.any(faces & (lab == i))) for i in np.unique(lab[lab > 0])}


def assert_matches_references(table: dict[str, np.ndarray], lab: np.ndarray, voxel) -> None:
    props, surface, touches = reference_regionprops(lab, voxel), reference_surface_um2(lab, voxel), reference_touches(lab)
    assert list(table["id"]) == sorted(props)
    for row, i in enumerate(table["id"]):
        ref = props[int(i)]
        assert table["voxels"][row] == ref["voxels"]
        assert table["volume_um3"][row] == pytest.approx(ref["voxels"] * np.prod(voxel) / 1e9, rel=1e-12)
        got_bbox = tuple(int(table[f"bbox_{k}_{a}"][row]) for k in ("start", "stop") for a in "zyx")
        assert got_bbox == ref["bbox"]
        got_c = tuple(table[f"centroid_{a}_nm"][row] for a in "zyx")
        assert got_c == pytest.approx(ref["centroid_nm"], rel=1e-12, abs=1e-9)
        assert table["surface_um2"][row] == pytest.approx(surface[int(i)], rel=1e-12)
        assert bool(table["touches_border"][row]) == touches[int(i)]


def test_in_memory_table_equals_references():
    lab = labels_volume()
    table = measure_labels(lab, VOXEL)
    assert tuple(table) == COLUMNS
    assert 1000 in table["id"] and 77 in table["id"]
    assert not table["touches_border"].all() and table["touches_border"].any()
    assert_matches_references(table, lab, VOXEL)


def test_hand_case():
    lab = np.zeros((3, 4, 5), np.uint16)
    lab[1:3, 1:3, 1:4] = 7  # 2 x 2 x 3 voxels, touching the upper z face
    t = measure_labels(lab, (30, 8, 4))
    assert t["id"].tolist() == [7] and t["voxels"].tolist() == [12]
    # z faces 2*(2*3) of 8*4 nm2, y faces 2*(2*3) of 30*4, x faces 2*(2*2) of 30*8
    assert t["surface_um2"][0] == pytest.approx((12 * 32 + 12 * 120 + 8 * 240) / 1e6)
    assert t["volume_um3"][0] == pytest.approx(12 * 960 / 1e9)
    assert [t[f"centroid_{a}_nm"][0] for a in "zyx"] == pytest.approx([1.5 * 30, 1.5 * 8, 2 * 4])
    assert bool(t["touches_border"][0])


@pytest.mark.parametrize("block_shape", [(2, 6, 8), (3, 7, 5), (4, 12, 16), (10, 30, 34), (1, 30, 34)])
def test_blockwise_table_equals_whole_volume(tmp_path, block_shape):
    lab = labels_volume()
    url = write_labels(tmp_path, lab)
    out = tmp_path / "measurements"
    res = measure_instances(url, str(out), block_shape=block_shape)
    assert res["instances"] == len(np.unique(lab)) - 1 and res["voxel_size_nm"] == VOXEL
    table = read_parquet(res["parquet"])
    assert_matches_references({c: table[c].to_numpy() for c in COLUMNS}, lab, VOXEL)
    same = measure_labels(lab, VOXEL)
    for c in COLUMNS:
        assert np.array_equal(table[c].to_numpy(), same[c]), c  # exact, block shape or not


def test_voxel_size_override_and_empty_volume(tmp_path):
    lab = labels_volume()
    url = write_labels(tmp_path, lab, voxel=(1, 1, 1))
    res = measure_instances(url, str(tmp_path / "m"), block_shape=(4, 12, 16), voxel_size_nm=VOXEL)
    assert_matches_references({c: read_parquet(res["parquet"])[c].to_numpy() for c in COLUMNS}, lab, VOXEL)
    empty = write_labels(tmp_path / "e", np.zeros((4, 8, 8), np.uint32))
    res = measure_instances(empty, str(tmp_path / "e" / "m"), block_shape=(2, 4, 4))
    table = read_parquet(res["parquet"])
    assert res["instances"] == 0 and list(table.columns) == list(COLUMNS) and len(table) == 0


def read_parquet(url: str):
    import pandas as pd

    fs, path = st.filesystem(url)
    with fs.open(path, "rb") as fh:
        return pd.read_parquet(io.BytesIO(fh.read()))


def test_parquet_and_csv_read_back_identical(store_root, tmp_path):
    import pandas as pd
    import pyarrow.parquet as pq

    lab = labels_volume()
    url = write_labels(tmp_path, lab)
    out = st.join(store_root, "measurements")
    res = measure_instances(url, out, block_shape=(4, 12, 16))
    assert res["parquet"] == st.join(out, "instances.parquet") and res["csv"] == st.join(out, "instances.csv")
    fs, path = st.filesystem(res["csv"])
    with fs.open(path, "rb") as fh:
        csv = pd.read_csv(io.BytesIO(fh.read()))
    parquet = read_parquet(res["parquet"])
    assert list(csv.columns) == list(parquet.columns) == list(COLUMNS) and len(csv) == res["instances"]
    assert parquet["id"].dtype == np.uint64 and parquet["touches_border"].dtype == bool
    pd.testing.assert_frame_equal(csv, parquet.astype({"id": "int64"}), check_exact=True)
    fs, path = st.filesystem(res["parquet"])
    with fs.open(path, "rb") as fh:
        meta = pq.read_schema(fh).metadata
    assert b"voxel_size_nm" in meta[b"alseg"]


def test_bad_inputs_are_refused_before_any_block(tmp_path):
    class NoBlocks(SerialRunner):
        def map(self, *args, **kwargs):
            raise AssertionError("a block was read before the inputs were checked")

    lab = labels_volume()
    url = write_labels(tmp_path, lab)
    with pytest.raises(SpecError, match="inside the label volume"):
        measure_instances(url, url + "/table", block_shape=(4, 12, 16), runner=NoBlocks())
    with pytest.raises(SpecError, match="voxel_size_nm"):
        measure_instances(url, str(tmp_path / "m"), block_shape=(4, 12, 16), voxel_size_nm=(30, 0, 4), runner=NoBlocks())
    floats = create_image(tmp_path / "float.zarr", shape=lab.shape, dtype="float32", chunks=(2, 6, 8), voxel_size_nm=VOXEL, levels=1)
    with pytest.raises(DataError, match="integers"):
        measure_instances(floats.url, str(tmp_path / "m"), block_shape=(4, 12, 16), runner=NoBlocks())
    signed = create_image(tmp_path / "signed.zarr", shape=lab.shape, dtype="int32", chunks=(2, 6, 8), voxel_size_nm=VOXEL, levels=1)
    signed.write(signed.bounds, np.where(lab > 0, lab, -1).astype(np.int32))
    with pytest.raises(DataError, match="negative"):
        measure_instances(signed.url, str(tmp_path / "m"), block_shape=(4, 12, 16))


def test_rerun_with_work_dir_reuses_finished_blocks(tmp_path):
    class Counting(SerialRunner):
        calls = 0

        def _run_fn(self, fn, todo, resources, done, desc):
            Counting.calls += len(todo)
            super()._run_fn(fn, todo, resources, done, desc)

    lab = labels_volume()
    url = write_labels(tmp_path, lab)
    first = measure_instances(url, str(tmp_path / "m"), block_shape=(4, 12, 16), work_dir=str(tmp_path / "work"), runner=Counting())
    n = Counting.calls
    assert n == first["blocks"]
    again = measure_instances(url, str(tmp_path / "m"), block_shape=(4, 12, 16), work_dir=str(tmp_path / "work"), runner=Counting())
    assert Counting.calls == n and again == first


@pytest.mark.slow
@pytest.mark.ray
def test_ray_equals_serial(tmp_path, ray_cluster):
    lab = labels_volume()
    url = write_labels(tmp_path, lab)
    serial = measure_instances(url, str(tmp_path / "serial"), block_shape=(3, 7, 5))
    on_ray = measure_instances(url, str(tmp_path / "ray"), block_shape=(3, 7, 5), runner=ray_cluster)
    a, b = read_parquet(serial["parquet"]), read_parquet(on_ray["parquet"])
    import pandas as pd

    pd.testing.assert_frame_equal(a, b, check_exact=True)
