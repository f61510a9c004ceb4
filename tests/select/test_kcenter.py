"""k-center greedy: identical picks to plain references (random data, duplicates, store streaming)."""

import numpy as np
import pytest

from alseg.errors import SpecError
from alseg.select import kcenter_greedy, normalize_rows
from tests.helpers.kcenter_reference import reference_kcenter, sklearn_kcenter


def _data(n=3000, d=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)


@pytest.mark.parametrize("chunk_rows", [7, 1000, 16384])
def test_identical_to_reference_on_random_data(chunk_rows):
    raw = _data()
    x = normalize_rows(raw)
    res = kcenter_greedy(x, 60, n_initial=3, seed=5, chunk_rows=chunk_rows)
    assert res.n_initial == 3 and len(set(res.picks.tolist())) == 60
    ref = reference_kcenter(x, 60, res.picks[:3])
    np.testing.assert_array_equal(res.picks, ref)
    # the usual sklearn way (re-normalising raw rows each step) agrees bit for bit
    np.testing.assert_array_equal(res.picks, sklearn_kcenter(raw, 60, res.picks[:3]))
    # the covering radius never grows
    assert np.all(np.diff(res.distance[3:]) <= 0)


def test_random_starts_are_seeded():
    x = normalize_rows(_data(500))
    a = kcenter_greedy(x, 10, seed=1).picks
    assert np.array_equal(a, kcenter_greedy(x, 10, seed=1).picks)
    assert not np.array_equal(a[:3], kcenter_greedy(x, 10, seed=2).picks[:3])


def test_duplicates_are_picked_once_and_last():
    base = normalize_rows(_data(40, 8, seed=3))
    x = np.concatenate([base, base, base[:10]])  # every point twice, ten of them three times
    res = kcenter_greedy(x, 60, starts=[0])
    np.testing.assert_array_equal(res.picks, reference_kcenter(x, 60, [0]))
    first = res.picks[:40]
    # the 40 distinct points come first (one copy each), then only copies at ~zero distance
    assert len({tuple(np.round(x[i], 6)) for i in first}) == 40
    assert np.all(res.distance[40:] < 1e-6) and np.all(res.distance[1:40] > 1e-3)
    assert len(set(res.picks.tolist())) == 60


def test_euclidean_and_annotated_start_and_exclude():
    x = _data(2000, 16, seed=4) * np.linspace(0.5, 2.0, 2000, dtype=np.float32)[:, None]
    ann, ex = [5, 17, 1999], [3, 4, 1500]
    res = kcenter_greedy(x, 40, annotated=ann, exclude=ex, metric="euclidean")
    assert res.n_initial == 0 and not set(res.picks.tolist()) & set(ann + ex)
    np.testing.assert_array_equal(res.picks, reference_kcenter(x, 40, [], annotated=ann, exclude=ex, metric="euclidean"))


def test_streams_rows_from_a_zarr_store(tmp_path):
    import zarr

    x = normalize_rows(_data(5000, 24, seed=6))
    z = zarr.create_array(tmp_path / "emb.zarr", shape=x.shape, chunks=(512, 24), dtype="float32")
    z[:] = x
    streamed = kcenter_greedy(z, 30, starts=[7], max_memory_bytes=1)
    np.testing.assert_array_equal(streamed.picks, kcenter_greedy(x, 30, starts=[7]).picks)
    np.testing.assert_array_equal(streamed.picks, reference_kcenter(x, 30, [7]))


def test_bad_input():
    x = normalize_rows(_data(20, 4))
    with pytest.raises(SpecError, match="exceeds"):
        kcenter_greedy(x, 19, exclude=[0, 1])
    with pytest.raises(SpecError, match="normalised"):
        kcenter_greedy(x * 3, 5)
    with pytest.raises(SpecError, match="2D"):
        kcenter_greedy(x[0], 1)
    with pytest.raises(SpecError, match="starts"):
        kcenter_greedy(x, 3, starts=[1, 1])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_torch_device_path_picks_the_same(metric):
    """The GPU code path, run on torch's CPU device here (no GPU in CI)."""
    x = normalize_rows(_data(3000, 32, seed=8)) if metric == "cosine" else _data(3000, 32, seed=8)
    a = kcenter_greedy(x, 50, starts=[11], metric=metric, device="cpu")
    b = kcenter_greedy(x, 50, starts=[11], metric=metric, device=torch_cpu())
    np.testing.assert_array_equal(a.picks, b.picks)
    ann = kcenter_greedy(x, 30, annotated=[1, 2, 3, 4], exclude=[5], metric=metric, device=torch_cpu())
    np.testing.assert_array_equal(ann.picks, reference_kcenter(x, 30, [], annotated=[1, 2, 3, 4], exclude=[5], metric=metric))


def torch_cpu():
    """A torch device string that is not 'cpu' to alseg's dispatch but runs on the CPU."""
    return "cpu:0"


def _reference_start(x, start, metric, exclude=()):
    """The deterministic start spelled out: argmin / argmax of the distance to the candidates' mean."""
    x = np.asarray(x, dtype=np.float64)
    free = np.ones(len(x), dtype=bool)
    free[list(exclude)] = False
    mean = x[free].mean(axis=0)
    if metric == "cosine":
        d = 1.0 - (x @ mean) / np.linalg.norm(mean)
    else:
        d = np.linalg.norm(x - mean, axis=1)
    d = np.where(free, d, np.nan)
    return int(np.nanargmin(d) if start == "central" else np.nanargmax(d))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("start", ["central", "outlier"])
def test_deterministic_start_then_reference_greedy(start, metric):
    raw = _data(1500, 16, seed=9) + np.float32(0.3)  # off-centre, so the mean is not ~0
    x = normalize_rows(raw) if metric == "cosine" else raw
    ex = [0, 7, 100, 1499]
    first = _reference_start(x, start, metric, exclude=ex)
    res = kcenter_greedy(x, 25, start=start, metric=metric, exclude=ex, chunk_rows=97, seed=3)
    assert res.start == start and res.n_initial == 1 and res.picks[0] == first and np.isnan(res.distance[0])
    np.testing.assert_array_equal(res.picks, reference_kcenter(x, 25, [first], exclude=ex, metric=metric))
    # no seed in it: another seed, the same picks; and the torch code path agrees
    np.testing.assert_array_equal(res.picks, kcenter_greedy(x, 25, start=start, metric=metric, exclude=ex, seed=11).picks)
    np.testing.assert_array_equal(res.picks, kcenter_greedy(x, 25, start=start, metric=metric, exclude=ex,
                                                            device=torch_cpu()).picks)


def test_central_and_outlier_on_a_plain_example():
    """Three points around (1, 0) and one at (-1, 0): the mean points along (1, 0), so (1, 0) is central
    and (-1, 0) the outlier; without it, the two symmetric points tie and the first wins."""
    x = normalize_rows(np.array([[1, 0.1], [1, 0], [1, -0.1], [-1, 0]], dtype=np.float32))
    assert kcenter_greedy(x, 1, start="central").picks.tolist() == [1]
    assert kcenter_greedy(x, 1, start="outlier").picks.tolist() == [3]
    # excluded rows are not candidates: neither picked nor part of the mean
    assert kcenter_greedy(x, 1, start="outlier", exclude=[3]).picks.tolist() == [0]


def test_deterministic_start_applies_only_without_annotated_centres():
    x = normalize_rows(_data(300, 8, seed=10))
    res = kcenter_greedy(x, 5, annotated=[4, 5], start="central")
    assert res.start == "annotated" and res.n_initial == 0
    np.testing.assert_array_equal(res.picks, reference_kcenter(x, 5, [], annotated=[4, 5]))
    given = kcenter_greedy(x, 5, starts=[9], start="outlier")
    assert given.start == "given" and given.picks[0] == 9
    rand = kcenter_greedy(x, 5, seed=1)
    assert rand.start == "random" and rand.n_initial == 3  # the default keeps the paper's random starts
    with pytest.raises(SpecError, match="start"):
        kcenter_greedy(x, 5, start="middle")


@pytest.mark.parametrize("start", ["central", "outlier"])
def test_deterministic_start_streamed_from_a_zarr_store(tmp_path, start):
    import zarr

    x = normalize_rows(_data(5000, 24, seed=12) + np.float32(0.2))
    z = zarr.create_array(tmp_path / "emb.zarr", shape=x.shape, chunks=(512, 24), dtype="float32")
    z[:] = x
    ex = np.zeros(len(x), dtype=bool)
    ex[[3, 600, 4999]] = True
    streamed = kcenter_greedy(z, 20, start=start, exclude=ex, max_memory_bytes=1)
    in_memory = kcenter_greedy(x, 20, start=start, exclude=ex)
    np.testing.assert_array_equal(streamed.picks, in_memory.picks)
    assert streamed.picks[0] == _reference_start(x, start, "cosine", exclude=[3, 600, 4999])
