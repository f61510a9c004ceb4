"""Every benchmark that benchmarks/RESULTS.md tells people to run exists and starts as written
(run as a script from the repository root, as the commands there do: `--help` answers, so its
imports and arguments work; shell scripts parse)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(set(re.findall(r"benchmarks/[\w/]+\.(?:py|sh)", (REPO / "benchmarks" / "RESULTS.md").read_text())))


def test_results_name_the_benchmarks():
    assert "benchmarks/coreset.py" in SCRIPTS and "benchmarks/predict.py" in SCRIPTS


def _untracked() -> set[str]:
    """Every file in the checkout that git neither tracks nor ignores, at any depth."""
    out = subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True)
    return set(out.stdout.splitlines())


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_benchmark_named_in_results_starts_as_written(script):
    path = REPO / script
    assert path.is_file(), f"benchmarks/RESULTS.md names {script}, which does not exist"
    if script.endswith(".sh"):
        cmd = ["bash", "-n", script]
    else:
        cmd = [sys.executable, script, "--help"]
    before = _untracked()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    # --help answers and writes nothing (make_plan.py once took "--help" for its output folder and wrote the plans there)
    new = _untracked() - before
    assert not new, f"{script} --help wrote {sorted(new)[:5]}"
