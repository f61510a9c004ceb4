"""Blockwise seeded watershed against a whole-volume reference built from scipy and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import watershed

from alseg.errors import SpecError
from alseg.io.omezarr import create_image, create_labels, open_volume
from alseg.postprocess.stitch import structure
from alseg.postprocess.watershed import split_instances

VOX = (16.0, 8.0, 8.0)


def reference(mask: np.ndarray, seed_distance_nm: float, min_size: int = 0, connectivity: int = 26,
              cap_nm: float = np.inf) -> np.ndarray:
    """The same algorithm on the whole volume in memory (elevation: the distance capped at ``cap_nm``)."""
    dist = ndimage.distance_transform_edt(mask, sampling=VOX)
    seeds, _ = ndimage.label(dist >= seed_distance_nm, structure=structure(connectivity))
    regions = watershed(-np.minimum(dist, cap_nm), markers=seeds, mask=mask, connectivity=1 if connectivity == 6 else 3)
    left, n_left = ndimage.label(mask & (regions == 0), structure=structure(connectivity))
    out = np.where(regions > 0, regions, np.where(left > 0, left + regions.max(), 0))
    if min_size:
        sizes = np.bincount(out.ravel())
        small = sizes < min_size
        small[0] = False
        out[small[out]] = 0
    return out


def write(tmp_path, mask: np.ndarray, name="mask.zarr", chunks=(8, 16, 16), levels=1):
    vol = create_image(tmp_path / name, shape=mask.shape, dtype="uint8", chunks=chunks, voxel_size_nm=VOX, levels=levels)
    vol.write(vol.bounds, mask.astype(np.uint8))
    return vol.url


def run(tmp_path, mask, block=(8, 16, 16), halo=(4, 8, 8), name="ws", **kw):
    url = str(tmp_path / "mask.zarr")
    if not (tmp_path / "mask.zarr").exists():
        write(tmp_path, mask)
    out = create_labels(url, name, chunks=(8, 16, 16))
    res = split_instances(url, out.url, block_shape=block, halo=halo, work_dir=tmp_path / f"work-{name}", **kw)
    return open_volume(out.url).read(), res


def agreement(got: np.ndarray, ref: np.ndarray) -> float:
    """Fraction of foreground voxels on which the two labelings agree after one-to-one matching."""
    fg = (got > 0) | (ref > 0)
    pairs, counts = np.unique(np.stack([got[fg], ref[fg]]), axis=1, return_counts=True)
    used_g, used_r, agree = set(), set(), 0
    for i in np.argsort(-counts):
        g, r = pairs[:, i]
        if g and r and g not in used_g and r not in used_r:
            used_g.add(g), used_r.add(r)
            agree += counts[i]
    return agree / fg.sum()


def dumbbell() -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping balls (one object to connected components) and a thin rod with no core."""
    z, y, x = np.mgrid[:16, :48, :64]
    phys = lambda cz, cy, cx: np.sqrt(((z - cz) * VOX[0]) ** 2 + ((y - cy) * VOX[1]) ** 2 + ((x - cx) * VOX[2]) ** 2)
    a, b = phys(8, 24, 20) <= 100, phys(8, 24, 42) <= 100
    mask = a | b
    mask[2:4, 4:6, 10:50] = True  # the rod: 2 voxels thick, far thinner than the seed distance
    truth = np.where(a & (phys(8, 24, 20) <= phys(8, 24, 42)), 1, np.where(mask & (a | b), 2, 0))
    truth[2:4, 4:6, 10:50] = 3
    return mask, truth


def test_touching_balls_are_split_and_thin_objects_kept(tmp_path):
    mask, truth = dumbbell()
    assert ndimage.label(mask, structure=structure(26))[1] == 2, "connected components see one ball pair and the rod"
    got, res = run(tmp_path, mask, seed_distance_nm=60.0)
    assert res == {"objects": 3, "seeds": 2, "split_regions": 2, "leftover": 1, "rejoined": 0}
    assert agreement(got, truth) > 0.97
    assert agreement(got, reference(mask, 60.0)) > 0.995


def balls(seed: int, shape=(16, 64, 64), n=30) -> np.ndarray:
    """Overlapping balls of 40-90 nm radius: touching mitochondria-like objects."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    m = np.zeros(shape, bool)
    for _ in range(n):
        c, r = rng.uniform((0, 0, 0), shape), rng.uniform(40, 90)
        m |= ((z - c[0]) * VOX[0]) ** 2 + ((y - c[1]) * VOX[1]) ** 2 + ((x - c[2]) * VOX[2]) ** 2 <= r * r
    return m


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("block,halo", [((8, 16, 16), (4, 8, 8)), ((8, 32, 16), (8, 16, 16)), ((16, 64, 64), (0, 0, 0))])
def test_blockwise_equals_whole_volume(tmp_path, seed, block, halo):
    mask = balls(seed)
    got, res = run(tmp_path, mask, block=block, halo=halo, seed_distance_nm=30.0, min_size_vox=20)
    ref = reference(mask, 30.0, min_size=20)
    assert res["objects"] == len(np.unique(ref)) - 1 > ndimage.label(mask, structure=structure(26))[1], "touching balls split"
    assert set(np.unique(got)) == set(range(res["objects"] + 1)), "consecutive ids"
    # flooding near a border sees only the halo's context: a few voxels may differ, ids never do
    assert agreement(got, ref) > 0.999
    if block == (16, 64, 64):  # one block: exactly the whole-volume computation
        assert agreement(got, ref) == 1.0


def test_piece_beyond_its_seeds_view_rejoins_its_object(tmp_path):
    """A ball with a long thin tail: blocks far down the tail see foreground but no seed; those pieces
    must join the ball's object, not become objects of their own."""
    z, y, x = np.indices((8, 32, 96))
    mask = ((z - 4) * VOX[0]) ** 2 + ((y - 16) * VOX[1]) ** 2 + ((x - 8) * VOX[2]) ** 2 <= 70 ** 2
    mask[3:5, 15:17, 8:90] = True  # two voxels thick: no core of its own
    got, res = run(tmp_path, mask, block=(8, 16, 16), halo=(4, 8, 8), seed_distance_nm=30.0)
    assert res["seeds"] == 1 and res["rejoined"] >= 1
    assert res["objects"] == 1 and (got[mask] == 1).all() and not got[~mask].any()
    assert agreement(got, reference(mask, 30.0)) == 1.0


def test_boundary_map_splits_touching_boxes(tmp_path):
    mask = np.zeros((8, 32, 48), bool)
    mask[2:6, 8:24, 4:44] = True  # one slab, two cells separated by a membrane at x = 24
    boundary = np.zeros(mask.shape, np.float32)
    boundary[:, :, 23:25] = 0.9
    write(tmp_path, mask)
    bvol = create_image(tmp_path / "boundary.zarr", shape=mask.shape, dtype="float32", chunks=(8, 16, 16), voxel_size_nm=VOX, levels=1)
    bvol.write(bvol.bounds, boundary)
    got, res = run(tmp_path, mask, block=(8, 16, 16), halo=(2, 4, 4), method="boundary", boundary_url=bvol.url)
    assert res["objects"] == 2
    left, right = got[4, 16, 10], got[4, 16, 40]
    assert left and right and left != right
    assert (got[mask] > 0).all(), "the membrane voxels are flooded too"


def test_bad_arguments(tmp_path):
    mask, _ = dumbbell()
    with pytest.raises(SpecError, match="widen the halo"):
        run(tmp_path, mask, halo=(2, 2, 2), seed_distance_nm=60.0)
    with pytest.raises(SpecError, match="boundary_url"):
        run(tmp_path, mask, name="b", method="boundary")


@pytest.mark.ray
def test_on_ray_equals_serial(tmp_path, ray_cluster):
    mask, _ = dumbbell()
    serial, _ = run(tmp_path, mask, name="serial", seed_distance_nm=60.0)
    distributed, _ = run(tmp_path, mask, name="ray", seed_distance_nm=60.0, runner=ray_cluster)
    assert np.array_equal(serial, distributed)
