"""Blockwise instance stitching against scipy.ndimage.label on the whole volume."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from alseg.errors import SpecError
from alseg.io.omezarr import create_image, create_labels, open_volume
from alseg.postprocess.stitch import UnionFind, label_components, structure


def same_partition(got: np.ndarray, ref: np.ndarray) -> bool:
    """Equal up to renumbering: the same background, and a bijection between object ids."""
    if not np.array_equal(got > 0, ref > 0):
        return False
    fg = ref > 0
    pairs = np.unique(np.stack([got[fg], ref[fg]], axis=1), axis=0)
    return len(pairs) == len(np.unique(got[fg])) == len(np.unique(ref[fg]))


def oracle(mask: np.ndarray, connectivity: int, min_size: int = 0) -> np.ndarray:
    ref, _ = ndimage.label(mask, structure=structure(connectivity))
    if min_size:
        sizes = np.bincount(ref.ravel())
        small = sizes < min_size
        small[0] = False
        ref[small[ref]] = 0
    return ref


def write_mask(root, mask: np.ndarray, chunks) -> str:
    url = str(root / "mask.zarr")
    vol = create_image(url, shape=mask.shape, dtype="uint8", chunks=chunks, voxel_size_nm=(1, 1, 1), levels=1)
    vol.write(vol.bounds, mask.astype(np.uint8))
    return url


def stitch(tmp_path, mask, block_shape, connectivity=26, min_size=0, chunks=None, runner=None, name="out"):
    chunks = chunks or block_shape
    url = str(tmp_path / "mask.zarr")
    if not (tmp_path / "mask.zarr").exists():
        write_mask(tmp_path, mask, chunks)
    out = create_labels(url, name, chunks=chunks)
    result = label_components(url, out.url, block_shape=block_shape, work_dir=tmp_path / f"work-{name}",
                              connectivity=connectivity, min_size_vox=min_size, runner=runner)
    return open_volume(out.url).read(), result


def random_blobs(shape, seed=0, level=0.52):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 2) > level


@pytest.mark.parametrize("connectivity", [6, 26])
@pytest.mark.parametrize("block_shape", [(4, 8, 8), (5, 9, 13), (8, 16, 16), (17, 31, 23), (24, 40, 40)])
def test_equals_whole_volume_labelling(tmp_path, connectivity, block_shape):
    mask = random_blobs((24, 40, 40), seed=1)
    got, result = stitch(tmp_path, mask, block_shape, connectivity)
    ref = oracle(mask, connectivity)
    assert same_partition(got, ref)
    assert result["objects"] == ref.max()
    # ids are consecutive from 1
    assert set(np.unique(got)) == set(range(result["objects"] + 1))


def u_shape() -> np.ndarray:
    """Two arms that connect only through a bottom bar in distant blocks."""
    m = np.zeros((8, 64, 64), bool)
    m[2:6, 4:60, 4:8] = True     # left arm
    m[2:6, 4:60, 56:60] = True   # right arm
    m[2:6, 56:60, 4:60] = True   # the bar that joins them, far away
    return m


def spiral() -> np.ndarray:
    m = np.zeros((4, 64, 64), bool)
    lo, hi = 2, 61
    while lo < hi:
        m[1:3, lo, lo:hi] = True
        m[1:3, lo:hi, hi - 1] = True
        m[1:3, hi - 1, lo + 4:hi] = True
        m[1:3, lo + 4:hi, lo + 4] = True
        lo, hi = lo + 8, hi - 4
    return m


def diagonal_chain() -> np.ndarray:
    """Voxels touching only corner to corner, across block corners: one object with 26, many with 6."""
    m = np.zeros((16, 16, 16), bool)
    for i in range(16):
        m[i, i, i] = True
    return m


@pytest.mark.parametrize("maker", [u_shape, spiral, diagonal_chain], ids=["U", "spiral", "diagonal"])
@pytest.mark.parametrize("connectivity", [6, 26])
def test_shapes_that_connect_only_through_distant_blocks(tmp_path, maker, connectivity):
    mask = maker()
    got, _ = stitch(tmp_path, mask, (4, 8, 8), connectivity)
    ref = oracle(mask, connectivity)
    assert same_partition(got, ref)
    if maker is u_shape:
        assert got.max() == 1, "the two arms are one object"
    if maker is diagonal_chain:
        assert got.max() == (1 if connectivity == 26 else 16)


def test_size_filter_applies_after_merging(tmp_path):
    """An object cut by block borders survives when whole it is large enough, though every piece is small."""
    mask = np.zeros((8, 32, 32), bool)
    mask[2:6, 6:10, 2:30] = True          # 448 voxels, cut into pieces of 4 x 4 x 8 = 128 or less
    mask[1:3, 20:22, 20:22] = True        # 8 voxels: filtered
    got, result = stitch(tmp_path, mask, (8, 8, 8), min_size=200)
    assert result["objects"] == 1
    assert same_partition(got, oracle(mask, 26, min_size=200))
    assert np.count_nonzero(got) == 448


def test_non_aligned_blocks_and_bad_arguments(tmp_path):
    mask = random_blobs((8, 16, 16))
    url = write_mask(tmp_path, mask, (4, 8, 8))
    out = create_labels(url, "x", chunks=(4, 8, 8))
    with pytest.raises(SpecError, match="chunks"):
        label_components(url, out.url, block_shape=(4, 6, 8), work_dir=tmp_path / "w")
    with pytest.raises(SpecError, match="connectivity"):
        label_components(url, out.url, block_shape=(4, 8, 8), work_dir=tmp_path / "w", connectivity=8)  # type: ignore[arg-type]


def test_union_find():
    uf = UnionFind()
    for a, b in [(1, 2), (3, 4), (2, 4), (10, 11)]:
        uf.union(a, b)
    assert uf.find(1) == uf.find(3) == uf.find(4)
    assert uf.find(10) == uf.find(11) != uf.find(1)
    assert uf.find(99) == 99


def test_rerun_resumes_and_gives_the_same_labels(tmp_path):
    mask = random_blobs((16, 32, 32), seed=3)
    got, _ = stitch(tmp_path, mask, (8, 16, 16), name="a")
    marker_dirs = [tmp_path / "work-a" / p for p in ("label", "relabel")]
    assert all(len(list(d.glob("*.json"))) == 8 for d in marker_dirs)
    # the faces pass: one strip per boundary row, taken by blocks (0, 0, 0), (0, 1, 0) and (1, 0, 0)
    assert sorted(p.stem for p in (tmp_path / "work-a" / "face-strips").glob("*.json")) == ["b_0_0_0", "b_0_1_0", "b_1_0_0"]
    # a rerun with every block recorded computes nothing and changes nothing
    out = open_volume(str(tmp_path / "mask.zarr/labels/a"))
    label_components(str(tmp_path / "mask.zarr"), out.url, block_shape=(8, 16, 16), work_dir=tmp_path / "work-a")
    assert np.array_equal(open_volume(out.url).read(), got)


def test_relabel_pass_labels_blocks_again_and_refuses_a_mask_changed_meanwhile(tmp_path):
    """No per-block label array is stored: the relabel pass labels each block again, and a mask
    that changed between the passes (one more component in a block, or as many of other sizes) is
    refused: the block fails, naming itself."""
    from alseg.errors import WorkFailedError

    mask = random_blobs((16, 32, 32), seed=6)
    got, _ = stitch(tmp_path, mask, (8, 16, 16), name="a")
    assert same_partition(got, oracle(mask, 26))
    assert not (tmp_path / "work-a" / "local.zarr").exists()
    first = mask[:8, :16, :16]
    labels, n = ndimage.label(first, structure=structure(26))
    isolated = mask.copy()
    isolated[:2, :2, :2] = False
    isolated[0, 0, 0] = True  # an isolated voxel: one more component
    # one voxel more for a component: a background voxel inside the block that touches exactly one
    touching = [ndimage.binary_dilation(labels == i, structure(26)) & ~first for i in range(1, n + 1)]
    only_one = (np.sum(touching, axis=0) == 1)
    only_one[[0, -1], :, :] = only_one[:, [0, -1], :] = only_one[:, :, [0, -1]] = False  # not on the block's faces
    grown = mask.copy()
    grown[:8, :16, :16][tuple(np.argwhere(only_one)[0])] = True
    assert ndimage.label(isolated[:8, :16, :16], structure=structure(26))[1] == n + 1
    assert ndimage.label(grown[:8, :16, :16], structure=structure(26))[1] == n
    out = open_volume(str(tmp_path / "mask.zarr/labels/a"))
    vol = open_volume(str(tmp_path / "mask.zarr"), mode="r+")
    for changed, what in ((isolated, f"{n + 1} components now against {n}"), (grown, f"{n} components now against {n} .*other sizes")):
        for record in (tmp_path / "work-a" / "relabel").glob("*.json"):  # interrupted before the relabel pass
            record.unlink()
        vol.write(vol.bounds, changed.astype(np.uint8))
        with pytest.raises(WorkFailedError, match=f"b_0_0_0.*DataError.*{what}.*the mask changed"):
            label_components(str(tmp_path / "mask.zarr"), out.url, block_shape=(8, 16, 16), work_dir=tmp_path / "work-a")


@pytest.mark.ray
def test_on_ray_equals_serial(tmp_path, ray_cluster):
    mask = random_blobs((16, 40, 40), seed=4)
    serial, _ = stitch(tmp_path, mask, (8, 16, 16), name="serial")
    distributed, _ = stitch(tmp_path, mask, (8, 16, 16), runner=ray_cluster, name="ray")
    assert np.array_equal(serial, distributed)
    assert same_partition(distributed, oracle(mask, 26))


def test_work_dir_of_another_geometry_is_refused(tmp_path):
    mask = random_blobs((16, 32, 32), seed=5)
    stitch(tmp_path, mask, (8, 16, 16), name="a")
    out = create_labels(str(tmp_path / "mask.zarr"), "b", chunks=(8, 8, 8))
    with pytest.raises(SpecError, match="another run"):
        label_components(str(tmp_path / "mask.zarr"), out.url, block_shape=(8, 8, 8), work_dir=tmp_path / "work-a")
    assert not open_volume(out.url).read().any(), "nothing was written"


def test_output_pyramid_is_filled_by_mode(tmp_path):
    from alseg.pyramid import downsample

    mask = random_blobs((8, 64, 64), seed=6)
    # a two-level image: its label images get two levels too
    img = create_image(tmp_path / "two.zarr", shape=mask.shape, dtype="uint8", chunks=(4, 16, 16), voxel_size_nm=(8, 8, 8), levels=2)
    img.write(img.bounds, mask.astype(np.uint8))
    out = create_labels(img.url, "inst", chunks=(4, 16, 16))
    label_components(img.url, out.url, block_shape=(4, 32, 32), work_dir=tmp_path / "w")
    full = open_volume(out.url).read()
    lower = open_volume(out.url, level=1)
    assert lower.shape == (4, 32, 32)
    assert np.array_equal(lower.read(), downsample(full, (2, 2, 2), kind="mode"))
    assert lower.read().any()


def dots(n: int) -> np.ndarray:
    """``n`` isolated voxels (separate objects with any connectivity) in a 2 x 64 x 64 mask."""
    mask = np.zeros((2, 64, 64), bool)
    ys, xs = np.divmod(np.arange(n), 32)
    mask[0, 2 * ys, 2 * xs] = True
    return mask


def test_255_objects_fit_a_uint8_output(tmp_path):
    mask = dots(255)
    url = write_mask(tmp_path, mask, (2, 32, 32))
    out = create_labels(url, "inst", dtype="uint8", chunks=(2, 32, 32))
    result = label_components(url, out.url, block_shape=(2, 32, 32), work_dir=tmp_path / "w")
    got = open_volume(out.url).read()
    assert result["objects"] == 255 and got.max() == 255
    assert same_partition(got, oracle(mask, 26))


@pytest.mark.parametrize(("n", "dtype", "needed"), [(256, "uint8", "uint16"), (1024, "uint8", "uint16")])
def test_too_many_objects_for_the_output_dtype_names_the_smallest_that_fits(tmp_path, n, dtype, needed):
    from alseg.errors import DataError

    mask = dots(n)
    url = write_mask(tmp_path, mask, (2, 32, 32))
    out = create_labels(url, "inst", dtype=dtype, chunks=(2, 32, 32))
    with pytest.raises(DataError, match=rf"{n} objects.*{dtype}.*{needed}\b") as info:
        label_components(url, out.url, block_shape=(2, 32, 32), work_dir=tmp_path / "w")
    assert "uint64" not in str(info.value)
    assert not open_volume(out.url).read().any(), "nothing was written"
    assert not (tmp_path / "w" / "relabel").exists() or not any((tmp_path / "w" / "relabel").iterdir())
