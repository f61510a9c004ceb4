"""Pyramids through the blockwise engine: mean for images, nearest and mode for labels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from alseg.errors import DataError
from alseg.io.omezarr import create_image, create_labels, open_volume
from alseg.pyramid import build_pyramid, downsample, pyramid_block_shape


def mode_pool_oracle(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """A plain reference: the most common value of every f-block inside ``a``, the smallest on ties."""
    out = np.empty(tuple(-(-s // k) for s, k in zip(a.shape, f)), dtype=a.dtype)
    for idx in np.ndindex(out.shape):
        window = a[tuple(slice(i * k, (i + 1) * k) for i, k in zip(idx, f))].ravel().tolist()
        counts = Counter(window)
        top = max(counts.values())
        out[idx] = min(v for v, c in counts.items() if c == top)
    return out


@pytest.mark.parametrize("f", [(1, 2, 2), (2, 2, 2), (3, 1, 4), (1, 1, 1)])
def test_mode_matches_plain_reference(f):
    rng = np.random.default_rng(2)
    for dtype in (np.uint8, np.uint32, np.uint64):
        a = rng.integers(0, 4, (5, 7, 9)).astype(dtype)
        a[0, 0, 0] = np.iinfo(dtype).max  # the largest value of the dtype is a value like any other
        assert np.array_equal(downsample(a, f, kind="mode"), mode_pool_oracle(a, f))


def test_mode_keeps_what_nearest_loses():
    """A one-voxel-thin membrane on odd rows: nearest (every other voxel) never sees it, mode keeps
    it where it fills half of each block and the background does not win the tie."""
    a = np.zeros((2, 8, 8), np.uint32)
    a[:, 1::2, :] = 7
    assert not downsample(a, (1, 2, 2), kind="nearest").any()
    assert (downsample(a, (1, 2, 2), kind="mode") == 0).all(), "ties go to the smallest value"
    a[:, 0::4, :] = 7  # now 7 holds three of four voxels in every other block row
    assert (downsample(a, (1, 2, 2), kind="mode")[:, 0::2] == 7).all()
    with pytest.raises(DataError, match="unknown downsampling"):
        downsample(a, (1, 2, 2), kind="median")  # type: ignore[arg-type]


def blobs(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, shape).astype(np.uint8), rng.integers(0, 6, shape).astype(np.uint32)


def make(tmp_path: Path, shape=(10, 70, 50), chunks=(4, 16, 16)):
    image, labels = blobs(shape)
    url = str(tmp_path / "img.zarr")
    vol = create_image(url, shape=shape, dtype="uint8", chunks=chunks, voxel_size_nm=(8, 8, 8), levels=3)
    vol.write(vol.bounds, image)
    lab = create_labels(url, "seg", chunks=chunks)
    lab.write(lab.bounds, labels)
    return url, lab.url, image, labels


def chained(data: np.ndarray, url: str, kind: str) -> list[np.ndarray]:
    """Every level computed from the whole level above in memory: the reference."""
    levels = [data]
    top = open_volume(url)
    for i in range(1, len(top.level_paths)):
        shape_prev, shape = open_volume(url, level=i - 1).shape, open_volume(url, level=i).shape
        f = tuple(max(1, round(a / b)) for a, b in zip(shape_prev, shape))
        levels.append(downsample(levels[-1], f, kind=kind))  # type: ignore[arg-type]
    return levels


@pytest.mark.parametrize("block_shape", [(4, 16, 16), (8, 32, 16), None])
def test_blockwise_levels_equal_whole_level_downsampling(tmp_path, block_shape):
    url, lab_url, image, labels = make(tmp_path)
    build_pyramid(url, kind="mean", block_shape=block_shape)
    build_pyramid(lab_url, kind="mode", block_shape=block_shape)
    for target, data, kind in ((url, image, "mean"), (lab_url, labels, "mode")):
        ref = chained(data, target, kind)
        assert len(ref) == 3
        for level, expected in enumerate(ref):
            got = open_volume(target, level=level).read()
            assert got.dtype == expected.dtype and np.array_equal(got, expected), (kind, level)


def test_resumable_and_refuses_misaligned_blocks(tmp_path):
    url, _, image, _ = make(tmp_path)
    work = tmp_path / "work"
    build_pyramid(url, kind="mean", block_shape=(4, 16, 16), work_dir=work)
    records = {p.name: len(list(p.glob("*.json"))) for p in sorted(work.iterdir())}
    # one record per block of each level
    shapes = [open_volume(url, level=i).shape for i in (1, 2)]
    expected = {f"pyramid-s{i + 1}": int(np.prod([-(-s // b) for s, b in zip(shape, (4, 16, 16))])) for i, shape in enumerate(shapes)}
    assert records == expected
    before = open_volume(url, level=2).read()
    open_volume(url, level=2, mode="r+").write(open_volume(url, level=2).bounds, np.zeros_like(before))
    build_pyramid(url, kind="mean", block_shape=(4, 16, 16), work_dir=work)
    assert not open_volume(url, level=2).read().any(), "a rerun with every block recorded computes nothing"
    from alseg.errors import SpecError

    with pytest.raises(SpecError, match="level 1"):
        build_pyramid(url, kind="mean", block_shape=(4, 24, 16))


def test_default_block_shape_is_whole_chunks_near_the_target():
    assert pyramid_block_shape((1000, 2048, 2048), (32, 256, 256), target_voxels=2**24) == (64, 512, 512)
    assert pyramid_block_shape((4, 20, 20), (4, 16, 16)) == (4, 20, 20)
    b = pyramid_block_shape((500, 3000, 3000), (16, 128, 128), target_voxels=2**22)
    assert np.prod(b) <= 2**22 and all(x % c == 0 for x, c in zip(b, (16, 128, 128)))


@pytest.mark.ray
def test_on_ray_equals_serial(tmp_path, ray_cluster):
    url, lab_url, *_ = make(tmp_path / "a")
    build_pyramid(lab_url, kind="mode", block_shape=(4, 16, 16))
    url_b, lab_b, *_ = make(tmp_path / "b")
    build_pyramid(lab_b, kind="mode", block_shape=(4, 16, 16), runner=ray_cluster)
    for level in (1, 2):
        assert np.array_equal(open_volume(lab_url, level=level).read(), open_volume(lab_b, level=level).read())
