"""Stage 3: nnU-Net configures itself on the pseudo-labels and pretrains."""

from __future__ import annotations

from typing import Any

from alseg.io import store as st
from alseg.nnunet.models import model_exists
from alseg.pipeline.common import digest, fresh_dataset, input_norm, input_volume, nnunet_dirs, pretrain_record_url
from alseg.pipeline.pseudolabels import run_pseudolabels
from alseg.rundir import claim
from alseg.spec import JobSpec


def run_pretrain(spec: JobSpec, *, progress: bool = True, echo: Any = None) -> dict[str, Any]:
    """Stage 3: nnU-Net configures itself on the pseudo-labels of the candidate pool and pretrains.

    Every pool patch (the held-out region excluded) becomes a case of ``Dataset001_pseudo``;
    plans follow the spec's overrides; the model folder and the intensity normalisation are
    recorded in ``<run dir>/nnunet/pretrain.json``. A rerun with the same inputs reuses them.
    With a run directory on object storage nnU-Net works in this node's scratch folder and the
    model is published to the run directory (:mod:`alseg.nnunet.models`).
    """
    from alseg import __version__
    from alseg.io.omezarr import open_volume
    from alseg.nnunet import export_dataset, plan_and_preprocess, train
    from alseg.preflight import patch_grid_of

    claim(spec)
    dirs = nnunet_dirs(spec).make()
    pl = run_pseudolabels(spec, progress=progress)
    pl_sig = open_volume(pl["url"]).provenance().get("signature_sha256")
    image = input_volume(spec)
    boxes = [p.valid for p in patch_grid_of(spec, image.shape).patches()]
    n = spec.nnunet
    signature = {"pseudolabels": pl_sig, "patches": spec.patches.model_dump(mode="json"), "configuration": n.configuration,
                 "boundary_class": n.boundary_class, "plan_overrides": n.plan_overrides.model_dump(mode="json"),
                 "pretrain": n.pretrain.model_dump(mode="json"), "input": st.redact(spec.input.url), "level": spec.input.level,
                 "alseg": __version__}
    sig_sha = digest(signature)
    record_url = pretrain_record_url(spec)
    if st.exists(record_url):
        record = st.read_json(record_url)
        if record.get("signature_sha256") == sig_sha and model_exists(record["model_folder"]):
            return {**record, "reused": True}
    fresh_dataset(dirs, 1, "pseudo")
    norm = input_norm(spec)
    exported = export_dataset(dirs, 1, "pseudo", spec.input.url, pl["url"], boxes, norm=norm, boundary=n.boundary_class,
                              level=spec.input.level, missing_chunks=spec.input.missing_chunks)
    if exported["foreground_voxels"] == 0:
        from alseg.errors import DataError

        raise DataError(f"the pseudo-labels ({st.redact(pl['url'])}) hold no mitochondria in the {len(boxes)} patches of the "
                        "candidate pool: nothing to pretrain on; check the pseudo-labeller's settings (alseg pseudolabel "
                        "scores them against ground truth) or the held-out region")
    plans = plan_and_preprocess(dirs, 1, configuration=n.configuration, overrides=n.plan_overrides.model_dump(), echo=echo)
    folder = train(dirs, 1, "pseudo", n.pretrain, configuration=n.configuration, device=n.device, echo=echo)
    conf = plans["configurations"][n.configuration]
    record = {"signature": signature, "signature_sha256": sig_sha, "model_folder": folder, "norm": norm.to_json(),
              "cases": len(boxes), "patch_size": conf["patch_size"], "batch_size": conf["batch_size"],
              "features_per_stage": conf["architecture"]["arch_kwargs"]["features_per_stage"]}
    st.write_json(record_url, record)
    return {**record, "reused": False}
