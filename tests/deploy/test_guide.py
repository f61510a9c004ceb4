"""The deployment guides (cluster/README.md, docker/README.md) promise only what exists: every `alseg`
command in their shell blocks parses with alseg's own parser, and every repository file they name
is there."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.deploy._deploy import REPO, alseg_problem

GUIDES = [REPO / "cluster" / "README.md", REPO / "docker" / "README.md"]
SEPARATORS = {"|", "||", "&&", ";", "&"}


def shell_commands(markdown: str) -> list[str]:
    """The commands of the ```bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(shlex.join(words))
    return out


def alseg_invocations(command: str) -> list[list[str]]:
    """Every alseg argv in a command line: direct, after a `--` (`ray job submit -- alseg ...`), or
    inside a quoted word (`ray exec CONFIG "alseg status ..."`)."""
    found = []
    words = shlex.split(command)
    for i, word in enumerate(words):
        if word == "alseg":
            argv = []
            for w in words[i + 1 :]:
                if w in SEPARATORS:
                    break
                argv.append(w)
            found.append(argv)
        elif " " in word and re.search(r"(^|\s)alseg\s", word):
            found += alseg_invocations(word)
    return found


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_alseg_command_parses(guide):
    invocations = [argv for cmd in shell_commands(guide.read_text()) for argv in alseg_invocations(cmd)]
    assert invocations, f"{guide.name}: no alseg command found (is the extractor broken?)"
    problems = [f"alseg {shlex.join(argv)}: {p}" for argv in invocations if (p := alseg_problem(argv)) is not None]
    assert problems == []


def test_the_cluster_guide_covers_the_whole_job():
    commands = {argv[0] for cmd in shell_commands(GUIDES[0].read_text()) for argv in alseg_invocations(cmd)}
    assert {"ingest", "info", "validate", "run", "status", "evaluate"} <= commands


@pytest.mark.parametrize(
    "markdown",
    [
        "```bash\nalseg deploy configs/mitoem-full.yaml\n```\n",
        "```bash\nray job submit --address http://127.0.0.1:8265 -- alseg run --resume x.yaml\n```\n",
        "```bash\nray exec cluster/ray-cluster.yaml \"alseg status\"\n```\n",
        "```bash\nalseg ingest im/ out.zarr \\\n    --voxel-size 30 8\n```\n",
    ],
)
def test_command_check_catches_a_command_that_does_not_exist(markdown):
    invocations = [argv for cmd in shell_commands(markdown) for argv in alseg_invocations(cmd)]
    assert invocations and any(alseg_problem(argv) is not None for argv in invocations)


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_named_files_exist(guide):
    text = guide.read_text()
    named = set(re.findall(r"`((?:cluster|configs|docker|scripts|locks|tests)/[\w./-]*\w)`", text))
    named |= set(re.findall(r"`((?:kuberay/)?[\w-]+\.(?:yaml|sbatch))`", text))  # names beside the guide
    missing = sorted(n for n in named if not (REPO / n).exists() and not (guide.parent / n).exists())
    assert missing == [], f"{guide.relative_to(REPO)} names files that do not exist: {missing}"
