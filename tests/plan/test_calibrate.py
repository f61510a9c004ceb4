"""`alseg calibrate --quick` on a tiny spec: alseg's own stages on a small synthetic volume give a
profile with a positive, finite rate for every stage, which `alseg plan` then uses without warnings."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from alseg.cli import main
from alseg.plan import load_profile

TINY = {
    "name": "tiny",
    "input": {"url": "nothing-here.zarr", "ground_truth": "mitochondria"},
    "run": {"dir": "run"},
    "patches": {"shape_vox": [16, 64, 64]},
    "pseudolabel": {"method": "classical", "threshold": "otsu", "block_shape_vox": [16, 64, 64], "halo_px": 16, "min_size_vox": 50},
    "nnunet": {"device": "cpu",
               "plan_overrides": {"patch_size_vox": [16, 64, 64], "batch_size": 2, "n_stages": 4, "features_per_stage": [8, 16, 32, 64]},
               "pretrain": {"epochs": 2, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1, "final_validation": False},
               "finetune": {"epochs": 2, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1, "final_validation": False}},
    "embedding": {"epochs": 2, "batch_size": 8, "slices_per_patch": 2},
    "selection": {"method": "kcenter", "budget": 1},
    "prediction": {"block_shape_vox": [16, 64, 64], "halo_vox": [4, 16, 16]},
    "postprocess": {"block_shape_vox": [16, 64, 64], "min_size_vox": 50},
    "resources": {"backend": "serial"},
}


def rates(data: dict, prefix: str = "") -> list[tuple[str, float]]:
    if isinstance(data, dict):
        return [x for k, v in data.items() for x in rates(v, f"{prefix}.{k}" if prefix else k)]
    return [(prefix, data)] if prefix.endswith("_per_s") else []


@pytest.mark.slow
def test_quick_calibration_measures_every_stage(tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({**TINY, "input": {**TINY["input"], "url": str(tmp_path / "nothing-here.zarr")},
                                    "run": {"dir": str(tmp_path / "run")}}))
    out = tmp_path / "profiles" / "node.json"
    assert main(["calibrate", str(spec), "--quick", "-q", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    assert "profile of" in capsys.readouterr().out
    profile = load_profile(out)
    found = dict(rates(profile.rates.model_dump()))
    stages = {k.split(".")[0] for k in found}
    assert stages == {"pseudolabel", "evaluate", "nnunet", "predict", "postprocess", "mae", "embed", "store"}
    assert all(math.isfinite(v) and v > 0 for v in found.values()), found
    assert profile.rates.nnunet.s_per_iteration > 0 and profile.rates.nnunet.patch_vox == [16, 64, 64]
    assert profile.rates.predict.patch_vox == [16, 64, 64] and profile.rates.predict.classes == 2
    assert profile.device.cpu_count >= 1 and profile.device.torch and not profile.assumption
    assert profile.settings["prediction.block_shape_vox"] == [16, 64, 64]
    assert not (tmp_path / "work" / "store").exists() or not any((tmp_path / "work" / "store").iterdir())

    # the plan with it: measured at this spec's settings, so no settings warning and no assumption
    assert main(["plan", str(spec), "--nodes", "1", "--gpus-per-node", "0", "--shape", "32", "128", "128",
                 "--profile", str(out), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert not plan["profile_assumed"]
    assert not [w for w in plan["warnings"] if "profile measured at" in w or "ASSUMPTION" in w]
    assert all(s["seconds"] >= 0 and math.isfinite(s["seconds"]) for s in plan["stages"])
