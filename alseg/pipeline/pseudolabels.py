"""Stage 2: pseudo-labels of the input volume."""

from __future__ import annotations

from typing import Any

from alseg.io import store as st
from alseg.pipeline.common import pseudolabels_url
from alseg.rundir import claim
from alseg.spec import JobSpec


def run_pseudolabels(spec: JobSpec, *, runner: Any = None, progress: bool = True) -> dict[str, Any]:
    """Stage 2: pseudo-labels of the input volume into ``<run dir>/pseudolabels.zarr``."""
    from alseg.pseudolabel import pseudolabel_volume
    from alseg.runtime import Resources, runner_from_spec

    claim(spec)
    own = runner is None
    runner = runner or runner_from_spec(spec.resources, progress=progress)
    try:
        res = Resources.from_spec(spec.resources.pseudolabel, label="resources.pseudolabel")
        workers = spec.resources.pseudolabel.workers or runner.capacity(res)
        p = spec.pseudolabel
        return pseudolabel_volume(
            spec.input.url, pseudolabels_url(spec), p, work_dir=st.join(spec.run.dir, "work", "pseudolabel"),
            block_shape=p.block_shape_vox, halo_yx=p.halo_px, level=spec.input.level, runner=runner,
            workers=workers, resources=res, missing_chunks=spec.input.missing_chunks,
        )
    finally:
        if own:
            runner.close()
