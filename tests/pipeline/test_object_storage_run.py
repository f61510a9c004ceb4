"""`configs/mitoem-full.yaml` as it is (input and run directory on object storage), pointed at a
small synthetic volume on the S3 server on 127.0.0.1 (moto), with only sizes, the labeller (no
CellSAM weights here), the training schedules and the backend shrunk through a spec override:
preflight passes and `alseg run` runs end to end with nothing of the run on local disk but each
node's scratch folder. Nodes are told apart by their scratch folders (``ALSEG_SCRATCH``): nodes
that did not train predict from the published model, and one fine-tunes from the published
pretraining. A Ray cluster of two nodes without a shared disk (issue 17, item 2) makes the
same pseudo-labels, predictions and instances as the serial run, and finishes a prediction with
the same output when one node is removed in the middle of it.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from alseg.annotate.store import annotations_url
from alseg.geometry import Box
from alseg.io import store as st
from alseg.io.omezarr import open_volume
from alseg.nnunet.models import MANIFEST, local_model
from alseg.pipeline import run_job
from alseg.pipeline.common import pretrain_record
from alseg.pipeline.finetune import run_finetune
from alseg.pipeline.records import read_record
from alseg.preflight import preflight
from alseg.spec import parse_spec
from spec_fields import set_fields

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.ray]
REPO = Path(__file__).resolve().parents[2]
MITOEM = REPO / "configs" / "mitoem-full.yaml"
TRAIN = {"epochs": 1, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1, "final_validation": False}
SHRINK = {  # the override: sizes, labeller, schedules, backend; input.url and run.dir stay the config's
    "patches.shape_vox": [8, 32, 32],
    "pseudolabel": {"method": "classical", "block_shape_vox": [8, 64, 64], "halo_px": 16, "min_size_vox": 20},
    "nnunet.plan_overrides": {"patch_size_vox": [8, 32, 32], "batch_size": 2, "n_stages": 3, "features_per_stage": [4, 8, 16]},
    "nnunet.device": "cpu", "nnunet.pretrain": TRAIN, "nnunet.finetune": {**TRAIN, "learning_rate": 0.003},
    "embedding": {"epochs": 1, "batch_size": 8, "slices_per_patch": 2},
    "selection.budget": 1, "selection.n_initial": 1, "selection.rounds": 1,
    "prediction.block_shape_vox": [8, 32, 32], "prediction.halo_vox": [2, 8, 8], "prediction.mirroring": False,
    "postprocess.block_shape_vox": [8, 32, 32], "postprocess.min_size_vox": 5,
    "resources": {"backend": "serial"},
}


def _shrunk() -> dict:
    return set_fields(yaml.safe_load(MITOEM.read_text()), SHRINK)


def _published(spec, round_index: int) -> str:
    return st.join(spec.run.dir, "nnunet", "results", f"Dataset{100 + round_index:03d}_round{round_index:02d}",
                   "nnUNetTrainerAlseg__nnUNetPlans__3d_fullres")


@pytest.fixture(scope="module")
def s3_run(s3_server, tmp_path_factory):
    import boto3
    import fsspec

    from alseg.synth import SynthParams, write_synthetic

    tmp = tmp_path_factory.mktemp("s3run")
    spec = parse_spec(_shrunk())
    assert (spec.input.url, spec.run.dir) == ("s3://em-data/mitoem/rat.zarr", "s3://em-runs/mitoem-rat")
    client = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    for bucket in ("em-data", "em-runs"):
        client.create_bucket(Bucket=bucket)
    fsspec.get_filesystem_class("s3").clear_instance_cache()
    write_synthetic(spec.input.url, SynthParams.preset("easy", shape=(16, 64, 64), seed=3))
    mp = pytest.MonkeyPatch()
    mp.setenv("ALSEG_SCRATCH", str(tmp / "node-a"))
    (tmp / "node-a").mkdir()
    mp.chdir(tmp / "node-a")  # anything written to a relative path would land here
    try:
        report = preflight(spec)
        assert report.problems == [], report.problems
        outcome = run_job(spec, progress=False, say=lambda _: None)
    finally:
        mp.undo()
    yield spec, outcome, tmp


def test_the_mitoem_config_runs_end_to_end_on_object_storage(s3_run):
    spec, outcome, tmp = s3_run
    assert all(s.state == "ran" for s in outcome.states)
    assert [s.key for s in outcome.states][-3:] == ["predict", "measure", "report"]
    record = pretrain_record(spec, needed_by="this test")
    assert record["model_folder"] == st.join(spec.run.dir, "nnunet", "results", "Dataset001_pseudo",
                                             "nnUNetTrainerAlseg__nnUNetPlans__3d_fullres")
    assert read_record(spec, "finetune-01")["result"]["model_folder"] == _published(spec, 1)
    for model in (record["model_folder"], _published(spec, 1)):
        assert st.exists(st.join(model, MANIFEST)) and st.exists(st.join(model, "fold_all", "checkpoint_final.pth"))
    for log in ("plan-001.log", "train-001.log", "transfer-001-101.log", "train-101.log"):
        assert st.exists(st.join(spec.run.dir, "nnunet", "logs", log)), log
    instances = open_volume(st.join(spec.run.dir, "prediction", "instances.zarr")).read()
    assert instances.shape == (16, 64, 64) and instances.max() > 0
    assert "f1" in str(read_record(spec, "evaluate-01")["result"]["scores"])
    # on local disk: this node's scratch (nnU-Net's folders, the models it fetched), nothing else
    local = sorted(p.name for p in (tmp / "node-a").iterdir())
    assert local == ["models", "nnunet"], local


@pytest.fixture(scope="module")
def two_nodes(s3_run):
    """A Ray cluster of two nodes without a shared disk: a head with no CPUs and two worker nodes of
    one CPU each (``ray.cluster_utils.Cluster``, every process on 127.0.0.1), each node with its own
    scratch folder. With one CPU per node, a stage's two workers run on both nodes. The job's
    driver runs in a process of its own, as on a cluster."""
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    spec, _, tmp = s3_run
    mp = pytest.MonkeyPatch()
    # every Ray process on 127.0.0.1 (Ray's single-machine mode), no token (a token file may exist here)
    mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    mp.setenv("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        nodes = {n: cluster.add_node(num_cpus=1, env_vars={"ALSEG_SCRATCH": str(tmp / f"ray-{n}"), "PYTHONPATH": str(REPO)})
                 for n in "ab"}
        cluster.wait_for_nodes()
        assert cluster.address.startswith("127.0.0.1:")
        d = _shrunk()
        d["run"]["dir"] = "s3://em-runs/mitoem-rat-two-nodes"
        d["resources"] = {"backend": "ray", "ray_address": cluster.address, "pseudolabel": {"cpus": 1, "workers": 2},
                          "prediction": {"cpus": 1, "gpus": 0, "workers": 2}, "postprocess": {"cpus": 1}}
        norm = pretrain_record(spec, needed_by="this test")["norm"]
        yield cluster, nodes, parse_spec(d), lambda **job: _driver(tmp, {"spec": d, **job}), norm
    finally:
        cluster.shutdown()
        mp.undo()


def _driver(tmp: Path, job: dict) -> subprocess.Popen:
    import json
    import sys

    path = tmp / f"driver-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(job))
    env = {**os.environ, "ALSEG_SCRATCH": str(tmp / "driver"), "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests' / 'helpers'}"}
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "helpers" / "cluster_driver.py"), str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finished(proc: subprocess.Popen, timeout: float = 600) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]


OUTPUTS = ("classes.zarr", "mask.zarr", "instances.zarr")


def _read(url: str) -> np.ndarray:
    return open_volume(url).read()


def test_two_nodes_make_the_pseudolabels_predictions_and_instances_of_the_serial_run(s3_run, two_nodes):
    spec, _, tmp = s3_run
    _, _, on_ray, driver, norm = two_nodes
    _finished(driver(pseudolabels=True, predict={"model": _published(spec, 1), "norm": norm}))  # the serial run's final model
    np.testing.assert_array_equal(_read(st.join(on_ray.run.dir, "pseudolabels.zarr")),
                                  _read(st.join(spec.run.dir, "pseudolabels.zarr")))
    for name in OUTPUTS:
        np.testing.assert_array_equal(_read(st.join(on_ray.run.dir, "prediction", name)),
                                      _read(st.join(spec.run.dir, "prediction", name)), err_msg=name)
    for n in "ab":  # both nodes predicted: each fetched the published model into its own scratch folder
        cached = list((tmp / f"ray-{n}" / "models").rglob("checkpoint_final.pth"))
        assert len(cached) == 1, (n, cached)


def test_a_node_removed_mid_prediction_leaves_the_same_output(s3_run, two_nodes):
    spec, _, _ = s3_run
    cluster, nodes, on_ray, driver, norm = two_nodes
    out = st.join(on_ray.run.dir, "again")
    work = st.join(on_ray.run.dir, "work", "predict", "again")
    job = driver(predict={"model": _published(spec, 1), "norm": norm, "out_dir": out, "work_key": "again"})
    deadline = time.time() + 300
    fs, path = st.filesystem(work)
    while not (fs.exists(path) and fs.find(path)):  # a first block finished
        assert job.poll() is None and time.time() < deadline, job.communicate()[0][-3000:] if job.poll() is not None else "slow"
        time.sleep(0.2)
        fs.invalidate_cache()
    cluster.remove_node(nodes["b"])
    assert job.poll() is None, "the prediction ended before the node went: nothing was tested"
    _finished(job)
    for name in OUTPUTS:
        np.testing.assert_array_equal(_read(st.join(out, name)), _read(st.join(spec.run.dir, "prediction", name)),
                                      err_msg=name)


def test_the_viewer_draws_the_run_on_object_storage_and_no_credential_reaches_it(s3_run, s3_server):
    """`alseg view` on the run in the bucket (private: read through the viewer's file server with
    this environment's credentials): a headless Chromium draws the x-y section and its instances;
    neither the state, the page, nor the state written by --state-only holds a credential."""
    import json

    from viewing import check_rendering, render

    from alseg.view.contents import run_contents
    from alseg.view.session import write_state

    spec, _, _ = s3_run
    contents = run_contents(spec.run.dir)
    assert contents.rundir == spec.run.dir and contents.instances_layer == "instances"
    shots = render(contents)
    check_rendering(contents, shots)
    assert contents.measurements and "/props/info" in shots["documents_read"], "the browser loaded the instances' measurements"
    sources = [l["source"] for l in shots["state"]["layers"] if l["type"] != "annotation"]
    assert all(str(s).count("zarr3://http://127.0.0.1:") >= 1 for s in sources), sources
    written = write_state(contents, 18093)
    assert written["state"] == st.join(spec.run.dir, "view", "state.json") and "link" not in written, "a private bucket: no public link"
    seen = json.dumps(shots["state"]) + shots["page"].decode(errors="replace") + st.read_bytes(written["state"]).decode()
    for value in (s3_server["AWS_ACCESS_KEY_ID"], s3_server["AWS_SECRET_ACCESS_KEY"]):
        assert value not in seen


def test_a_node_that_did_not_pretrain_finetunes_from_the_published_pretraining(s3_run, monkeypatch):
    """Last in this module: it publishes a new round-1 model. nnU-Net's training is not seeded (its augmentation draws freely), so the new round-1 model is
    checked by what it must share with the first: the pretraining's plans, carried over, and
    weights that start from the pretrained ones (a short fine-tune moves them little)."""
    import json

    import torch

    spec, _, tmp = s3_run

    def weights(model: str) -> dict:
        return torch.load(os.path.join(local_model(model), "fold_all", "checkpoint_final.pth"), map_location="cpu",
                          weights_only=False)["network_weights"]

    def plans(model: str) -> dict:
        return json.loads(Path(local_model(model), "plans.json").read_text())

    pretrained = pretrain_record(spec, needed_by="this test")
    first_plans = plans(_published(spec, 1))
    monkeypatch.setenv("ALSEG_SCRATCH", str(tmp / "node-c"))
    res = read_record(spec, "finetune-01")["result"]
    patches = [(int(i), Box(tuple(b[:3]), tuple(b[3:]))) for i, b in zip(res["patch_ids"], res["boxes"])]
    again = run_finetune(spec, 1, patches, annotations_url(spec), pretrained=pretrained)
    assert again["model_folder"] == _published(spec, 1) and again["cases"] == len(patches)
    assert plans(again["model_folder"]) == first_plans
    start, tuned = weights(pretrained["model_folder"]), weights(again["model_folder"])
    encoder = [k for k in start if k.startswith("encoder.") and k.endswith(".weight") and start[k].dim() == 5]
    assert encoder and start.keys() == tuned.keys()
    for k in encoder:
        moved = float(torch.linalg.norm(tuned[k] - start[k]) / torch.linalg.norm(start[k]))
        assert moved < 0.2, (k, moved)  # from a fresh initialisation it would be about 1.4
    assert Path(tmp / "node-c" / "nnunet").is_dir() and Path(tmp / "node-c" / "models").is_dir()
