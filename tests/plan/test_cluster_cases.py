"""`alseg plan` on what a cluster job meets: test-time mirroring, a profile from a small node, Ray
scaling from zero, a run directory on object storage, where the voxel size came from, a 2d spec,
and planning without torch."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alseg.cli import main
from alseg.geometry import BlockGrid
from alseg.plan import Cluster, default_profile, project, save_profile
from alseg.plan import counts as cnt
from alseg.plan.job import default_cpus_per_node
from alseg.plan.model import render
from alseg.plan.profile import Profile
from alseg.spec import load_spec, parse_spec
from spec_fields import set_fields

REPO = Path(__file__).resolve().parents[2]
MITOEM = REPO / "configs" / "mitoem-full.yaml"
VNC2D = REPO / "configs" / "vnc-2d.yaml"
SHAPE = (1000, 4096, 4096)
VNC_SHAPE = (20, 512, 512)  # vnc.zarr at input.level 1 (20 x 1024 x 1024 at level 0)
PREDICTING = ("evaluate-00", "evaluate-01", "predict")


def profile_with(**changes) -> Profile:
    """The default profile with ``changes`` (dotted paths) applied."""
    data = default_profile().model_dump(mode="json")
    for path, value in changes.items():
        *head, last = path.split(".")
        node = data
        for key in head:
            node = node[key]
        node[last] = value
    return Profile.model_validate(data)


def network_only(**changes) -> Profile:
    """A profile where everything but the network's tiles is (nearly) free: no model load or
    warm-up, instant storage, post-processing and scoring; a stage's time is then its tiles."""
    fast = 1e18
    return profile_with(**{"rates.predict.load_s": 0.0, "rates.predict.warmup_s": 0.0, "rates.store.read_mb_per_s": fast,
                           "rates.store.write_mb_per_s": fast, "rates.postprocess.stitch_voxels_per_s": fast,
                           "rates.postprocess.other_voxels_per_s": fast, "rates.evaluate.voxels_per_s": fast, **changes})


def spec_of(path: Path, **changes):
    data = set_fields(yaml.safe_load(path.read_text()), changes)
    return parse_spec(data)


# --------------------------------------------------------------------------------------------- #
# 1. mirroring
# --------------------------------------------------------------------------------------------- #
@pytest.mark.parametrize("config,shape,cluster,passes", [(MITOEM, SHAPE, Cluster(1, 8, 64), 8),
                                                         (VNC2D, VNC_SHAPE, Cluster(1, 0, 16), 4)])
def test_mirroring_multiplies_prediction_by_the_network_passes(config, shape, cluster, passes):
    profile = network_only()
    on = project(spec_of(config, **{"prediction.mirroring": True}), shape, cluster, profile)
    off = project(spec_of(config, **{"prediction.mirroring": False}), shape, cluster, profile)
    for key in PREDICTING:
        assert on.stage(key).seconds == pytest.approx(passes * off.stage(key).seconds, rel=1e-3), key
    assert on.stage("pretrain").seconds == pytest.approx(off.stage("pretrain").seconds)  # training does not predict
    assert f"{passes} network pass(es) per tile" in "\n".join(on.stage("predict").basis)


@pytest.mark.parametrize("config,shape,cluster,patch,passes", [(MITOEM, SHAPE, Cluster(1, 8, 64), [20, 320, 320], 8),
                                                               (VNC2D, VNC_SHAPE, Cluster(1, 0, 16), [256, 256], 4)])
def test_a_profile_measured_with_mirroring_plans_like_one_without(config, shape, cluster, patch, passes):
    """A profile that mirrored took ``passes`` times as long per tile: divided out, it plans every
    spec as the profile without mirroring does."""
    base = default_profile().rates.predict
    plain = profile_with(**{"rates.predict.patch_vox": patch, "rates.predict.mirroring": False})
    tile_vox = plain.rates.predict.tile_voxels_per_s
    mirrored = profile_with(**{"rates.predict.patch_vox": patch, "rates.predict.mirroring": True,
                               "rates.predict.tile_voxels_per_s": tile_vox / passes,
                               "rates.predict.tiles_per_s": base.tiles_per_s / passes})
    assert cnt.mirror_passes(patch if len(patch) == 3 else [1, *patch], True) == passes
    for mirroring in (True, False):
        for method in ({"method": "kcenter", "budget": 2, "rounds": 2},
                       {"method": "bald", "budget": 2, "rounds": 2, "mode": "tta", "samples": 4}):
            spec = spec_of(config, **{"prediction.mirroring": mirroring, "selection": method})
            a, b = project(spec, shape, cluster, plain), project(spec, shape, cluster, mirrored)
            assert [s.key for s in a.stages] == [s.key for s in b.stages]
            for sa, sb in zip(a.stages, b.stages):
                assert sb.seconds == pytest.approx(sa.seconds, rel=1e-9), (mirroring, method["method"], sa.key)


def test_uncertainty_scoring_predicts_without_mirroring():
    method = {"method": "bald", "budget": 64, "rounds": 2, "mode": "tta", "samples": 4}
    on = project(spec_of(MITOEM, **{"prediction.mirroring": True, "selection": method}), SHAPE, Cluster(1, 8, 64), network_only())
    off = project(spec_of(MITOEM, **{"prediction.mirroring": False, "selection": method}), SHAPE, Cluster(1, 8, 64), network_only())
    assert on.stage("select-01").seconds == pytest.approx(off.stage("select-01").seconds)
    assert on.stage("predict").seconds > 7 * off.stage("predict").seconds


# --------------------------------------------------------------------------------------------- #
# 2. CPUs per node: the target's, not the calibration node's
# --------------------------------------------------------------------------------------------- #
def test_a_profile_from_a_2_core_node_plans_an_8_gpu_node(tmp_path, capsys):
    data = default_profile().model_dump(mode="json")
    data["device"]["cpu_count"] = 2
    small = save_profile(Profile.model_validate(data), tmp_path / "small.json")
    args = ["plan", str(MITOEM), "--nodes", "1", "--gpus-per-node", "8", "--shape", *map(str, SHAPE), "--profile", str(small)]
    assert main([*args, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    # resources.nnunet asks 8 CPUs per GPU, the largest ratio of mitoem-full's GPU stages
    assert plan["cluster"]["cpus_per_node"] == 8 * 8
    assert any("64 CPUs per node (default; give --cpus-per-node)" in s and "resources.nnunet" in s for s in plan["sources"])
    assert {s["key"]: s["workers"] for s in plan["stages"]}["predict"] == 8
    assert main(args) == 0
    assert "64 CPUs per node (default; give --cpus-per-node)" in capsys.readouterr().out
    # the flag wins; where a node cannot hold a worker, the error names it
    assert main([*args, "--cpus-per-node", "2"]) == 2
    assert "--cpus-per-node" in capsys.readouterr().err
    # CPU nodes: the profile's count is all there is; too few for a worker of 4 CPUs, said so
    assert main([*args[:5], "0", *args[6:]]) == 2
    err = capsys.readouterr().err
    assert "no node fits it" in err and "--cpus-per-node" in err


def test_default_cpus_per_node():
    spec = load_spec(MITOEM)
    assert default_cpus_per_node(spec, 4, 2)[0] == 32
    assert default_cpus_per_node(spec, 0, 2) == (2, default_cpus_per_node(spec, 0, 2)[1])
    assert "profile's node" in default_cpus_per_node(spec, 0, 2)[1]
    # one GPU at 2 CPUs per GPU, but a CPU-only worker of 12 CPUs: every stage must fit one worker
    wide = spec_of(MITOEM, **{"resources.postprocess": {"cpus": 12}, "resources.nnunet": {"cpus": 2, "gpus": 1}})
    cpus, line = default_cpus_per_node(wide, 1, 2)
    assert cpus == 12 and "largest per-worker request" in line


# --------------------------------------------------------------------------------------------- #
# 3. Ray scaling from zero
# --------------------------------------------------------------------------------------------- #
def test_ray_stages_without_workers_warn_of_scaling_from_zero():
    plan = project(load_spec(MITOEM), SHAPE, Cluster(2, 4, 64), default_profile())
    found = [w for w in plan.warnings if "autoscales from 0 workers" in w]
    assert {w.split(".workers")[0] for w in found} == {"resources.pseudolabel", "resources.embedding", "resources.prediction"}
    assert any("set resources.prediction.workers: 8" in w for w in found)
    pinned = spec_of(MITOEM, **{"resources.prediction.workers": 8})
    assert not any(w.startswith("resources.prediction.workers is unset")
                   for w in project(pinned, SHAPE, Cluster(2, 4, 64), default_profile()).warnings)
    serial = spec_of(MITOEM, **{"resources.backend": "serial"})
    assert not any("autoscales" in w for w in project(serial, SHAPE, Cluster(1, 1, 64), default_profile()).warnings)


# --------------------------------------------------------------------------------------------- #
# 4. a run directory on object storage; a profile from another kind of device
# --------------------------------------------------------------------------------------------- #
def test_a_run_directory_on_object_storage_is_planned_with_the_nodes_scratch_folders():
    plan = project(load_spec(MITOEM), SHAPE, Cluster(1, 8, 64), default_profile())
    text = render(plan)
    assert "WILL FAIL" not in text and not any("object storage" in w for w in plan.warnings)
    said = [s for s in plan.sources if s.startswith("run.dir is on object storage (s3)")]
    assert len(said) == 1 and "ALSEG_SCRATCH" in said[0] and said[0] in text
    local = project(spec_of(MITOEM, **{"run.dir": "/scratch/mitoem-rat"}), SHAPE, Cluster(1, 8, 64), default_profile())
    assert not any("object storage" in s for s in local.sources)


def test_gpu_profile_on_cpu_nodes_and_cpu_profile_on_gpu_nodes_are_in_the_output(tmp_path, capsys):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({**yaml.safe_load(MITOEM.read_text()), "run": {"dir": str(tmp_path / "run")}}))
    base = ["plan", str(spec), "--nodes", "1", "--shape", *map(str, SHAPE), "--cpus-per-node", "64"]
    assert main([*base, "--gpus-per-node", "0"]) == 0  # the default profile: GPU figures
    out = capsys.readouterr().out
    assert "resources.prediction runs on CPUs here, but the profile measured it on a GPU" in out
    assert "nnU-Net training runs on CPUs here, but the profile measured it on a GPU" in out
    devices = {f"rates.{k}.device": "cpu" for k in ("pseudolabel", "nnunet", "predict", "mae", "embed")}
    cpu = save_profile(profile_with(**devices, **{"device.gpu": None, "device.gpu_count": 0}), tmp_path / "cpu.json")
    assert main([*base, "--gpus-per-node", "8", "--profile", str(cpu)]) == 0
    out = capsys.readouterr().out
    assert "resources.prediction runs on GPUs, but the profile measured it on a CPU" in out
    assert "nnU-Net training runs on GPUs, but the profile measured it on a CPU" in out


# --------------------------------------------------------------------------------------------- #
# 5. where the voxel size came from
# --------------------------------------------------------------------------------------------- #
def test_the_voxel_size_and_its_source_are_stated(capsys):
    base = ["plan", str(MITOEM), "--nodes", "1", "--gpus-per-node", "8", "--shape", *map(str, SHAPE), "--json"]
    assert main(base) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["voxel_size_nm"] == default_profile().voxel_size_nm
    assert any(s.startswith("voxel size 30 x 8 x 8 nm (z y x) from the profile's calibration volume") for s in plan["sources"])
    assert main([*base, "--voxel-size", "40", "16", "16"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["voxel_size_nm"] == [40.0, 16.0, 16.0]
    assert "voxel size 40 x 16 x 16 nm from --voxel-size" in plan["sources"]
    assert not any("calibration volume" in s for s in plan["sources"])


# --------------------------------------------------------------------------------------------- #
# 7. fine-tuning's peak memory
# --------------------------------------------------------------------------------------------- #
def test_finetuning_reports_the_training_memory_as_pretraining_does():
    plan = project(load_spec(MITOEM), SHAPE, Cluster(1, 8, 64), default_profile())
    assert plan.stage("pretrain").peak_memory_bytes == 48 * 2**30
    for key in ("finetune-01", "finetune-02"):
        assert plan.stage(key).peak_memory_bytes == plan.stage("pretrain").peak_memory_bytes
    unset = project(spec_of(MITOEM, **{"resources.nnunet": {"cpus": 8, "gpus": 1}}), SHAPE, Cluster(1, 8, 64), default_profile())
    assert unset.stage("finetune-01").peak_memory_bytes is None is unset.stage("pretrain").peak_memory_bytes


# --------------------------------------------------------------------------------------------- #
# 8. a 2d spec: tiles against nnU-Net's own placement
# --------------------------------------------------------------------------------------------- #
@pytest.mark.parametrize("shape", [VNC_SHAPE, (20, 1024, 1024)])
def test_2d_spec_tiles_equal_nnunets_steps_per_section(shape, capsys):
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    assert main(["plan", str(VNC2D), "--nodes", "1", "--gpus-per-node", "0", "--shape", *map(str, shape), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    stages = {s["key"]: s for s in plan["stages"]}
    spec = load_spec(VNC2D)
    patch = spec.nnunet.plan_overrides.patch_size_vox  # 2d: (y, x)
    # a 2d model predicts each block section by section, nnU-Net's sliding window over the block's y-x read region
    grid = BlockGrid(shape, spec.prediction.block_shape_vox, spec.prediction.halo_vox)
    oracle = sum(b.read.shape[0] * math.prod(len(s) for s in compute_steps_for_sliding_window(b.read.shape[1:], patch, 0.5))
                 for b in grid)
    assert stages["predict"]["items"]["tiles"] == oracle
    assert stages["predict"]["items"]["blocks"] == len(grid)
    if shape == VNC_SHAPE:  # blocks span y and x: the sections times nnU-Net's steps over the whole section
        assert oracle == shape[0] * math.prod(len(s) for s in compute_steps_for_sliding_window(shape[1:], patch, 0.5)) == 180
    assert all(math.isfinite(s["seconds"]) and s["seconds"] > 0 for s in plan["stages"])


# --------------------------------------------------------------------------------------------- #
# 6. planning without torch
# --------------------------------------------------------------------------------------------- #
def test_the_embedding_input_side_has_one_torch_free_home():
    from alseg.embed import data, sizes

    assert data.input_side is sizes.input_side and data.granularity is sizes.granularity
    tree = ast.parse(Path(sizes.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m.split(".")[0] for m in imported} & {"torch", "numpy", "alseg"}, imported
    res = subprocess.run([sys.executable, "-c", "import sys, alseg.plan; print('alseg.plan.calibrate' in sys.modules)"],
                         capture_output=True, text=True, cwd=REPO, check=True)
    assert res.stdout.strip() == "False"


def test_planning_imports_no_torch():
    code = "import sys, alseg.plan.model, alseg.plan.cli; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'nnunetv2', 'ray'}))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert res.stdout.strip() == "[]"
