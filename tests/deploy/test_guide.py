"""The deployment guides (cluster/README.md, docker/README.md) promise only what exists: every `alseg`
command in their shell blocks parses with alseg's own parser, and every repository file they name
is there."""

from __future__ import annotations

import re
import shlex

import click
import pytest

from tests.deploy._deploy import REPO, alseg_problem, ray_job_submit, shell_commands

GUIDES = [REPO / "cluster" / "README.md", REPO / "docker" / "README.md"]
SEPARATORS = {"|", "||", "&&", ";", "&"}


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


def submit_problems(markdown: str) -> list[str]:
    """Every `ray job submit` of the guide parses with Ray's own parser, and one that runs a whole job
    (`alseg run`) reserves a GPU for its driver, which trains nnU-Net (see cluster/README.md)."""
    out = []
    for cmd in shell_commands(markdown):
        if "ray job submit" not in cmd:
            continue
        try:
            params = ray_job_submit(cmd)
        except click.ClickException as err:  # an unknown option, a value of the wrong type
            out.append(f"{cmd}: Ray's parser refuses it: {err}")
            continue
        if params["entrypoint"][:2] == ("alseg", "run") and not (params["entrypoint_num_gpus"] or 0) >= 1:
            out.append(f"{cmd}: the driver gets no GPU (--entrypoint-num-gpus 1), so it runs on the CPU head")
    return out


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_ray_job_submit_reserves_the_drivers_gpu(guide):
    assert submit_problems(guide.read_text()) == []


@pytest.mark.parametrize(
    "markdown, expected",
    [
        ("```bash\nray job submit --address http://127.0.0.1:8265 -- alseg run x.yaml\n```\n", "gets no GPU"),
        ("```bash\nray job submit --entrypoint-num-gpu 1 -- alseg run x.yaml\n```\n", "refuses it"),
        ("```bash\nray job submit --entrypoint-num-gpus one -- alseg run x.yaml\n```\n", "refuses it"),
    ],
)
def test_submit_check_catches_a_driver_without_a_gpu(markdown, expected):
    problems = submit_problems(markdown)
    assert problems and expected in problems[0], problems


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_named_files_exist(guide):
    text = guide.read_text()
    named = set(re.findall(r"`((?:cluster|configs|docker|scripts|locks|tests)/[\w./-]*\w)`", text))
    named |= set(re.findall(r"`((?:kuberay/)?[\w-]+\.(?:yaml|sbatch))`", text))  # names beside the guide
    missing = sorted(n for n in named if not (REPO / n).exists() and not (guide.parent / n).exists())
    assert missing == [], f"{guide.relative_to(REPO)} names files that do not exist: {missing}"
