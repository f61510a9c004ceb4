"""cluster/kuberay/: the RayCluster and RayJob manifests, the job spec's ConfigMap and what the pods
share, checked structurally against the fields of KubeRay's CRDs they use, then for what alseg needs
of them (GPU resources, the mounted spec, the entrypoint and the GPU worker pod it runs on, the job's
per-worker requests and worker counts).

The CRD fields are described by hand below, as read from KubeRay v1.7.0's CRDs
(helm-chart/kuberay-operator/crds/ray.io_rayclusters.yaml and ray.io_rayjobs.yaml, apiVersion
ray.io/v1; the pod template fields are Kubernetes' PodTemplateSpec as the CRDs embed it): name,
type, required or not, enumerations (submissionMode's values from KubeRay's Go type JobSubmissionMode,
ray-operator/apis/ray/v1/rayjob_types.go, which the CRD does not enumerate). apiVersion, kind and
metadata are Kubernetes' own object fields. A field the manifests use that is not described here
fails, so every field in them has been checked against the CRD once.
"""

from __future__ import annotations

import copy
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

import pytest

from alseg.spec import load_spec
from tests.deploy._deploy import (REPO, STAGES, Driver, GiB, Node, SpecError, alseg_problem, driver_hosts,
                                  driver_problems, host_problems, spec_from_text, worker_count_problems, yaml_docs)
from tests.test_lock import LOCKS, Lock

KUBERAY = REPO / "cluster" / "kuberay"
RAYCLUSTER = KUBERAY / "raycluster.yaml"
RAYJOB = KUBERAY / "rayjob.yaml"
CONFIGMAP = KUBERAY / "job-configmap.yaml"
SHARED = KUBERAY / "shared.yaml"
MITOEM = REPO / "configs" / "mitoem-full.yaml"

# --- a hand-written description of the CRD fields used ----------------------------------------
# Kubernetes quantities ("4", 16Gi, 500m): an integer, or a string of the CRDs' pattern.
QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


@dataclass(frozen=True)
class Obj:
    fields: dict[str, Any]
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class Arr:
    item: Any


@dataclass(frozen=True)
class Map:
    value: Any


@dataclass(frozen=True)
class Enum:
    values: tuple[str, ...]


@dataclass(frozen=True)
class Quantity:
    pass


@dataclass(frozen=True)
class Number:
    """The CRD's ``type: number`` (an integer or a float in YAML)."""


STR, INT, BOOL = str, int, bool
LABELS = Map(STR)
METADATA = Obj({"name": STR, "labels": LABELS, "annotations": Map(STR)})
CONTAINER = Obj(
    {
        "name": STR,
        "image": STR,
        "env": Arr(Obj({"name": STR, "value": STR}, ("name",))),
        "resources": Obj({"requests": Map(Quantity()), "limits": Map(Quantity())}),
        "ports": Arr(Obj({"name": STR, "containerPort": INT}, ("containerPort",))),
        "volumeMounts": Arr(Obj({"name": STR, "mountPath": STR, "readOnly": BOOL}, ("mountPath", "name"))),
    },
    ("name",),
)
VOLUME = Obj(
    {
        "name": STR,
        "configMap": Obj({"name": STR}),
        "persistentVolumeClaim": Obj({"claimName": STR, "readOnly": BOOL}, ("claimName",)),
        "emptyDir": Obj({"medium": STR, "sizeLimit": Quantity()}),
    },
    ("name",),
)
POD_TEMPLATE = Obj(
    {
        "metadata": Obj({"labels": LABELS}),
        "spec": Obj(
            {
                "serviceAccountName": STR,
                "securityContext": Obj({"runAsNonRoot": BOOL, "runAsUser": INT, "runAsGroup": INT, "fsGroup": INT}),
                "tolerations": Arr(Obj({"key": STR, "operator": STR, "effect": STR})),
                "containers": Arr(CONTAINER),
                "volumes": Arr(VOLUME),
            },
            ("containers",),
        ),
    }
)
CLUSTER_SPEC = Obj(
    {
        "rayVersion": STR,
        "enableInTreeAutoscaling": BOOL,
        "autoscalerOptions": Obj({"upscalingMode": Enum(("Default", "Aggressive", "Conservative")), "idleTimeoutSeconds": INT}),
        "authOptions": Obj({"mode": Enum(("disabled", "token"))}),
        "headGroupSpec": Obj({"rayStartParams": Map(STR), "template": POD_TEMPLATE}, ("template",)),
        "workerGroupSpecs": Arr(
            Obj(
                {
                    "groupName": STR,
                    "replicas": INT,
                    "minReplicas": INT,
                    "maxReplicas": INT,
                    "rayStartParams": Map(STR),
                    "template": POD_TEMPLATE,
                },
                ("groupName", "maxReplicas", "minReplicas", "template"),
            )
        ),
    },
    ("headGroupSpec",),
)
RAYCLUSTER_CRD = Obj(
    {"apiVersion": Enum(("ray.io/v1",)), "kind": Enum(("RayCluster",)), "metadata": METADATA, "spec": CLUSTER_SPEC},
    ("apiVersion", "kind", "metadata", "spec"),
)
RAYJOB_CRD = Obj(
    {
        "apiVersion": Enum(("ray.io/v1",)),
        "kind": Enum(("RayJob",)),
        "metadata": METADATA,
        "spec": Obj(
            {
                "entrypoint": STR,
                "entrypointNumCpus": Number(),
                "entrypointNumGpus": Number(),
                "entrypointResources": STR,  # a JSON object of custom resources, as a string
                "submissionMode": Enum(("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")),
                "backoffLimit": INT,
                "shutdownAfterJobFinishes": BOOL,
                "ttlSecondsAfterFinished": INT,
                "rayClusterSpec": CLUSTER_SPEC,
            }
        ),
    },
    ("apiVersion", "kind", "metadata", "spec"),
)


def structure_problems(node: Any, desc: Any, path: str = "") -> list[str]:
    """Where ``node`` leaves ``desc``: unknown or missing fields, wrong types, values off an enum."""
    where = path or "<root>"
    if isinstance(desc, Obj):
        if not isinstance(node, dict):
            return [f"{where}: expected an object, got {type(node).__name__}"]
        out = [f"{where}.{k}: required field missing" for k in desc.required if k not in node]
        for key, value in node.items():
            if key not in desc.fields:
                out.append(f"{where}.{key}: not a field checked against KubeRay v1.7.0's CRD (misspelled?)")
            else:
                out += structure_problems(value, desc.fields[key], f"{path}.{key}" if path else key)
        return out
    if isinstance(desc, Arr):
        if not isinstance(node, list):
            return [f"{where}: expected a list, got {type(node).__name__}"]
        return [p for i, item in enumerate(node) for p in structure_problems(item, desc.item, f"{where}[{i}]")]
    if isinstance(desc, Map):
        if not isinstance(node, dict):
            return [f"{where}: expected a map, got {type(node).__name__}"]
        return [p for k, v in node.items() for p in structure_problems(v, desc.value, f"{where}.{k}")]
    if isinstance(desc, Enum):
        return [] if node in desc.values else [f"{where}: {node!r} is not one of {list(desc.values)}"]
    if isinstance(desc, Number):
        ok = isinstance(node, (int, float)) and not isinstance(node, bool)
        return [] if ok else [f"{where}: expected a number, got {type(node).__name__} {node!r}"]
    if isinstance(desc, Quantity):
        ok = (isinstance(node, int) and not isinstance(node, bool)) or (isinstance(node, str) and QUANTITY.match(node))
        return [] if ok else [f"{where}: {node!r} is not a Kubernetes quantity"]
    if desc is INT and isinstance(node, bool):
        return [f"{where}: expected an integer, got a boolean"]
    return [] if isinstance(node, desc) else [f"{where}: expected {desc.__name__}, got {type(node).__name__} {node!r}"]


# --- what alseg needs of the manifests --------------------------------------------------------
CONTAINER_RESOURCES = {"cpu", "memory", "nvidia.com/gpu"}
UID = 1000  # docker/Dockerfile's USER


def _amount(quantity: str | int) -> float:
    """A Kubernetes quantity as a plain number (memory in bytes, CPUs in cores)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity))
    assert m and m.group(2) in units.keys() | {""}, f"quantity {quantity!r}"
    return float(m.group(1)) * units.get(m.group(2), 1)


def pod_node(name: str, group: dict[str, Any]) -> Node:
    """What a group's pod offers Ray: its Ray container's limits, less the object store (shared memory
    that counts against the pod's memory limit)."""
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    store = float(group.get("rayStartParams", {}).get("object-store-memory", 0))
    return Node(name, _amount(limits["cpu"]), _amount(limits.get("nvidia.com/gpu", 0)), _amount(limits["memory"]) - store)


def cluster_nodes(spec: dict[str, Any]) -> list[tuple[Node, dict[str, Any]]]:
    """Every pod kind of a RayCluster spec, the head first, with its pod template."""
    head = spec["headGroupSpec"]
    out = [(pod_node("headGroupSpec", head), head["template"])]
    for group in spec.get("workerGroupSpecs", []):
        out.append((pod_node(f"group {group['groupName']}", group), group["template"]))
    if head.get("rayStartParams", {}).get("num-cpus") == "0":  # the head offers Ray no CPU
        out[0] = (Node(out[0][0].name, 0.0, out[0][0].gpus, out[0][0].memory_bytes), out[0][1])
    return out


def rayjob_driver(job: dict[str, Any]) -> Driver:
    """What the RayJob's entrypoint reserves (KubeRay v1.7.0 has no field for its memory)."""
    s = job["spec"]
    return Driver(float(s.get("entrypointNumCpus", 0)), float(s.get("entrypointNumGpus", 0)))


def max_gpus(spec: dict[str, Any]) -> float:
    """The GPUs of a RayCluster at its largest: every worker group at maxReplicas."""
    return sum(group["maxReplicas"] * pod_node("", group).gpus for group in spec.get("workerGroupSpecs", []))


@dataclass
class Shared:
    """The objects the pods refer to by name: ConfigMaps (name -> data), PVCs, service accounts."""

    configmaps: dict[str, dict[str, str]]
    claims: dict[str, dict[str, Any]]
    accounts: set[str]
    problems: list[str] = field(default_factory=list)


def shared_objects() -> Shared:
    configmaps, claims, accounts = {}, {}, set()
    for path in (CONFIGMAP, SHARED):
        for doc in yaml_docs(path):
            kind, name = doc["kind"], doc["metadata"]["name"]
            if kind == "ConfigMap":
                configmaps[name] = doc["data"]
            elif kind == "PersistentVolumeClaim":
                claims[name] = doc["spec"]
            elif kind == "ServiceAccount":
                accounts.add(name)
    return Shared(configmaps, claims, accounts)


def pod_problems(template: dict[str, Any], where: str, shared: Shared, *, gpu: bool) -> list[str]:
    """A group's pod: the Ray container's resources, volumes and their mounts, the user."""
    spec = template["spec"]
    out = []
    ray = spec["containers"][0]  # KubeRay's Ray container is the first
    res = ray.get("resources", {})
    requests, limits = res.get("requests", {}), res.get("limits", {})
    for kind, amounts in (("requests", requests), ("limits", limits)):
        unknown = set(amounts) - CONTAINER_RESOURCES
        if unknown:
            out.append(f"{where}: unknown container resource names in {kind}: {sorted(unknown)}")
        for name in ("cpu", "memory"):
            if name not in amounts:
                out.append(f"{where}: no {name} in {kind}")
    if gpu:
        if "nvidia.com/gpu" not in limits:
            out.append(f"{where}: a GPU group without an nvidia.com/gpu limit")
        elif str(limits["nvidia.com/gpu"]) != str(requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"])):
            out.append(f"{where}: nvidia.com/gpu request {requests.get('nvidia.com/gpu')} differs from its limit {limits['nvidia.com/gpu']}")
        elif int(str(limits["nvidia.com/gpu"])) < 1:
            out.append(f"{where}: nvidia.com/gpu limit below 1")
    elif "nvidia.com/gpu" in limits or "nvidia.com/gpu" in requests:
        out.append(f"{where}: the head asks for a GPU")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in ray.get("volumeMounts", []):
        if mount["name"] not in volumes:
            out.append(f"{where}: mount {mount['name']!r} names no volume of the pod")
    for name, vol in volumes.items():
        if "configMap" in vol and vol["configMap"]["name"] not in shared.configmaps:
            out.append(f"{where}: volume {name!r} names ConfigMap {vol['configMap']['name']!r}, which cluster/kuberay/ lacks")
        if "persistentVolumeClaim" in vol:
            claim = shared.claims.get(vol["persistentVolumeClaim"]["claimName"])
            if claim is None:
                out.append(f"{where}: volume {name!r} names a PVC that cluster/kuberay/ lacks")
            elif "ReadWriteMany" not in claim.get("accessModes", []):
                out.append(f"{where}: PVC of volume {name!r} is not ReadWriteMany (every pod writes the run directory)")
    account = spec.get("serviceAccountName")
    if account not in shared.accounts:
        out.append(f"{where}: service account {account!r} is not in cluster/kuberay/shared.yaml")
    sc = spec.get("securityContext", {})
    if not (sc.get("runAsNonRoot") is True and sc.get("runAsUser") == UID):
        out.append(f"{where}: pods must run as the images' user (runAsNonRoot, runAsUser {UID})")
    return out


def cluster_problems(spec: dict[str, Any], shared: Shared) -> list[str]:
    out = pod_problems(spec["headGroupSpec"]["template"], "headGroupSpec", shared, gpu=False)
    groups = spec.get("workerGroupSpecs", [])
    if not groups:
        out.append("no worker group")
    for i, group in enumerate(groups):
        where = f"workerGroupSpecs[{i}] ({group['groupName']})"
        out += pod_problems(group["template"], where, shared, gpu=True)
        if not (group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]):
            out.append(f"{where}: replicas outside [minReplicas, maxReplicas]")
    return out


def mounted_spec_path(template: dict[str, Any], configmap: str, key: str) -> str | None:
    """Where a pod template's Ray container sees ``key`` of ConfigMap ``configmap``, if it does."""
    pod = template["spec"]
    names = {v["name"] for v in pod.get("volumes", []) if v.get("configMap", {}).get("name") == configmap}
    for mount in pod["containers"][0].get("volumeMounts", []):
        if mount["name"] in names:
            return f"{mount['mountPath'].rstrip('/')}/{key}"
    return None


def host_templates(job: dict[str, Any]) -> list[tuple[Node, dict[str, Any]]]:
    """The pods Ray may start the RayJob's entrypoint on, with their templates."""
    driver = rayjob_driver(job)
    return [(n, tpl) for n, tpl in cluster_nodes(job["spec"]["rayClusterSpec"]) if driver_hosts([n], driver)]


def entrypoint_problems(job: dict[str, Any], shared: Shared) -> list[str]:
    """The RayJob's entrypoint is an alseg command that parses, running the job spec mounted in every
    pod it may run on."""
    argv = shlex.split(job["spec"]["entrypoint"])
    if not argv or argv[0] != "alseg":
        return [f"entrypoint {job['spec']['entrypoint']!r} is not an alseg command"]
    problem = alseg_problem(argv[1:])
    if problem is not None:
        return [f"entrypoint does not parse with alseg's CLI: {problem}"]
    if argv[1] != "run":
        return [f"entrypoint runs `alseg {argv[1]}`, not the whole job (`alseg run`)"]
    spec_path = argv[-1]
    hosts = host_templates(job)
    if not hosts:
        return ["no pod of the cluster can hold the entrypoint's reservation"]
    out = []
    for node, template in hosts:
        mounted = [mounted_spec_path(template, name, key) for name, data in shared.configmaps.items() for key in data]
        if spec_path not in mounted:
            out.append(f"entrypoint's spec {spec_path} is not a mounted ConfigMap key in {node.name}, "
                       f"which may run the entrypoint (mounted: {mounted})")
    return out


# --- the tests ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raycluster() -> dict[str, Any]:
    (doc,) = yaml_docs(RAYCLUSTER)
    return doc


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    (doc,) = yaml_docs(RAYJOB)
    return doc


@pytest.fixture(scope="module")
def shared() -> Shared:
    return shared_objects()


def test_manifests_use_only_fields_of_the_crds(raycluster, rayjob):
    assert structure_problems(raycluster, RAYCLUSTER_CRD) == []
    assert structure_problems(rayjob, RAYJOB_CRD) == []


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: d["spec"].__setitem__("workerGroupSpec", d["spec"].pop("workerGroupSpecs")), "workerGroupSpec: not a field"),
        (lambda d: d["spec"]["workerGroupSpecs"][0].__setitem__("minReplicas", "0"), "expected int, got str"),
        (lambda d: d["spec"]["workerGroupSpecs"][0].pop("groupName"), "groupName: required field missing"),
        (lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].__setitem__("num-cpus", 0), "expected str, got int"),
        (lambda d: d["spec"]["authOptions"].__setitem__("mode", "tokens"), "is not one of"),
        (lambda d: d.__setitem__("apiVersion", "ray.io/v1alpha1"), "is not one of"),
        (
            lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
            .__setitem__("memory", "120 GiB"),
            "is not a Kubernetes quantity",
        ),
    ],
)
def test_structure_check_catches_a_broken_copy(raycluster, edit, expected):
    broken = copy.deepcopy(raycluster)
    edit(broken)
    problems = structure_problems(broken, RAYCLUSTER_CRD)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda s: s.__setitem__("entrypointNumGpus", "1"), "expected a number, got str"),
        (lambda s: s.__setitem__("entrypointNumGPUs", s.pop("entrypointNumGpus")), "entrypointNumGPUs: not a field"),
        (lambda s: s.__setitem__("entrypointMemory", 48), "entrypointMemory: not a field"),  # v1.7.0 has none
    ],
)
def test_structure_check_catches_a_broken_rayjob(rayjob, edit, expected):
    broken = copy.deepcopy(rayjob)
    edit(broken["spec"])
    problems = structure_problems(broken, RAYJOB_CRD)
    assert any(expected in p for p in problems), problems


def test_cluster_gives_alseg_what_it_needs(raycluster, shared):
    assert cluster_problems(raycluster["spec"], shared) == []
    spec = raycluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True and spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda r: r["requests"].__setitem__("nvidia.com/gpu", "2"), "differs from its limit"),
        (lambda r: r["limits"].pop("nvidia.com/gpu"), "without an nvidia.com/gpu limit"),
        (lambda r: r["limits"].__setitem__("nvidia.com/gpus", "1"), "unknown container resource names"),
        (lambda r: r["requests"].pop("memory"), "no memory in requests"),
    ],
)
def test_resource_check_catches_a_broken_gpu_group(raycluster, shared, edit, expected):
    spec = copy.deepcopy(raycluster["spec"])
    edit(spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"])
    assert any(expected in p for p in cluster_problems(spec, shared))


def test_volume_checks_catch_a_missing_configmap_and_mount(raycluster, shared):
    spec = copy.deepcopy(raycluster["spec"])
    head = spec["headGroupSpec"]["template"]["spec"]
    head["volumes"][0]["configMap"]["name"] = "alseg-jobs"
    head["containers"][0]["volumeMounts"].append({"name": "nowhere", "mountPath": "/x"})
    problems = cluster_problems(spec, shared)
    assert any("ConfigMap 'alseg-jobs'" in p for p in problems)
    assert any("mount 'nowhere' names no volume" in p for p in problems)


def test_rayjob_makes_the_same_cluster(raycluster, rayjob):
    assert rayjob["spec"]["rayClusterSpec"] == raycluster["spec"], "rayjob.yaml's rayClusterSpec drifted from raycluster.yaml"
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True and rayjob["spec"]["backoffLimit"] >= 1


def test_rayjob_entrypoint_runs_the_mounted_spec(rayjob, shared):
    assert entrypoint_problems(rayjob, shared) == []
    (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    path = mounted_spec_path(group["template"], "alseg-job", "job.yaml")
    assert rayjob["spec"]["entrypoint"] == f"alseg run {path}"


def test_entrypoint_check_catches_a_gpu_pod_without_the_spec(rayjob, shared):
    """The driver runs on a GPU worker pod: the spec mounted on the head alone is not enough."""
    job = copy.deepcopy(rayjob)
    pod = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    pod["containers"][0]["volumeMounts"] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] != "job-spec"]
    problems = entrypoint_problems(job, shared)
    assert problems and "not a mounted ConfigMap key in group gpu" in problems[0], problems


@pytest.mark.parametrize(
    "entrypoint, expected",
    [
        ("alseg run /etc/alseg/jobs.yaml", "is not a mounted ConfigMap key"),
        ("alseg runn /etc/alseg/job.yaml", "does not parse"),
        ("alseg run", "does not parse"),
        ("alseg status /etc/alseg/job.yaml", "not the whole job"),
        ("python -m alseg run /etc/alseg/job.yaml", "not an alseg command"),
    ],
)
def test_entrypoint_check_catches_a_broken_entrypoint(rayjob, shared, entrypoint, expected):
    job = copy.deepcopy(rayjob)
    job["spec"]["entrypoint"] = entrypoint
    problems = entrypoint_problems(job, shared)
    assert problems and expected in problems[0], problems


def test_configmap_spec_is_a_valid_alseg_job(shared, tmp_path):
    spec = spec_from_text(shared.configmaps["alseg-job"]["job.yaml"], tmp_path)
    assert spec.resources.backend == "ray" and spec.resources.ray_address == "auto"
    assert spec.resources.node_wait_s > 0, "GPU pods start at 0 replicas: stages must wait for the autoscaler"
    # the run directory and the weights live on the shared volume every pod mounts
    assert spec.run.dir.startswith("/shared/")
    assert spec.pseudolabel.method == "microsam"
    for path in (spec.pseudolabel.checkpoint, spec.pseudolabel.decoder_checkpoint):
        assert path is not None and path.startswith("/shared/")


def test_configmap_spec_check_catches_a_broken_spec(shared, tmp_path):
    text = shared.configmaps["alseg-job"]["job.yaml"].replace("budget:", "budjet:")
    with pytest.raises(SpecError, match="budjet"):
        spec_from_text(text, tmp_path)


def test_configmap_spec_is_the_documented_mitoem_job(shared, tmp_path):
    """The same job as configs/mitoem-full.yaml, apart from what the ConfigMap's comment explains."""
    ours = spec_from_text(shared.configmaps["alseg-job"]["job.yaml"], tmp_path)
    theirs = load_spec(MITOEM)
    a, b = ours.job_content(), theirs.job_content()
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} <= {"run", "pseudolabel"}
    ra, rb = ours.resources.model_dump(), theirs.resources.model_dump()
    for k in ra:
        if isinstance(ra[k], dict):  # a stage's request: only its worker count may differ
            ra[k].pop("workers"), rb[k].pop("workers")
    assert {k for k in ra if ra[k] != rb[k]} <= {"node_wait_s"}


def test_job_fits_the_gpu_workers(raycluster, rayjob, shared, tmp_path):
    """Every stage's per-worker request fits one worker pod (the head takes no tasks), and the job's
    driver, which trains nnU-Net, asks for resources.nnunet's GPU and CPUs and so starts on a GPU
    worker pod that holds it."""
    spec = spec_from_text(shared.configmaps["alseg-job"]["job.yaml"], tmp_path)
    problems = []
    for group in raycluster["spec"]["workerGroupSpecs"]:
        node = pod_node(f"group {group['groupName']}", group)
        for stage in STAGES:
            req = getattr(spec.resources, stage)
            mem = 0.0 if req.memory_gb is None else req.memory_gb * GiB
            if req.cpus > node.cpus or req.gpus > node.gpus or mem > node.memory_bytes:
                problems.append(f"{stage} {req} does not fit {node}")
    assert problems == []
    driver = rayjob_driver(rayjob)
    assert driver.gpus == 1 and driver_problems(driver, spec) == []
    hosts = host_templates(rayjob)
    assert [n.name for n, _ in hosts] == ["group gpu"], "the driver must start on a GPU worker pod, not the head"
    for node, template in hosts:
        image = template["spec"]["containers"][0]["image"]
        assert node.gpus >= 1 and image.rsplit(":", 1)[1] == "worker", f"{node.name}: not a GPU pod of the worker image"
        assert host_problems(node, driver, spec) == []


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda s: s.pop("entrypointNumGpus"), "reserves 0 GPUs"),
        (lambda s: s.__setitem__("entrypointNumGpus", 0.5), "reserves 0.5 GPUs"),
        (lambda s: s.__setitem__("entrypointNumCpus", 2), "below resources.nnunet's 8"),
    ],
)
def test_driver_check_catches_a_driver_without_its_gpu(rayjob, shared, tmp_path, edit, expected):
    spec = spec_from_text(shared.configmaps["alseg-job"]["job.yaml"], tmp_path)
    job = copy.deepcopy(rayjob)
    edit(job["spec"])
    problems = driver_problems(rayjob_driver(job), spec)
    assert any(expected in p for p in problems), problems


def test_driver_without_a_gpu_may_start_on_the_head(rayjob):
    """What the reservation is for: without a GPU (and with no CPUs) the head is a host, and there the
    driver would train nnU-Net on CPUs."""
    job = copy.deepcopy(rayjob)
    job["spec"].pop("entrypointNumGpus")
    job["spec"].pop("entrypointNumCpus")
    assert "headGroupSpec" in [n.name for n, _ in host_templates(job)]


def test_host_check_catches_a_pod_too_small_for_the_driver(rayjob, shared, tmp_path):
    spec = spec_from_text(shared.configmaps["alseg-job"]["job.yaml"], tmp_path)
    driver = rayjob_driver(rayjob)
    assert host_problems(Node("small", 10, 1, 40 * GiB), driver, spec)  # resources.nnunet: 48 GiB
    assert host_problems(Node("few CPUs", 6, 1, 120 * GiB), driver, spec)
    # an 8-GPU pod with 10 CPUs: the 7 GPUs left cannot each get a prediction worker's 4 CPUs
    assert any("prediction workers" in p for p in host_problems(Node("8 GPUs", 10, 8, 1000 * GiB), driver, spec))


def test_gpu_stages_name_their_worker_counts(raycluster, rayjob, shared, tmp_path):
    """A stage without `workers` starts as many workers as the cluster holds when it starts: one, on
    this cluster of 0 GPU pods at first. Each GPU stage names its count, within the GPUs the cluster
    grows to, less the driver's."""
    spec = spec_from_text(shared.configmaps["alseg-job"]["job.yaml"], tmp_path)
    assert max_gpus(raycluster["spec"]) == 8
    assert worker_count_problems(spec, max_gpus(raycluster["spec"]), rayjob_driver(rayjob)) == []
    assert spec.resources.prediction.workers == spec.resources.pseudolabel.workers == 7


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("memory_gb: 32, workers: 7}", "memory_gb: 32}", "resources.prediction sets no workers"),
        ("{cpus: 2, gpus: 1, workers: 7}", "{cpus: 2, gpus: 1, workers: 8}", "resources.pseudolabel: 8 workers"),
        ("{cpus: 4, gpus: 1, workers: 1}", "{cpus: 4, gpus: 2, workers: 4}", "resources.embedding: 4 workers of 2 GPUs"),
    ],
)
def test_worker_count_check_catches_a_broken_spec(raycluster, rayjob, shared, tmp_path, old, new, expected):
    text = shared.configmaps["alseg-job"]["job.yaml"]
    assert old in text
    spec = spec_from_text(text.replace(old, new), tmp_path)
    problems = worker_count_problems(spec, max_gpus(raycluster["spec"]), rayjob_driver(rayjob))
    assert any(expected in p for p in problems), problems


def test_images_and_ray_version_match_the_images(raycluster):
    spec = raycluster["spec"]
    ray = Lock(LOCKS["cpu"]).pins["ray"]
    assert spec["rayVersion"] == str(ray) == str(Lock(LOCKS["cuda"]).pins["ray"])
    targets = set(re.findall(r"^FROM \S+ AS (\S+)", (REPO / "docker" / "Dockerfile").read_text(), re.M))
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert head.rsplit(":", 1)[1] == "head" and "head" in targets
    for group in spec["workerGroupSpecs"]:
        image = group["template"]["spec"]["containers"][0]["image"]
        assert image.rsplit(":", 1)[1] == "worker" and "worker" in targets


def test_no_credentials_in_the_manifests():
    text = "\n".join(p.read_text() for p in KUBERAY.glob("*.yaml"))
    assert not re.search(r"AWS_(SECRET_)?ACCESS_KEY|AKIA[0-9A-Z]{16}|GOOGLE_APPLICATION_CREDENTIALS", text)
    for path in KUBERAY.glob("*.yaml"):
        for doc in yaml_docs(path):
            assert doc.get("kind") != "Secret", f"{path.name} carries a Secret"


def test_every_kuberay_file_is_checked():
    assert {p.name for p in KUBERAY.glob("*.yaml")} == {p.name for p in (RAYCLUSTER, RAYJOB, CONFIGMAP, SHARED)}
