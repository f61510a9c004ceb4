"""The ``alseg`` command line, run as a user would run it (a subprocess), plus in-process calls."""

from __future__ import annotations

import json

import subprocess
import sys

import numpy as np
import pytest

from alseg.cli import build_parser, main


def alseg(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alseg.cli", *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def test_help_explains_every_command():
    res = alseg("--help")
    assert res.returncode == 0
    for cmd in ("validate", "schema", "info", "synth", "ingest", "ingest-vnc", "pseudolabel", "pretrain", "predict", "embed", "select", "evaluate", "demo", "run", "experiment", "status", "import", "calibrate", "plan", "submit", "jobs", "logs", "stop", "run-submitted", "view"):
        assert cmd in res.stdout
        sub = alseg(cmd, "--help")
        assert sub.returncode == 0 and len(sub.stdout) > 200, cmd
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(commands) == {"validate", "schema", "info", "synth", "ingest", "ingest-vnc", "pseudolabel", "pretrain", "predict", "embed", "select", "evaluate", "demo", "run", "experiment", "status", "import", "calibrate", "plan", "submit", "jobs", "logs", "stop", "run-submitted", "view"}


def test_synth_info_and_refusal_to_overwrite(tmp_path):
    out = tmp_path / "s.zarr"
    res = alseg("synth", str(out), "--shape", "8", "64", "64", "--chunks", "8", "32", "32", "--seed", "1", "-q")
    assert res.returncode == 0, res.stderr
    assert "instances" in res.stdout
    info = alseg("info", str(out))
    assert info.returncode == 0 and "(8, 64, 64)" in info.stdout and "mitochondria" in info.stdout
    before = sorted(p.name for p in out.rglob("*"))
    again = alseg("synth", str(out), "--shape", "8", "64", "64", "-q")
    assert again.returncode == 1 and "already holds data" in again.stderr and "Traceback" not in again.stderr
    assert sorted(p.name for p in out.rglob("*")) == before, "a refused write changes nothing"
    forced = alseg("synth", str(out), "--shape", "8", "32", "32", "--overwrite", "-q")
    assert forced.returncode == 0 and "(8, 32, 32)" in alseg("info", str(out)).stdout


def test_user_errors_exit_nonzero_without_traceback(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((16, 16), np.uint8))
    res = alseg("ingest", str(tmp_path / "flat.npy"), str(tmp_path / "o.zarr"), "--voxel-size", "1", "1", "1")
    assert res.returncode == 1 and "expected 3 axes zyx" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o.zarr").exists()
    res = alseg("info", str(tmp_path / "nowhere.zarr"))
    assert res.returncode == 1 and "does not exist" in res.stderr
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    res = alseg("info", str(tmp_path / "plain"))
    assert res.returncode == 1 and "not an OME-Zarr image" in res.stderr
    res = alseg("synth", str(tmp_path / "x.zarr"), "--shape", "0", "8", "8")
    assert res.returncode == 2 and "shape" in res.stderr


def test_ingest_command(tmp_path):
    data = np.arange(6 * 20 * 20, dtype=np.uint16).reshape(6, 20, 20)
    np.save(tmp_path / "v.npy", data)
    np.save(tmp_path / "l.npy", (data % 7 == 0).astype(np.uint8))
    res = alseg("ingest", str(tmp_path / "v.npy"), str(tmp_path / "v.zarr"), "--voxel-size", "30", "8", "8",
                "--chunks", "2", "10", "10", "--labels", str(tmp_path / "l.npy"), "--labels-name", "mask", "-q")
    assert res.returncode == 0, res.stderr
    from alseg.io.omezarr import open_labels, open_volume

    assert np.array_equal(open_volume(tmp_path / "v.zarr").read(), data)
    assert np.array_equal(open_labels(tmp_path / "v.zarr", "mask").read(), data % 7 == 0)


@pytest.mark.slow
def test_demo_runs_the_whole_loop_and_reruns_without_redoing_anything(tmp_path, capsys):
    assert main(["demo", "--dir", str(tmp_path), "-q"]) == 0
    first = capsys.readouterr().out
    assert "pyramid levels   : 1" in first and "mitochondria" in first
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(tmp_path / "synthetic.zarr")))())
    assert tuple(nodes[0].data[0].shape) == (32, 256, 256)
    stamp = (tmp_path / "synthetic.zarr" / "s0" / "zarr.json").stat().st_mtime_ns
    run = tmp_path / "run"
    for key in ("pseudolabels", "pretrain", "embed-model", "embed", "embed-quality", "evaluate-00", "select-01", "annotate-01", "finetune-01",
                "evaluate-01", "select-02", "annotate-02", "finetune-02", "evaluate-02", "predict", "measure", "report"):
        assert f"[{key}] done in" in first and (run / "stages" / f"{key}.json").is_file(), key
    # the round table: round 0 (pretrained alone) and two fine-tuned rounds, scored on the held-out half
    assert "0 (pretrained)" in first and "f1@0.5" in first
    from alseg.evaluate.metrics import evaluate_volumes
    from alseg.preflight import holdout_of
    from alseg.spec import load_spec

    spec = load_spec(str(tmp_path / "demo.yaml"))
    rec = json.loads((run / "stages" / "evaluate-02.json").read_text())["result"]
    ref = evaluate_volumes(tmp_path / "synthetic.zarr" / "labels" / "mitochondria", rec["instances"],
                           region=holdout_of(spec, (32, 256, 256)))
    assert f"{ref['at']['0.5']['f1']:7.3f}" in first, "the table shows the held-out F1 of round 2's model"
    # the demo's models find the mitochondria: foreground IoU 0.71-0.91 in every round of the 2d runs with this
    # selection (benchmarks/RESULTS.md); before issue 16 every round of a run could be empty (0). nnU-Net's
    # training is not seeded, so the best round is asserted, not the last
    fg = [evaluate_volumes(tmp_path / "synthetic.zarr" / "labels" / "mitochondria",
                           json.loads((run / "stages" / f"evaluate-{r:02d}.json").read_text())["result"]["instances"],
                           region=holdout_of(spec, (32, 256, 256)))["foreground_iou"] for r in (0, 1)] + [ref["foreground_iou"]]
    assert max(fg) > 0.5, fg
    assert (run / "report" / "report.html").is_file() and (run / "prediction" / "instances.csv").is_file()
    assert main(["demo", "--dir", str(tmp_path), "-q"]) == 0
    again = capsys.readouterr().out
    assert "done in" not in again and again.count("done before, reused") == 18
    assert (tmp_path / "synthetic.zarr" / "s0" / "zarr.json").stat().st_mtime_ns == stamp
    _the_viewer_shows_the_demo_run(run)


def _the_viewer_shows_the_demo_run(run):
    """`alseg view` on the finished demo run: its layers, boxes and measurements, and what a headless
    Chromium on the viewer's URL draws (the volume's x-y section and its instances)."""
    import csv

    from viewing import check_rendering, render

    from alseg.view.contents import run_contents

    contents = run_contents(str(run))
    assert contents.missing == [] and contents.instances_layer == "instances"
    assert [l.name for l in contents.segmentations] == ["pseudo-labels", "instances", "ground truth"]
    assert [b.name for b in contents.box_layers] == ["held-out region", "core-set round 1", "core-set round 2"]
    for r, layer in zip((1, 2), contents.box_layers[1:]):
        picks = json.loads((run / "selection" / f"round-{r:02d}.json").read_text())
        assert [a.description.split(",")[:2] for a in layer.boxes] == [[f"patch {i}", f" round {r}"] for i in picks["patch_ids"]]
        assert [list(a.box.start) + list(a.box.stop) for a in layer.boxes] == picks["boxes"]
    with open(run / "prediction" / "instances.csv") as fh:
        table = {int(row["id"]): float(row["volume_um3"]) for row in csv.DictReader(fh)}
    assert {i: m["volume_um3"] for i, m in contents.measurements.items()} == table
    # what the browser draws: the demo's instances where a model predicted any (nnU-Net's training is
    # not seeded: the final ones may be empty), else the ground truth, through the same layer kind
    from alseg.io.omezarr import open_volume

    voxels = {r: int((open_volume(str(run / "rounds" / f"round-{r:02d}" / "instances.zarr")).read() > 0).sum()) for r in (0, 1, 2)}
    best = max(voxels, key=voxels.get)
    shown = run_contents(str(run), best) if voxels[best] else contents
    layer = shown.instances_layer if voxels[best] else "ground truth"
    figures = check_rendering(shown, render(shown, labels=layer))
    print(f"viewer on the demo run ({layer}): section correlation {figures['r']:.3f}, label IoU {figures['iou']:.3f}")


def test_pseudolabel_and_evaluate_commands(tmp_path, capsys):
    from alseg.io.omezarr import open_volume
    from alseg.synth import SynthParams, write_synthetic

    write_synthetic(tmp_path / "v.zarr", SynthParams.preset("easy", shape=(16, 128, 128), seed=3))
    spec = tmp_path / "job.yaml"
    spec.write_text(
        f"input: {{url: {tmp_path / 'v.zarr'}, ground_truth: mitochondria}}\n"
        f"run: {{dir: {tmp_path / 'run'}}}\n"
        "patches: {shape_vox: [8, 64, 64]}\n"
        "selection: {method: random, budget: 2}\n"
        "pseudolabel: {method: classical, block_shape_vox: [8, 64, 64], halo_px: 32, min_size_vox: 50}\n")
    assert main(["pseudolabel", str(spec), "-q"]) == 0
    out = capsys.readouterr().out
    assert "objects" in out and "at IoU 0.5" in out
    labels = open_volume(tmp_path / "run" / "pseudolabels.zarr")
    assert labels.read().max() > 0 and labels.provenance()["complete"]
    gt = str(tmp_path / "v.zarr" / "labels" / "mitochondria")
    assert main(["evaluate", gt, gt, "--iou", "0.5", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["foreground_iou"] == 1.0 and scores["at"]["0.5"]["f1"] == 1.0
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"input: {{url: {tmp_path / 'missing.zarr'}, ground_truth: mito}}\nrun: {{dir: {tmp_path / 'r2'}}}\n")
    assert main(["pseudolabel", str(bad), "-q"]) == 1, "a missing input is a data error (exit 1), not a bad spec"
    assert "input.url" in capsys.readouterr().err



@pytest.mark.slow
def test_pretrain_command_plans_and_trains_on_pseudolabels_then_reuses(tmp_path, capsys):
    from alseg.synth import SynthParams, write_synthetic

    write_synthetic(tmp_path / "v.zarr", SynthParams.preset("easy", shape=(32, 128, 128), seed=4))
    spec = tmp_path / "job.yaml"
    spec.write_text(
        f"input: {{url: {tmp_path / 'v.zarr'}, ground_truth: mitochondria}}\n"
        f"run: {{dir: {tmp_path / 'run'}}}\n"
        "patches: {shape_vox: [16, 64, 64], holdout: {kind: fraction, axis: z, fraction: 0.5}}\n"
        "selection: {method: random, budget: 2}\n"
        "pseudolabel: {method: classical, block_shape_vox: [16, 64, 64], halo_px: 32, min_size_vox: 50}\n"
        "nnunet:\n  device: cpu\n  boundary_class: true\n"
        "  plan_overrides: {patch_size_vox: [16, 64, 64], batch_size: 2, n_stages: 4, features_per_stage: [8, 16, 32, 64]}\n"
        "  pretrain: {epochs: 2, iterations_per_epoch: 2, val_iterations_per_epoch: 1, final_validation: false}\n"
        "prediction: {block_shape_vox: [16, 64, 64], halo_vox: [8, 32, 32]}\n"
        "postprocess: {block_shape_vox: [16, 64, 64], halo_vox: [8, 16, 16], min_size_vox: 10, watershed: distance, seed_distance_nm: 40}\n")
    assert main(["pretrain", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "nnU-Net train_loss" in out and "pretrained nnU-Net ->" in out
    record = json.loads((tmp_path / "run" / "nnunet" / "pretrain.json").read_text())
    assert record["cases"] == 4, "the pool: 2 x 2 patches of the upper half; the held-out half never enters"
    assert record["patch_size"] == [16, 64, 64] and record["features_per_stage"] == [8, 16, 32, 64]
    dataset = json.loads((tmp_path / "run" / "nnunet" / "raw" / "Dataset001_pseudo" / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "mitochondria": 1, "boundary": 2}
    assert dataset["alseg"]["labels"].endswith("pseudolabels.zarr"), "trained on the pseudo-labels, not the truth"
    assert main(["pretrain", str(spec), "-q"]) == 0
    assert "reused: same inputs" in capsys.readouterr().out
    # stage 7: the whole volume through the model, instances, scores on the held-out half
    assert main(["predict", str(spec), "-q"]) == 0
    out = capsys.readouterr().out
    assert "on the held-out region:" in out and "at IoU 0.5" in out
    from alseg.io.omezarr import open_volume
    from alseg.nnunet.predict import load_predictor

    classes = open_volume(tmp_path / "run" / "prediction" / "classes.zarr").read()
    assert classes.shape == (32, 128, 128) and set(np.unique(classes)) <= {0, 1, 2}
    mask = open_volume(tmp_path / "run" / "prediction" / "mask.zarr").read()
    assert np.array_equal(mask, (classes == 1).astype(np.uint8))
    inst = open_volume(tmp_path / "run" / "prediction" / "instances.zarr").read()
    assert not inst[mask == 0].any(), "instances lie inside the predicted mitochondria"
    # the blockwise class map is the whole-volume sliding-window prediction
    from nnunet_reference import assert_same_classes, whole_volume_logits

    from alseg.nnunet import IntensityNorm

    norm = IntensityNorm(**record["norm"])
    ref = whole_volume_logits(load_predictor(record["model_folder"]), norm(open_volume(tmp_path / "v.zarr").read()))
    assert_same_classes(classes, ref)


def _hashes(path) -> dict[str, str]:
    import hashlib
    from pathlib import Path

    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_failed_ingest_and_bad_evaluate_exit_cleanly_and_change_nothing(tmp_path):
    """Data errors exit 1, bad arguments 2, never with a traceback; inputs and old outputs stay byte-identical."""
    import tifffile

    from alseg.io.omezarr import create_image, create_labels

    stack = np.random.default_rng(0).integers(0, 255, (9, 24, 24), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "full.tif", stack)
    blob = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "garbage.tif").write_bytes(b"II*\x00" + np.random.default_rng(1).bytes(2048))
    inputs = {**_hashes(tmp_path / "full.tif"), **_hashes(tmp_path / "cut.tif"), **_hashes(tmp_path / "garbage.tif")}
    out = tmp_path / "out.zarr"
    for src in ("cut.tif", "garbage.tif"):
        res = alseg("ingest", str(tmp_path / src), str(out), "--voxel-size", "30", "8", "8", "-q")
        assert res.returncode == 1 and src in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert not out.exists()
    good = alseg("ingest", str(tmp_path / "full.tif"), str(out), "--voxel-size", "30", "8", "8", "--chunks", "3", "8", "8", "-q")
    assert good.returncode == 0, good.stderr
    old = _hashes(out)
    res = alseg("ingest", str(tmp_path / "cut.tif"), str(out), "--voxel-size", "30", "8", "8", "--overwrite", "-q")
    assert res.returncode == 1 and "cut.tif" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert _hashes(out) == old, "--overwrite keeps the old output when the new source is broken"
    assert {**_hashes(tmp_path / "full.tif"), **_hashes(tmp_path / "cut.tif"), **_hashes(tmp_path / "garbage.tif")} == inputs

    # evaluate: ground truth, an EM image passed as labels, float labels, bad thresholds
    gt = create_labels(out, "gt", chunks=(3, 8, 8))
    gt.write(gt.bounds, (stack > 200).astype(np.uint32))
    flt = create_image(tmp_path / "float.zarr", shape=stack.shape, dtype="float32", chunks=(3, 8, 8), voxel_size_nm=(30, 8, 8))
    flt.write(flt.bounds, stack.astype(np.float32) / 100)
    volumes = {**_hashes(out), **_hashes(tmp_path / "float.zarr")}
    for labels, what in ((out, "image-label"), (tmp_path / "float.zarr", "float32")):
        res = alseg("evaluate", gt.url, str(labels), "-q")
        assert res.returncode == 1 and what in res.stderr and "Traceback" not in res.stderr, res.stderr
    for iou in ("1.5", "0", "-0.2"):
        res = alseg("evaluate", gt.url, gt.url, "--iou", "0.5", iou, "-q")
        assert res.returncode == 2 and "(0, 1]" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert alseg("evaluate", gt.url, gt.url, "--json", "-q").returncode == 0
    assert {**_hashes(out), **_hashes(tmp_path / "float.zarr")} == volumes
