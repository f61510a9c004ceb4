"""`alseg run` end to end on a tiny volume: the stage graph, reuse, exact re-runs, a killed driver.

Real nnU-Net (tiny plans), real MAE (tiny ViT), simulated annotation from the ground truth.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from alseg.io.omezarr import open_volume
from alseg.pipeline import job_status, run_job
from alseg.pipeline.records import read_record
from alseg.spec import parse_spec
from spec_fields import set_fields

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
TINY_VIT = {"model": "vit", "backbone_args": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8}, "img_size_px": 32,
            "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2, "batch_size": 8, "warmup_epochs": 1,
            "epochs": 2, "slices_per_patch": 2}
TRAIN = {"epochs": 1, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1, "final_validation": False}


def _spec_dict(tmp_path: Path, **over) -> dict:
    from alseg.synth import SynthParams, write_synthetic

    url = tmp_path / "v.zarr"
    if not url.exists():
        write_synthetic(url, SynthParams.preset("easy", shape=(16, 64, 64), seed=3))
    d = {"name": "tiny", "input": {"url": str(url), "ground_truth": "mitochondria"}, "run": {"dir": str(tmp_path / "run")},
         "patches": {"shape_vox": [8, 32, 32], "holdout": {"kind": "fraction", "axis": "z", "fraction": 0.5}},
         "pseudolabel": {"method": "classical", "block_shape_vox": [8, 64, 64], "halo_px": 16, "min_size_vox": 20},
         "nnunet": {"device": "cpu", "plan_overrides": {"patch_size_vox": [8, 32, 32], "batch_size": 2, "n_stages": 3,
                                                         "features_per_stage": [4, 8, 16]},
                    "pretrain": TRAIN, "finetune": {**TRAIN, "learning_rate": 0.003}},
         "embedding": TINY_VIT,
         "selection": {"method": "kcenter", "budget": 1, "n_initial": 1, "rounds": 2},
         "prediction": {"block_shape_vox": [8, 32, 32], "halo_vox": [2, 8, 8]},
         "postprocess": {"block_shape_vox": [8, 32, 32], "min_size_vox": 5},
         "resources": {"backend": "serial"}}
    return set_fields(d, over)


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loop")
    spec = parse_spec(_spec_dict(tmp))
    _INPUT_BEFORE.update(_files(tmp))  # the input volume (image and ground truth), before the job
    outcome = run_job(spec, progress=False, say=lambda _: None)
    return tmp, spec, outcome


_INPUT_BEFORE: dict[str, str] = {}


def test_the_input_is_untouched_and_every_output_is_under_the_run_directory(finished):
    tmp, _, _ = finished
    after = _files(tmp)
    assert _INPUT_BEFORE and {k: after.get(k) for k in _INPUT_BEFORE} == _INPUT_BEFORE, "the input volume changed"
    outside = sorted(k for k in after if k not in _INPUT_BEFORE and not k.startswith("run/"))
    assert not outside, f"written outside the run directory: {outside[:5]}"
    assert any(k.startswith("v.zarr/labels/") for k in _INPUT_BEFORE), "the ground truth is part of what is hashed"


def test_the_loop_runs_every_stage_in_order(finished):
    _, spec, outcome = finished
    keys = [s.key for s in outcome.states]
    assert keys == ["pseudolabels", "pseudolabel-scores", "pretrain", "embed-model", "embed", "embed-quality", "evaluate-00",
                    "select-01", "annotate-01", "finetune-01", "evaluate-01",
                    "select-02", "annotate-02", "finetune-02", "evaluate-02", "predict", "measure", "report"]
    assert all(s.state == "ran" for s in outcome.states)
    assert [s.state for s in job_status(spec)] == ["done"] * len(keys)
    # round 2 selects from what is still unannotated, round 1's pick as the k-center start
    s1, s2 = (read_record(spec, f"select-0{r}")["result"] for r in (1, 2))
    assert s2["annotated_before"] == s1["patch_ids"] and not set(s1["patch_ids"]) & set(s2["patch_ids"])
    # each round's model in its own folder; the final prediction comes from round 2's
    f1, f2 = (read_record(spec, f"finetune-0{r}")["result"] for r in (1, 2))
    assert f1["model_folder"] != f2["model_folder"] and os.path.isdir(f1["model_folder"])
    assert read_record(spec, "predict")["result"]["model_folder"] == f2["model_folder"]


def test_finetuning_saw_exactly_the_annotated_patches(finished):
    _, spec, _ = finished
    import tifffile

    gt = open_volume(spec.input.url + "/labels/mitochondria").read()
    for r in (1, 2):
        res = read_record(spec, f"finetune-0{r}")["result"]
        picks = []
        for q in range(1, r + 1):
            picks += read_record(spec, f"select-0{q}")["result"]["boxes"]
        assert res["boxes"] == picks and res["cases"] == r
        raw = Path(spec.run.dir) / "nnunet" / "raw" / f"Dataset{100 + r}_round0{r}"
        labels = sorted((raw / "labelsTr").glob("*.tif"))
        assert len(labels) == r
        for path, box in zip(labels, picks):
            z0, y0, x0, z1, y1, x1 = box
            assert np.array_equal(tifffile.imread(path) > 0, gt[z0:z1, y0:y1, x0:x1] > 0), "labels are the ground truth of the pick"


def test_round_evaluation_scores_the_held_out_region_only(finished):
    _, spec, _ = finished
    from alseg.evaluate.metrics import evaluate_volumes
    from alseg.geometry import Box

    rec = read_record(spec, "evaluate-01")["result"]
    region = Box(tuple(rec["region"][:3]), tuple(rec["region"][3:]))
    assert region == Box((8, 0, 0), (16, 64, 64))
    ref = evaluate_volumes(spec.input.url + "/labels/mitochondria", rec["instances"], thresholds=(0.5, 0.75), region=region)
    assert rec["scores"]["at"]["0.5"]["f1"] == pytest.approx(ref["at"]["0.5"]["f1"])
    classes = open_volume(rec["instances"].replace("instances.zarr", "classes.zarr")).read()
    assert not classes[:8].any(), "blocks outside the held-out region are not predicted"
    assert read_record(spec, "predict")["result"]["instances"].endswith("prediction/instances.zarr")


@pytest.mark.parametrize("field, value, stale_from", [
    ("prediction.mirroring", True, "evaluate-00"),
    ("selection.budget", 2, "select-01"),
    ("nnunet.finetune.epochs", 2, "finetune-01"),
    ("pseudolabel.min_size_vox", 30, "pseudolabels"),
])
def test_a_changed_field_makes_exactly_its_downstream_stale(finished, field, value, stale_from):
    tmp, spec, _ = finished
    changed = parse_spec(_spec_dict(tmp, **{field: value, "run.overwrite": True}))
    states = {s.key: s for s in job_status(changed)}
    stale = {k for k, s in states.items() if s.state != "done"}
    downstream = {
        "evaluate-00": {"evaluate-00", "evaluate-01", "evaluate-02", "predict"},
        "select-01": {"select-01", "annotate-01", "finetune-01", "evaluate-01", "select-02", "annotate-02", "finetune-02",
                      "evaluate-02", "predict"},
        "finetune-01": {"finetune-01", "evaluate-01", "finetune-02", "evaluate-02", "predict"},
        # selection reads the embeddings, not the pseudo-labels: the picks and their annotation stay; the
        # embedding-quality figures (measured against the pseudo-labels) are measured anew
        "pseudolabels": {"pseudolabels", "pseudolabel-scores", "pretrain", "embed-quality", "evaluate-00", "finetune-01",
                         "evaluate-01", "finetune-02", "evaluate-02"},
    }[stale_from] | {"predict", "measure", "report"}
    assert stale == downstream
    assert field in states[stale_from].detail, "the status names the field that made it stale"


def test_changing_mirroring_reruns_prediction_and_retrains_nothing(finished):
    tmp, spec, _ = finished
    models = {k: read_record(spec, k)["token"] for k in ("pretrain", "finetune-01", "finetune-02", "embed-model")}
    changed = parse_spec(_spec_dict(tmp, **{"prediction.mirroring": True, "run.overwrite": True}))
    outcome = run_job(changed, progress=False, say=lambda _: None)
    ran = {s.key for s in outcome.states if s.state == "ran"}
    assert ran == {"evaluate-00", "evaluate-01", "evaluate-02", "predict", "measure", "report"}
    assert {k: read_record(spec, k)["token"] for k in models} == models
    assert all(s.state == "done" for s in job_status(changed))


def test_a_killed_driver_resumes_in_round_two_and_reuses_everything_before(tmp_path):
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(_spec_dict(tmp_path, **{"selection": {"method": "random", "budget": 1, "rounds": 2},
                                                                "nnunet.finetune.epochs": 3})))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "alseg.cli", "run", str(spec_path), "-q"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 900
    marker = run / "nnunet" / "results" / "Dataset102_round02"
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "round 2's fine-tuning never started"
        time.sleep(0.5)
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "stages" / "finetune-02.json").exists()
    before = {k: v for k, v in _files(run).items()
              if k.startswith(("pseudolabels.zarr", "stages/", "nnunet/results/Dataset001", "nnunet/results/Dataset101", "selection/round-01"))}
    res = subprocess.run([sys.executable, "-m", "alseg.cli", "run", str(spec_path), "-q"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "[pseudolabels] pseudo-labels: done before, reused" in res.stdout
    assert "[finetune-01] round 1: fine-tuning: done before, reused" in res.stdout
    assert "[finetune-02] round 2: fine-tuning ..." in res.stdout
    after = _files(run)
    assert {k: after[k] for k in before} == before, "the earlier stages' files are untouched"
    assert json.loads((run / "stages" / "finetune-02.json").read_text())["result"]["cases"] == 2


def test_manual_round_trip_stops_imports_and_finetunes_on_exactly_the_imported_labels(tmp_path, capsys):
    import tifffile

    from alseg.annotate.layout import patch_stem
    from alseg.cli import main

    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(_spec_dict(tmp_path, **{"selection": {"method": "random", "budget": 1, "rounds": 2},
                                                                "annotation": {"method": "manual"}})))
    assert main(["run", str(spec_path), "-q"]) == 0, "the job stops for the annotator with exit code 0"
    out = capsys.readouterr().out
    package = tmp_path / "run" / "annotation" / "round-01"
    assert f"alseg import {tmp_path / 'run'} {package}" in out
    assert not (tmp_path / "run" / "stages" / "annotate-01.json").exists()
    manifest = json.loads((package / "manifest.json").read_text())
    [patch] = manifest["patches"]
    # the person's edit, in micro-SAM's layout: a cube object where the starting labels had nothing to offer
    stem = patch_stem(patch["id"])
    start = tifffile.imread(package / "initial" / f"{stem}.tif")
    edited = np.zeros_like(start, dtype=np.uint16)
    edited[2:6, 4:20, 8:24] = 7
    tifffile.imwrite(package / "edited" / f"{stem}.tif", edited)
    assert main(["import", str(tmp_path / "run"), str(package)]) == 0
    assert main(["run", str(spec_path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "[finetune-01] done in" in out and "round 2: 1 patches to annotate" in out, "stops again for round 2"
    [label] = sorted((tmp_path / "run" / "nnunet" / "raw" / "Dataset101_round01" / "labelsTr").glob("*.tif"))
    assert np.array_equal(tifffile.imread(label), (edited > 0).astype(np.uint8)), "fine-tuning saw exactly the import"
    spec = parse_spec(yaml.safe_load(spec_path.read_text()))
    assert read_record(spec, "finetune-01")["result"]["patch_ids"] == [patch["id"]]
    # round 2 starts from round 1's model: its instances on the new pick
    [second] = json.loads((tmp_path / "run" / "annotation" / "round-02" / "manifest.json").read_text())["patches"]
    z0, y0, x0, z1, y1, x1 = second["box"]
    start = open_volume(tmp_path / "run" / "rounds" / "round-02" / "start" / "instances.zarr").read()[z0:z1, y0:y1, x0:x1]
    initial = tifffile.imread(tmp_path / "run" / "annotation" / "round-02" / "initial" / f"{patch_stem(second['id'])}.tif")
    assert np.array_equal(initial > 0, start > 0)
