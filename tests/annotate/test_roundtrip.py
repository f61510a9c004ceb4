"""The annotation round trip: export a round's picks, edit the labels as a person's tools would,
import them back; every invalid import refused with nothing stored; the simulated oracle.

Oracles independent of alseg's readers: tifffile on the TIFF layout, zarr on the stores, numpy
crops of the synthetic volume's ground truth, hashlib on the bytes; napari's own reader and
micro-SAM's own command line and loader in the marked tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from alseg.annotate import annotated_patches, annotation_labels, annotations_url, export_round, import_round, simulate_round
from alseg.annotate.cli import add_import_parser, cmd_import, spec_of_run
from alseg.errors import DataError, OutputExistsError, SpecError
from alseg.geometry import Box
from alseg.preflight import patch_grid_of
from alseg.rundir import claim
from alseg.spec import JobSpec, parse_spec
from alseg.synth import SynthParams, write_synthetic
from tests.helpers.need import require

SHAPE = (16, 64, 64)
PATCH = (8, 24, 24)  # 2 x 3 x 3 grid; the last row and column are 16 wide (edge patches)
ROUND1 = (0, 5, 13)  # 5 and 13 are edge patches
ROUND2 = (1, 9, 16)
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("vol") / "synthetic.zarr")
    write_synthetic(url, SynthParams.preset("easy", shape=SHAPE, seed=1, mito_per_um3=30.0), chunks=(8, 32, 32))
    return url


def gt_array(volume: str) -> np.ndarray:
    return np.asarray(zarr.open_array(f"{volume}/labels/mitochondria/s0", mode="r")[...])


def raw_array(volume: str) -> np.ndarray:
    return np.asarray(zarr.open_array(f"{volume}/s0", mode="r")[...])


def make_spec(volume: str, run: Path, method: str = "manual", **extra) -> JobSpec:
    spec = parse_spec({"input": {"url": volume, "ground_truth": "mitochondria"},
                       "run": {"dir": str(run), **extra.pop("run_extra", {})},
                       "patches": {"shape_vox": list(PATCH), "holdout": None},
                       "selection": {"method": "random", "budget": 3, "rounds": 2, **extra.pop("selection", {})},
                       "annotation": {"method": method}, **extra})
    claim(spec)
    return spec


def picks_of(spec: JobSpec, ids: tuple[int, ...]) -> list[tuple[int, Box]]:
    patches = {p.id: p.valid for p in patch_grid_of(spec, SHAPE).patches()}
    return [(i, patches[i]) for i in ids]


def write_selection(spec: JobSpec, round_index: int, picks: list[tuple[int, Box]]) -> None:
    """A selection record as the selection stage writes it (round, patch ids, boxes)."""
    path = Path(spec.run.dir) / "selection" / f"round-{round_index:02d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"round": round_index, "method": "random", "patch_ids": [p for p, _ in picks],
                                "boxes": [[*b.start, *b.stop] for _, b in picks]}))


def export(spec: JobSpec, round_index: int, ids: tuple[int, ...], volume: str) -> tuple[Path, list[tuple[int, Box]]]:
    picks = picks_of(spec, ids)
    write_selection(spec, round_index, picks)
    folder = export_round(spec, round_index, picks, f"{volume}/labels/mitochondria")
    return Path(folder), picks


def edit(initial: np.ndarray, seed: int) -> np.ndarray:
    """What a person does: drop one object, relabel the rest, draw a new one."""
    out = initial.astype(np.int64)
    ids = [i for i in np.unique(out) if i]
    if ids:
        out[out == ids[0]] = 0
    out[out > 0] += 100 + seed
    out[:, 2:6, 3:7] = 7 + seed
    return out


def write_edits(folder: Path, picks: list[tuple[int, Box]], dtype: str = "uint16", seed: int = 0) -> dict[int, np.ndarray]:
    edits = {}
    for pid, _ in picks:
        initial = tifffile.imread(folder / "initial" / f"patch-{pid:06d}.tif")
        edits[pid] = edit(initial, seed + pid).astype(dtype)
        tifffile.imwrite(folder / "edited" / f"patch-{pid:06d}.tif", edits[pid])
    return edits


def stored(spec: JobSpec, box: Box) -> np.ndarray:
    return np.asarray(zarr.open_array(f"{annotations_url(spec)}/s0", mode="r")[box.slices])


def store_hash(spec: JobSpec) -> str | None:
    """sha256 over every file of the annotation store and the import record (None: neither exists)."""
    root, record = Path(annotations_url(spec)), Path(spec.run.dir) / "annotation" / "imports.json"
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
    files += [record] if record.exists() else []
    if not files:
        return None
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(spec.run.dir)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- #
# export
# --------------------------------------------------------------------------------------------- #
def test_export_writes_both_layouts_and_the_manifest_last(volume, tmp_path):
    spec = make_spec(volume, tmp_path / "run")
    folder, picks = export(spec, 1, ROUND1, volume)
    assert folder == tmp_path / "run" / "annotation" / "round-01"
    raw, gt = raw_array(volume), gt_array(volume)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["round"] == 1 and manifest["job_digest"] == spec.job_digest()
    assert manifest["voxel_size_nm"] == [30.0, 8.0, 8.0]
    assert [(p["id"], p["box"]) for p in manifest["patches"]] == [(i, [*b.start, *b.stop]) for i, b in picks]
    newest = max(p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert (folder / "manifest.json").stat().st_mtime_ns >= newest
    assert sorted(os.listdir(folder / "images")) == sorted(os.listdir(folder / "initial")) == \
        [f"patch-{i:06d}.tif" for i in ROUND1]
    assert os.listdir(folder / "edited") == []
    for pid, box in picks:
        stem = f"patch-{pid:06d}"
        image = tifffile.imread(folder / "images" / f"{stem}.tif")
        initial = tifffile.imread(folder / "initial" / f"{stem}.tif")
        np.testing.assert_array_equal(image, raw[box.slices])
        np.testing.assert_array_equal(initial, gt[box.slices])
        assert initial.dtype == np.uint32 and image.shape == box.shape
        pkg = zarr.open_group(str(folder / "zarr" / f"{stem}.ome.zarr"), mode="r")
        np.testing.assert_array_equal(pkg["s0"][...], raw[box.slices])
        np.testing.assert_array_equal(pkg["labels/initial/s0"][...], gt[box.slices])
        assert pkg["labels"].attrs["ome"]["labels"] == ["initial"]
        assert "image-label" in pkg["labels/initial"].attrs["ome"]
    readme = (folder / "README.txt").read_text()
    for needle in ("micro_sam.image_series_annotator", "--is_volumetric", "--initial_segmentation_folder",
                   "napari --plugin napari-ome-zarr", f'alseg import "{tmp_path / "run"}" "{folder}"', "alseg run SPEC"):
        assert needle in readme
    assert gt[picks[1][1].slices].any(), "the test needs objects in its patches"


def test_export_without_start_labels_gives_zeros_and_reuses_the_package(volume, tmp_path):
    spec = make_spec(volume, tmp_path / "run")
    picks = picks_of(spec, ROUND1)
    folder = Path(export_round(spec, 1, picks, None))
    assert not tifffile.imread(folder / "initial" / "patch-000005.tif").any()
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    assert Path(export_round(spec, 1, picks, None)) == folder
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp  # same picks: reused, not rewritten
    other = picks_of(spec, ROUND2)
    export_round(spec, 1, other, None)  # other picks, no edits yet: replaced
    assert sorted(os.listdir(folder / "images")) == [f"patch-{i:06d}.tif" for i in ROUND2]
    tifffile.imwrite(folder / "edited" / "patch-000001.tif", np.zeros(PATCH, np.uint32))
    with pytest.raises(OutputExistsError, match="edited labels"):
        export_round(spec, 1, picks, None)  # would lose someone's work
    assert (folder / "edited" / "patch-000001.tif").exists()


# --------------------------------------------------------------------------------------------- #
# import
# --------------------------------------------------------------------------------------------- #
def test_roundtrip_stores_the_edits_exactly(volume, tmp_path):
    spec = make_spec(volume, tmp_path / "run")
    folder, picks = export(spec, 1, ROUND1, volume)
    write_edits(folder, picks)
    result = import_round(spec, str(folder))
    assert result["imported"] == list(ROUND1) and result["missing"] == []
    record = json.loads((tmp_path / "run" / "annotation" / "imports.json").read_text())
    by_id = {p["id"]: p for p in record["rounds"][0]["patches"]}
    for pid, box in picks:
        edited = tifffile.imread(folder / "edited" / f"patch-{pid:06d}.tif")  # what the person saved
        np.testing.assert_array_equal(stored(spec, box), edited)
        np.testing.assert_array_equal(annotation_labels(spec, pid), edited)
        assert by_id[pid]["sha256"] == hashlib.sha256(edited.astype("<u4").tobytes()).hexdigest()
        assert by_id[pid]["source"] == "manual" and by_id[pid]["file"] == f"edited/patch-{pid:06d}.tif"
        assert by_id[pid]["folder"] == str(folder) and by_id[pid]["box"] == [*box.start, *box.stop]
    assert annotated_patches(spec) == [(pid, box, 1) for pid, box in picks]
    before = store_hash(spec)
    again = import_round(spec, str(folder))  # the same labels again: nothing rewritten
    assert again["imported"] == [] and again["unchanged"] == list(ROUND1) and store_hash(spec) == before
    store = zarr.open_group(annotations_url(spec), mode="r")
    assert store.attrs["alseg"]["kind"] == "annotations" and store.attrs["alseg"]["complete"]
    assert store.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [30.0, 8.0, 8.0]
    assert store["s0"].shape == SHAPE


def test_labels_written_into_the_zarr_package_are_read_when_no_tiff_is_there(volume, tmp_path):
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_labels

    spec = make_spec(volume, tmp_path / "run")
    folder, picks = export(spec, 1, ROUND1, volume)
    tiff_edits = write_edits(folder, picks[:2])
    zarr_edits = {}
    for pid, box in picks[1:]:  # patch 5: both (the TIFF wins); patch 13: zarr only
        zarr_edits[pid] = np.full(box.shape, 40 + pid, dtype=np.uint16)
        group = zarr.open_group(str(folder / "zarr" / f"patch-{pid:06d}.ome.zarr"), mode="r+")
        write_labels(zarr_edits[pid], group, name="annotation", axes="zyx", fmt=FormatV05(), scaler=None)
    result = import_round(spec, str(folder))
    assert result["sources"] == {0: "edited/patch-000000.tif", 5: "edited/patch-000005.tif",
                                 13: "zarr/patch-000013.ome.zarr/labels/annotation"}
    np.testing.assert_array_equal(stored(spec, picks[1][1]), tiff_edits[5])
    np.testing.assert_array_equal(stored(spec, picks[2][1]), zarr_edits[13])


def test_partial_import_lists_the_missing_and_the_rest_follows(volume, tmp_path):
    spec = make_spec(volume, tmp_path / "run")
    folder, picks = export(spec, 1, ROUND1, volume)
    edits = write_edits(folder, picks)
    (folder / "edited" / "patch-000013.tif").unlink()
    with pytest.raises(DataError, match=r"no edited labels for 1 of 3 patch\(es\): 13 .*--partial"):
        import_round(spec, str(folder))
    assert store_hash(spec) is None  # nothing stored, not even an empty store
    first = import_round(spec, str(folder), partial=True)
    assert first["imported"] == [0, 5] and first["missing"] == [13]
    tifffile.imwrite(folder / "edited" / "patch-000013.tif", edits[13])
    rest = import_round(spec, str(folder))  # no longer missing: the others are stored already
    assert rest["imported"] == [13] and rest["unchanged"] == [0, 5]
    for pid, box in picks:
        np.testing.assert_array_equal(stored(spec, box), edits[pid])


def test_replace_redoes_an_import_and_keeps_the_old_record(volume, tmp_path):
    spec = make_spec(volume, tmp_path / "run")
    folder, picks = export(spec, 1, ROUND1, volume)
    write_edits(folder, picks)
    import_round(spec, str(folder))
    old = json.loads((tmp_path / "run" / "annotation" / "imports.json").read_text())
    edits = write_edits(folder, picks[:1], seed=50)
    with pytest.raises(OutputExistsError, match=r"patch\(es\) 0 were imported before.*--replace"):
        import_round(spec, str(folder))
    result = import_round(spec, str(folder), replace=True)
    assert result["imported"] == [0] and result["replaced"] == [0] and result["unchanged"] == [5, 13]
    np.testing.assert_array_equal(stored(spec, picks[0][1]), edits[0])
    record = json.loads((tmp_path / "run" / "annotation" / "imports.json").read_text())
    assert record["replaced"][0]["sha256"] == old["rounds"][0]["patches"][0]["sha256"]


def _fault(case: str, spec: JobSpec, folder: Path, picks: list[tuple[int, Box]], volume: str) -> tuple[type, str, JobSpec]:
    """Break a valid round-2 package the way ``case`` says; returns the error, its message and the spec."""
    pid, box = picks[1]
    tif = folder / "edited" / f"patch-{pid:06d}.tif"
    if case == "wrong shape":
        tifffile.imwrite(tif, np.ones((box.shape[0], box.shape[1] - 1, box.shape[2]), np.uint32))
        return DataError, rf"patch-{pid:06d}\.tif: shape .*expected the patch's", spec
    if case == "float dtype":
        tifffile.imwrite(tif, np.ones(box.shape, np.float32))
        return DataError, rf"patch-{pid:06d}\.tif: dtype float32, expected integer", spec
    if case == "negative ids":
        tifffile.imwrite(tif, np.full(box.shape, -3, np.int16))
        return DataError, rf"patch-{pid:06d}\.tif: negative label ids \(smallest -3\)", spec
    if case == "unknown patch":
        tifffile.imwrite(folder / "edited" / "patch-000099.tif", np.ones(PATCH, np.uint32))
        return DataError, r"patch-000099\.tif: unknown patch 99", spec
    if case == "missing patch":
        tif.unlink()
        return DataError, rf"no edited labels for 1 of 3 patch\(es\): {pid} ", spec
    if case == "stale round":
        write_selection(spec, 2, picks_of(spec, (2, 9, 16)))  # the run re-selected round 2
        return DataError, r"manifest\.json: stale round 2: .*picks other patches \(patch\(es\) 1, 2 differ\)", spec
    if case == "stale digest":
        changed = make_spec(volume, Path(spec.run.dir), run_extra={"overwrite": True}, selection={"budget": 4})
        return DataError, r"manifest\.json: made for job spec .* the run directory holds job spec", changed
    assert case == "second import without replace"
    import_round(spec, str(folder))
    write_edits(folder, picks[1:2], seed=9)
    return OutputExistsError, rf"patch\(es\) {pid} were imported before.*--replace", spec


@pytest.mark.parametrize("case", ["wrong shape", "float dtype", "negative ids", "unknown patch", "missing patch",
                                  "stale round", "stale digest", "second import without replace"])
def test_invalid_imports_are_refused_with_nothing_stored(volume, tmp_path, case):
    spec = make_spec(volume, tmp_path / "run")
    folder1, picks1 = export(spec, 1, ROUND1, volume)
    write_edits(folder1, picks1)
    import_round(spec, str(folder1))  # round 1 is stored: a failed round 2 must leave it as it is
    folder, picks = export(spec, 2, ROUND2, volume)
    write_edits(folder, picks)
    error, message, spec = _fault(case, spec, folder, picks, volume)
    before = store_hash(spec)
    with pytest.raises(error, match=message) as info:
        import_round(spec, str(folder))
    assert "\n" not in str(info.value)
    assert store_hash(spec) == before
    assert not (tmp_path / "run" / "annotation" / ".staging").exists() or \
        not any((tmp_path / "run" / "annotation" / ".staging").iterdir())


def test_a_failed_first_import_leaves_no_store(volume, tmp_path):
    spec = make_spec(volume, tmp_path / "run")
    folder, picks = export(spec, 1, ROUND1, volume)
    write_edits(folder, picks)
    tifffile.imwrite(folder / "edited" / "patch-000000.tif", np.ones(picks[0][1].shape, np.float64))
    tifffile.imwrite(folder / "edited" / "patch-000005.tif", np.full(picks[1][1].shape, -1, np.int32))
    with pytest.raises(DataError, match=r"^2 problems: .*patch-000000\.tif: dtype float64.*patch-000005\.tif: negative"):
        import_round(spec, str(folder))
    assert store_hash(spec) is None and not Path(annotations_url(spec)).exists()


def test_a_folder_that_is_no_package_is_refused(volume, tmp_path):
    spec = make_spec(volume, tmp_path / "run")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(DataError, match=r"elsewhere/manifest\.json: does not exist"):
        import_round(spec, str(tmp_path / "elsewhere"))


# --------------------------------------------------------------------------------------------- #
# the command
# --------------------------------------------------------------------------------------------- #
def test_alseg_import_command(volume, tmp_path, capsys, monkeypatch):
    spec = make_spec(volume, tmp_path / "run")
    folder, picks = export(spec, 1, ROUND1, volume)
    edits = write_edits(folder, picks)
    (folder / "edited" / "patch-000013.tif").unlink()
    parser = argparse.ArgumentParser(prog="alseg")
    add_import_parser(parser.add_subparsers(dest="command"))
    monkeypatch.chdir(tmp_path)  # RUNDIR relative to here, as a person types it
    args = parser.parse_args(["import", "run", str(folder), "--partial"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "round 1: 2 patch(es) stored" in out and "still to annotate: patch(es) 13" in out
    tifffile.imwrite(folder / "edited" / "patch-000013.tif", edits[13])
    assert cmd_import("run", str(folder), replace=False, partial=False) == 0
    assert "next: alseg run SPEC" in capsys.readouterr().out
    assert spec_of_run("run").job_digest() == spec.job_digest()
    with pytest.raises(DataError, match="not an alseg run directory"):
        cmd_import(str(tmp_path), str(folder), replace=False, partial=False)


# --------------------------------------------------------------------------------------------- #
# the simulated oracle
# --------------------------------------------------------------------------------------------- #
def test_simulated_round_copies_ground_truth_exactly_and_is_idempotent(volume, tmp_path):
    spec = make_spec(volume, tmp_path / "run", method="simulated")
    gt = gt_array(volume)
    picks = picks_of(spec, ROUND1)
    result = simulate_round(spec, 1, picks)
    assert result["written"] == list(ROUND1) and not result["reused"]
    for _, box in picks:
        np.testing.assert_array_equal(stored(spec, box), gt[box.slices])
    record = json.loads((tmp_path / "run" / "annotation" / "imports.json").read_text())
    entry = record["rounds"][0]["patches"][1]
    assert entry["source"] == "simulated" and entry["folder"].endswith("labels/mitochondria")
    assert entry["sha256"] == hashlib.sha256(gt[picks[1][1].slices].astype("<u4").tobytes()).hexdigest()
    before = store_hash(spec)
    again = simulate_round(spec, 1, picks)
    assert again["reused"] and again["written"] == [] and store_hash(spec) == before
    simulate_round(spec, 2, picks_of(spec, ROUND2))
    assert [(p, r) for p, _, r in annotated_patches(spec)] == [(p, 1) for p in ROUND1] + [(p, 2) for p in ROUND2]
    moved = simulate_round(spec, 1, picks_of(spec, (0, 5)))  # the round re-selected: 13 dropped and cleared
    assert moved["dropped"] == [13] and moved["written"] == []
    assert not stored(spec, picks[2][1]).any()
    assert 13 not in [p for p, _, _ in annotated_patches(spec)]


def test_simulated_round_refuses_a_manual_job_and_people_s_labels(volume, tmp_path):
    manual = make_spec(volume, tmp_path / "manual")
    with pytest.raises(SpecError, match="simulated"):
        simulate_round(manual, 1, picks_of(manual, ROUND1))
    spec = make_spec(volume, tmp_path / "run", method="simulated")
    folder, picks = export(spec, 1, ROUND1, volume)
    edits = write_edits(folder, picks)
    import_round(spec, str(folder))
    before = store_hash(spec)
    with pytest.raises(OutputExistsError, match=r"patch\(es\) 0, 5, 13 carry people's annotations"):
        simulate_round(spec, 1, picks)
    assert store_hash(spec) == before
    np.testing.assert_array_equal(stored(spec, picks[0][1]), edits[0])


# --------------------------------------------------------------------------------------------- #
# the annotators' own readers (napari, micro-SAM), each in a process of its own
# --------------------------------------------------------------------------------------------- #
def _importable(name: str) -> str | None:
    """None when ``name`` imports in a fresh interpreter, else the last line of the failure."""
    proc = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=300)
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]


@pytest.fixture(scope="module")
def display():
    """An X display for napari's OpenGL canvas (Qt's offscreen platform has none of its own): the
    caller's DISPLAY, else a private Xvfb (Mesa's software renderer), stopped after."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    require(shutil.which("Xvfb") is not None, "Xvfb is not installed (apt-get install xvfb libgl1-mesa-dri)")
    read, write = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as fh:
        number = fh.readline().strip()
    require(bool(number), "Xvfb did not start")
    yield f":{number}"
    proc.terminate()
    proc.wait(timeout=30)


def _run_reader(args: list[str], env_extra: dict[str, str]) -> None:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", **env_extra}
    proc = subprocess.run([sys.executable, str(HERE / "_gui_readers.py"), *args], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
def test_napari_opens_the_zarr_package_and_its_saved_labels_import(volume, tmp_path, display):
    missing = _importable("napari") or _importable("napari_ome_zarr")
    require(missing is None, f"napari / napari-ome-zarr missing (pip install -e '.[annotate]'): {missing}")
    spec = make_spec(volume, tmp_path / "run")
    folder, picks = export(spec, 1, ROUND1, volume)
    write_edits(folder, picks[:2])
    pid, box = picks[2]
    edits = edit(gt_array(volume)[box.slices], 3).astype(np.uint32)
    np.save(tmp_path / "edits.npy", edits)
    _run_reader(["napari", str(folder), str(pid), str(tmp_path / "edits.npy"), str(tmp_path / "out.npz")],
                {"DISPLAY": display})
    seen = np.load(tmp_path / "out.npz")
    assert [k for k, _ in json.loads(str(seen["layer_names"]))] == ["Image", "Labels"]
    np.testing.assert_array_equal(seen["image"], raw_array(volume)[box.slices])
    np.testing.assert_array_equal(seen["labels"], gt_array(volume)[box.slices])
    saved = tifffile.imread(folder / "edited" / f"patch-{pid:06d}.tif")  # napari's own writer
    np.testing.assert_array_equal(saved, edits)
    import_round(spec, str(folder))
    np.testing.assert_array_equal(stored(spec, box), edits)


@pytest.mark.slow
def test_micro_sam_reads_the_tiff_layout_and_its_output_imports(volume, tmp_path):
    missing = _importable("micro_sam.sam_annotator.image_series_annotator")
    require(missing is None, f"micro_sam does not import (pip install -e '.[annotate]'): {missing}")
    spec = make_spec(volume, tmp_path / "run")
    folder, picks = export(spec, 1, ROUND1, volume)
    raw, gt = raw_array(volume), gt_array(volume)
    edits = {f"patch-{pid:06d}.tif": edit(gt[box.slices], pid).astype(np.uint32) for pid, box in picks}
    np.savez(tmp_path / "edits.npz", **edits)
    _run_reader(["microsam", str(folder), str(tmp_path / "edits.npz"), str(tmp_path / "out.npz")], {})
    seen = np.load(tmp_path / "out.npz")
    info = json.loads(str(seen["info"]))
    assert info["is_volumetric"] is True and info["output_folder"] == str(folder / "edited")
    assert [Path(p).name for p in info["images"]] == [Path(p).name for p in info["initial"]] == list(edits)
    for i, (_, box) in enumerate(picks):
        np.testing.assert_array_equal(seen[f"image_{i}"], raw[box.slices])
        np.testing.assert_array_equal(seen[f"initial_{i}"], gt[box.slices])
    import_round(spec, str(folder))
    for pid, box in picks:
        saved = tifffile.imread(folder / "edited" / f"patch-{pid:06d}.tif")
        np.testing.assert_array_equal(saved, edits[f"patch-{pid:06d}.tif"])
        np.testing.assert_array_equal(stored(spec, box), saved)
