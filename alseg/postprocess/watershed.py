"""Seeded watershed, block by block: split touching objects of a foreground mask.

Connected components merge mitochondria that touch. This splits them, with every step running
through the blockwise engine (bounded memory, any runner, resumable under ``work_dir``):

1. **cores**: seeds are the object cores, voxels deep inside the foreground. With
   ``method="distance"`` a core voxel lies at least ``seed_distance_nm`` from the background
   (Euclidean distance transform in physical units, so anisotropic EM voxels are handled); with
   ``method="boundary"`` it is a foreground voxel whose boundary probability is below
   ``boundary_threshold``. The distance transform of a block read with a halo is exact up to the
   halo's width, so a halo of at least ``seed_distance_nm`` makes the cores equal the
   whole-volume ones;
2. **seeds**: the cores' connected components, stitched across blocks
   (:func:`alseg.postprocess.stitch.label_components`): every seed has one global id;
3. **watershed**: every block (with halo) floods its foreground from the global seeds over the
   negated distance transform or the boundary map (``skimage.segmentation.watershed``), and
   counts the voxels of each seed's region in its write region;
4. **leftovers**: foreground the flooding did not reach, as stitched connected components. A
   component that touches a flooded region joins the region it shares most voxel contacts with
   (its seed lay outside the block's view); one that touches none (an object thinner than the
   seed distance) is an instance of its own;
5. **final**: objects smaller than ``min_size_vox`` (whole-volume sizes, after stitching) become
   background and the rest are numbered consecutively.

Flooding near a block border sees only the halo's context, so with a small halo a few border
voxels may go to a different neighbouring seed than a whole-volume watershed would give them;
object identities never break at borders, because seeds carry global ids.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from alseg.blockwise import check_aligned, map_volume, read_padded, run_blocks
from alseg.errors import SpecError
from alseg.geometry import Block, BlockGrid
from alseg.io import store as st
from alseg.runtime import Runner, SerialRunner, get_shared

Method = Literal["distance", "boundary"]


# --------------------------------------------------------------------------------------------- #
# block functions (module level: they run in workers)
# --------------------------------------------------------------------------------------------- #
def seed_cores(mask: np.ndarray, *boundary: np.ndarray, method: str, threshold: float, voxel_size_nm: tuple[float, ...],
               seed_distance_nm: float, boundary_threshold: float) -> np.ndarray:
    """Seed cores (uint8 0/1) of one padded block; the engine crops the write region."""
    fg = mask > threshold
    if method == "distance":
        core = ndimage.distance_transform_edt(fg, sampling=voxel_size_nm) >= seed_distance_nm
    else:
        core = fg & (boundary[0] < boundary_threshold)
    return core.astype(np.uint8)


def _flood(fg: np.ndarray, seeds: np.ndarray, boundary: np.ndarray | None, *, method: str,
           voxel_size_nm: tuple[float, ...], connectivity: int, cap_nm: float = np.inf) -> np.ndarray:
    from skimage.segmentation import watershed

    seeds = np.where(fg, seeds, 0)
    if not seeds.any():
        return np.zeros(fg.shape, dtype=seeds.dtype)
    if method == "distance":
        # capped where a block's view ends, so every block sees the same (exact) elevation
        elevation = -np.minimum(ndimage.distance_transform_edt(fg, sampling=voxel_size_nm), cap_nm)
    else:
        elevation = np.asarray(boundary, dtype=np.float32)
    return watershed(elevation, markers=seeds, mask=fg, connectivity=1 if connectivity == 6 else 3)


@dataclass(frozen=True)
class _FloodJob:
    mask: str
    seeds: str
    boundary: str | None
    regions: str  # uint32 output: seed ids
    leftover: str  # uint8 output: foreground no seed reached
    block: Block
    method: str
    threshold: float
    voxel_size_nm: tuple[float, ...]
    connectivity: int
    cap_nm: float


def _flood_block(job: _FloodJob) -> dict[str, Any]:
    from alseg.io.omezarr import open_volume

    b = job.block
    fg = read_padded(job.mask, b) > job.threshold
    seeds = read_padded(job.seeds, b)
    boundary = read_padded(job.boundary, b) if job.boundary else None
    flooded = _flood(fg, seeds, boundary, method=job.method, voxel_size_nm=job.voxel_size_nm,
                     connectivity=job.connectivity, cap_nm=job.cap_nm)
    inner = b.write_in_padded.slices
    regions, fg_inner = flooded[inner].astype(np.uint32), fg[inner]
    open_volume(job.leftover, mode="r+").write(b.write, (fg_inner & (regions == 0)).astype(np.uint8))
    open_volume(job.regions, mode="r+").write(b.write, regions)
    ids, counts = np.unique(regions[regions > 0], return_counts=True)
    return {"ids": ids.tolist(), "counts": counts.tolist()}


@dataclass(frozen=True)
class _ContactJob:
    regions: str
    leftover: str  # stitched component ids of the seedless foreground
    block: Block  # with a one-voxel halo
    connectivity: int


def _contact_block(job: _ContactJob) -> dict[str, Any]:
    """Sizes of the leftover components in the write region, and how many voxel faces (or edges and
    corners, for 26-connectivity) each shares with each flooded region."""
    b = job.block
    regions = read_padded(job.regions, b)
    left = read_padded(job.leftover, b)
    inner = b.write_in_padded.slices
    core = left[inner]
    ids, sizes = np.unique(core[core > 0], return_counts=True)
    offsets = [d for d in np.ndindex(3, 3, 3) if d != (1, 1, 1)]
    if job.connectivity == 6:
        offsets = [d for d in offsets if sum(abs(x - 1) for x in d) == 1]
    pairs = []
    for d in offsets:
        shifted = regions[tuple(slice(s.start + o - 1, s.stop + o - 1) for s, o in zip(inner, d))]
        touch = (core > 0) & (shifted > 0)
        if touch.any():
            pairs.append(np.stack([core[touch], shifted[touch]]).astype(np.int64))
    contacts: list[list[int]] = []
    if pairs:
        uniq, counts = np.unique(np.concatenate(pairs, axis=1), axis=1, return_counts=True)
        contacts = [[int(a), int(r), int(c)] for (a, r), c in zip(uniq.T, counts)]
    return {"ids": ids.tolist(), "sizes": sizes.tolist(), "contacts": contacts}


@dataclass(frozen=True)
class _FinalJob:
    regions: str
    leftover: str
    output: str
    block: Block
    region_lut: Any  # runner.put handles
    leftover_lut: Any


def _final_block(job: _FinalJob) -> dict[str, Any]:
    from alseg.io.omezarr import open_volume

    box = job.block.write
    region_lut, leftover_lut = get_shared(job.region_lut), get_shared(job.leftover_lut)
    regions = open_volume(job.regions).read(box)
    left = open_volume(job.leftover).read(box)
    out = np.where(regions > 0, region_lut[regions], leftover_lut[left])
    target = open_volume(job.output, mode="r+")
    target.write(box, out.astype(target.dtype, copy=False))
    return {"voxels": int(box.size)}


# --------------------------------------------------------------------------------------------- #
# the driver
# --------------------------------------------------------------------------------------------- #
def _scratch_image(url: str, like, dtype: str, chunks: Sequence[int]):
    """A one-level scratch image under the work directory; reused when a previous run left it."""
    from alseg.io.omezarr import create_image, open_volume

    if st.exists(st.join(url, "zarr.json")):
        vol = open_volume(url)
        if vol.shape != like.shape or vol.dtype != np.dtype(dtype) or vol.chunks != tuple(chunks):
            raise SpecError(f"{st.redact(url)} belongs to another run (shape, dtype or chunks differ): use a fresh work directory")
        return vol
    return create_image(url, shape=like.shape, dtype=dtype, chunks=chunks, voxel_size_nm=like.voxel_size_nm, levels=1)


def _scratch_labels(image_url: str, name: str, chunks: Sequence[int]):
    from alseg.io.omezarr import create_labels, open_volume

    url = st.join(image_url, "labels", name)
    if st.exists(st.join(url, "zarr.json")):
        return open_volume(url)
    return create_labels(image_url, name, chunks=chunks)


def split_instances(
    mask_url: str | os.PathLike[str],
    output_url: str | os.PathLike[str],
    *,
    block_shape: Sequence[int],
    halo: Sequence[int] | int,
    work_dir: str | os.PathLike[str],
    method: Method = "distance",
    boundary_url: str | os.PathLike[str] | None = None,
    seed_distance_nm: float = 50.0,
    boundary_threshold: float = 0.5,
    connectivity: Literal[6, 26] = 26,
    min_size_vox: int = 0,
    threshold: float = 0,
    runner: Runner | None = None,
    pyramid: bool = True,
) -> dict[str, Any]:
    """Instances of ``mask > threshold`` with touching objects split by a seeded watershed.

    Writes consecutive ids into the existing label volume ``output_url``; returns counts
    (``objects``, ``seeds``, ``leftover`` seedless components kept). ``work_dir`` holds the
    scratch volumes and completion records, so an interrupted run resumes.
    """
    from alseg.io.omezarr import open_volume
    from alseg.pyramid import build_pyramid
    from alseg.postprocess.stitch import label_components, structure

    runner = runner or SerialRunner(progress=False)
    structure(connectivity)
    if method not in ("distance", "boundary"):
        raise SpecError(f"watershed method must be 'distance' or 'boundary', got {method!r}")
    if method == "boundary" and boundary_url is None:
        raise SpecError("the boundary watershed needs boundary_url: a boundary probability map on the mask's grid")
    if seed_distance_nm <= 0:
        raise SpecError(f"seed_distance_nm must be positive, got {seed_distance_nm}")
    mask_url, output_url, work = os.fspath(mask_url), os.fspath(output_url), os.fspath(work_dir)
    mask, out = open_volume(mask_url), open_volume(output_url)
    inputs = [mask_url]
    if boundary_url is not None:
        boundary_url = os.fspath(boundary_url)
        if open_volume(boundary_url).shape != mask.shape:
            raise SpecError(f"boundary map {st.redact(boundary_url)} has shape {open_volume(boundary_url).shape}, the mask {mask.shape}")
        inputs.append(boundary_url)
    if out.shape != mask.shape or out.dtype.kind != "u":
        raise SpecError(f"output must be unsigned integer labels of shape {mask.shape}, got {out.dtype} {out.shape}")
    grid = BlockGrid(mask.shape, block_shape, halo)
    check_aligned(grid.block_shape, out.chunks, mask.shape)
    vox = tuple(float(v) for v in mask.voxel_size_nm)
    # how far every block sees past its write region (infinite when one block covers the volume)
    reach = [h * v for h, v, n, b in zip(grid.halo, vox, mask.shape, grid.block_shape) if b < n]
    cap_nm = min(reach) if reach else float("inf")
    if method == "distance":
        if cap_nm < seed_distance_nm:
            raise SpecError(f"a halo of {grid.halo} voxels ({tuple(h * v for h, v in zip(grid.halo, vox))} nm) is narrower than "
                            f"seed_distance_nm={seed_distance_nm}: seeds would depend on the block layout; widen the halo")
    chunks = grid.block_shape

    # 1-2: seed cores, then global seed ids
    cores = _scratch_image(st.join(work, "cores.zarr"), mask, "uint8", chunks)
    map_volume(seed_cores, inputs, cores.url, block_shape=chunks, halo=grid.halo, pad_mode="edge", runner=runner,
               work_dir=work, name="cores", fn_kwargs={"method": method, "threshold": threshold, "voxel_size_nm": vox,
                                                       "seed_distance_nm": seed_distance_nm, "boundary_threshold": boundary_threshold})
    seeds = _scratch_labels(cores.url, "seeds", chunks)
    n_seeds = label_components(cores.url, seeds.url, block_shape=chunks, work_dir=st.join(work, "seeds"),
                               connectivity=connectivity, runner=runner, pyramid=False)["objects"]

    # 3: flood from the seeds
    regions = _scratch_image(st.join(work, "regions.zarr"), mask, "uint32", chunks)
    leftover = _scratch_image(st.join(work, "leftover.zarr"), mask, "uint8", chunks)
    flooded = run_blocks(
        _flood_block, grid,
        payload=lambda b: _FloodJob(mask_url, seeds.url, boundary_url, regions.url, leftover.url, b, method, threshold, vox, connectivity, cap_nm),
        runner=runner, work_dir=work, name="watershed", desc="watershed blocks",
    )
    # 4: seedless foreground: stitched components; a component touching a flooded region joins it
    # (the seed was out of a block's view), one touching none is an object of its own
    left_labels = _scratch_labels(leftover.url, "components", chunks)
    n_left = label_components(leftover.url, left_labels.url, block_shape=chunks, work_dir=st.join(work, "leftover-cc"),
                              connectivity=connectivity, runner=runner, pyramid=False)["objects"]
    touching = run_blocks(
        _contact_block, BlockGrid(mask.shape, chunks, 1),
        payload=lambda b: _ContactJob(regions.url, left_labels.url, b, connectivity),
        runner=runner, work_dir=work, name="contacts", desc="seedless pieces",
    )

    # 5: whole-volume sizes decide what stays; consecutive ids
    sizes = np.zeros(n_seeds + 1, dtype=np.int64)
    for r in flooded.values():
        np.add.at(sizes, np.asarray(r["ids"], dtype=np.int64), np.asarray(r["counts"], dtype=np.int64))
    left_sizes = np.zeros(n_left + 1, dtype=np.int64)
    best: dict[int, tuple[int, int]] = {}  # leftover id -> (contacts, -region id), the largest wins
    contact_sum: dict[tuple[int, int], int] = {}
    for r in touching.values():
        np.add.at(left_sizes, np.asarray(r["ids"], dtype=np.int64), np.asarray(r["sizes"], dtype=np.int64))
        for a, reg, c in r["contacts"]:
            contact_sum[(a, reg)] = contact_sum.get((a, reg), 0) + c
    for (a, reg), c in contact_sum.items():
        if (c, -reg) > best.get(a, (0, 0)):
            best[a] = (c, -reg)
    joins = np.zeros(n_left + 1, dtype=np.int64)  # region each leftover piece joins (0: none)
    for a, (_, neg) in best.items():
        joins[a] = -neg
    np.add.at(sizes, joins[joins > 0], left_sizes[joins > 0])
    alone = (joins == 0) & (left_sizes >= max(min_size_vox, 1))
    alone[0] = False
    keep = sizes >= max(min_size_vox, 1)
    keep[0] = False
    n_regions, n_alone = int(keep.sum()), int(alone.sum())
    count = n_regions + n_alone
    if count >= np.iinfo(out.dtype).max:
        raise SpecError(f"{count} objects do not fit the output dtype {out.dtype}: use uint64 labels")
    dtype = np.uint32 if count < 2**32 - 1 else np.uint64
    region_lut = np.zeros(n_seeds + 1, dtype=dtype)
    region_lut[keep] = np.arange(1, n_regions + 1, dtype=dtype)
    leftover_lut = np.zeros(n_left + 1, dtype=dtype)
    leftover_lut[alone] = np.arange(n_regions + 1, count + 1, dtype=dtype)
    leftover_lut[joins > 0] = region_lut[joins[joins > 0]]
    region_ref, leftover_ref = runner.put(region_lut), runner.put(leftover_lut)
    run_blocks(
        _final_block, BlockGrid(mask.shape, chunks),
        payload=lambda b: _FinalJob(regions.url, left_labels.url, output_url, b, region_ref, leftover_ref),
        runner=runner, work_dir=work, name="final", desc="write instances",
    )
    if pyramid and len(out.level_paths) > 1:
        build_pyramid(output_url, kind="mode", runner=runner, work_dir=work)
    return {"objects": count, "seeds": n_seeds, "split_regions": n_regions, "leftover": n_alone,
            "rejoined": int((joins > 0).sum())}
