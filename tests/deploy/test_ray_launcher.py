"""cluster/ray-cluster.yaml: the Ray cluster launcher config (AWS), checked offline against the JSON
schema Ray itself ships (ray/autoscaler/ray-schema.json of the locked Ray) and Ray's own config
preparation (what `ray up` runs before it talks to AWS), then for what alseg needs of it."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from alseg.spec import load_spec
from tests.deploy._deploy import REPO

CONFIG = REPO / "cluster" / "ray-cluster.yaml"
MITOEM = REPO / "configs" / "mitoem-full.yaml"
# AWS's published shapes: vCPUs, GPUs, GPU model
INSTANCES = {
    "p4d.24xlarge": (96, 8, "A100"),
    "p5.48xlarge": (192, 8, "H100"),
    "m6i.2xlarge": (8, 0, None),
}
CREDENTIAL_TEXT = re.compile(r"aws_access_key_id|aws_secret_access_key|aws_session_token|AKIA[0-9A-Z]{16}", re.I)


def _schema() -> dict[str, Any]:
    spec = importlib.util.find_spec("ray")  # the installed Ray, without importing it
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "autoscaler" / "ray-schema.json"
    assert path.is_file(), f"the installed Ray ships no {path}"
    return json.loads(path.read_text())


def schema_errors(config: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(_schema())
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(config))


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())


def test_config_validates_against_rays_schema(config):
    assert schema_errors(config) == []


def test_config_passes_rays_own_preparation(config):
    """`ray up` first fills Ray's AWS defaults in and validates the result (no cloud call yet)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda c: c["available_node_types"]["gpu_a100"].__setitem__("min_worker", 0), "'min_worker' was unexpected"),
        (lambda c: c.__setitem__("max_worker", 4), "'max_worker' was unexpected"),
        (lambda c: c["docker"].__setitem__("worker_imag", "x"), "'worker_imag' was unexpected"),
        (lambda c: c["available_node_types"]["gpu_h100"]["resources"].__setitem__("GPU", "8"), "'8' is not of type 'integer'"),
        (lambda c: c["available_node_types"]["head"].pop("resources"), "'resources' is a required property"),
    ],
)
def test_schema_check_catches_a_broken_copy(config, edit, expected):
    broken = copy.deepcopy(config)
    edit(broken)
    errors = schema_errors(broken)
    assert any(expected in e for e in errors), errors


def test_node_types(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}, "the head runs the driver and Ray's control plane, no tasks"
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpus = set()
    for name, node in workers.items():
        kind = node["node_config"]["InstanceType"]
        assert kind in INSTANCES, f"{name}: unknown instance type {kind}"
        cpus, n_gpus, model = INSTANCES[kind]
        assert node["resources"] == {"CPU": cpus, "GPU": n_gpus}, f"{name}: resources disagree with {kind}"
        assert node["min_workers"] == 0 and node["max_workers"] >= 1, f"{name}: must scale from 0"
        gpus.add(model)
    assert gpus == {"A100", "H100"}


def test_object_storage_through_instance_roles_never_keys(config):
    for name, node in config["available_node_types"].items():
        profile = node["node_config"].get("IamInstanceProfile", {})
        assert profile.get("Name") or profile.get("Arn"), f"{name}: no IamInstanceProfile"
    assert "aws_credentials" not in config["provider"]
    assert not CREDENTIAL_TEXT.search(CONFIG.read_text())


def test_nodes_run_the_images(config):
    targets = set(re.findall(r"^FROM \S+ AS (\S+)", (REPO / "docker" / "Dockerfile").read_text(), re.M))
    docker = config["docker"]
    assert "image" not in docker, "one image for all nodes: the head and the workers have their own"
    assert docker["head_image"].rsplit(":", 1)[1] == "head" and "head" in targets
    assert docker["worker_image"].rsplit(":", 1)[1] == "worker" and "worker" in targets
    assert "--gpus all" in docker["worker_run_options"]
    # the shared filesystem reaches every container (run directory, weights)
    assert "-v /shared:/shared" in docker["run_options"]
    assert any("/shared" in c and "mount" in c for c in config["initialization_commands"])


def test_job_fits_the_gpu_workers(config):
    """Every stage of the documented MitoEM job fits a worker node type (the head takes no tasks)."""
    spec = load_spec(MITOEM)
    workers = [t["resources"] for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    for stage in ("pseudolabel", "nnunet", "embedding", "prediction", "postprocess"):
        req = getattr(spec.resources, stage)
        assert any(req.cpus <= r["CPU"] and req.gpus <= r["GPU"] for r in workers), f"{stage} {req} fits no worker"
