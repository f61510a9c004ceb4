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
from tests.deploy._deploy import (REPO, STAGES, GiB, Node, driver_hosts, driver_problems, host_problems, shell_commands,
                                  spec_from_text, submit_driver, worker_count_problems)

CONFIG = REPO / "cluster" / "ray-cluster.yaml"
MITOEM = REPO / "configs" / "mitoem-full.yaml"
GUIDE = REPO / "cluster" / "README.md"
# AWS's published shapes: vCPUs, GPUs, GPU model, memory (GiB)
INSTANCES = {
    "p4d.24xlarge": (96, 8, "A100", 1152),
    "p5.48xlarge": (192, 8, "H100", 2048),
    "m6i.2xlarge": (8, 0, None, 32),
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
        cpus, n_gpus, model, _ = INSTANCES[kind]
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


def launcher_nodes(config: dict[str, Any]) -> list[Node]:
    """Every node type as Ray sees it: its `resources`, and the instance type's memory."""
    return [
        Node(name, float(t["resources"].get("CPU", 0)), float(t["resources"].get("GPU", 0)),
             INSTANCES[t["node_config"]["InstanceType"]][3] * GiB)
        for name, t in config["available_node_types"].items()
    ]


def launcher_max_gpus(config: dict[str, Any]) -> float:
    """The GPUs of the cluster at its largest: `max_workers` nodes (and no more than each type's own
    maximum) of the types with the most GPUs first."""
    left, total = config["max_workers"], 0.0
    types = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    for t in sorted(types, key=lambda t: -t["resources"].get("GPU", 0)):
        n = min(left, t["max_workers"])
        total, left = total + n * t["resources"].get("GPU", 0), left - n
    return total


def guide_submit() -> str:
    """The guide's `ray job submit` of the whole job on this cluster (step 4a)."""
    (cmd,) = [c for c in shell_commands(GUIDE.read_text()) if "ray job submit" in c and "/shared/mitoem-rat.yaml" in c]
    return cmd


def guide_spec(tmp_path: Path) -> Any:
    """configs/mitoem-full.yaml with the `resources:` the guide gives for this cluster (step 2)."""
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), re.S)]
    (resources,) = [b["resources"] for b in blocks if isinstance(b, dict) and set(b) == {"resources"}]
    spec = yaml.safe_load(MITOEM.read_text())
    spec["resources"] = resources
    return spec_from_text(yaml.safe_dump(spec), tmp_path)


def test_job_fits_the_gpu_workers(config, tmp_path):
    """Every stage of the documented MitoEM job fits a worker node type (the head takes no tasks), and
    the guide's `ray job submit` gives the driver, which trains nnU-Net, resources.nnunet's GPU, CPUs
    and memory, so it starts on a GPU node that holds it beside a GPU stage's workers."""
    spec = guide_spec(tmp_path)
    nodes = launcher_nodes(config)
    workers = [n for n in nodes if n.name != config["head_node_type"]]
    for stage in STAGES:
        req = getattr(spec.resources, stage)
        mem = 0.0 if req.memory_gb is None else req.memory_gb * GiB
        fits = [n for n in workers if req.cpus <= n.cpus and req.gpus <= n.gpus and mem <= n.memory_bytes]
        assert fits, f"{stage} {req} fits no worker"
    driver = submit_driver(guide_submit())
    assert driver.gpus == 1 and driver_problems(driver, spec) == []
    hosts = driver_hosts(nodes, driver)
    assert hosts and config["head_node_type"] not in [n.name for n in hosts], "the driver must start on a GPU node"
    for node in hosts:  # every one runs docker.worker_image (test_nodes_run_the_images)
        assert node.gpus >= 1 and host_problems(node, driver, spec) == []


@pytest.mark.parametrize(
    "option, expected",
    [
        ("--entrypoint-num-gpus 1", "reserves 0 GPUs"),
        ("--entrypoint-num-cpus 8", "reserves 0 CPUs"),
        ("--entrypoint-memory 51539607552", None),  # without it Ray reserves no memory: allowed, not checked
    ],
)
def test_driver_check_catches_a_submit_without_the_gpu(tmp_path, option, expected):
    command = guide_submit()
    assert option in command
    problems = driver_problems(submit_driver(command.replace(option, "")), guide_spec(tmp_path))
    assert (expected is None and problems == []) or any(expected in p for p in problems), problems


def test_gpu_stages_name_their_worker_counts(config, tmp_path):
    """The guide's worker counts for this cluster: each GPU stage names one, within the GPUs the
    cluster grows to (4 nodes of 8) less the driver's."""
    spec = guide_spec(tmp_path)
    assert launcher_max_gpus(config) == 32
    driver = submit_driver(guide_submit())
    assert worker_count_problems(spec, launcher_max_gpus(config), driver) == []
    assert worker_count_problems(spec, launcher_max_gpus(config) - 8, driver), "31 workers on 3 nodes must fail"
    ours, theirs = spec.resources.model_dump(), load_spec(MITOEM).resources.model_dump()
    for k in ours:
        if isinstance(ours[k], dict):  # a stage's request: only its worker count may differ
            ours[k].pop("workers"), theirs[k].pop("workers")
    assert {k for k in ours if ours[k] != theirs[k]} <= {"node_wait_s"}, "the guide's resources are not the job's"
