"""Export a round's picks as a package people annotate with napari or micro-SAM.

``<run dir>/annotation/round-NN/`` holds, for every picked patch, its raw crop and starting labels
(a crop of the current model's instances, or of the pseudo-labels in round 1, or zeros) twice:

* ``zarr/patch-<id>.ome.zarr``: an OME-Zarr image with NGFF labels ``labels/initial``, written by
  alseg's own writer; napari opens it with napari-ome-zarr (image layer + labels layer).
* ``images/``, ``initial/``, ``edited/``: TIFF stacks (z, y, x) in the folder layout of micro-SAM's
  image-series annotator in 3D (``micro_sam.image_series_annotator -i images -o edited
  --initial_segmentation_folder initial --is_volumetric``), which pairs ``images`` and ``initial``
  by sorted file name and saves each patch's labels as ``edited/<image name>.tif``.

``manifest.json`` (patch ids, boxes in volume voxels, voxel size, round, the job's digest, format
version) is written last: it is the package's provenance, and a folder without it is an
unfinished export that the next export replaces. ``README.txt`` says what to type.

A package that exists is never overwritten under someone's edits: the same picks again reuse it
as it is; other picks replace it only while ``edited/`` is empty (no work is lost), and are refused
otherwise (move the folder away first).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from alseg.annotate import layout as lay
from alseg.errors import DataError, OutputExistsError
from alseg.geometry import Box
from alseg.io import store as st
from alseg.io.omezarr import Volume, create_image, create_labels, output_record
from alseg.spec import JobSpec

PACKAGE_KIND = "annotation-package"
_OURS = {lay.MANIFEST, lay.README, lay.IMAGES, lay.INITIAL, lay.EDITED, lay.ZARR, lay.EMBEDDINGS}


def export_round(spec: JobSpec, round_index: int, picks: list[tuple[int, Box]], start_labels_url: str | None) -> str:
    """Write the annotation package of round ``round_index`` for ``picks`` (patch id, box in the
    input's voxels) with starting labels cropped from ``start_labels_url`` (a label image on the
    input's grid; None: zeros); returns the package folder."""
    folder = lay.round_dir(spec, round_index)
    image = lay.input_volume(spec)
    patches = _checked(picks, image)
    start = lay.label_volume(start_labels_url, image, "starting labels") if start_labels_url else None
    entries = [_patch_entry(pid, box) for pid, box in patches]
    manifest: dict[str, Any] = {
        "format": lay.FORMAT, "format_version": lay.FORMAT_VERSION, "round": int(round_index),
        "job_name": spec.name, "job_digest": spec.job_digest(),
        "input": {"url": st.redact(spec.input.url), "level": spec.input.level, "shape": list(image.shape),
                  "dtype": str(image.dtype)},
        "voxel_size_nm": [float(v) for v in image.voxel_size_nm],
        "start_labels": st.redact(start_labels_url) if start_labels_url else None,
        # what the starting labels were (alseg's record of them): new pseudo-labels or a new model's
        # instances at the same URL make a new package
        "start_signature": (output_record(start_labels_url) or {}).get("signature_sha256") if start_labels_url else None,
        "layout": {"images": lay.IMAGES, "initial": lay.INITIAL, "edited": lay.EDITED, "zarr": lay.ZARR,
                   "zarr_initial_labels": lay.INITIAL_LABELS, "zarr_edited_labels": lay.EDITED_LABELS},
        "patches": entries,
    }
    if _reusable(folder, manifest):
        return folder
    _make_room(folder)
    for (pid, box), entry in zip(patches, entries, strict=True):
        raw = image.read(box)
        labels = _start_labels(start, box, pid)
        stem = lay.patch_stem(pid)
        lay.write_bytes(st.join(folder, lay.IMAGES, f"{stem}.tif"), _tiff(raw))
        lay.write_bytes(st.join(folder, lay.INITIAL, f"{stem}.tif"), _tiff(labels))
        _zarr_package(st.join(folder, lay.ZARR, f"{stem}.ome.zarr"), raw, labels, image, pid, box, round_index)
        entry["initial_sha256"] = lay.labels_sha256(labels)
    fs, path = st.filesystem(st.join(folder, lay.EDITED))
    fs.makedirs(path, exist_ok=True)
    lay.write_bytes(st.join(folder, lay.README), readme(spec, folder, manifest).encode())
    manifest["created"] = lay.now()
    st.write_json(st.join(folder, lay.MANIFEST), manifest)  # last: the package is complete
    return folder


def _checked(picks: list[tuple[int, Box]], image: Volume) -> list[tuple[int, Box]]:
    if not picks:
        raise DataError("nothing to export: the round has no picks")
    seen: set[int] = set()
    out = []
    for pid, box in picks:
        pid = int(pid)
        if pid < 0 or pid in seen:
            raise DataError(f"patch id {pid}: {'negative' if pid < 0 else 'picked twice'}")
        if not isinstance(box, Box) or box.ndim != 3 or box.empty or not image.bounds.contains(box):
            raise DataError(f"patch {pid}: box {box} is not a non-empty box inside the input {image.shape}")
        seen.add(pid)
        out.append((pid, box))
    return sorted(out)


def _patch_entry(pid: int, box: Box) -> dict[str, Any]:
    stem = lay.patch_stem(pid)
    return {"id": pid, "box": lay.box_to_list(box), "shape": list(box.shape),
            "image": f"{lay.IMAGES}/{stem}.tif", "initial": f"{lay.INITIAL}/{stem}.tif",
            "edited": f"{lay.EDITED}/{stem}.tif", "zarr": f"{lay.ZARR}/{stem}.ome.zarr"}


def _reusable(folder: str, manifest: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a complete package of exactly this round, job, picks and start."""
    url = st.join(folder, lay.MANIFEST)
    if not st.exists(url):
        return False
    try:
        old = st.read_json(url)
    except DataError:
        return False
    if not isinstance(old, dict) or not isinstance(old.get("patches"), list):
        return False
    keys = ("format", "format_version", "round", "job_digest", "input", "start_labels", "start_signature")
    same_patches = [(p.get("id"), p.get("box")) for p in old["patches"] if isinstance(p, dict)] == \
        [(p["id"], p["box"]) for p in manifest["patches"]]
    return all(old.get(k) == manifest[k] for k in keys) and same_patches


def _make_room(folder: str) -> None:
    """Clear a stale or unfinished package, unless it holds edits or anything alseg did not write."""
    names = lay.listdir(folder)
    foreign = [n for n in names if n not in _OURS and not n.startswith(".")]
    edits = [n for n in lay.listdir(st.join(folder, lay.EDITED)) if not n.startswith(".")]
    if foreign or edits:
        what = f"edited labels ({', '.join(edits[:4])}{' ...' if len(edits) > 4 else ''})" if edits else \
            f"files alseg did not write ({', '.join(foreign[:4])})"
        raise OutputExistsError(f"{st.redact(folder)}: holds {what} from another selection of this round; import them "
                                "or move the folder away, then run again")
    for name in names:
        if name in _OURS:
            st.remove(st.join(folder, name))


def _start_labels(start: Volume | None, box: Box, pid: int) -> np.ndarray:
    if start is None:
        return np.zeros(box.shape, dtype=lay.LABEL_DTYPE)
    labels, problems = lay.check_labels(start.read(box), box, f"starting labels {st.redact(start.url)} at patch {pid}")
    if labels is None:
        raise DataError("; ".join(problems))
    return labels


def _tiff(data: np.ndarray) -> bytes:
    """A (z, y, x) stack as one zlib-compressed TIFF (what micro-SAM reads with imageio)."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ascontiguousarray(data), compression="zlib", metadata={"axes": "ZYX"})
    return buf.getvalue()


def _zarr_package(url: str, raw: np.ndarray, labels: np.ndarray, image: Volume, pid: int, box: Box,
                  round_index: int) -> None:
    chunks = tuple(min(s, c) for s, c in zip(box.shape, (32, 512, 512), strict=True))
    pkg = create_image(url, shape=box.shape, dtype=raw.dtype, chunks=chunks, voxel_size_nm=image.voxel_size_nm,
                       levels=1, name=lay.patch_stem(pid), overwrite=True, kind=PACKAGE_KIND)
    pkg.write(Box.from_shape(box.shape), raw)
    lab = create_labels(url, lay.INITIAL_LABELS, dtype=lay.LABEL_DTYPE, overwrite=True, kind=PACKAGE_KIND)
    lab.write(Box.from_shape(box.shape), labels)
    meta = {"generator": "alseg.annotate", "patch_id": pid, "box": lay.box_to_list(box), "round": round_index}
    lab.set_provenance({**meta, "complete": True})
    pkg.set_provenance({**meta, "complete": True})


def readme(spec: JobSpec, folder: str, manifest: dict[str, Any]) -> str:
    """The package's README: what to annotate, with which commands, and how to continue."""
    local = st.is_local(folder)
    f = str(st.local_path(folder).absolute()) if local else "FOLDER"
    run = str(st.local_path(spec.run.dir).absolute()) if st.is_local(spec.run.dir) else st.redact(spec.run.dir)
    patches = manifest["patches"]
    first = patches[0]["zarr"]
    rows = "\n".join(f"  {p['id']:>8}  {Box(tuple(p['box'][:3]), tuple(p['box'][3:]))}" for p in patches)
    lines = [
        f"alseg annotation package: job '{spec.name}' (spec {manifest['job_digest']}), round {manifest['round']}, "
        f"{len(patches)} patch(es) of the input {manifest['input']['url']}",
        f"voxel size (z, y, x) in nm: {tuple(manifest['voxel_size_nm'])}",
        "",
        "Patches (id, box in the input's voxels [z0:z1, y0:y1, x0:x1)):",
        rows,
        "",
    ]
    if not local:
        lines += [f"This package lies at {st.redact(folder)}: copy it to a local FOLDER first, and import from there.", ""]
    lines += [
        "Correct the starting labels of every patch (each object its own id, 0 = background) with ONE of:",
        "",
        "a) micro-SAM, 3D image-series annotator (opens each patch with its starting labels; the button",
        '   "Next Image [N]" saves the patch to edited/ and opens the next one, also after the last one):',
        "",
        f'   micro_sam.image_series_annotator -i "{f}/{lay.IMAGES}" -o "{f}/{lay.EDITED}" -p "*.tif" '
        f'--initial_segmentation_folder "{f}/{lay.INITIAL}" --initial_segmentation_pattern "*.tif" '
        f'--is_volumetric -e "{f}/{lay.EMBEDDINGS}"',
        "",
        "b) napari with napari-ome-zarr, one patch at a time (image + labels layer 'initial'):",
        "",
        f'   napari --plugin napari-ome-zarr "{f}/{first}"',
        "",
        "   edit the labels layer, then save it with File > Save Selected Layers as",
        f"   {f}/{lay.EDITED}/patch-<id>.tif (the same name as the patch's file in {lay.IMAGES}/);",
        f"   or write the labels into the package as labels/{lay.EDITED_LABELS} (used when no TIFF is in {lay.EDITED}/).",
        "",
        "Then store the labels in the run and continue the job:",
        "",
        f'   alseg import "{run}" "{f}"',
        "   alseg run SPEC        (SPEC: this job's spec file; it continues with fine-tuning)",
        "",
        "alseg import checks every patch before it stores any: the patch's shape, integer ids >= 0, no",
        "unknown or missing patch (--partial stores the finished ones; import again for the rest), and",
        "that the run still expects this round. A patch imported before is replaced only with --replace.",
        "",
    ]
    return "\n".join(lines)
