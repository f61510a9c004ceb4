"""The committed locks (locks/cpu.txt, locks/cuda.txt) against pyproject.toml and against the
environment the tests run in, so that a drift fails CI instead of a user's install.

No installs here: the locks and the pyproject are parsed with ``packaging``, the environment is
read with ``importlib.metadata``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import re
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCKS = {kind: REPO / "locks" / f"{kind}.txt" for kind in ("cpu", "cuda")}
STAMP = Path(sys.prefix) / ".alseg-install-stamp"
# installed but never locked: alseg itself, and the virtual environment's own tooling
UNLOCKED_OK = {"alseg", "pip", "setuptools", "wheel"}
CUDA_ONLY = re.compile(r"^(nvidia-.*|triton|cuda-.*|faiss-gpu.*)$")
# extras for people's desktops and CI, not for GPU workers: the annotation GUI (napari, micro-SAM,
# PyQt6, whose Qt wheels need glibc 2.34 while the CUDA set targets manylinux_2_28) and the viewer
# (neuroglancer's server runs where a person opens a browser, not on a GPU worker)
DESKTOP_ONLY = {"annotate", "view"}


def _closure(extras: set[str]) -> set[str]:
    """Every distribution alseg[extras] needs, transitively, read from the installed metadata."""
    env = default_environment()
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [("alseg", frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for text in reqs:
            req = Requirement(text)
            if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in (wanted or {""})):
                continue
            dep = canonicalize_name(req.name)
            if dep not in seen:
                seen.add(dep)
                todo.append((dep, frozenset(req.extras)))
    return seen


class Lock:
    def __init__(self, path: Path):
        self.path = path
        self.text = path.read_text(encoding="utf-8")
        self.header: dict[str, str] = {}
        self.pins: dict[str, Version] = {}
        self.problems: list[str] = []
        for n, raw in enumerate(self.text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                m = re.match(r"#\s*(extras|torch|platform):\s*(.*)$", raw.strip())
                if m:
                    self.header.setdefault(m.group(1), m.group(2).strip())
                continue
            req = Requirement(line)
            specs = list(req.specifier)
            if req.url or req.extras or req.marker or len(specs) != 1 or specs[0].operator != "==":
                self.problems.append(f"line {n}: {line!r} is not an exact 'name==version' pin")
                continue
            name = canonicalize_name(req.name)
            if name in self.pins:
                self.problems.append(f"line {n}: {name} pinned twice")
            self.pins[name] = Version(specs[0].version)

    @property
    def extras(self) -> set[str]:
        return {e.strip() for e in self.header.get("extras", "").split(",") if e.strip()}

    @property
    def python_full_version(self) -> str:
        m = re.search(r"Python (3\.\d+\.\d+)", self.header.get("platform", ""))
        assert m, f"{self.path.name}: no '# platform: ... Python 3.x.y' header line"
        return m.group(1)

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _wanted(reqs: list[str], env: dict[str, str], extras: set[str]) -> list[Requirement]:
    """The requirements whose markers hold in ``env`` for the base set or any of ``extras``."""
    out = []
    for text in reqs:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in {""} | extras):
            out.append(req)
    return out


def _target_env(lock: Lock) -> dict[str, str]:
    """Marker environment of the locks' target: Linux x86_64, CPython at the locked version."""
    full = lock.python_full_version
    return {
        "python_version": ".".join(full.split(".")[:2]),
        "python_full_version": full,
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }


def _stamp() -> dict[str, str] | None:
    if not STAMP.is_file():
        return None
    return dict(line.split("=", 1) for line in STAMP.read_text().splitlines() if "=" in line)


# --- the locks against pyproject.toml ---------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(LOCKS))
def test_lock_is_generated_exact_pins(kind):
    lock = Lock(LOCKS[kind])
    assert not lock.problems, "\n".join(lock.problems)
    assert "GENERATED by `make lock`" in lock.text and "do not edit by hand" in lock.text
    assert lock.header.get("torch") == kind
    assert "linux x86_64" in lock.header.get("platform", "")
    assert lock.python_full_version.startswith("3.11.")
    assert len(lock.pins) > 50 and "torch" in lock.pins and "alseg" not in lock.pins


@pytest.mark.parametrize("kind", sorted(LOCKS))
def test_lock_has_every_dependency_within_its_bounds(kind):
    lock = Lock(LOCKS[kind])
    project = _pyproject()
    unknown = lock.extras - set(project["optional-dependencies"])
    assert not unknown, f"{lock.path.name} names extras pyproject.toml lacks: {sorted(unknown)}"
    reqs = list(project["dependencies"])
    for extra in sorted(lock.extras):
        reqs += project["optional-dependencies"][extra]
    problems = []
    for req in _wanted(reqs, _target_env(lock), lock.extras):
        got = lock.pins.get(canonicalize_name(req.name))
        if got is None:
            problems.append(f"{req} (pyproject.toml) is not in the lock")
        elif not req.specifier.contains(got, prereleases=True):
            problems.append(f"{req} (pyproject.toml) but the lock pins {req.name}=={got}")
    assert not problems, f"{lock.path.name} disagrees with pyproject.toml (run `make lock`):\n" + "\n".join(
        problems
    )


def test_locks_cover_every_extra():
    project = _pyproject()
    cpu, cuda = Lock(LOCKS["cpu"]), Lock(LOCKS["cuda"])
    assert cpu.extras | cuda.extras == set(project["optional-dependencies"])
    assert "dev" in cpu.extras and "gpu" not in cpu.extras  # CI tests the CPU set
    assert {"gpu"} <= cuda.extras and cpu.extras - DESKTOP_ONLY <= cuda.extras


def test_cpu_lock_has_cpu_torch_and_no_cuda_packages():
    cpu = Lock(LOCKS["cpu"])
    assert cpu.pins["torch"].local == "cpu", f"CPU lock pins torch=={cpu.pins['torch']}, not a +cpu build"
    cuda_only = sorted(n for n in cpu.pins if CUDA_ONLY.match(n))
    assert not cuda_only, f"the CPU lock drags in CUDA packages: {cuda_only}"


def test_cuda_lock_shares_the_tested_versions():
    """The GPU workers run the versions CI tested, plus only what CUDA torch and the gpu extra add."""
    cpu, cuda = Lock(LOCKS["cpu"]), Lock(LOCKS["cuda"])
    assert cuda.pins["torch"].local is None and cuda.pins["torch"].public == cpu.pins["torch"].public
    differ = sorted(
        f"{n}: cpu {cpu.pins[n]}, cuda {cuda.pins[n]}"
        for n in cpu.pins.keys() & cuda.pins.keys()
        if n != "torch" and cpu.pins[n] != cuda.pins[n]
    )
    assert not differ, "the locks disagree (run `make lock`): " + "; ".join(differ)
    # what the GPU workers install (alseg with the CUDA lock's extras) must all be in it
    needed = _closure(cuda.extras & cpu.extras)
    missing = sorted((cpu.pins.keys() & needed) - cuda.pins.keys())
    assert not missing, f"packages of the tested CPU set missing from the CUDA lock: {missing}"
    added = cuda.pins.keys() - cpu.pins.keys()
    assert any(n.startswith("faiss-gpu") for n in added)


# --- the installed environment against the lock ---------------------------------------------


@pytest.fixture(scope="module")
def installed_lock() -> Lock:
    """The lock this environment was installed from; skips only for an ALSEG_UNLOCKED=1 install."""
    stamp = _stamp()
    if stamp is not None and stamp.get("mode") == "unlocked":
        pytest.skip(
            f"installed with ALSEG_UNLOCKED=1 (the install stamp {STAMP} says mode=unlocked): this "
            "environment holds the newest versions on purpose, not the lock; CI installs locked"
        )
    if stamp is not None and stamp.get("lock", "none") != "none":
        lock = Lock(REPO / stamp["lock"])
        assert stamp.get("lock_sha256") == lock.sha256(), (
            f"{stamp['lock']} changed since this environment was installed from it; run `make install`"
        )
        return lock
    # not installed by scripts/install.sh: compare with the lock for this torch build
    import torch

    return Lock(LOCKS["cuda" if torch.version.cuda else "cpu"])


def _site_distributions() -> list[md.Distribution]:
    """Distributions installed in this environment's site-packages. Not all of sys.path: Ray puts
    its vendored copies (ray/thirdparty_files: colorama, psutil) on it once imported."""
    paths = sorted({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})
    return list(md.distributions(path=paths))


def _installed() -> tuple[dict[str, str], list[str]]:
    seen: dict[str, str] = {}
    duplicates = []
    for dist in _site_distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in seen and name != "alseg" and seen[name] != dist.version:
            duplicates.append(f"{name} installed twice ({seen[name]}, {dist.version})")
        seen.setdefault(name, dist.version)
    return seen, duplicates


def test_installed_environment_equals_lock(installed_lock):
    lock = installed_lock
    installed, problems = _installed()
    for name, version in sorted(lock.pins.items()):
        if name not in installed:
            problems.append(f"{name}=={version} is locked but not installed")
        elif Version(installed[name]) != version:
            problems.append(f"{name} is {installed[name]}, the lock says {version}")
    extra = sorted(n for n in installed.keys() - lock.pins.keys() if n not in UNLOCKED_OK)
    problems += [f"{n}=={installed[n]} is installed but not in the lock" for n in extra]
    assert not problems, (
        f"this environment ({sys.prefix}) differs from {lock.path.relative_to(REPO)} "
        "(`make install` syncs it; `make lock` after changing pyproject.toml):\n" + "\n".join(problems)
    )


def test_locked_set_is_closed_under_requirements(installed_lock):
    """Every requirement of alseg[extras] and, transitively, of each locked package (their installed
    metadata, markers evaluated here) is in the lock, at a version it accepts."""
    lock = installed_lock
    project = _pyproject()
    dists = {canonicalize_name(d.metadata["Name"]): d for d in _site_distributions()}
    env = dict(default_environment())
    todo = [(r, "alseg") for r in _wanted(project["dependencies"], env, set())]
    for extra in sorted(lock.extras):
        extra_reqs = _wanted(project["optional-dependencies"][extra], env, {extra})
        todo += [(r, f"alseg[{extra}]") for r in extra_reqs]
    done: set[tuple[str, frozenset[str]]] = set()
    problems = []
    while todo:
        req, parent = todo.pop()  # markers already evaluated by _wanted
        name = canonicalize_name(req.name)
        got = lock.pins.get(name)
        if got is None:
            if name not in UNLOCKED_OK:
                problems.append(f"{parent} requires {req}, which the lock lacks")
            continue
        if not req.specifier.contains(got, prereleases=True):
            problems.append(f"{parent} requires {req}, the lock pins {got}")
        key = (name, frozenset(req.extras))
        if key in done or name not in dists:
            continue
        done.add(key)
        label = f"{name}[{','.join(sorted(req.extras))}]" if req.extras else name
        todo += [(sub, label) for sub in _wanted(dists[name].requires or [], env, set(req.extras))]
    assert not problems, f"{lock.path.name} is not closed under its requirements:\n" + "\n".join(
        sorted(set(problems))
    )
