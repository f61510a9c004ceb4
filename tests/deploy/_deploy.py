"""Helpers of the deployment tests: the repository's files, the linters of locks/tools.txt, alseg's
own command-line parser and job-spec loader."""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

import yaml

from alseg.cli import build_parser
from alseg.errors import SpecError
from alseg.spec import JobSpec, load_spec
from tests.helpers.need import require

REPO = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO / ".tools" / "bin"


def tool(name: str) -> str | None:
    """A linter from .tools/bin (scripts/install-tools.sh), else from PATH; None if neither has it."""
    local = TOOLS_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def need_tool(name: str) -> str:
    """The linter's path; skips (fails in CI) without it, saying how to get it."""
    path = tool(name)
    require(path is not None, f"{name} is neither in .tools/bin nor on PATH: run `make tools` (scripts/install-tools.sh)")
    assert path is not None
    return path


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    """Every document of a YAML file."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def alseg_problem(argv: list[str]) -> str | None:
    """None if ``alseg ARGV`` parses with alseg's own parser, else argparse's complaint."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as stop:
        if stop.code not in (0, None):  # --help exits 0
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {stop.code}"
    return None


def alseg_args(command: str) -> Any:
    """The parsed arguments of an ``alseg ...`` command line (shell words); fails if it does not parse."""
    argv = shlex.split(command)
    assert argv and argv[0] == "alseg", f"not an alseg command: {command!r}"
    problem = alseg_problem(argv[1:])
    assert problem is None, f"`{command}` does not parse with alseg's CLI: {problem}"
    return build_parser().parse_args(argv[1:])


def spec_from_text(text: str, tmp_path: Path, name: str = "job.yaml") -> JobSpec:
    """A job spec through alseg's own loader (the same as `alseg validate --offline`)."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_spec(path)


__all__ = ["REPO", "SpecError", "alseg_args", "alseg_problem", "need_tool", "spec_from_text", "tool", "yaml_docs"]
