"""Import people's labels from an annotation package into the run's annotation store.

Where a patch's edited labels are read from, first found wins:

1. ``edited/patch-<id>.tif`` (or ``.tiff``): micro-SAM's output folder, or a labels layer saved
   from napari;
2. ``zarr/patch-<id>.ome.zarr/labels/annotation``: labels written into the patch's OME-Zarr package.

A patch with neither is missing. The record in ``imports.json`` names the file each patch came from.

Everything is checked before anything is stored, and a failed import stores nothing:

* the package is current: its manifest's job digest is the run's (``alseg-run.json``), and its
  round's patch ids and boxes are those of the run's selection record
  ``<run dir>/selection/round-NN.json`` (else the package is stale: export the round again);
* every file in ``edited/`` and ``zarr/`` belongs to a patch of the manifest (no unknown patch);
* every patch of the manifest has labels (missing ones are listed; ``partial`` stores the others);
* each patch's labels have the patch's shape, an integer dtype, ids >= 0 that fit uint32;
* no patch stored before is replaced silently: the same labels again are left as they are,
  different ones need ``replace``.

Checked labels are staged under ``<run dir>/annotation/.staging/`` (bounded memory, and the files
people edit are read once), then copied into the store; the staging folder is removed after.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

import numpy as np

from alseg.annotate import layout as lay
from alseg.annotate.store import PatchLabels, annotations_url, commit, patch_records
from alseg.errors import DataError, OutputExistsError, StoreError
from alseg.geometry import Box
from alseg.io import store as st
from alseg.io.omezarr import open_volume
from alseg.spec import JobSpec

_TIFF_SUFFIXES = (".tif", ".tiff")


def import_round(spec: JobSpec, folder: str, *, replace: bool = False, partial: bool = False) -> dict[str, Any]:
    """Read the edited labels of the package ``folder`` back, check them all, then store them as
    the package's round; returns what was imported, left unchanged, and is still missing."""
    manifest_url = st.join(folder, lay.MANIFEST)
    manifest = read_manifest(manifest_url)
    round_index = manifest["round"]
    patches: dict[int, Box] = manifest["boxes"]
    check_current(spec, manifest, manifest_url)
    found, problems = find_labels(folder, patches)
    if problems:
        raise DataError(_one_line(problems))
    records = patch_records(spec)
    done = {pid for pid, box in patches.items()
            if pid in records and records[pid]["round"] == round_index and records[pid]["box"] == lay.box_to_list(box)}
    missing = sorted(pid for pid in patches if pid not in found and pid not in done)
    if missing and not partial:
        raise DataError(f"{st.redact(folder)}: no edited labels for {len(missing)} of {len(patches)} patch(es): "
                        f"{lay.ids_text(missing)} (expected {lay.EDITED}/patch-<id>.tif or {lay.ZARR}/patch-<id>.ome.zarr/labels/"
                        f"{lay.EDITED_LABELS}); finish them, or pass --partial to store the others")
    if not found:
        raise DataError(f"{st.redact(folder)}: no edited labels at all (nothing in {lay.EDITED}/, no labels/"
                        f"{lay.EDITED_LABELS} in {lay.ZARR}/): nothing to import")
    staging = st.join(lay.annotation_dir(spec), ".staging", uuid.uuid4().hex[:12])
    try:
        checked: dict[int, str] = {}
        for pid in sorted(found):
            rel = found[pid]
            where = f"{st.redact(st.join(folder, rel))}"
            try:
                data = _read_labels(st.join(folder, rel))
            except (DataError, OSError, ValueError) as err:
                problems.append(f"{where}: cannot be read ({st._short(err)})")
                continue
            labels, bad = lay.check_labels(data, patches[pid], where)
            if labels is None:
                problems += bad
                continue
            checked[pid] = lay.labels_sha256(labels)
            if not problems:
                _stage(st.join(staging, f"{pid}.npy"), labels)
        if problems:
            raise DataError(_one_line(problems))
        unchanged = sorted(pid for pid, sha in checked.items() if pid in done and records[pid]["sha256"] == sha)
        conflicts = sorted(pid for pid in checked if pid in records and pid not in unchanged)
        if conflicts and not replace:
            first = records[conflicts[0]]
            raise OutputExistsError(
                f"{st.redact(folder)}: patch(es) {lay.ids_text(conflicts)} were imported before with other labels (patch "
                f"{conflicts[0]}: round {first['round']}, {first.get('time')}, from {first.get('file') or first.get('folder')}); "
                "pass --replace to replace them")
        items = [PatchLabels(pid, patches[pid],
                             {"source": "manual", "folder": st.redact(folder), "file": found[pid]},
                             _staged(st.join(staging, f"{pid}.npy")), checked[pid])
                 for pid in sorted(checked) if pid not in unchanged]
        written = commit(spec, round_index, items) if items else []
    finally:
        if st.exists(staging):
            st.remove(staging)
    return {"round": round_index, "folder": folder, "imported": written, "unchanged": unchanged,
            "replaced": [pid for pid in conflicts if pid in written], "missing": missing,
            "sources": {pid: found[pid] for pid in written}, "url": annotations_url(spec)}


def read_manifest(url: str) -> dict[str, Any]:
    """A package's manifest, checked; ``boxes`` maps patch id to :class:`Box`."""
    where = st.redact(url)
    if not st.exists(url):
        raise DataError(f"{where}: does not exist: not an alseg annotation package (or its export did not finish)")
    data = st.read_json(url)
    if not isinstance(data, dict) or data.get("format") != lay.FORMAT:
        raise DataError(f"{where}: not an alseg annotation manifest (format {lay.FORMAT!r})")
    if data.get("format_version") != lay.FORMAT_VERSION:
        raise DataError(f"{where}: format version {data.get('format_version')!r}, this alseg reads {lay.FORMAT_VERSION}")
    rnd = data.get("round")
    if not isinstance(rnd, int) or isinstance(rnd, bool) or rnd < 1:
        raise DataError(f"{where}: round {rnd!r}, expected an integer >= 1")
    if not isinstance(data.get("job_digest"), str) or not isinstance(data.get("patches"), list) or not data["patches"]:
        raise DataError(f"{where}: expected a job_digest and a non-empty list of patches")
    boxes: dict[int, Box] = {}
    for entry in data["patches"]:
        pid = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0 or pid in boxes:
            raise DataError(f"{where}: patch entry {entry!r}: expected a unique non-negative integer id")
        boxes[pid] = lay.box_from_list(entry.get("box"), f"{where}: patch {pid}")
    return {**data, "boxes": boxes}


def check_current(spec: JobSpec, manifest: dict[str, Any], manifest_url: str) -> None:
    """Refuse a package that is not of this run's current job and selection (a stale round)."""
    where = st.redact(manifest_url)
    rnd = manifest["round"]
    expected = spec.job_digest()
    record_url = lay.run_record_url(spec)
    if st.exists(record_url):  # the run directory's owner is the authority on which job it holds
        expected = str(st.read_json(record_url).get("job_digest", expected))
    if manifest["job_digest"] != expected:
        raise DataError(f"{where}: made for job spec {manifest['job_digest']}, but the run directory holds job spec "
                        f"{expected}: a stale package; export round {rnd} again")
    sel_url = lay.selection_url(spec, rnd)
    if not st.exists(sel_url):
        raise DataError(f"{where}: round {rnd} has no selection in this run ({st.redact(sel_url)} is missing): the "
                        "package belongs to another run, or to a round that was discarded")
    sel = st.read_json(sel_url)
    try:
        selected = {int(p): lay.box_from_list(b, st.redact(sel_url)) for p, b in zip(sel["patch_ids"], sel["boxes"], strict=True)}
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{st.redact(sel_url)}: not a selection record ({st._short(err)})") from err
    if selected != manifest["boxes"]:
        differ = sorted(set(selected.items()) ^ set(manifest["boxes"].items()))
        raise DataError(f"{where}: stale round {rnd}: the run's selection ({st.redact(sel_url)}) picks other patches "
                        f"(patch(es) {lay.ids_text(sorted({p for p, _ in differ}))} differ); export round {rnd} again")
    shape = manifest.get("input", {}).get("shape") if isinstance(manifest.get("input"), dict) else None
    image = lay.input_volume(spec)
    if shape is not None and list(shape) != list(image.shape):
        raise DataError(f"{where}: made for an input of shape {tuple(shape)}, the run's input is {image.shape}")


def find_labels(folder: str, patches: dict[int, Box]) -> tuple[dict[int, str], list[str]]:
    """``({patch id: path of its edited labels relative to folder}, problems)``: the TIFF in
    ``edited/`` first, else ``labels/annotation`` of its zarr package; files of unknown patches
    and unexpected names are problems."""
    problems: list[str] = []
    found: dict[int, str] = {}
    edited = st.join(folder, lay.EDITED)
    for name in lay.listdir(edited):
        if name.startswith("."):
            continue
        pid = lay.patch_id_of(name)
        where = st.redact(st.join(edited, name))
        if pid is None or not name.lower().endswith(_TIFF_SUFFIXES) or name.count(".") != 1:
            problems.append(f"{where}: unexpected file (expected patch-<id>.tif)")
        elif pid not in patches:
            problems.append(f"{where}: unknown patch {pid} (the manifest lists {lay.ids_text(sorted(patches))})")
        elif pid in found:
            problems.append(f"{where}: patch {pid} has two TIFFs ({found[pid]} too); keep one")
        else:
            found[pid] = f"{lay.EDITED}/{name}"
    zarr_dir = st.join(folder, lay.ZARR)
    for name in lay.listdir(zarr_dir):
        if name.startswith("."):
            continue
        pid = lay.patch_id_of(name)
        where = st.redact(st.join(zarr_dir, name))
        if pid is None or not name.endswith(".ome.zarr"):
            problems.append(f"{where}: unexpected entry (expected patch-<id>.ome.zarr)")
        elif pid not in patches:
            problems.append(f"{where}: unknown patch {pid} (the manifest lists {lay.ids_text(sorted(patches))})")
        elif pid not in found and st.exists(st.join(zarr_dir, name, "labels", lay.EDITED_LABELS)):
            found[pid] = f"{lay.ZARR}/{name}/labels/{lay.EDITED_LABELS}"
    return found, problems


def _read_labels(url: str) -> np.ndarray:
    if url.lower().endswith(_TIFF_SUFFIXES):
        import tifffile

        fs, path = st.filesystem(url)
        try:
            with fs.open(path, "rb") as fh, tifffile.TiffFile(fh) as tif:
                return np.asarray(tif.asarray())
        except tifffile.TiffFileError as err:
            raise DataError(f"not a TIFF ({err})") from err
    try:
        return open_volume(url).read()
    except StoreError as err:
        raise DataError(st._short(err)) from err


def _stage(url: str, labels: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, labels, allow_pickle=False)
    lay.write_bytes(url, buf.getvalue())


def _staged(url: str):
    def load() -> np.ndarray:
        fs, path = st.filesystem(url)
        return np.load(io.BytesIO(fs.cat_file(path)), allow_pickle=False)
    return load


def _one_line(problems: list[str], limit: int = 6) -> str:
    head = "; ".join(problems[:limit])
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return (f"{len(problems)} problems: " if len(problems) > 1 else "") + head + more
