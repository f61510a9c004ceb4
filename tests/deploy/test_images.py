"""docker/: the head and worker images. The Dockerfile is read, not built (no Docker engine on the
project's machines): every version it fixes (the base's Python, the torch kind and lock of each
target, any pip pin, the optional backends) must agree with locks/ and pyproject.toml; it runs as a
fixed non-root uid; no ENV or ARG carries a credential; .dockerignore keeps the build context to
what the images install; and hadolint finds nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.deploy._deploy import REPO, need_tool
from tests.test_lock import LOCKS, Lock

DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
BACKENDS = REPO / "docker" / "install-backends.sh"
TARGETS = {"head": "cpu", "worker": "cuda"}  # target -> the torch kind (and lock) it installs


@dataclass(frozen=True)
class Instruction:
    stage: str
    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their stage (continuation lines joined, comments dropped)."""
    out: list[Instruction] = []
    stage, pending, start = "", "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = n
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.search(r"\bAS\s+(\S+)$", args, re.I)
            stage = m.group(1) if m else args
        out.append(Instruction(stage, keyword, args.strip(), start))
    return out


def stages(instructions: list[Instruction]) -> dict[str, str]:
    """stage name -> the image it starts FROM."""
    return {i.stage: i.args.split()[0] for i in instructions if i.keyword == "FROM"}


def env_and_args(instructions: list[Instruction]) -> list[tuple[str, str, int]]:
    """(name, value, line) of every ENV and ARG (ARG without default: value '')."""
    out = []
    for i in instructions:
        if i.keyword == "ARG":
            name, _, value = i.args.partition("=")
            out.append((name.strip(), value.strip().strip('"'), i.line))
        elif i.keyword == "ENV":
            pairs = re.findall(r'(\w+)=("[^"]*"|\S*)', i.args)
            if not pairs:  # legacy `ENV NAME value`
                name, _, value = i.args.partition(" ")
                pairs = [(name, value)]
            out += [(k, v.strip('"'), i.line) for k, v in pairs]
    return out


SECRET_NAME = re.compile(r"^(AWS_|GOOGLE_|AZURE_|GCP_)|TOKEN|SECRET|PASSW|API_?KEY|ACCESS_?KEY|CREDENTIAL|PRIVATE_?KEY", re.I)
SECRET_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|token|secret|passw|-----BEGIN|ghp_[A-Za-z0-9]{20,}", re.I)


def credential_problems(text: str) -> list[str]:
    return [
        f"line {line}: {name} may carry a credential into the image"
        for name, value, line in env_and_args(parse_dockerfile(text))
        if SECRET_NAME.search(name) or SECRET_VALUE.search(value)
    ]


PIN = re.compile(r"(?<![\w.-])([A-Za-z0-9][A-Za-z0-9._-]*)===?([0-9][^\s\"'\\;|&)]*)")


def pin_problems(text: str) -> list[str]:
    """Every `name==version` written outside comments must be what the locks pin."""
    cpu, cuda = Lock(LOCKS["cpu"]), Lock(LOCKS["cuda"])
    out = []
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        for name, version in PIN.findall(code):
            key = canonicalize_name(name)
            locked = {str(lock.pins[key]) for lock in (cpu, cuda) if key in lock.pins}
            if not locked:
                out.append(f"{name}=={version} is pinned, but no lock has {name}")
            elif version not in locked:
                out.append(f"{name}=={version} is pinned, the locks say {sorted(locked)}")
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_targets(instructions):
    froms = stages(instructions)
    assert set(TARGETS) <= set(froms), f"docker/Dockerfile lacks targets {set(TARGETS) - set(froms)}"
    for target in TARGETS:
        assert froms[target] == "base", f"target {target} must start from the shared base stage"
    assert froms["base"].startswith("python:")


def test_base_python_is_the_locks_python(instructions):
    m = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim(-\w+)?", stages(instructions)["base"])
    assert m, f"the base must be an exact python:X.Y.Z-slim image, got {stages(instructions)['base']}"
    for kind, path in LOCKS.items():
        assert m.group(1) == Lock(path).python_full_version, f"the base's Python differs from locks/{kind}.txt's"
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains(m.group(1))


@pytest.mark.parametrize("target, kind", sorted(TARGETS.items()))
def test_each_target_installs_its_lock(instructions, target, kind):
    runs = [i.args for i in instructions if i.stage == target and i.keyword == "RUN"]
    install = [r for r in runs if "scripts/install.sh" in r]
    assert len(install) == 1, f"{target}: expected one RUN of scripts/install.sh, got {len(install)}"
    assert f"ALSEG_TORCH={kind} " in install[0], f"{target} must install torch kind {kind}"
    assert f"'lock=locks/{kind}.txt'" in install[0] and "'mode=locked'" in install[0], f"{target}: not checked to be a locked install"
    lock = Lock(LOCKS[kind])
    assert lock.header["torch"] == kind
    if kind == "cuda":
        assert any(n.startswith("faiss-gpu") for n in lock.pins) and "gpu" in lock.extras
        assert lock.pins["torch"].local is None
    else:
        assert lock.pins["torch"].local == "cpu"
    assert "nnunetv2" in lock.pins and "ray" in lock.pins


def test_no_pip_outside_the_install_scripts(instructions):
    """Versions come from the locks through scripts/install.sh and docker/install-backends.sh only."""
    assert not [i for i in instructions if i.keyword == "RUN" and re.search(r"\bpip3?\b|\buv\b", i.args)]
    assert pin_problems(DOCKERFILE.read_text()) == []
    assert pin_problems(BACKENDS.read_text()) == []


def test_pin_check_catches_a_wrong_pin():
    assert pin_problems("RUN pip install torch==2.2.0 micro-sam==1.8.14") == [
        "torch==2.2.0 is pinned, the locks say ['2.13.0', '2.13.0+cpu']"
    ]
    assert pin_problems("RUN pip install cellsam==0.1") == ["cellsam==0.1 is pinned, but no lock has cellsam"]


def _backend_pins(backends: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(BACKENDS), "--print", backends], cwd=REPO, capture_output=True, text=True, timeout=30)


def test_backends_install_the_locked_versions(instructions):
    done = _backend_pins("microsam,sam")
    assert done.returncode == 0, done.stderr
    pins = [Requirement(line) for line in done.stdout.split()]
    assert [canonicalize_name(r.name) for r in pins] == ["micro-sam"]
    cpu = Lock(LOCKS["cpu"])
    annotate = {
        canonicalize_name(Requirement(r).name): Requirement(r)
        for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["annotate"]
    }
    for req in pins:
        (spec,) = req.specifier
        assert spec.operator == "==" and spec.version == str(cpu.pins[canonicalize_name(req.name)])
        assert annotate[canonicalize_name(req.name)].specifier.contains(spec.version), f"{req} outside pyproject.toml's bounds"
    # both targets take the build argument, empty by default, and hand it to the script
    for target in TARGETS:
        args = [i.args for i in instructions if i.stage == target and i.keyword == "ARG"]
        assert "ALSEG_BACKENDS=" in args, f"{target}: ARG ALSEG_BACKENDS= (empty default) missing"
        runs = " ".join(i.args for i in instructions if i.stage == target and i.keyword == "RUN")
        assert 'bash docker/install-backends.sh "${ALSEG_BACKENDS}"' in runs


def test_backends_refuse_an_unknown_backend():
    done = _backend_pins("microsam,cellsam")
    assert done.returncode != 0 and "unknown backend 'cellsam'" in done.stderr


def test_runs_as_a_fixed_non_root_user(instructions):
    users = [i for i in instructions if i.keyword == "USER"]
    assert users, "no USER: the images would run as root"
    for target in TARGETS:
        chain = [i for i in users if i.stage in ("base", target)]
        assert chain, f"{target}: no USER"
        uid, _, gid = chain[-1].args.partition(":")
        assert uid.isdigit() and gid.isdigit() and int(uid) > 0 and int(gid) > 0, (
            f"{target}: USER {chain[-1].args} must be a numeric non-root uid:gid (Kubernetes' runAsNonRoot checks it)"
        )
    uid = users[-1].args
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert f"--uid {uid.split(':')[0]}" in runs and f"--gid {uid.split(':')[1]}" in runs
    for i in instructions:
        if i.keyword == "COPY" and not i.args.startswith("--from"):
            assert f"--chown={uid}" in i.args, f"line {i.line}: COPY without --chown={uid} leaves root-owned files"


def test_no_credentials_in_env_or_args(instructions):
    assert credential_problems(DOCKERFILE.read_text()) == []
    names = {n for n, _, _ in env_and_args(instructions)}
    assert "RAY_USAGE_STATS_ENABLED" in names  # the parser sees the ENV lines


@pytest.mark.parametrize(
    "line",
    [
        "ENV AWS_SECRET_ACCESS_KEY=abc",
        "ENV AWS_ACCESS_KEY_ID AKIAIOSFODNN7EXAMPLE",
        "ARG GITHUB_TOKEN",
        "ENV GOOGLE_APPLICATION_CREDENTIALS=/keys/sa.json",
        "ENV DB_PASSWORD=hunter2",
        "ENV HF=secret-value",
        "ARG DEEPCELL_ACCESS_TOKEN=",
    ],
)
def test_credential_check_catches_a_secret(line):
    assert credential_problems(f"FROM python:3.11.7-slim AS base\n{line}\n")


# --- .dockerignore ------------------------------------------------------------------------------


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match plus `**`) as a regex over slash paths."""
    p = os.path.normpath(pattern.strip().lstrip("/")).replace(os.sep, "/")
    out, i = "", 0
    while i < len(p):
        if p.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif p.startswith("**", i):
            out, i = out + ".*", i + 2
        elif p[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif p[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(p[i]), i + 1
    return re.compile(f"^{out}$")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern(line[1:] if negate else line)))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for negate, rx in rules:
        if any(rx.match(p) for p in prefixes):
            verdict = not negate
    return verdict


KEPT_OUT = [
    ".venv/bin/python",
    ".tools/bin/hadolint",
    ".git/config",
    "runs/mitoem/alseg-run.json",
    "demo-run/synthetic.zarr/zarr.json",
    "tests/test_lock.py",
    "benchmarks/RESULTS.md",
    "credentials.json",
    ".aws/credentials",
    ".env",
    "alseg/.env",
    "alseg/io/service-account-token.json",
    "scripts/deploy.pem",
    "locks/id_rsa",
    "scripts/secrets.yaml",
    "alseg/__pycache__/cli.cpython-311.pyc",
]


def _context_files() -> list[str]:
    """What the images install: every file under the folders the Dockerfile copies."""
    out = ["pyproject.toml", "README.md", "docker/install-backends.sh"]
    for folder in ("alseg", "locks", "scripts"):
        for path in sorted((REPO / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                out.append(path.relative_to(REPO).as_posix())
    return out


def test_dockerignore_keeps_out_environments_runs_git_and_credentials():
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    assert [p for p in KEPT_OUT if not ignored(p, rules)] == []


def test_dockerignore_lets_in_what_the_images_copy(instructions):
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    sources = []
    for i in instructions:
        if i.keyword == "COPY":
            words = [w for w in i.args.split() if not w.startswith("--")]
            sources += [s.rstrip("/") for s in words[:-1]]
    missing = [s for s in sources if not (REPO / s).exists()]
    assert not missing, f"COPY sources that do not exist: {missing}"
    assert [s for s in sources + _context_files() if ignored(s, rules)] == []


def test_dockerignore_check_catches_a_gap():
    without_catch_all = DOCKERIGNORE.read_text().replace("\n*\n", "\n")
    leaked = [p for p in KEPT_OUT if not ignored(p, dockerignore_rules(without_catch_all))]
    assert {".venv/bin/python", ".git/config", "runs/mitoem/alseg-run.json"} <= set(leaked)
    # Docker's order rule: a later `!` lets back in what an earlier pattern kept out, and back again
    assert not ignored("alseg/cli.py", dockerignore_rules("*\n!alseg/\n"))
    assert ignored("alseg/io/__pycache__/x.pyc", dockerignore_rules("*\n!alseg/\n**/__pycache__\n"))


# --- hadolint ----------------------------------------------------------------------------------


def _hadolint(path: Path) -> list[dict]:
    exe = need_tool("hadolint")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    done = subprocess.run(
        [exe, "--no-color", "--format", "json", "--failure-threshold", "style", str(path)],
        cwd=path.parent, capture_output=True, text=True, timeout=60, env=env,
    )
    assert done.stdout.strip(), f"hadolint printed nothing (rc {done.returncode}): {done.stderr}"
    return json.loads(done.stdout)


def test_hadolint_finds_nothing():
    findings = _hadolint(DOCKERFILE)
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nUSER root\n")
    codes = {f["code"] for f in _hadolint(bad)}
    assert {"DL3007", "DL3008", "DL3009", "DL3015", "DL3002"} <= codes, codes
