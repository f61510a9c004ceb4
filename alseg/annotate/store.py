"""The annotation store: every annotated patch's labels in one label image, and the record of them.

``<run dir>/annotations.zarr`` is an NGFF label image on the input's grid (shape and voxel size of
the input at ``input.level``; one level, uint32) holding each annotated patch's labels at its box.
Label ids are the annotator's own, unique within a patch (not across patches): consumers read a
patch by its box. Outside the recorded boxes the store means nothing ("not annotated"), so 0 inside
a recorded box is annotated background and 0 elsewhere is unknown.

``<run dir>/annotation/imports.json`` is the authority of what is stored: per round, each patch's
id, box, source (``simulated`` with the ground truth's URL, or ``manual`` with the folder and file
it came from), the sha256 of its labels (:func:`~alseg.annotate.layout.labels_sha256`) and when.
Labels are written before the record is updated (atomically, last), so an interrupted write leaves
at most unrecorded voxels, never a record without its labels. A replaced record is kept under
``replaced``. One writer at a time (the driver of a run), as for every record of a run directory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from alseg.annotate import layout as lay
from alseg.errors import DataError, OutputExistsError, SpecError
from alseg.geometry import Box
from alseg.io import store as st
from alseg.io.omezarr import Volume, create_label_image, open_volume, output_record
from alseg.spec import JobSpec, SimulatedAnnotation, ground_truth_url

KIND = "annotations"
RECORD_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class PatchLabels:
    """One patch's labels to store: ``load`` gives them (uint32, the box's shape); ``sha256``, when
    known, is checked against what ``load`` gives. ``load=None`` re-records labels already stored
    under ``sha256`` (a simulated patch moving to another round) without rewriting them."""

    patch_id: int
    box: Box
    source: dict[str, str]
    load: Callable[[], np.ndarray] | None
    sha256: str | None = None


def annotations_url(spec: JobSpec) -> str:
    """``<run dir>/annotations.zarr``: the label image holding every annotated patch."""
    return st.join(spec.run.dir, "annotations.zarr")


def open_store(spec: JobSpec, *, create: bool) -> Volume | None:
    """The annotation store open for writing; made (empty) on first use when ``create``, else None
    while there is none. A store of another shape than the input is refused."""
    url = annotations_url(spec)
    image = lay.input_volume(spec)
    record = output_record(url) or {}
    if record.get("kind") == KIND and record.get("complete"):
        vol = open_volume(url, mode="r+")
        if vol.shape != image.shape:
            raise DataError(f"{st.redact(url)}: shape {vol.shape}, but the input is {image.shape}: the store belongs to "
                            "another input")
        return vol
    if not create:
        return None
    # one level: the store is read by box (fine-tuning), not browsed at low resolution
    like = dataclasses.replace(image, level_paths=image.level_paths[:1])
    vol = create_label_image(url, like=like, dtype=lay.LABEL_DTYPE, name="annotations", kind=KIND)
    vol.set_provenance({"generator": "alseg.annotate", "input": {"url": st.redact(spec.input.url), "level": spec.input.level,
                        "shape": list(image.shape)}, "records": "annotation/imports.json", "complete": True})
    return vol


def read_imports(spec: JobSpec) -> dict[str, Any]:
    """The record of stored patches (an empty one while nothing is stored)."""
    url = lay.imports_url(spec)
    if not st.exists(url):
        return {"format": RECORD_FORMAT, "store": "annotations.zarr", "rounds": [], "replaced": []}
    data = st.read_json(url)
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT or not isinstance(data.get("rounds"), list):
        raise DataError(f"{st.redact(url)}: not an alseg annotation record of format {RECORD_FORMAT}")
    return data


def patch_records(spec: JobSpec) -> dict[int, dict[str, Any]]:
    """Each stored patch's record (with its ``round``), by patch id."""
    out: dict[int, dict[str, Any]] = {}
    for rnd in read_imports(spec)["rounds"]:
        for rec in rnd.get("patches", []):
            out[int(rec["id"])] = {**rec, "round": int(rnd["round"])}
    return out


def annotated_patches(spec: JobSpec) -> list[tuple[int, Box, int]]:
    """``(patch id, box, round)`` of every patch stored so far, by round and id."""
    url = lay.imports_url(spec)
    items = [(pid, lay.box_from_list(rec["box"], f"{st.redact(url)}: patch {pid}"), rec["round"])
             for pid, rec in patch_records(spec).items()]
    return sorted(items, key=lambda t: (t[2], t[0]))


def annotation_labels(spec: JobSpec, patch_id: int) -> np.ndarray:
    """The stored labels of one patch (uint32, its box's shape), checked against the recorded sha256."""
    rec = patch_records(spec).get(int(patch_id))
    if rec is None:
        raise DataError(f"patch {patch_id} has no annotation in {st.redact(annotations_url(spec))}")
    box = lay.box_from_list(rec["box"], f"{st.redact(lay.imports_url(spec))}: patch {patch_id}")
    vol = open_store(spec, create=False)
    if vol is None:
        raise DataError(f"{st.redact(annotations_url(spec))}: missing, but {st.redact(lay.imports_url(spec))} records "
                        f"patch {patch_id}")
    labels = vol.read(box)
    if lay.labels_sha256(labels) != rec["sha256"]:
        raise DataError(f"{st.redact(annotations_url(spec))}: the labels of patch {patch_id} at {box} differ from the "
                        f"recorded sha256 {rec['sha256'][:12]}... (changed outside alseg?)")
    return labels


def commit(spec: JobSpec, round_index: int, items: Sequence[PatchLabels], *, drop: Sequence[int] = ()) -> list[int]:
    """Store ``items`` as round ``round_index`` (replacing any record of their ids) and forget the
    patches ``drop`` (their boxes cleared); returns the ids whose labels were written. Callers have
    validated everything: this only writes, labels first, then the record."""
    vol = open_store(spec, create=True)
    if vol is None:  # pragma: no cover - open_store(create=True) always returns a store
        raise DataError(f"{st.redact(annotations_url(spec))}: the annotation store could not be made")
    data = read_imports(spec)
    records = patch_records(spec)
    for pid in drop:
        rec = records.get(int(pid))
        if rec is not None:
            box = lay.box_from_list(rec["box"], f"patch {pid}")
            vol.write(box, np.zeros(box.shape, dtype=lay.LABEL_DTYPE))
    written, new = [], []
    stamp = lay.now()
    for item in items:
        sha = item.sha256
        if item.load is not None:
            labels = item.load()
            got = lay.labels_sha256(labels)
            if sha is not None and got != sha:
                raise DataError(f"patch {item.patch_id}: its labels changed while being stored (sha256 {got[:12]}..., "
                                f"validated {sha[:12]}...); nothing of it was recorded, import again")
            vol.write(item.box, labels)
            written.append(item.patch_id)
            sha = got
        new.append({"id": int(item.patch_id), "box": lay.box_to_list(item.box), "sha256": sha, **item.source, "time": stamp})
    gone = {int(p) for p in drop} | {int(i.patch_id) for i in items}
    replaced = list(data.get("replaced", []))
    rounds: dict[int, list[dict[str, Any]]] = {}
    for rnd in data["rounds"]:
        keep = []
        for rec in rnd.get("patches", []):
            if int(rec["id"]) in gone:
                replaced.append({**rec, "round": int(rnd["round"]), "replaced": stamp})
            else:
                keep.append(rec)
        rounds[int(rnd["round"])] = keep
    rounds.setdefault(int(round_index), []).extend(new)
    data["rounds"] = [{"round": r, "patches": sorted(p, key=lambda rec: int(rec["id"]))}
                      for r, p in sorted(rounds.items()) if p]
    data["replaced"] = replaced
    data["updated"] = stamp
    st.write_json(lay.imports_url(spec), data)
    return written


def simulate_round(spec: JobSpec, round_index: int, picks: list[tuple[int, Box]]) -> dict[str, Any]:
    """``annotation.method: simulated``: copy the ground truth of ``picks`` into the store as round
    ``round_index``. Idempotent: the same picks again rewrite nothing; other picks for the round
    replace its record (patches no longer picked are cleared). A patch annotated by hand is never
    replaced by the oracle."""
    if not isinstance(spec.annotation, SimulatedAnnotation):
        raise SpecError(f"annotation.method is {spec.annotation.method!r}: the simulated oracle runs only for "
                        "'simulated' (export the round and import people's labels instead)",
                        [("annotation.method", "expected 'simulated'")])
    gt_url = ground_truth_url(spec)
    if gt_url is None:
        raise SpecError("annotation.method 'simulated' needs input.ground_truth", [("input.ground_truth", "missing")])
    if round_index < 1:
        raise SpecError(f"annotation round {round_index}: rounds count from 1", [("round", "expected >= 1")])
    wanted = _checked_picks(picks)
    records = patch_records(spec)
    current = {pid: rec for pid, rec in records.items() if rec["round"] == round_index}
    manual = sorted(pid for pid, rec in records.items()
                    if rec.get("source") != "simulated" and (pid in wanted or pid in current))
    if manual:
        raise OutputExistsError(f"{st.redact(lay.imports_url(spec))}: patch(es) {lay.ids_text(manual)} carry people's "
                                "annotations; the simulated oracle does not replace them")

    def same(pid: int, box: Box) -> bool:
        rec = records.get(pid)
        return rec is not None and rec.get("source") == "simulated" and rec["box"] == lay.box_to_list(box)

    if set(current) == set(wanted) and all(same(pid, box) for pid, box in wanted.items()):
        return {"round": round_index, "patch_ids": sorted(wanted), "written": [], "reused": True,
                "url": annotations_url(spec)}
    image = lay.input_volume(spec)
    gt = lay.label_volume(gt_url, image, "ground truth", level=spec.input.level)
    for pid, box in wanted.items():
        if not image.bounds.contains(box):
            raise DataError(f"patch {pid}: box {box} lies outside the input {image.shape}")
    source = {"source": "simulated", "folder": st.redact(gt_url)}

    def loader(pid: int, box: Box) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            labels, problems = lay.check_labels(gt.read(box), box, f"ground truth {st.redact(gt_url)} at {box}")
            if labels is None:
                raise DataError("; ".join(problems))
            return labels
        return load

    items = [PatchLabels(pid, box, source, None if same(pid, box) else loader(pid, box),
                         records[pid]["sha256"] if same(pid, box) else None)
             for pid, box in sorted(wanted.items())]
    drop = [pid for pid in current if pid not in wanted]
    written = commit(spec, round_index, items, drop=drop)
    return {"round": round_index, "patch_ids": sorted(wanted), "written": written, "dropped": sorted(drop),
            "reused": False, "url": annotations_url(spec)}


def _checked_picks(picks: Sequence[tuple[int, Box]]) -> dict[int, Box]:
    out: dict[int, Box] = {}
    for pid, box in picks:
        pid = int(pid)
        if pid < 0:
            raise DataError(f"patch id {pid}: expected a non-negative id")
        if pid in out:
            raise DataError(f"patch {pid} is picked twice")
        if not isinstance(box, Box) or box.ndim != 3 or box.empty:
            raise DataError(f"patch {pid}: expected a non-empty 3D Box, got {box!r}")
        out[pid] = box
    return out
