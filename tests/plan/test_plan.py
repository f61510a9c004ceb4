"""`alseg plan`: its counts against independent ones, its scaling, its speed on MitoEM, reading no voxel."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from alseg.cli import main
from alseg.geometry import BlockGrid, PatchGrid, holdout_box
from alseg.io.omezarr import create_image
from alseg.plan import Cluster, default_profile, project
from alseg.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]
MITOEM = REPO / "configs" / "mitoem-full.yaml"
SHAPE = (1000, 4096, 4096)


def ceil(a: int, b: int) -> int:
    return -(-a // b)


def test_mitoem_on_8_gpus_in_under_5_s_with_independent_counts():
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "alseg.cli", "plan", str(MITOEM), "--nodes", "1", "--gpus-per-node", "8",
                          "--shape", *map(str, SHAPE), "--json"], capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    assert elapsed < 5.0, f"alseg plan took {elapsed:.1f} s (interpreter start included)"
    plan = json.loads(res.stdout)
    stages = {s["key"]: s for s in plan["stages"]}
    spec = load_spec(MITOEM)

    # the candidate pool: the patch grid itself, enumerated
    hold = holdout_box(SHAPE, axis=0, fraction=0.5)
    assert plan["pool_patches"] == len(PatchGrid(SHAPE, spec.patches.shape_vox, holdout=hold)) == 960
    # blocks: ceiling divisions of the volume by each stage's block
    assert stages["pseudolabels"]["items"]["blocks"] == ceil(1000, 16) * ceil(4096, 1024) ** 2 == 1008
    assert stages["pseudolabels"]["tasks"] == 3 * 1008  # segment, faces, relabel
    pb = spec.prediction.block_shape_vox
    gz, gy, gx = ceil(1000, pb[0]), ceil(4096, pb[1]), ceil(4096, pb[2])
    assert stages["predict"]["items"]["blocks"] == gz * gy * gx == 256
    assert stages["predict"]["items"]["phases"] == 2  # predict_volume's, whatever the grid
    # tiles: nnU-Net's own placement at the plan's patch (the default profile's: nnU-Net's plan for MitoEM)
    patch = default_profile().rates.predict.patch_vox
    steps = compute_steps_for_sliding_window(SHAPE, patch, 0.5)
    assert stages["predict"]["items"]["tiles"] == math.prod(len(s) for s in steps) == 61875
    # a round's evaluation predicts the blocks meeting the held-out region
    meeting = sum(1 for b in BlockGrid(SHAPE, pb) if b.write.overlaps(hold))
    assert stages["evaluate-01"]["items"]["blocks"] == meeting == 9 * gy * gx
    # bytes: voxels x bytes per voxel, and every voxel read at least once by the volume-wide stages
    assert plan["voxels"] == math.prod(SHAPE) and plan["input_bytes"] == math.prod(SHAPE) * 1
    assert stages["pseudolabels"]["bytes_read"] >= plan["input_bytes"]
    assert stages["predict"]["bytes_read"] >= plan["input_bytes"]
    assert stages["embed"]["bytes_read"] == 960 * 32 * 512 * 512
    # every stage of the job's graph, in order; rounds: select, annotate, fine-tune, evaluate
    keys = list(stages)
    assert keys[:3] == ["pseudolabels", "pseudolabel-scores", "pretrain"] and keys[-3:] == ["predict", "measure", "report"]
    for r in (1, 2):
        assert [k for k in keys if k.endswith(f"-{r:02d}")] == [f"select-{r:02d}", f"annotate-{r:02d}", f"finetune-{r:02d}",
                                                                  f"evaluate-{r:02d}"]
    assert plan["total_seconds"] == pytest.approx(sum(s["seconds"] for s in plan["stages"]))
    assert plan["profile_assumed"] and any("ASSUMPTION" in w for w in plan["warnings"])
    assert any("two phases" in a for a in plan["assumptions"])


def test_dtype_doubles_the_bytes():
    spec = load_spec(MITOEM)
    one = project(spec, SHAPE, Cluster(1, 8, 64), default_profile(), dtype_bytes=1)
    two = project(spec, SHAPE, Cluster(1, 8, 64), default_profile(), dtype_bytes=2)
    assert two.input_bytes == 2 * one.input_bytes
    assert two.stage("embed").bytes_read == 2 * one.stage("embed").bytes_read


def test_scaling_halves_parallel_stages_down_to_the_limit_never_below():
    spec = load_spec(MITOEM)
    profile = default_profile()
    plans = {n: project(spec, SHAPE, Cluster(n, 1, 16), profile) for n in (1, 2, 4, 8, 16, 32, 64, 128)}
    for a, b in [(1, 2), (2, 4), (4, 8)]:  # 1,008 blocks >> workers: doubling halves (list scheduling, whole blocks)
        ratio = plans[b].stage("pseudolabels").seconds / plans[a].stage("pseudolabels").seconds
        assert 0.45 < ratio < 0.56, (a, b, ratio)
    previous = math.inf
    for n, plan in plans.items():
        pred = plan.stage("predict")
        assert pred.limit_s is not None and pred.seconds >= pred.limit_s - 1e-6, n
        assert pred.seconds <= previous + 1e-6, n
        previous = pred.seconds
        # nnU-Net training runs in one process on one device: more GPUs do not shorten it
        assert plan.stage("pretrain").seconds == pytest.approx(plans[1].stage("pretrain").seconds)
    assert plans[2].stage("predict").seconds < 0.6 * plans[1].stage("predict").seconds
    # 256 blocks in two phases: the network's time keeps falling with the GPUs (under the wavefront of
    # 16 x 4 x 4 blocks, 32 GPUs did no better than 16, and 8 reached at most 84 % of ideal)
    net = {n: p.stage("predict").seconds for n, p in plans.items()}
    assert net[64] < 0.75 * net[32] and net[32] < 0.75 * net[16], net
    basis = " ".join(plans[8].stage("predict").basis)
    eff8, eff64 = (int(v) for v in re.search(r"(\d+) % on 8 workers, (\d+) % on 64", basis).groups())
    assert eff8 >= 90 and eff64 >= 50, basis
    assert plans[1].total_seconds > plans[8].total_seconds > plans[128].total_seconds


def test_cpus_per_node_limit_gpu_workers_and_say_so():
    spec = load_spec(MITOEM)  # prediction workers ask 4 CPUs and 1 GPU
    plan = project(spec, SHAPE, Cluster(1, 8, 16), default_profile())
    assert plan.stage("predict").workers == 4
    assert any("resources.prediction: 16 CPUs per node hold only 4" in w for w in plan.warnings)
    assert project(spec, SHAPE, Cluster(1, 8, 64), default_profile()).stage("predict").workers == 8


def test_serial_backend_has_one_worker(tmp_path):
    data = yaml.safe_load(MITOEM.read_text())
    data["resources"]["backend"] = "serial"
    plan = project(parse_spec(data), SHAPE, Cluster(4, 8, 64), default_profile())
    assert {s.workers for s in plan.stages} == {1}
    assert any("serial" in w for w in plan.warnings)


def test_reads_metadata_only_and_refuses_without_a_shape(tmp_path, capsys):
    # an image whose chunks were never written: reading any voxel would fail (missing_chunks: error)
    url = str(tmp_path / "empty.zarr")
    create_image(url, shape=(40, 300, 200), dtype="uint16", chunks=(20, 100, 100), voxel_size_nm=(30, 8, 8))
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({"input": {"url": url}, "run": {"dir": str(tmp_path / "run")}, "annotation": {"method": "manual"},
                                    "patches": {"shape_vox": [10, 100, 100]}, "selection": {"method": "kcenter", "budget": 2}}))
    assert main(["plan", str(spec), "--nodes", "1", "--gpus-per-node", "1", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["shape"] == [40, 300, 200] and plan["dtype_bytes"] == 2
    assert plan["pool_patches"] == len(PatchGrid((40, 300, 200), (10, 100, 100), holdout=holdout_box((40, 300, 200), axis=0, fraction=0.5)))
    missing = tmp_path / "gone.yaml"
    missing.write_text(spec.read_text().replace(url, str(tmp_path / "nothing.zarr")))
    assert main(["plan", str(missing), "--nodes", "1", "--gpus-per-node", "1"]) == 2
    assert "--shape Z Y X" in capsys.readouterr().err
    assert main(["plan", str(missing), "--nodes", "1", "--gpus-per-node", "1", "--shape", "40", "300", "200"]) == 0
    out = capsys.readouterr().out
    assert "plan for job alseg-job" in out and "scaling assumptions" in out and "ASSUMPTION" in out
