"""Checks of a valid spec against the world: the input exists, is OME-Zarr, and the numbers fit it.

Static validation (:mod:`alseg.spec`) cannot know the volume's shape; these checks open the input
(lazily: metadata only) and report problems in the same ``(field path, message)`` form. Each
problem also carries the kind of error it is (:attr:`Preflight.errors`), so that the command line
exits 2 for a spec that does not fit and 1 for an input it cannot reach or read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alseg.errors import AlsegError, DataError, NotOmeZarrError, OutputExistsError, SpecError, StoreError
from alseg.geometry import Box, PatchGrid, holdout_box
from alseg.rundir import overlap_problems, ownership_problem
from alseg.spec import BoxHoldout, FractionHoldout, JobSpec, ground_truth_url

_AXIS = {"z": 0, "y": 1, "x": 2}


@dataclass
class Preflight:
    problems: list[tuple[str, str]] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)
    errors: list[type[AlsegError]] = field(default_factory=list)
    """The error class of each problem (SpecError: the spec does not fit; DataError and kin: the world)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, path: str, message: str, kind: type[AlsegError] = SpecError) -> None:
        self.problems.append((path, message))
        self.errors.append(kind)

    def error(self) -> AlsegError:
        """One error for all problems: a spec error if any problem is the spec's (fix it first), else
        the first data, store or output error."""
        text = "; ".join(f"{p}: {m}" for p, m in self.problems)
        if any(issubclass(k, SpecError) for k in self.errors):
            return SpecError(text, self.problems)
        return self.errors[0](text)


def holdout_of(spec: JobSpec, shape: tuple[int, int, int]) -> Box | None:
    h = spec.patches.holdout
    if h is None:
        return None
    if isinstance(h, FractionHoldout):
        return holdout_box(shape, axis=_AXIS[h.axis], fraction=h.fraction, side=h.side)
    assert isinstance(h, BoxHoldout)
    return Box(h.start, h.stop)


def patch_grid_of(spec: JobSpec, shape: tuple[int, int, int]) -> PatchGrid:
    return PatchGrid(shape, spec.patches.shape_vox, holdout=holdout_of(spec, shape), edge=spec.patches.edge)


def preflight(spec: JobSpec) -> Preflight:
    """Open the input and check every size in the spec against it."""
    from alseg.io.omezarr import list_labels, open_volume

    out = Preflight()
    for path, message in overlap_problems(spec):
        out.add(path, message)
    try:
        owner = None if out.problems else ownership_problem(spec)
    except StoreError as err:
        out.add("run.dir", str(err), type(err))
    else:
        if owner is not None:
            out.add(*owner, OutputExistsError)
    try:
        volume = open_volume(spec.input.url, level=spec.input.level)
    except (StoreError, NotOmeZarrError, DataError) as err:
        out.add("input.url", str(err), type(err))
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
            gt_vol = open_volume(url, level=spec.input.level)  # as evaluation and the simulated annotator read it
            if gt_vol.shape != shape:
                raise DataError(f"ground truth of shape {gt_vol.shape} does not match the image {shape}")
        except AlsegError as err:
            out.add("input.ground_truth", str(err), type(err))

    try:
        grid = patch_grid_of(spec, shape)
        pool = len(grid)
    except AlsegError as err:
        out.add("patches.holdout", str(err))
        return out
    out.facts["pool_patches"] = pool
    if pool == 0:
        out.add("patches", f"no candidate patches: patch {spec.patches.shape_vox} with edge "
                f"'{spec.patches.edge}' and the holdout leave none in a volume of {shape}")
    needed = spec.selection.budget * spec.selection.rounds
    if needed > pool:
        out.add("selection.budget", f"budget {spec.selection.budget} x {spec.selection.rounds} round(s) "
                f"= {needed} patches, but the pool holds only {pool}")
    return out
