"""Profiles: round trip, clear errors for missing or invalid ones, warnings when measured at other settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from alseg.cli import main
from alseg.errors import SpecError
from alseg.plan import Cluster, default_profile, load_profile, project, save_profile
from alseg.plan.profile import default_path, differences, settings_of, slug
from alseg.spec import load_spec, parse_spec

MITOEM = Path(__file__).resolve().parents[2] / "configs" / "mitoem-full.yaml"
SHAPE = ("--shape", "1000", "4096", "4096")


def measured_at(spec) -> dict:
    """The default profile's rates, as if measured at ``spec``'s settings on a named device."""
    data = default_profile().model_dump(mode="json")
    data.update(assumption=False, settings=settings_of(spec), created="2026-12-06T00:00:00")
    data["device"]["name"] = "NVIDIA H100 80GB HBM3"
    return data


def test_round_trip(tmp_path):
    profile = default_profile()
    path = save_profile(profile, tmp_path / "a" / "p.json")
    assert load_profile(path) == profile
    assert default_path(profile).name == "builtin-default.json"
    assert slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_missing_and_invalid_profiles_are_clear_errors(tmp_path):
    with pytest.raises(SpecError, match="does not exist: make one with `alseg calibrate"):
        load_profile(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="is not JSON"):
        load_profile(bad)
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(SpecError, match="expected format 'alseg-profile/1'"):
        load_profile(bad)
    data = default_profile().model_dump(mode="json")
    data["rates"]["predict"]["tiles_per_s"] = -1.0
    del data["rates"]["store"]
    bad.write_text(json.dumps(data))
    with pytest.raises(SpecError) as err:
        load_profile(bad)
    paths = {p for p, _ in err.value.problems}
    assert {"rates.predict.tiles_per_s", "rates.store"} <= paths
    data = default_profile().model_dump(mode="json")
    data["rates"]["evaluate"]["voxels_per_s"] = float("inf")
    bad.write_text(json.dumps(data))
    with pytest.raises(SpecError, match="rates.evaluate.voxels_per_s"):
        load_profile(bad)


def test_cli_refuses_a_missing_profile_with_exit_2(tmp_path, capsys):
    code = main(["plan", str(MITOEM), "--nodes", "1", "--gpus-per-node", "8", *SHAPE, "--profile", str(tmp_path / "x.json")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_profile_measured_at_other_settings_warns(tmp_path, capsys):
    spec = load_spec(MITOEM)
    path = tmp_path / "h100.json"
    path.write_text(json.dumps(measured_at(spec)))
    assert differences(load_profile(path), spec) == []
    same = project(spec, (1000, 4096, 4096), Cluster(1, 8, 64), load_profile(path))
    assert not any("profile measured at" in w for w in same.warnings)
    assert not any("ASSUMPTION" in w for w in same.warnings)

    data = yaml.safe_load(MITOEM.read_text())
    data["prediction"]["mirroring"] = False
    data["prediction"]["block_shape_vox"] = [32, 1024, 1024]
    other = parse_spec(data)
    found = differences(load_profile(path), other)
    assert any(d.startswith("prediction.mirroring: profile measured at True, the spec has False") for d in found)
    assert any(d.startswith("prediction.block_shape_vox") for d in found)
    spec_file = tmp_path / "other.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    assert main(["plan", str(spec_file), "--nodes", "2", "--gpus-per-node", "4", *SHAPE, "--profile", str(path)]) == 0
    out = capsys.readouterr().out
    assert "prediction.mirroring: profile measured at True, the spec has False" in out
    assert "NVIDIA H100 80GB HBM3" in out


def test_training_rate_gives_back_the_calibration_run_first_epoch_warm_up_included():
    """At the calibration's own schedule the plan's training time (start-up + epochs x (iterations +
    1/3 validation) x rate, as alseg.plan.stages) is the measured wall time, however slow the first
    epoch was: its warm-up is start-up, not lost."""
    from alseg.errors import AlsegError
    from alseg.plan.calibrate import training_rate

    epochs, iterations = [9.0, 2.0, 2.2], 5
    s_it, startup = training_rate(20.0, epochs, iterations)
    assert s_it == pytest.approx(2.1 / (iterations + 1 / 3))
    assert startup + len(epochs) * (iterations + 1 / 3) * s_it == pytest.approx(20.0)
    assert startup == pytest.approx(20.0 - 3 * 2.1) and startup > 20.0 - sum(epochs)
    with pytest.raises(AlsegError, match="1 epoch time"):
        training_rate(5.0, [2.0], iterations)
