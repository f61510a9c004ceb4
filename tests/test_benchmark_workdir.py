"""benchmarks/workdir.py: a benchmark's rerun removes only what its earlier run wrote."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from workdir import claim  # noqa: E402

OUT = ["run-*", "plan.json"]


def test_a_rerun_clears_its_own_outputs_and_keeps_the_marker(tmp_path):
    work = tmp_path / "w"
    claim(work, "demo", OUT, [])
    (work / "run-1").mkdir()
    (work / "run-1" / "x").write_text("1")
    (work / "plan.json").write_text("{}")
    claim(work, "demo", OUT, [])
    assert sorted(p.name for p in work.iterdir()) == [".alseg-demo"]


def test_refuses_a_folder_it_did_not_write_and_removes_nothing(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "plan.json").write_text("mine")
    with pytest.raises(SystemExit, match="did not write"):
        claim(work, "demo", OUT, [])
    assert (work / "plan.json").read_text() == "mine"


def test_refuses_a_foreign_entry_before_removing_anything(tmp_path):
    work = tmp_path / "w"
    claim(work, "demo", OUT, [])
    (work / "plan.json").write_text("earlier")
    (work / "notes.txt").write_text("a person's")
    with pytest.raises(SystemExit, match="notes.txt"):
        claim(work, "demo", OUT, [])
    assert (work / "plan.json").read_text() == "earlier" and (work / "notes.txt").exists()


def test_refuses_an_input_inside_the_folder(tmp_path):
    work = tmp_path / "w"
    claim(work, "demo", OUT, [])
    (work / "plan.json").write_text("{}")
    with pytest.raises(SystemExit, match="lies inside"):
        claim(work, "demo", OUT, [work / "plan.json"])
    assert (work / "plan.json").exists()


def test_an_empty_existing_folder_is_taken(tmp_path):
    (tmp_path / "w").mkdir()
    claim(tmp_path / "w", "demo", OUT, [tmp_path / "spec.yaml"])
    assert (tmp_path / "w" / ".alseg-demo").exists()
