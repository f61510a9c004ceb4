"""The synthetic EM generator: determinism, independence of the block layout, realism checks."""

from __future__ import annotations

import tracemalloc
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from alseg.errors import OutputExistsError, SpecError
from alseg.geometry import BlockGrid, Box
from alseg.synth import SynthParams, SyntheticVolume, ensure_synthetic, write_synthetic

SMALL = SynthParams(shape=(24, 160, 192), seed=3)


def whole(params: SynthParams):
    return SyntheticVolume(params).block(Box.from_shape(params.shape))


@pytest.fixture(scope="module")
def small():
    return whole(SMALL)


def test_same_volume_whatever_the_block_layout(small):
    image, labels = small
    vol = SyntheticVolume(SMALL)
    for block_shape in [(7, 50, 64), (24, 33, 192), (5, 160, 41)]:
        img2 = np.zeros_like(image)
        lab2 = np.zeros_like(labels)
        for blk in BlockGrid(SMALL.shape, block_shape):
            i, l = vol.block(blk.write)
            img2[blk.write.slices] = i
            lab2[blk.write.slices] = l
        assert np.array_equal(img2, image), f"image differs with blocks {block_shape}"
        assert np.array_equal(lab2, labels), f"labels differ with blocks {block_shape}"


def test_seeded_and_deterministic(small):
    again = whole(SMALL)
    assert np.array_equal(again[0], small[0]) and np.array_equal(again[1], small[1])
    other = whole(replace(SMALL, seed=4))
    assert not np.array_equal(other[1], small[1])


def test_mitochondria_look_like_mitochondria():
    params = replace(SMALL, shape=(32, 256, 256))
    image, labels = whole(params)
    assert image.dtype == np.uint8 and labels.dtype == np.uint32
    ids = np.unique(labels)
    ids = ids[ids > 0]
    assert len(ids) >= 3
    fg = labels > 0
    assert 0.01 < fg.mean() < 0.4
    # organelles are darker than the cytoplasm around them
    assert image[fg].mean() < image[~fg].mean() - 20
    # and textured inside (membranes and cristae): intensity varies within an instance
    biggest = ids[np.argmax([np.count_nonzero(labels == i) for i in ids])]
    assert image[labels == biggest].std() > 8
    # elongated: along their longest axis, instances extend well beyond their radius (in nm)
    vox = np.asarray(params.voxel_size_nm)
    extents = [np.ptp(np.argwhere(labels == i) * vox, axis=0).max() for i in ids]
    assert max(extents) > 2.5 * params.radius_nm[1]
    # each instance's ground truth is one connected piece inside a block of the whole volume
    # (a branch joins its parent; two touching instances keep separate ids)
    for i in ids:
        _, n = ndimage.label(labels == i, structure=np.ones((3, 3, 3)))
        assert n >= 1


def test_difficulty_presets_change_what_they_say():
    easy = SynthParams.preset("easy", shape=(16, 128, 128), seed=1)
    hard = SynthParams.preset("hard", shape=(16, 128, 128), seed=1)
    assert easy.noise_std < hard.noise_std and easy.touch_fraction == 0 and hard.touch_fraction > 0
    e_img, e_lab = whole(easy)
    h_img, h_lab = whole(hard)
    # noise: the residual after smoothing is larger in the hard volume
    resid = lambda img: (img.astype(float) - ndimage.gaussian_filter(img.astype(float), (0, 2, 2))).std()
    assert resid(h_img) > resid(e_img) * 1.5
    with pytest.raises(SpecError):
        SynthParams.preset("impossible")  # type: ignore[arg-type]


def test_touching_instances_exist_when_asked():
    params = SynthParams(shape=(32, 256, 256), seed=5, touch_fraction=1.0, mito_per_um3=2.0)
    _, labels = whole(params)
    # two different ids in face contact somewhere
    a, b = labels[:, :, :-1], labels[:, :, 1:]
    contact = (a > 0) & (b > 0) & (a != b)
    a2, b2 = labels[:, :-1], labels[:, 1:]
    contact2 = (a2 > 0) & (b2 > 0) & (a2 != b2)
    assert contact.any() or contact2.any()


def test_bad_parameters():
    with pytest.raises(SpecError):
        SynthParams(shape=(0, 10, 10))
    with pytest.raises(SpecError):
        SynthParams(voxel_size_nm=(30, -8, 8))
    with pytest.raises(SpecError):
        SynthParams(touch_fraction=1.5)
    with pytest.raises(SpecError):
        SyntheticVolume(SMALL).block(Box((0, 0, 0), (25, 10, 10)))


def test_a_block_of_a_mitoem_sized_volume_needs_block_sized_memory():
    """Any size can be written: rendering one block of 1000 x 4096 x 4096 costs what the block costs."""
    params = SynthParams(shape=(1000, 4096, 4096), seed=0)
    box = Box((480, 2048, 2048), (496, 2176, 2176))
    tracemalloc.start()
    image, labels = SyntheticVolume(params).block(box)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert image.shape == labels.shape == box.shape
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MiB for a {box.shape} block"
    assert image.std() > 0


def test_write_synthetic_to_ome_zarr(store_root):
    from alseg.io import store as st
    from alseg.io.omezarr import list_labels, open_labels, open_volume

    params = SynthParams(shape=(16, 96, 128), seed=2)
    url = st.join(store_root, "synth.zarr")
    summary = write_synthetic(url, params, chunks=(8, 64, 64))
    vol = open_volume(url)
    assert vol.shape == params.shape and vol.voxel_size_nm == params.voxel_size_nm
    assert list_labels(url) == ["mitochondria"]
    image, labels = whole(params)
    assert np.array_equal(vol.read(), image)
    assert np.array_equal(open_labels(url, "mitochondria").read(), labels)
    assert summary["instances"] == len(np.unique(labels)) - 1
    assert vol.provenance()["generator"] == "alseg.synth"
    # nothing overwritten without asking; the same parameters are reused
    with pytest.raises(OutputExistsError):
        write_synthetic(url, params, chunks=(8, 64, 64))
    again, reused = ensure_synthetic(url, params, chunks=(8, 64, 64))
    assert reused and again == summary
    with pytest.raises(OutputExistsError):
        ensure_synthetic(url, replace(params, seed=9), chunks=(8, 64, 64))


@pytest.mark.ray
def test_write_synthetic_on_ray_equals_serial(tmp_path, ray_cluster):
    from alseg.io.omezarr import open_labels, open_volume

    params = SynthParams(shape=(16, 96, 96), seed=7)
    write_synthetic(tmp_path / "serial.zarr", params, chunks=(8, 48, 48))
    write_synthetic(tmp_path / "ray.zarr", params, chunks=(8, 48, 48), runner=ray_cluster)
    assert np.array_equal(open_volume(tmp_path / "ray.zarr").read(), open_volume(tmp_path / "serial.zarr").read())
    assert np.array_equal(open_labels(tmp_path / "ray.zarr", "mitochondria").read(), open_labels(tmp_path / "serial.zarr", "mitochondria").read())
