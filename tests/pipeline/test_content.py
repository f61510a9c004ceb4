"""Foreground fractions of patches and selection diagnostics, against numpy and hand counts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alseg.errors import DataError
from alseg.geometry import Box
from alseg.io.omezarr import create_image, create_label_image, open_volume
from alseg.pipeline.content import foreground_fractions, selection_diagnostics


@pytest.fixture()
def labels(tmp_path) -> tuple[str, np.ndarray]:
    """A label image (alseg's writer) with sparse objects; the chunks of one z slab stay all zero,
    so they are never written (label images leave out empty chunks)."""
    image = create_image(str(tmp_path / "img.zarr"), shape=(16, 48, 40), dtype="uint8", chunks=(8, 16, 16),
                         voxel_size_nm=(30, 8, 8))
    url = str(tmp_path / "labels.zarr")
    vol = create_label_image(url, like=image, chunks=(8, 16, 16))
    rng = np.random.default_rng(0)
    data = (rng.random(vol.shape) < 0.1) * rng.integers(1, 50, size=vol.shape)
    data[:8] = 0  # z 0-8: no object at all
    vol.write(vol.bounds, data.astype(np.uint32))
    return url, data


BOXES = [Box((0, 0, 0), (8, 16, 16)), Box((3, 5, 7), (13, 41, 33)), Box((8, 0, 0), (16, 48, 40)), Box((15, 47, 39), (16, 48, 40))]


def test_foreground_fractions_equal_numpy(labels):
    url, data = labels
    got = foreground_fractions(url, BOXES, missing_chunks="empty")
    expected = [np.mean(data[b.slices] > 0) for b in BOXES]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)
    assert got[0] == 0.0 and got.dtype == np.float64
    assert foreground_fractions(url, [], missing_chunks="empty").shape == (0,)


def test_absent_chunks_are_an_error_unless_they_mean_empty(labels):
    url, data = labels
    with pytest.raises(DataError, match="missing"):
        foreground_fractions(url, BOXES[:1])  # missing_chunks="error": the unwritten slab is missing
    # a box within written chunks reads either way
    box = Box((8, 0, 0), (16, 16, 16))
    assert foreground_fractions(url, [box])[0] == pytest.approx(np.mean(data[box.slices] > 0))


def test_foreground_fractions_at_a_pyramid_level(tmp_path):
    """Boxes are in the voxels of the level read."""
    image = create_image(str(tmp_path / "img.zarr"), shape=(8, 32, 32), dtype="uint8", chunks=(8, 16, 16),
                         voxel_size_nm=(8, 8, 8), levels=2)
    url = str(tmp_path / "labels.zarr")
    create_label_image(url, like=image, chunks=(8, 16, 16))
    coarse = open_volume(url, level=1, mode="r+")
    data = np.zeros(coarse.shape, dtype=np.uint32)
    data[:, :5, :3] = 7
    coarse.write(coarse.bounds, data)
    box = Box((0, 0, 0), coarse.shape)
    got = foreground_fractions(url, [box, Box((0, 0, 0), (1, 5, 3))], level=1, missing_chunks="empty")
    np.testing.assert_allclose(got, [np.mean(data > 0), 1.0])


def test_selection_diagnostics_by_hand():
    # 4 empty patches and 8 evenly spread non-empty ones, 0.1 .. 0.8
    pool = np.array([0, 0, 0, 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    d = selection_diagnostics(pool, [0, 5, 11])
    # quartile edges of 0.1 .. 0.8 (linear interpolation): 0.1 + 0.7 * (1, 2, 3) / 4
    np.testing.assert_allclose(d["quantile_edges"], [0.275, 0.45, 0.625])
    assert [(b["bin"], b["pool"], b["picks"]) for b in d["bins"]] == [
        ("empty", 4, 1), ("q1", 2, 1), ("q2", 2, 0), ("q3", 2, 0), ("q4", 2, 1)]
    assert d["bins"][-1]["hi"] == pytest.approx(0.8) and d["bins"][1]["lo"] == 0.0
    assert (d["bins_covered"], d["bins_total"]) == (3, 5)
    assert d["pool"] == 12 and d["picks"] == 3
    assert d["pool_mean_foreground"] == pytest.approx(3.6 / 12)
    assert d["picks_mean_foreground"] == pytest.approx((0 + 0.2 + 0.8) / 3)
    assert d["pool_any_foreground"] == pytest.approx(8 / 12) and d["picks_any_foreground"] == pytest.approx(2 / 3)
    json.dumps(d)  # JSON-able as it is


def test_selection_diagnostics_ties_no_empty_patches_and_no_picks():
    # every non-empty patch has the same fraction: the quartile edges coincide, two bins remain
    tied = selection_diagnostics(np.array([0, 0, 0, 0, 0, 0.5, 0.5, 0.5]), [6])
    assert [(b["bin"], b["pool"], b["picks"]) for b in tied["bins"]] == [("empty", 5, 0), ("q1", 3, 1)]
    assert (tied["bins_covered"], tied["bins_total"]) == (1, 2)
    # no empty patch: no empty bin; a value equal to an edge belongs to the lower bin
    full = selection_diagnostics(np.array([0.2, 0.4, 0.6, 0.8, 1.0]), [1, 2], quantiles=2)
    assert full["quantile_edges"] == [0.6]
    assert [(b["bin"], b["pool"], b["picks"]) for b in full["bins"]] == [("q1", 3, 2), ("q2", 2, 0)]
    none = selection_diagnostics(np.zeros(4), [])
    assert none["picks_mean_foreground"] is None and none["bins_total"] == 1 and none["bins_covered"] == 0
    with pytest.raises(ValueError, match="pick rows"):
        selection_diagnostics(np.zeros(4), [4])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        selection_diagnostics(np.array([0.5, np.nan]), [0])


def _spec(tmp_path, **selection):
    from alseg.spec import parse_spec
    from alseg.synth import SynthParams, write_synthetic

    url = tmp_path / "v.zarr"
    if not url.exists():
        write_synthetic(url, SynthParams.preset("easy", shape=(16, 96, 96), seed=4, mito_per_um3=30.0))
    return parse_spec({"input": {"url": str(url), "ground_truth": "mitochondria"}, "run": {"dir": str(tmp_path / "run")},
                       "patches": {"shape_vox": [8, 32, 32], "holdout": {"kind": "fraction", "axis": "z", "fraction": 0.5}},
                       "pseudolabel": {"method": "classical", "block_shape_vox": [8, 96, 96], "halo_px": 16, "min_size_vox": 20},
                       "selection": {"method": "random", "budget": 3, "rounds": 2, **selection}})


def test_select_stage_records_diagnostics_and_reuses_the_pool_fractions(tmp_path, monkeypatch):
    from alseg.pipeline import selection as stage
    from alseg.pipeline.pseudolabels import run_pseudolabels

    spec = _spec(tmp_path)
    assert "diagnostics" not in stage.run_select(spec, round_index=1, progress=False)  # no pseudo-labels yet
    pl = run_pseudolabels(spec, progress=False)["url"]
    r1 = stage.run_select(spec, round_index=1, progress=False)  # the same picks, now described
    assert r1["reused"]
    d = r1["diagnostics"]
    labels = open_volume(pl).read()
    pool = json.loads(next((tmp_path / "run" / "selection").glob("foreground-*.json")).read_text())["fractions"]
    assert len(pool) == 9  # z 0-8 of 16 kept by the half holdout, 3 x 3 in-plane
    picked = [np.mean(labels[z0:z1, y0:y1, x0:x1] > 0) for z0, y0, x0, z1, y1, x1 in r1["boxes"]]
    assert d["picks"] == 3 and d["picks_mean_foreground"] == pytest.approx(np.mean(picked))
    assert d["pool_mean_foreground"] == pytest.approx(np.mean(labels[:8] > 0))  # the pool tiles z 0-8 exactly
    assert d["labels_signature_sha256"] == open_volume(pl).provenance()["signature_sha256"]
    # the round's line in `alseg run` / `alseg status` (round 2 has no record yet: nothing after it)
    from alseg.jobcli import selection_lines

    lines = selection_lines(spec, {"select-01": {"result": r1}})
    assert lines == [f"round 1 selection: picks: 3, mean pseudo-label foreground {100 * np.mean(picked):.1f} % "
                     f"(pool {100 * d['pool_mean_foreground']:.1f} %), content bins covered "
                     f"{d['bins_covered']}/{d['bins_total']}"]

    # the pool's fractions are read once: later rounds and reruns take them from the cache
    def fail(*args, **kwargs):
        raise AssertionError("pool fractions read again")

    monkeypatch.setattr(stage, "foreground_fractions", fail)
    again = stage.run_select(spec, round_index=1, progress=False)
    assert again["reused"] and again["diagnostics"] == d
    r2 = stage.run_select(spec, round_index=2, progress=False)
    assert r2["diagnostics"]["pool_mean_foreground"] == d["pool_mean_foreground"]
    monkeypatch.undo()

    # other pseudo-labels: the same picks, diagnostics anew
    vol = open_volume(pl, mode="r+")
    vol.set_provenance({**vol.provenance(), "signature_sha256": "0" * 64})
    renewed = stage.run_select(spec, round_index=1, progress=False)
    assert renewed["reused"] and renewed["patch_ids"] == r1["patch_ids"]
    assert renewed["diagnostics"]["labels_signature_sha256"] == "0" * 64
    # an explicit pseudo-label URL is used as given
    explicit = stage.run_select(spec, round_index=1, progress=False, pseudolabel_url=pl)
    assert explicit["diagnostics"]["picks_mean_foreground"] == pytest.approx(np.mean(picked))


def test_prediction_key_names_what_shapes_a_prediction():
    """Block records of `alseg predict` (and of a manual round's start labels) live under a key
    that changes with the prediction's fields, so a job predicting differently never reuses them;
    a field added since (tile_step) at its neutral value keeps the key stored runs used."""
    from alseg.pipeline.predict import prediction_key
    from alseg.spec import parse_spec

    base = {"input": {"url": "/data/v.zarr", "ground_truth": "mitochondria"}, "run": {"dir": "/data/run"}}
    key = prediction_key(parse_spec(base))
    assert len(key) == 12 and key == prediction_key(parse_spec({**base, "prediction": {"tile_step": 0.5}}))
    others = [{"prediction": {"tile_step": 1.0}}, {"prediction": {"mirroring": True}}, {"postprocess": {"min_size_vox": 7}},
              {"input": {**base["input"], "level": 1}}]
    keys = {prediction_key(parse_spec({**base, **o})) for o in others}
    assert key not in keys and len(keys) == len(others)
    assert prediction_key(parse_spec({**base, "selection": {"method": "random", "budget": 3}})) == key, "selection does not shape it"
