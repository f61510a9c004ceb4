"""Write image stacks as OME-Zarr, slab by slab with bounded memory, never leaving a broken output.

Sources: a multi-page TIFF, a folder of TIFF slices, a folder of PNG (or JPEG) slices, an HDF5
dataset and a ``.npy`` file (memory-mapped). Each is read one slab of slices at a time (the
output chunk's depth, so writes are chunk-aligned) and written into a new OME-Zarr image with
the requested chunks and voxel size, then the pyramid is built block by block.

**Nothing lost, nothing leaked.** Every slab is checked as it is read (each page or slice
decodes, has the stack's shape and dtype; label ids are non-negative integers): any failure is
one :class:`~alseg.errors.DataError` naming the file and the page or slices, never a library's
own exception. What is checked before anything is written: the source's metadata (opening a
TIFF finds a truncated page table or data that ends early, a folder finds its slice list) and
whether the output may be written at all (see below). The voxels themselves are checked in the
write pass, which is the only pass: the output is *staged*, so a second, checking read of a
terabyte stack is not needed to keep a good output safe:

* a new output (nothing at the URL) is written in place, marked incomplete from its creation;
  if the ingest fails it is removed, and a killed ingest leaves it marked incomplete;
* an existing output is never touched until its replacement is complete: the new one is written
  beside it (``<url>.alseg-partial``, or the label image ``<name>.alseg-partial``) and swapped
  in only then. So ``--overwrite`` with a broken source keeps the old output byte for byte.

Why staging rather than a checking read pass before the write pass: that pass doubles the
reading (and decoding) of a terabyte stack, and still leaves the old output exposed to a write
that fails for other reasons (a full disk, a kill). Staging costs a rename on a local disk and,
on object storage (which has no rename), one copy of the new output, and only when an old one is
replaced. Memory stays one slab either way.

The output's alseg record (``kind`` and ``complete``, see :func:`alseg.io.omezarr.output_record`)
is written last: ``complete: true`` means every voxel, label image and pyramid level is there.
An incomplete output of alseg's own ingest (a failed or killed run) is replaced without asking;
a complete one only with ``overwrite``; data without alseg's record is user data and is never
removed or replaced, whatever ``overwrite`` says.

:func:`ingest_vnc` turns the Drosophila VNC ssTEM stack (``../shared/data/vnc``) into an OME-Zarr
image with ground-truth mitochondria instances (3D connected components of ``labels == 191``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alseg.errors import DataError
from alseg.geometry import Box
from alseg.ingest.sources import IMAGE_SUFFIXES, TIFF_SUFFIXES, ArraySource, SliceFolder, SliceSource, why
from alseg.io import store as st
from alseg.io.omezarr import Volume, check_output, create_image, create_labels, open_volume, prepare_output
from alseg.progress import progress_bar
from alseg.pyramid import build_pyramid

KIND = "ingest"  # the output kind recorded on ingested images (only such an output is replaced by an ingest)
LABELS_KIND = "labels"  # label images, as create_labels records them
STAGING_SUFFIX = ".alseg-partial"


# --------------------------------------------------------------------------------------------- #
# outputs: checked before the source is read, staged, marked complete last
# --------------------------------------------------------------------------------------------- #
def _label_dtype(source: SliceSource) -> np.dtype:
    """The label image's dtype for a label stack (checked: integer ids)."""
    if source.dtype.kind not in "ui":
        raise DataError(f"{source.path}: labels need non-negative integers, got dtype {source.dtype}")
    return np.dtype(np.uint64 if source.dtype.itemsize == 8 else np.uint32)


def _staging(url: str) -> str:
    return url.rstrip("/") + STAGING_SUFFIX


def _move(src: str, dst: str) -> None:
    """Move a complete staged output to where the old one was (removed just before)."""
    fs, src_path = st.filesystem(src)
    _, dst_path = st.filesystem(dst)
    try:
        fs.invalidate_cache()
        if fs.exists(dst_path):  # an empty folder: a move would nest the output inside it
            fs.rm(dst_path, recursive=True)
        if st.is_local(src):
            fs.mv(src_path, dst_path, recursive=True)  # a rename
        else:  # object stores have no folders to rename: copy every object (in batches), then delete
            files = fs.find(src_path)
            fs.copy(files, [dst_path + f[len(src_path):] for f in files])
            fs.rm(src_path, recursive=True)
            fs.invalidate_cache()
    except Exception as err:  # noqa: BLE001 - filesystems and object stores raise their own types
        raise DataError(f"the new output is complete at {st.redact(src)} but could not be moved to {st.redact(dst)}: "
                        f"{why(err)}; move it there yourself") from err


def _discard(url: str) -> None:
    """Remove what a failed ingest wrote at ``url`` (its own new output: never the old one)."""
    with contextlib.suppress(OSError):  # left behind, it stays marked incomplete and is replaced next time
        st.remove(url)


def _label_group(image_url: str, *parts: str):
    import zarr

    return zarr.open_group(st.zarr_store(st.join(image_url, "labels", *parts), read_only=False), mode="r+")


def _relist(image_url: str, *, drop: str, add: str | None = None) -> None:
    """Take ``drop`` off the image's list of label images (and put ``add`` on it)."""
    group = _label_group(image_url)
    ngff = dict(group.attrs.get("ome", {}))
    names = [n for n in ngff.get("labels", []) if n != drop]
    if add is not None and add not in names:
        names.append(add)
    group.attrs["ome"] = {**ngff, "labels": names}


def _discard_labels(image_url: str, name: str, *, group_is_new: bool) -> None:
    """Remove what a failed label ingest wrote: the label image ``name``, its entry in the list, and
    the ``labels`` group itself when this ingest created it."""
    with contextlib.suppress(OSError):
        if group_is_new:
            st.remove(st.join(image_url, "labels"))
            return
        st.remove(st.join(image_url, "labels", name))
        _relist(image_url, drop=name)


def _commit_labels(image_url: str, staged: str, name: str, *, overwrite: bool) -> None:
    """Swap the complete label image ``staged`` in for the old ``name``, under its name."""
    final = st.join(image_url, "labels", name)
    prepare_output(final, overwrite=overwrite, kind=LABELS_KIND)
    _move(st.join(image_url, "labels", staged), final)
    group = _label_group(image_url, name)
    ngff = dict(group.attrs["ome"])
    ngff["multiscales"] = [{**ngff["multiscales"][0], "name": name}, *ngff["multiscales"][1:]]
    group.attrs["ome"] = ngff
    _relist(image_url, drop=staged, add=name)


def _fill(source: SliceSource, volume: Volume, *, labels: bool, progress: bool, desc: str) -> None:
    """Copy ``source`` into ``volume`` one chunk-deep slab at a time, every slab checked."""
    depth = volume.chunks[0]
    total = source.shape[0]
    with progress_bar(total=total, desc=desc, unit="slice", disable=not progress, leave=False) as bar:
        for z0 in range(0, total, depth):
            z1 = min(z0 + depth, total)
            slab = source.slab(z0, z1)
            if labels and slab.dtype.kind == "i" and slab.size and slab.min() < 0:
                z = z0 + int(np.flatnonzero((slab < 0).reshape(len(slab), -1).any(axis=1))[0])
                raise DataError(f"{source.path}: labels need non-negative integers: slice {z} holds {int(slab[z - z0].min())}")
            volume.write(Box((z0, 0, 0), (z1, *source.shape[1:])), slab.astype(volume.dtype, copy=False))
            bar.update(z1 - z0)


def ingest(
    source: SliceSource,
    url: str | os.PathLike[str],
    *,
    voxel_size_nm: Sequence[float],
    chunks: Sequence[int] = (32, 256, 256),
    overwrite: bool = False,
    progress: bool = False,
    name: str = "image",
    labels: Mapping[str, SliceSource] | None = None,
    record: Mapping[str, Any] | None = None,
) -> Volume:
    """Write ``source`` as a new OME-Zarr image at ``url``; returns the opened :class:`Volume`.

    ``labels`` maps label-image names to stacks of the image's shape, written as ``labels/<name>``
    of the same output: the output is complete only with all of them. ``record`` adds fields to
    the output's alseg record. A failure leaves the old output (if any) as it was and no new one.
    """
    url = os.fspath(url)
    label_sources = dict(labels or {})
    for lsrc in label_sources.values():
        if lsrc.shape != source.shape:
            raise DataError(f"{lsrc.path}: labels of shape {lsrc.shape} do not match the image's shape {source.shape}")
        _label_dtype(lsrc)
    replace = check_output(url, overwrite=overwrite, kind=KIND)
    target = _staging(url) if replace else url
    base = {"generator": "alseg.ingest", "source": str(source.path), **(record or {})}
    volume = create_image(target, shape=source.shape, dtype=source.dtype, chunks=chunks, voxel_size_nm=voxel_size_nm,
                          name=name, overwrite=replace, kind=KIND)
    try:
        volume.set_provenance({**base, "complete": False})
        _fill(source, volume, labels=False, progress=progress, desc=f"ingest {source.path.name}")
        build_pyramid(target, kind="mean", progress=progress)
        for lname, lsrc in label_sources.items():
            lab = create_labels(target, lname, dtype=_label_dtype(lsrc))
            _fill(lsrc, lab, labels=True, progress=progress, desc=f"ingest labels {lsrc.path.name}")
            build_pyramid(lab.url, kind="mode", progress=progress)
            lab.set_provenance({"generator": "alseg.ingest", "source": str(lsrc.path), "complete": True})
        # written last: its presence means the output is complete
        volume.set_provenance({**base, "labels": list(label_sources), "complete": True})
    except BaseException:
        _discard(target)
        raise
    if replace:
        prepare_output(url, overwrite=overwrite, kind=KIND)  # the old output goes only now
        _move(target, url)
    return open_volume(url)


def ingest_labels(
    source: SliceSource,
    image_url: str | os.PathLike[str],
    name: str,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> Volume:
    """Write ``source`` as the label image ``name`` of the image at ``image_url`` (same grid).

    An existing label image ``name`` stays as it was until the new one is complete (it is staged
    as ``<name>.alseg-partial``); a failure leaves no label image ``name`` that was not there.
    """
    image_url = os.fspath(image_url)
    image = open_volume(image_url)
    if source.shape != image.shape:
        raise DataError(f"labels of shape {source.shape} do not match the image's shape {image.shape}")
    dtype = _label_dtype(source)
    if not name or "/" in name or name.startswith("."):
        raise DataError(f"invalid label name {name!r}")
    label_url = st.join(image_url, "labels", name)
    replace = check_output(label_url, overwrite=overwrite, kind=LABELS_KIND)
    target = name + STAGING_SUFFIX if replace else name
    group_is_new = not st.exists(st.join(image_url, "labels", "zarr.json"))
    labels = create_labels(image_url, target, dtype=dtype, overwrite=replace)
    base = {"generator": "alseg.ingest", "source": str(source.path)}
    try:
        labels.set_provenance({**base, "complete": False})
        _fill(source, labels, labels=True, progress=progress, desc=f"ingest labels {source.path.name}")
        build_pyramid(labels.url, kind="mode", progress=progress)
        labels.set_provenance({**base, "complete": True})  # last: the label image is complete
    except BaseException:
        _discard_labels(image_url, target, group_is_new=group_is_new)
        raise
    if replace:
        _commit_labels(image_url, target, name, overwrite=overwrite)
    return open_volume(label_url)


# --------------------------------------------------------------------------------------------- #
# the VNC stack
# --------------------------------------------------------------------------------------------- #
VNC_VOXEL_SIZE_NM = (50.0, 4.6, 4.6)
VNC_MITO_VALUE = 191


def ingest_vnc(
    vnc_dir: str | os.PathLike[str],
    url: str | os.PathLike[str],
    *,
    chunks: Sequence[int] = (10, 512, 512),
    labels_name: str = "mitochondria",
    connectivity: int = 26,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """The Drosophila VNC ssTEM stack as OME-Zarr: raw image + mitochondria instances.

    Mitochondria are ``labels == 191`` (the folder's README); instances are their 3D connected
    components (``connectivity`` 6 or 26). The stack is 20 x 1024 x 1024, so the mask is labelled
    in memory (21 MB), before anything is written; larger volumes go through the blockwise engine.
    Image and labels are one output, complete only with both.
    """
    from scipy import ndimage

    root = Path(vnc_dir)
    if not (root / "raw").is_dir() or not (root / "labels").is_dir():
        raise DataError(f"{root}: expected the VNC layout with raw/ (TIFF slices) and labels/ (PNG label maps)")
    if connectivity not in (6, 26):
        raise DataError(f"connectivity must be 6 or 26, got {connectivity}")
    raw = SliceFolder(root / "raw", suffixes=TIFF_SUFFIXES)
    gt = SliceFolder(root / "labels", suffixes=IMAGE_SUFFIXES)
    if gt.shape != raw.shape:
        raise DataError(f"{root}: labels {gt.shape} and raw {raw.shape} differ in shape")
    mask = gt.slab(0, gt.shape[0]) == VNC_MITO_VALUE
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    instances, count = ndimage.label(mask, structure=structure, output=np.uint32)
    labels = ArraySource(instances, root / "labels")
    image = ingest(raw, url, voxel_size_nm=VNC_VOXEL_SIZE_NM, chunks=chunks, overwrite=overwrite, progress=progress,
                   name="vnc", labels={labels_name: labels}, record={"dataset": "vnc", "instances": int(count)})
    return {
        "url": os.fspath(url),
        "shape": image.shape,
        "voxel_size_nm": image.voxel_size_nm,
        "instances": int(count),
        "foreground_fraction": float(mask.mean()),
        "labels": labels_name,
    }
