"""Pipeline stages driven by a job spec. Each reads its inputs and writes its artefacts under the
run directory, and is skipped on rerun when its signature is unchanged.

Today: pseudo-labels, nnU-Net pretraining on them, evaluation; fine-tuning rounds, embeddings,
selection and whole-volume prediction join as they land.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from alseg.io import store as st
from alseg.rundir import claim
from alseg.spec import JobSpec

if TYPE_CHECKING:
    import numpy as np


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


def evaluate(spec: JobSpec, labels_url: str, *, runner: Any = None, holdout_only: bool = False) -> dict[str, Any]:
    """Score a label volume against the spec's ground truth at its IoU thresholds (on the held-out
    evaluation region only, with ``holdout_only``)."""
    from alseg.errors import SpecError
    from alseg.evaluate.metrics import evaluate_volumes
    from alseg.spec import ground_truth_url

    gt = ground_truth_url(spec)
    if gt is None:
        raise SpecError("input.ground_truth is not set: nothing to evaluate against")
    region = None
    if holdout_only:
        from alseg.io.omezarr import open_volume
        from alseg.preflight import holdout_of

        region = holdout_of(spec, open_volume(labels_url).shape)
    return evaluate_volumes(gt, labels_url, thresholds=spec.evaluation.iou_thresholds, runner=runner, region=region)


def nnunet_dirs(spec: JobSpec):
    """nnU-Net's folders under the run directory (nnU-Net reads and writes local files only)."""
    from alseg.errors import SpecError
    from alseg.nnunet import NnUNetDirs

    if st.protocol_of(spec.run.dir) not in ("file", "local"):
        raise SpecError(f"run.dir {st.redact(spec.run.dir)}: the nnU-Net stages need a local run directory "
                        "(nnU-Net reads and writes local files); keep the input on object storage, the run directory local")
    return NnUNetDirs(st.join(spec.run.dir, "nnunet"))


def _digest(obj: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _fresh_dataset(dirs: Any, dataset_id: int, name: str) -> None:
    """Remove what an earlier run with other inputs left for this dataset (raw cases, preprocessed data, models)."""
    import shutil

    from alseg.nnunet.paths import dataset_name

    for root in (dirs.raw, dirs.preprocessed, dirs.results):
        shutil.rmtree(st.join(root, dataset_name(dataset_id, name)), ignore_errors=True)


def run_pretrain(spec: JobSpec, *, progress: bool = True, echo: Any = None) -> dict[str, Any]:
    """Stage 3: nnU-Net configures itself on the pseudo-labels of the candidate pool and pretrains.

    Every pool patch (the held-out region excluded) becomes a case of ``Dataset001_pseudo``;
    plans follow the spec's overrides; the model folder and the intensity normalisation are
    recorded in ``<run dir>/nnunet/pretrain.json``. A rerun with the same inputs reuses them.
    """
    import json
    import os

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
    digest = _digest(signature)
    record_path = os.path.join(dirs.root, "pretrain.json")
    if os.path.isfile(record_path):
        with open(record_path) as fh:
            record = json.load(fh)
        if record.get("signature_sha256") == digest and os.path.isfile(os.path.join(record["model_folder"], "fold_all", "checkpoint_final.pth")):
            return {**record, "reused": True}
    _fresh_dataset(dirs, 1, "pseudo")
    norm = input_norm(spec)
    export_dataset(dirs, 1, "pseudo", spec.input.url, pl["url"], boxes, norm=norm, boundary=n.boundary_class, level=spec.input.level,
                   missing_chunks=spec.input.missing_chunks)
    plans = plan_and_preprocess(dirs, 1, configuration=n.configuration, overrides=n.plan_overrides.model_dump(), echo=echo)
    folder = train(dirs, 1, "pseudo", n.pretrain, configuration=n.configuration, device=n.device, echo=echo)
    conf = plans["configurations"][n.configuration]
    record = {"signature": signature, "signature_sha256": digest, "model_folder": folder, "norm": norm.to_json(),
              "cases": len(boxes), "patch_size": conf["patch_size"], "batch_size": conf["batch_size"],
              "features_per_stage": conf["architecture"]["arch_kwargs"]["features_per_stage"]}
    with open(record_path, "w") as fh:
        json.dump(record, fh, indent=1)
    return {**record, "reused": False}


def _device_for(stage: Any, device: str = "auto", *, label: str) -> tuple[Any, str]:
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


def _classes_to_mask(classes: np.ndarray, value: int = 1) -> np.ndarray:
    import numpy as np

    return (classes == value).astype(np.uint8)


def run_predict(spec: JobSpec, *, model_folder: str | None = None, norm: dict | None = None, runner: Any = None,
                progress: bool = True) -> dict[str, Any]:
    """Stage 7: the whole volume through the trained nnU-Net, block by block, then 3D instances.

    Writes ``<run dir>/prediction/classes.zarr`` (uint8 class map), ``mask.zarr`` (mitochondria
    class) and ``instances.zarr`` (stitched instances, optionally split by the seeded watershed),
    each an OME-Zarr label image with a pyramid. Uses the pretrained model unless ``model_folder``
    (and its ``norm``) are given. Resumable: block records live under ``<run dir>/work/predict``.
    """
    import json
    import os

    from alseg.blockwise import map_volume
    from alseg.errors import SpecError
    from alseg.io.omezarr import create_label_image
    from alseg.pyramid import build_pyramid
    from alseg.nnunet import IntensityNorm
    from alseg.nnunet.predict import predict_volume
    from alseg.postprocess.stitch import label_components
    from alseg.runtime import runner_from_spec

    claim(spec)
    if model_folder is None:
        record_path = os.path.join(nnunet_dirs(spec).root, "pretrain.json")
        if not os.path.isfile(record_path):
            raise SpecError("no trained model in the run directory: run the pretraining stage first (alseg pretrain)")
        with open(record_path) as fh:
            record = json.load(fh)
        model_folder, norm = record["model_folder"], record["norm"]
    if norm is None:
        raise SpecError("predicting with a given model folder needs its intensity normalisation")
    own = runner is None
    runner = runner or runner_from_spec(spec.resources, progress=progress)
    out_dir = st.join(spec.run.dir, "prediction")
    work = st.join(spec.run.dir, "work", "predict", os.path.basename(os.path.dirname(model_folder)))
    try:
        res, device = _device_for(spec.resources.prediction, spec.nnunet.device, label="resources.prediction")
        workers = spec.resources.prediction.workers or runner.capacity(res)
        p = spec.prediction
        classes_url = st.join(out_dir, "classes.zarr")
        predict_volume(model_folder, spec.input.url, classes_url, norm=IntensityNorm(**norm), block_shape=p.block_shape_vox,
                       halo=p.halo_vox, level=spec.input.level, runner=runner, work_dir=work, workers=workers, resources=res,
                       device=device, mirroring=p.mirroring, tiling=p.tiling, missing_chunks=spec.input.missing_chunks)
        build_pyramid(classes_url, kind="mode", runner=runner, work_dir=work)
        image = input_volume(spec)
        q = spec.postprocess
        mask_url = st.join(out_dir, "mask.zarr")
        if not st.exists(st.join(mask_url, "zarr.json")):
            create_label_image(mask_url, like=image, chunks=q.block_shape_vox, dtype="uint8", name="mitochondria-mask", kind="prediction")
        map_volume(_classes_to_mask, [classes_url], mask_url, block_shape=q.block_shape_vox, runner=runner, work_dir=work, name="mask")
        inst_url = st.join(out_dir, "instances.zarr")
        if not st.exists(st.join(inst_url, "zarr.json")):
            create_label_image(inst_url, like=image, chunks=q.block_shape_vox, name="mitochondria", kind="prediction")
        if q.watershed == "none":
            info = label_components(mask_url, inst_url, block_shape=q.block_shape_vox, work_dir=st.join(work, "instances"),
                                    connectivity=q.connectivity, min_size_vox=q.min_size_vox, runner=runner)
        elif q.watershed == "distance":
            from alseg.postprocess.watershed import split_instances

            info = split_instances(mask_url, inst_url, block_shape=q.block_shape_vox, halo=q.halo_vox, work_dir=st.join(work, "instances"),
                                   seed_distance_nm=q.seed_distance_nm, connectivity=q.connectivity, min_size_vox=q.min_size_vox, runner=runner)
        else:
            raise SpecError("postprocess.watershed: boundary needs a boundary probability map, which prediction does not write yet; use distance")
        return {"classes": classes_url, "mask": mask_url, "instances": inst_url, "objects": info["objects"], "model_folder": model_folder}
    finally:
        if own:
            runner.close()


def embedding_dir(spec: JobSpec) -> str:
    return st.join(spec.run.dir, "embedding")


def run_mae(spec: JobSpec, *, runner: Any = None, norm: Any = None, progress: bool = True) -> dict[str, Any]:
    """Stage 4a: train the MAE on sections of the candidate pool (or take ``embedding.weights_path``).

    Writes ``<run dir>/embedding/mae/mae.pt`` (architecture and weights), ``training.json``
    (losses, fixed-set reconstruction loss before and after) and, during training, a resumable
    ``checkpoint_latest.pt``. Reused when the inputs and parameters are unchanged. ``norm``: the
    input's :class:`~alseg.nnunet.IntensityNorm` when the caller has it already.
    """
    import torch

    from alseg import __version__
    from alseg.embed.data import training_slices
    from alseg.embed.mae import build_mae
    from alseg.embed.train import save_bytes, train_mae
    from alseg.preflight import patch_grid_of

    e = spec.embedding
    if e.weights_path is not None:
        if not st.exists(e.weights_path):
            from alseg.errors import SpecError

            raise SpecError(f"embedding.weights_path {st.redact(e.weights_path)} does not exist")
        return {"checkpoint": e.weights_path, "trained": False, "reused": True}
    mae_dir = st.join(embedding_dir(spec), "mae")
    final, record_url = st.join(mae_dir, "mae.pt"), st.join(mae_dir, "training.json")
    claim(spec)
    image = input_volume(spec)
    norm = norm or input_norm(spec)
    params = e.model_dump(mode="json", exclude={"slices_per_patch", "rows_per_chunk", "weights_path"})
    signature = {"input": st.redact(spec.input.url), "level": spec.input.level, "shape": list(image.shape),
                 "patches": spec.patches.model_dump(mode="json"), "embedding": params, "seed": spec.run.seed,
                 "norm": norm.to_json(), "alseg": __version__}
    digest = _digest(signature)
    if st.exists(record_url) and st.exists(final):
        record = _read_json(record_url)
        if record.get("signature_sha256") == digest:
            return {**record, "checkpoint": final, "reused": True}
    patches = patch_grid_of(spec, image.shape).patches()
    slices = training_slices(image, patches, norm, e.img_size_px, e.max_train_slices, spec.run.seed, progress=progress)
    res, device = _device_for(spec.resources.embedding, label="resources.embedding")
    checkpoint = st.join(mae_dir, "checkpoint_latest.pt")
    world = 1
    if runner is not None and runner.name == "ray":
        world = spec.resources.embedding.workers or (runner.capacity(res) if device == "cuda" else 1)
    if world > 1:
        from alseg.embed.distributed import train_distributed
        from alseg.embed.train import load_bytes

        if runner.capacity(res) < world:
            from alseg.errors import SpecError

            raise SpecError(f"data-parallel MAE training with {world} ranks, but the cluster fits only "
                            f"{runner.capacity(res)} workers of resources.embedding at once")
        result = train_distributed(e, slices, world=world, runner=runner, checkpoint_url=checkpoint, signature=digest,
                                   seed=spec.run.seed, device=device, rendezvous_dir=st.join(spec.run.dir, "work", "mae"),
                                   resources=res, local=getattr(runner, "address", None) is None)
        state = load_bytes(checkpoint)["model"]
    else:
        torch.manual_seed(spec.run.seed)
        model = build_mae(e)
        result = train_mae(model, slices, e, checkpoint_url=checkpoint, signature=digest, seed=spec.run.seed, device=device,
                           progress=progress)
        state = model.cpu().state_dict()
    save_bytes({"embedding_spec": e.model_dump(mode="json"), "model": state, "signature": digest}, final)
    record = {"signature": signature, "signature_sha256": digest, "device": device, "ranks": world, **result}
    _write_json(record_url, record)
    return {**record, "checkpoint": final, "reused": False}


def run_embed(spec: JobSpec, *, runner: Any = None, progress: bool = True) -> dict[str, Any]:
    """Stage 4b: embed every candidate patch into ``<run dir>/embedding/embeddings.zarr``.

    The store's signature names the data, the MAE checkpoint (sha256 of its bytes), the embedding
    parameters and alseg's version; a store with another signature is stale and recomputed, a
    complete one with the same signature is reused, a partial one resumes.
    """
    from alseg.runtime import runner_from_spec

    own = runner is None
    runner = runner or runner_from_spec(spec.resources, progress=progress)
    try:
        return _embed_with(spec, runner, progress)
    finally:
        if own:
            runner.close()


def _embed_with(spec: JobSpec, runner: Any, progress: bool) -> dict[str, Any]:
    from alseg import __version__
    from alseg.embed import EmbeddingStore, StaleEmbeddingsError, embed_patches
    from alseg.embed.store import FORMAT
    from alseg.errors import StoreError
    from alseg.preflight import patch_grid_of

    intensity = input_norm(spec)
    mae = run_mae(spec, runner=runner, norm=intensity, progress=progress)
    e = spec.embedding
    image = input_volume(spec)
    patches = patch_grid_of(spec, image.shape).patches()
    norm = intensity.to_json()
    model_sha = st.sha256(mae["checkpoint"])
    signature = {"data": {"input": st.redact(spec.input.url), "level": spec.input.level, "shape": list(image.shape), "norm": norm},
                 "model": model_sha,
                 "parameters": {"slices_per_patch": e.slices_per_patch, "img_size_px": e.img_size_px,
                                "patches": spec.patches.model_dump(mode="json"), "rows_per_chunk": e.rows_per_chunk},
                 "version": {"alseg": __version__, "format": FORMAT}}
    url = st.join(embedding_dir(spec), "embeddings.zarr")
    work = st.join(spec.run.dir, "work", "embed", _digest(signature)[:16])
    store = None
    try:
        store = EmbeddingStore.open(url, signature=signature)
        if store.complete:
            return {"url": url, "rows": len(store), "dim": store.meta["dim"], "mae": mae, "reused": True}
    except (StoreError, StaleEmbeddingsError):
        store = None
    if store is None:
        from alseg.embed.embed import load_mae

        dim = load_mae(mae["checkpoint"])[0].encoder.embed_dim
        boxes = [(*p.valid.start, *p.valid.stop) for p in patches]
        store = EmbeddingStore.create(url, boxes=boxes, dim=dim, rows_per_chunk=e.rows_per_chunk, signature=signature)
        st.remove(work)
    res, device = _device_for(spec.resources.embedding, label="resources.embedding")
    workers = spec.resources.embedding.workers or runner.capacity(res)
    embed_patches(store, spec.input.url, patches, checkpoint_url=mae["checkpoint"], norm=norm, slices=e.slices_per_patch,
                  level=spec.input.level, runner=runner, work_dir=work, workers=workers, resources=res, device=device,
                  missing_chunks=spec.input.missing_chunks)
    store.mark_complete()
    return {"url": url, "rows": len(store), "dim": store.meta["dim"], "mae": mae, "reused": False}


def run_scores(spec: JobSpec, *, model_folder: str | None = None, norm: dict | None = None, runner: Any = None,
               progress: bool = True) -> dict[str, Any]:
    """Uncertainty of every candidate patch under a trained nnU-Net (the pretrained one unless
    ``model_folder`` and its ``norm`` are given): ``{"scores": {measure: list}, ...}``, kept in
    ``<run dir>/selection/scores-<signature>.json`` and reused while model and parameters stay."""
    import json
    import os

    from alseg import __version__
    from alseg.errors import SpecError
    from alseg.preflight import patch_grid_of
    from alseg.runtime import runner_from_spec
    from alseg.select.score import score_patches

    claim(spec)
    if model_folder is None:
        record_path = os.path.join(nnunet_dirs(spec).root, "pretrain.json")
        if not os.path.isfile(record_path):
            raise SpecError(f"selection.method {spec.selection.method!r} ranks patches by a trained model's uncertainty: "
                            "run the pretraining stage first (alseg pretrain)")
        with open(record_path) as fh:
            record = json.load(fh)
        model_folder, norm = record["model_folder"], record["norm"]
    if norm is None:
        raise SpecError("scoring with a given model folder needs its intensity normalisation")
    sel = spec.selection
    mode, samples = (sel.mode, sel.samples) if sel.method == "bald" else ("none", 1)
    image = input_volume(spec)
    patches = patch_grid_of(spec, image.shape).patches()
    checkpoint = os.path.join(model_folder, "fold_all", "checkpoint_final.pth")
    signature = {"model": st.sha256(checkpoint), "mode": mode, "samples": samples, "seed": spec.run.seed,
                 "input": st.redact(spec.input.url), "level": spec.input.level, "patches": spec.patches.model_dump(mode="json"),
                 "norm": norm, "alseg": __version__}
    digest = _digest(signature)[:16]
    url = st.join(spec.run.dir, "selection", f"scores-{digest}.json")
    if st.exists(url):
        return {**_read_json(url), "url": url, "reused": True}
    own = runner is None
    runner = runner or runner_from_spec(spec.resources, progress=progress)
    try:
        res, device = _device_for(spec.resources.prediction, spec.nnunet.device, label="resources.prediction")
        workers = spec.resources.prediction.workers or runner.capacity(res)
        scores = score_patches(model_folder, spec.input.url, patches, norm=norm, mode=mode, samples=samples, seed=spec.run.seed,
                               level=spec.input.level, runner=runner, work_dir=st.join(spec.run.dir, "work", "score", digest),
                               workers=workers, resources=res, device=device, missing_chunks=spec.input.missing_chunks)
    finally:
        if own:
            runner.close()
    record = {"signature": signature, "model_folder": model_folder, "mode": mode, "samples": samples,
              "scores": {k: v.tolist() for k, v in scores.items()}}
    _write_json(url, record)
    return {**record, "url": url, "reused": False}


def selection_url(spec: JobSpec, round_index: int) -> str:
    return st.join(spec.run.dir, "selection", f"round-{round_index:02d}.json")


def _read_json(url: str) -> Any:
    import json

    fs, path = st.filesystem(url)
    with fs.open(path, "r") as fh:
        return json.load(fh)


def _write_json(url: str, obj: Any) -> None:
    import json

    fs, path = st.filesystem(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(f"{path}.tmp", "w") as fh:
        json.dump(obj, fh, indent=1)
    fs.mv(f"{path}.tmp", path)


def annotated_before(spec: JobSpec, round_index: int) -> list[int]:
    """Patch ids selected in rounds ``1 .. round_index - 1`` (they must all exist)."""
    from alseg.errors import SpecError

    out: list[int] = []
    for r in range(1, round_index):
        url = selection_url(spec, r)
        if not st.exists(url):
            raise SpecError(f"selection round {r} is missing ({st.redact(url)}): select round {r} first")
        out += _read_json(url)["patch_ids"]
    return out


def run_select(spec: JobSpec, *, round_index: int = 1, scores: dict[str, Any] | None = None, progress: bool = True,
               picture: bool = True) -> dict[str, Any]:
    """Stage 4c: pick this round's patches by the spec's strategy into ``<run dir>/selection/round-NN.json``
    (patch ids, their boxes, the method's details) and draw ``round-NN.png``. Reused when unchanged."""
    import numpy as np

    from alseg.embed import EmbeddingStore
    from alseg.errors import SpecError
    from alseg.select import needs_embeddings, select_patches, uncertainty_measure

    claim(spec)
    strategy = spec.selection
    if not 1 <= round_index <= strategy.rounds:
        raise SpecError(f"selection round {round_index} outside 1..{strategy.rounds} (selection.rounds)")
    annotated = annotated_before(spec, round_index)
    emb = None
    store_sig = None
    boxes = None
    store_url = st.join(embedding_dir(spec), "embeddings.zarr")
    if needs_embeddings(strategy) or (picture and st.exists(st.join(store_url, "zarr.json"))):
        # diversity needs the store (made or reused here); others draw it only when it is already there
        store_url = run_embed(spec, progress=progress)["url"]
        store = EmbeddingStore.open(store_url)
        emb, boxes, store_sig = store.load(), store.boxes, store.meta["signature_sha256"]
    if uncertainty_measure(strategy) is not None and scores is None:
        scores = run_scores(spec, progress=progress)["scores"]
    if boxes is None:
        from alseg.preflight import patch_grid_of

        image = input_volume(spec)
        boxes = np.asarray([(*p.valid.start, *p.valid.stop) for p in patch_grid_of(spec, image.shape).patches()])
    n = len(boxes)
    seed = spec.run.seed * 1000 + round_index
    signature = _digest({"strategy": strategy.model_dump(mode="json"), "embeddings": store_sig, "annotated": annotated,
                         "seed": seed, "scores": None if scores is None else _digest({k: np.asarray(v).tolist() for k, v in scores.items()})})
    url = selection_url(spec, round_index)
    if st.exists(url):
        prev = _read_json(url)
        if prev.get("signature_sha256") == signature:
            return {**prev, "url": url, "reused": True}
    sel = select_patches(strategy, n=n, embeddings=emb, scores=scores, annotated=annotated, seed=seed, progress=progress)
    ids = [int(i) for i in sel.picks]
    record = {"round": round_index, "method": sel.method, "patch_ids": ids,
              "boxes": [[int(v) for v in boxes[i]] for i in ids], "annotated_before": annotated, "detail": sel.detail,
              "seed": seed, "signature_sha256": signature}
    if picture and emb is not None:
        from alseg.embed.picture import draw, pca_2d, thumbnail
        from alseg.geometry import Box

        image = input_volume(spec)
        thumbs = {i: thumbnail(image, Box(tuple(boxes[i][:3]), tuple(boxes[i][3:]))) for i in ids[:6]}
        png = st.join(spec.run.dir, "selection", f"round-{round_index:02d}.png")
        draw(pca_2d(emb, seed=spec.run.seed), ids, png, thumbs=thumbs, annotated=annotated,
             title=f"{spec.name}: round {round_index}, {sel.method}, {len(ids)} of {n} patches")
        record["picture"] = png
    _write_json(url, record)
    return {**record, "url": url, "reused": False}
