"""Checks of a valid spec against the world: the input exists, is OME-Zarr, and the numbers fit it.

Static validation (:mod:`alseg.spec`) cannot know the volume's shape; these checks open the input
(lazily: metadata only) and report problems in the same ``(field path, message)`` form.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alseg.errors import AlsegError, DataError, NotOmeZarrError, StoreError
from alseg.geometry import Box, PatchGrid, holdout_box
from alseg.spec import BoxHoldout, FractionHoldout, JobSpec

_AXIS = {"z": 0, "y": 1, "x": 2}


@dataclass
class Preflight:
    problems: list[tuple[str, str]] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def holdout_of(spec: JobSpec, shape: tuple[int, int, int]) -> Box | None:
    h = spec.patches.holdout
    if h is None:
        return None
    if isinstance(h, FractionHoldout):
        return holdout_box(shape, axis=_AXIS[h.axis], fraction=h.fraction, side=h.side)
    assert isinstance(h, BoxHoldout)
    return Box(h.start, h.stop)


def ground_truth_url(spec: JobSpec) -> str | None:
    """The ground-truth label image a spec names: a label inside the image, or its own URL."""
    gt = spec.input.ground_truth
    if gt is None:
        return None
    from alseg.io import store as st

    return gt if ("/" in gt or ":" in gt) else st.join(spec.input.url, "labels", gt)


def patch_grid_of(spec: JobSpec, shape: tuple[int, int, int]) -> PatchGrid:
    return PatchGrid(shape, spec.patches.shape_vox, holdout=holdout_of(spec, shape), edge=spec.patches.edge)


def preflight(spec: JobSpec) -> Preflight:
    """Open the input and check every size in the spec against it."""
    from alseg.io.omezarr import list_labels, open_volume

    out = Preflight()
    try:
        volume = open_volume(spec.input.url, level=spec.input.level)
    except (StoreError, NotOmeZarrError, DataError) as err:
        out.problems.append(("input.url", str(err)))
        return out
    shape = volume.shape
    out.facts.update(shape=shape, dtype=str(volume.dtype), voxel_size_nm=volume.voxel_size_nm)

    gt = spec.input.ground_truth
    if gt is not None:
        try:
            if "/" not in gt and ":" not in gt:
                names = list_labels(spec.input.url)
                if gt not in names:
                    raise DataError(f"the image has no label image {gt!r} (it has: {names or 'none'})")
            url = ground_truth_url(spec)
            gt_vol = open_volume(url) if url == gt else open_volume(url, level=spec.input.level)
            if gt_vol.shape != shape:
                raise DataError(f"ground truth of shape {gt_vol.shape} does not match the image {shape}")
        except AlsegError as err:
            out.problems.append(("input.ground_truth", str(err)))

    try:
        grid = patch_grid_of(spec, shape)
        pool = len(grid)
    except AlsegError as err:
        out.problems.append(("patches.holdout", str(err)))
        return out
    out.facts["pool_patches"] = pool
    if pool == 0:
        out.problems.append(("patches", f"no candidate patches: patch {spec.patches.shape_vox} with edge "
                             f"'{spec.patches.edge}' and the holdout leave none in a volume of {shape}"))
    needed = spec.selection.budget * spec.selection.rounds
    if needed > pool:
        out.problems.append(("selection.budget", f"budget {spec.selection.budget} x {spec.selection.rounds} round(s) "
                             f"= {needed} patches, but the pool holds only {pool}"))
    return out
