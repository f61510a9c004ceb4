"""Pseudo-labels for a whole volume: 2D labeller on slices, block by block, linked into 3D instances.

Blocks span a few slices and a tile in y and x, read with a halo in y and x so the 2D model sees
context across tile borders (z needs none: slices are segmented one by one). Passes, each
resumable through the blockwise engine:

1. **segment**: stateful workers (the model loaded once per worker; one per GPU where the
   resources ask for GPUs) run the labeller on the block's slices in batches, crop the write
   region, give every 2D piece a block-unique local id, link consecutive slices inside the block
   (:func:`~alseg.pseudolabel.link.match_planes`), and keep the block's face planes;
2. **faces**: across z faces, the last slice of one block and the first of the next are linked by
   the same IoU matching; across y and x faces, pieces of one 2D instance cut by the tile border
   are joined when their cross-sections on the border agree (overlap coefficient >=
   ``BORDER_OVERLAP``; a y/x halo wider than the largest organelle lets both tiles see all of it);
   With ``link_gap: 1``, a **gaps** pass then lists the overlaps of pieces two sections apart, and
   a 2D object (its tile pieces joined) left without a link to the next section is linked to one
   two sections on left without a link back
   (:func:`~alseg.pseudolabel.link.gap_links_of_pieces`);
3. **relabel**: union-find over all links, 3D objects below ``min_size_vox`` dropped, consecutive
   ids written, pyramid built (mode).

The output is a standalone OME-Zarr label image whose attributes carry the *signature* (method,
parameters, weights hash, alseg version, input): a rerun with the same signature reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alseg.blockwise import check_aligned, run_blocks
from alseg.errors import SpecError
from alseg.geometry import Block, BlockGrid
from alseg.io import store as st
from alseg.postprocess.stitch import Layout, finish, write_local
from alseg.pseudolabel.base import PseudoLabelError, check_masks, make_labeller, signature
from alseg.pseudolabel.link import gap_links_of_pieces, match_planes, plane_overlaps
from alseg.runtime import Resources, Runner, SerialRunner

BORDER_OVERLAP = 0.5
KIND = "pseudolabels"  # the output kind recorded on the label image (only such an output is ever replaced)


def _spec_of(spec_json: dict[str, Any]):
    from pydantic import TypeAdapter

    from alseg.spec import PseudoLabel

    return TypeAdapter(PseudoLabel).validate_python(spec_json)


@dataclass(frozen=True)
class _SegmentJob:
    image: str
    level: int
    layout: Layout
    block: Block
    offset: int
    batch_size: int
    missing_chunks: str = "error"


class SegmentWorker:
    """One labeller per worker process, loaded once, fed blocks."""

    def __init__(self, spec_json: dict[str, Any], device: str | None = None, pixel_size_nm: float = 8.0) -> None:
        self.spec = _spec_of(spec_json)
        self.labeller = make_labeller(self.spec, device=device, pixel_size_nm=pixel_size_nm)

    def __call__(self, job: _SegmentJob) -> dict[str, Any]:
        from alseg.io.omezarr import open_volume

        b = job.block
        data = open_volume(job.image, level=job.level, missing_chunks=job.missing_chunks).read(b.read)
        masks = np.zeros(data.shape, dtype=np.uint32)
        for start in range(0, data.shape[0], job.batch_size):
            batch = data[start:start + job.batch_size]
            try:
                got = self.labeller(batch)
            except PseudoLabelError:
                raise
            except Exception as err:
                raise PseudoLabelError(f"{self.labeller.name} failed on slices {b.read.start[0] + start}.."
                                       f"{b.read.start[0] + start + len(batch) - 1} of block {b.key}: {type(err).__name__}: {err}") from err
            masks[start:start + len(batch)] = check_masks(got, batch, self.labeller.name)
        crop = masks[b.write_in_read.slices]
        local = np.zeros(crop.shape, dtype=np.uint32)
        n = 0
        for z, m in enumerate(crop):
            ids = np.unique(m[m > 0])
            if len(ids):
                lut = np.zeros(int(ids[-1]) + 1, dtype=np.uint32)
                lut[ids] = np.arange(n + 1, n + len(ids) + 1, dtype=np.uint32)
                local[z] = lut[m]
                n += len(ids)
        pairs = []
        for z in range(local.shape[0] - 1):
            pairs += [(a + job.offset, c + job.offset)
                      for a, c in match_planes(local[z], local[z + 1], self.spec.link_iou, measure=self.spec.link_measure)]
        sizes = write_local(job.layout, b.write, local, job.offset)
        return {"first": job.offset + 1, "sizes": sizes, "pairs": pairs}


@dataclass(frozen=True)
class _FaceJob:
    layout: Layout
    block: Block
    link_iou: float
    link_measure: str


def _face_links(job: _FaceJob) -> dict[str, Any]:
    lay, box = job.layout, job.block.write
    pairs: list[tuple[int, int]] = []
    z_pairs: list[tuple[int, int]] = []
    for axis in range(3):
        if box.stop[axis] >= lay.shape[axis]:
            continue
        row = box.start[axis] // lay.block_shape[axis]
        sel = list(box.slices)
        sel[axis] = slice(2 * row, 2 * row + 2)
        slab = np.asarray(lay.open_planes(axis, "r")[tuple(sel)])
        lower, upper = np.take(slab, 0, axis=axis), np.take(slab, 1, axis=axis)
        if axis == 0:
            z_pairs = match_planes(lower, upper, job.link_iou, measure=job.link_measure)
            pairs += z_pairs
        else:
            pairs += match_planes(lower, upper, BORDER_OVERLAP, measure="overlap")
    return {"pairs": sorted(pairs), "z": sorted(z_pairs), "joins": sorted(set(pairs) - set(z_pairs))}


@dataclass(frozen=True)
class _GapJob:
    layout: Layout
    block: Block
    offsets: tuple[tuple[int, int], ...]  # (z row of this tile's blocks, its id offset) for the planes read


def _gap_overlaps(job: _GapJob) -> dict[str, Any]:
    """Every overlapping pair of pieces two sections apart whose middle section lies in this block:
    ``(z, id in z, id in z + 2, pixels in common)``, global ids (the pieces may lie in the blocks
    above and below)."""
    lay, box = job.layout, job.block.write
    offsets = dict(job.offsets)
    local = lay.open_local("r")
    out: list[tuple[int, int, int, int]] = []
    for z in range(max(box.start[0], 1), min(box.stop[0], lay.shape[0] - 1)):
        planes = []
        for zz in (z - 1, z + 1):
            plane = np.asarray(local[(zz, *box.slices[1:])]).astype(np.uint64)
            plane[plane > 0] += np.uint64(offsets[zz // lay.block_shape[0]])
            planes.append(plane)
        a, b, inter = plane_overlaps(planes[0], planes[1])
        out += [(z - 1, int(i), int(j), int(n)) for i, j, n in zip(a, b, inter)]
    return {"overlaps": out}


def _row_offsets(grid: BlockGrid, linear: dict[str, int], block: Block, stride: int) -> tuple[tuple[int, int], ...]:
    """Id offsets of the blocks of ``block``'s tile from the z row above it to the one below."""
    rz, ry, rx = block.index
    rows = range(max(rz - 1, 0), min(rz + 2, grid.grid_shape[0]))
    return tuple((r, linear[grid.block((r, ry, rx)).key] * stride) for r in rows)


def _pixel_size(image) -> float:
    """In-plane pixel size (nm) of a volume; y and x must agree for 2D labellers."""
    vy, vx = (float(v) for v in image.voxel_size_nm[1:])
    if abs(vy - vx) > 1e-6 * max(vy, vx):
        raise SpecError(f"2D pseudo-labellers need square pixels; this volume has {vy} x {vx} nm")
    return vy


def signature_digest(sig: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()


def pseudolabel_volume(
    image_url: str | os.PathLike[str],
    output_url: str | os.PathLike[str],
    spec: Any,
    *,
    work_dir: str | os.PathLike[str],
    block_shape: Sequence[int] = (16, 512, 512),
    halo_yx: int | Sequence[int] = 64,
    level: int = 0,
    runner: Runner | None = None,
    workers: int = 1,
    resources: Resources | None = None,
    device: str | None = None,
    missing_chunks: str = "error",
) -> dict[str, Any]:
    """Pseudo-label the image at ``image_url`` with the labeller ``spec`` (a pseudo-label spec
    section) into the label image ``output_url``; returns a summary with ``reused`` set when a
    complete output with the same signature was already there. ``missing_chunks``: what an absent
    chunk of the image means (:func:`~alseg.io.omezarr.open_volume`)."""
    from alseg.io.omezarr import create_label_image, open_volume, output_record

    runner = runner or SerialRunner(progress=False)
    image_url, output_url = os.fspath(image_url), os.fspath(output_url)
    image = open_volume(image_url, level=level)
    sig = {**signature(spec), "input": {"url": st.redact(image_url), "level": level, "shape": list(image.shape)},
           "block_shape": list(block_shape), "halo_yx": list(np.broadcast_to(halo_yx, 2).tolist())}
    digest = signature_digest(sig)
    prev = output_record(output_url) or {}
    if prev.get("kind") == KIND and prev.get("signature_sha256") == digest and prev.get("complete"):
        return {**prev.get("summary", {}), "reused": True, "url": output_url}
    hy, hx = (int(h) for h in np.broadcast_to(halo_yx, 2))
    grid = BlockGrid(image.shape, block_shape, (0, hy, hx))
    work = st.join(os.fspath(work_dir), digest[:16])
    if prev.get("kind") != KIND or prev.get("signature_sha256") != digest:
        # absent, or pseudo-labels of another signature: start afresh (anything that is not
        # alseg's own pseudo-labels is refused by create_label_image, never removed)
        out = create_label_image(output_url, like=image, chunks=grid.block_shape, name="pseudolabels", overwrite=True, kind=KIND)
        out.set_provenance({"signature": sig, "signature_sha256": digest, "complete": False})
    out = open_volume(output_url)
    check_aligned(grid.block_shape, out.chunks, image.shape)
    lay = Layout.create(work, image.shape, grid.block_shape)
    stride = int(np.prod(grid.block_shape))
    linear = {b.key: i for i, b in enumerate(grid)}
    batch = int(getattr(spec, "batch_size", 8))
    spec_json = spec.model_dump(mode="json")
    clock = time.perf_counter()
    segmented = run_blocks(
        None, grid,
        payload=lambda b: _SegmentJob(image_url, level, lay, b, linear[b.key] * stride, batch, missing_chunks),
        runner=runner, work_dir=work, name="segment", desc=f"pseudo-labels ({spec.method})",
        worker=(SegmentWorker, (spec_json, device, _pixel_size(image))), workers=workers, resources=resources,
    )
    seconds = {"segment": time.perf_counter() - clock}
    clock = time.perf_counter()
    faces = run_blocks(
        _face_links, grid, payload=lambda b: _FaceJob(lay, b, spec.link_iou, spec.link_measure),
        runner=runner, work_dir=work, name="faces", desc="link across blocks",
    )
    links = {**{f"in-{k}": {"pairs": r["pairs"]} for k, r in segmented.items()}, **faces}
    if spec.link_gap:
        gaps = run_blocks(
            _gap_overlaps, grid, payload=lambda b: _GapJob(lay, b, _row_offsets(grid, linear, b, stride)),
            runner=runner, work_dir=work, name="gaps", desc="gap closing",
        )
        z_links = [tuple(p) for r in segmented.values() for p in r["pairs"]] + [tuple(p) for r in faces.values() for p in r["z"]]
        joins = [tuple(p) for r in faces.values() for p in r["joins"]]
        overlaps = [tuple(o) for r in gaps.values() for o in r["overlaps"]]
        keys = [b.key for b in grid]
        sizes: dict[int, int] = {}
        for piece in {int(p) for pair in joins for p in pair} | {int(p) for o in overlaps for p in o[1:3]}:
            row = (piece - 1) // stride  # ids are a block's offset (its index x stride) + its local id 1..n
            sizes[piece] = segmented[keys[row]]["sizes"][piece - row * stride - 1]
        links["gap-closing"] = {"pairs": gap_links_of_pieces(overlaps, sizes, z_links, joins, spec.link_iou, measure=spec.link_measure)}
    seconds["link"] = time.perf_counter() - clock
    clock = time.perf_counter()
    count = finish(lay, grid, segmented, links, output_url, min_size_vox=spec.min_size_vox, runner=runner, work_dir=work, pyramid=True)
    seconds["relabel_and_pyramid"] = time.perf_counter() - clock
    summary = {"objects": count, "pieces_2d": sum(len(r["sizes"]) for r in segmented.values()),
               "links": sum(len(r["pairs"]) for r in links.values()), "method": spec.method,
               "seconds": {k: round(v, 3) for k, v in seconds.items()}}
    open_volume(output_url, mode="r+").set_provenance({"signature": sig, "signature_sha256": digest, "complete": True, "summary": summary})
    return {**summary, "reused": False, "url": output_url}
