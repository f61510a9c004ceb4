"""What the stages share: where their artefacts live in the run directory, the input and its
normalisation, JSON records through the store, signatures, devices."""

from __future__ import annotations

from typing import Any

from alseg.io import store as st
from alseg.spec import JobSpec


def pseudolabels_url(spec: JobSpec) -> str:
    return st.join(spec.run.dir, "pseudolabels.zarr")


def input_volume(spec: JobSpec):
    """The spec's input image (lazily), read as ``input.missing_chunks`` says."""
    from alseg.io.omezarr import open_volume

    return open_volume(spec.input.url, level=spec.input.level, missing_chunks=spec.input.missing_chunks)


def input_norm(spec: JobSpec):
    """The input's intensity normalisation (:class:`~alseg.nnunet.IntensityNorm`)."""
    from alseg.nnunet import IntensityNorm

    return IntensityNorm.of_volume(spec.input.url, missing_chunks=spec.input.missing_chunks)


def nnunet_url(spec: JobSpec) -> str:
    """The run directory's nnU-Net folder (records, published models, logs)."""
    return st.join(spec.run.dir, "nnunet")


def nnunet_dirs(spec: JobSpec):
    """nnU-Net's folders: in the run directory when it is local; else in this node's scratch
    folder (one per run directory), publishing to the run directory's URL (nnU-Net reads and
    writes local files only)."""
    from alseg.nnunet import NnUNetDirs
    from alseg.nnunet.paths import scratch_root

    url = nnunet_url(spec)
    if st.is_local(url):
        return NnUNetDirs(str(st.local_path(url)))
    key = digest(st.redact(spec.run.dir))[:16]
    return NnUNetDirs(st.join(scratch_root(), "nnunet", key), url=url)


def pretrain_record_url(spec: JobSpec) -> str:
    return st.join(nnunet_url(spec), "pretrain.json")


def pretrain_record(spec: JobSpec, *, needed_by: str) -> dict[str, Any]:
    """The pretraining's record (model, intensity normalisation); :class:`SpecError` saying that
    ``needed_by`` needs the pretraining stage first when there is none."""
    from alseg.errors import SpecError

    url = pretrain_record_url(spec)
    if not st.exists(url):
        raise SpecError(f"{needed_by}: no pretrained model in the run directory: run the pretraining stage first (alseg pretrain)")
    return st.read_json(url)


def embedding_dir(spec: JobSpec) -> str:
    return st.join(spec.run.dir, "embedding")


def selection_url(spec: JobSpec, round_index: int) -> str:
    return st.join(spec.run.dir, "selection", f"round-{round_index:02d}.json")


def digest(obj: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def fresh_dataset(dirs: Any, dataset_id: int, name: str) -> None:
    """Remove what an earlier run with other inputs left for this dataset (raw cases, preprocessed data, models)."""
    import shutil

    from alseg.nnunet.models import unpublish_dataset
    from alseg.nnunet.paths import dataset_name

    for root in (dirs.raw, dirs.preprocessed, dirs.results):
        shutil.rmtree(st.join(root, dataset_name(dataset_id, name)), ignore_errors=True)
    unpublish_dataset(dirs, dataset_id, name)


def device_for(stage: Any, device: str = "auto", *, label: str) -> tuple[Any, str]:
    """A stage's worker resources and torch device: ``auto`` means CUDA when the stage asks for
    GPUs and this machine has one; a CPU device asks Ray for no GPU."""
    import torch

    from alseg.runtime import Resources

    res = Resources.from_spec(stage, label=label)
    if device == "auto":
        device = "cuda" if res.gpus > 0 and torch.cuda.is_available() else "cpu"
    if device == "cpu" and res.gpus > 0:
        res = Resources(cpus=res.cpus, gpus=0.0, memory_bytes=res.memory_bytes, label=label)
    return res, device
