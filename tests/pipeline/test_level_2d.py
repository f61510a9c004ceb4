"""A job on a coarser pyramid level with nnU-Net's 2d configuration (the VNC reference's setting):
pseudo-labels, pretraining, a round of fine-tuning and its evaluation all on level 1's grid, scored
against the ground truth's level 1 (a plain overlap table of the arrays as the oracle)."""

from __future__ import annotations

import numpy as np
import pytest

from alseg.evaluate.metrics import overlap_table, score_table
from alseg.io.omezarr import open_volume
from alseg.pipeline import run_job
from alseg.pipeline.records import read_record
from alseg.spec import parse_spec

pytestmark = pytest.mark.slow
TRAIN = {"epochs": 1, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1, "final_validation": False}


def test_a_2d_job_at_level_1_trains_predicts_and_scores_on_that_level(tmp_path):
    from alseg.synth import SynthParams, write_synthetic

    url = str(tmp_path / "v.zarr")
    write_synthetic(url, SynthParams.preset("easy", shape=(16, 320, 320), seed=1, mito_per_um3=30.0))  # level 1: 16 x 160 x 160
    spec = parse_spec({
        "name": "level1-2d", "input": {"url": url, "ground_truth": "mitochondria", "level": 1}, "run": {"dir": str(tmp_path / "run")},
        "patches": {"shape_vox": [8, 40, 40], "holdout": {"kind": "fraction", "axis": "z", "fraction": 0.5}},
        "pseudolabel": {"method": "classical", "block_shape_vox": [8, 160, 160], "halo_px": 16, "min_size_vox": 20},
        "nnunet": {"configuration": "2d", "device": "cpu",
                   "plan_overrides": {"patch_size_vox": [32, 32], "batch_size": 4, "n_stages": 3, "features_per_stage": [4, 8, 16]},
                   "pretrain": TRAIN, "finetune": {**TRAIN, "learning_rate": 0.003}},
        "embedding": {"source": "pixels", "pixels_dim": 4, "slices_per_patch": 2},
        "selection": {"method": "foreground_random", "budget": 2},
        "prediction": {"block_shape_vox": [8, 160, 160], "halo_vox": [0, 8, 8]},
        "postprocess": {"block_shape_vox": [8, 160, 160], "min_size_vox": 5},
        "resources": {"backend": "serial"}})
    outcome = run_job(spec, progress=False, say=lambda _: None, until="evaluate-01")
    assert [s.key for s in outcome.states][-1] == "evaluate-01"
    assert read_record(spec, "pretrain")["result"]["model_folder"].endswith("__2d")
    rec = read_record(spec, "evaluate-01")["result"]
    inst = open_volume(rec["instances"]).read()
    gt = open_volume(url + "/labels/mitochondria", level=1).read()
    assert inst.shape == gt.shape == (16, 160, 160), "predicted on level 1's grid"
    assert rec["region"] == [8, 0, 0, 16, 160, 160]
    assert rec["scores"] == score_table(overlap_table(gt[8:], inst[8:])), "scored against the ground truth's level 1"
    # the foreground-aware random picks hold pseudo-label foreground
    picks = read_record(spec, "select-01")["result"]
    pl = open_volume(str(tmp_path / "run" / "pseudolabels.zarr")).read()
    assert all((pl[z0:z1, y0:y1, x0:x1] > 0).any() for z0, y0, x0, z1, y1, x1 in picks["boxes"])
    assert np.isfinite(rec["scores"]["foreground_iou"])
