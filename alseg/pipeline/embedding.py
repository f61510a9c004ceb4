"""Stage 4a/b: the embedding model (MAE, pixels PCA or nnU-Net features) and the embedding store of every candidate patch."""

from __future__ import annotations

from typing import Any

from alseg.io import store as st
from alseg.pipeline.common import device_for, digest, embedding_dir, input_norm, input_volume
from alseg.rundir import claim
from alseg.spec import EmbeddingSpec, JobSpec


def resolved_embedding(spec: JobSpec, image: Any) -> EmbeddingSpec:
    """``spec.embedding`` with ``img_size_px`` filled in from the patch shape and the volume's pixel size."""
    from alseg.embed.data import input_side

    e = spec.embedding
    side = input_side(e, spec.patches.shape_vox[1:], image.voxel_size_nm[1:])
    return e.model_copy(update={"img_size_px": side})


def run_mae(spec: JobSpec, *, runner: Any = None, norm: Any = None, progress: bool = True,
            pretrained: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage 4a: the embedding model of ``embedding.source``, fitted on the candidate pool.

    ``mae``: train the MAE on sections of the pool (or take ``embedding.weights_path``), keeping
    ``heldout_slices`` of them out of training to measure its loss against the mean predictor's;
    ``pixels``: a PCA of the pool's downsampled sections; ``nnunet``: the pretrained nnU-Net
    (``pretrained``: the pretraining stage's result). Every source is then fitted a per-dimension
    centre and scale on the pool. Writes ``<run dir>/embedding/model/model.pt`` and ``fit.json``;
    reused when the inputs and parameters are unchanged. ``norm``: the input's
    :class:`~alseg.nnunet.IntensityNorm` when the caller has it already.
    """
    from alseg import __version__
    from alseg.preflight import patch_grid_of

    e = spec.embedding
    if e.source == "mae" and e.weights_path is not None:
        if not st.exists(e.weights_path):
            from alseg.errors import SpecError

            raise SpecError(f"embedding.weights_path {st.redact(e.weights_path)} does not exist")
        return {"checkpoint": e.weights_path, "source": "mae", "trained": False, "reused": True}
    if e.source == "nnunet" and pretrained is None:
        from alseg.errors import SpecError

        raise SpecError("embedding.source nnunet needs the pretrained nnU-Net (nnunet.finetune_from: pretrained)")
    model_dir = st.join(embedding_dir(spec), "model")
    final, record_url = st.join(model_dir, "model.pt"), st.join(model_dir, "fit.json")
    claim(spec)
    image = input_volume(spec)
    norm = norm or input_norm(spec)
    e = resolved_embedding(spec, image)
    params = e.model_dump(mode="json", exclude={"slices_per_patch", "rows_per_chunk", "weights_path"})
    signature = {"input": st.redact(spec.input.url), "level": spec.input.level, "shape": list(image.shape),
                 "patches": spec.patches.model_dump(mode="json"), "embedding": params, "seed": spec.run.seed,
                 "norm": norm.to_json(), "alseg": __version__,
                 "pretrained": pretrained.get("signature_sha256") if pretrained else None}
    sig_sha = digest(signature)
    if st.exists(record_url) and st.exists(final):
        record = st.read_json(record_url)
        if record.get("signature_sha256") == sig_sha:
            return {**record, "checkpoint": final, "reused": True}
    patches = patch_grid_of(spec, image.shape).patches()
    if e.source == "mae":  # the pooling does not change training: a new embed_stages reuses the trained weights
        train_sig = digest({**signature, "embedding": {k: v for k, v in params.items() if k != "embed_stages"}})
        state, result = _train_mae(spec, e, image, patches, norm, runner, progress, train_sig, model_dir)
    elif e.source == "pixels":
        from alseg.embed.sources import fit_pixels

        state = fit_pixels(image, patches, norm, side=e.img_size_px, slices=e.slices_per_patch, dim=e.pixels_dim,
                           seed=spec.run.seed, progress=progress)
        result = {"fitted_on": state["fitted_on"]}
    else:
        state = {"kind": "nnunet", "model_folder": pretrained["model_folder"], "norm": pretrained["norm"],
                 "stage": e.nnunet_stage, "pretrained": pretrained.get("signature_sha256")}
        result = {"model_folder": pretrained["model_folder"], "stage": e.nnunet_stage}
    from alseg.embed.train import save_bytes

    if e.source != "pixels":
        from alseg.embed.sources import fit_standardisation, load_embedder

        save_bytes(state, final)
        embedder, _ = load_embedder(final, slices=e.slices_per_patch)
        state.update(fit_standardisation(embedder, image, patches, norm, seed=spec.run.seed, progress=progress))
    save_bytes(state, final)
    record = {"signature": signature, "signature_sha256": sig_sha, "source": e.source, "img_size_px": e.img_size_px, **result}
    st.write_json(record_url, record)
    return {**record, "checkpoint": final, "reused": False}


def _train_mae(spec: JobSpec, e: EmbeddingSpec, image: Any, patches: list[Any], norm: Any, runner: Any, progress: bool,
               sig_sha: str, model_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the MAE on pool sections, minus ``heldout_slices`` kept to measure it; its checkpoint state and record."""
    import torch

    from alseg.embed.data import training_slices
    from alseg.embed.mae import build_mae
    from alseg.embed.train import heldout_figures, train_mae

    from alseg.preflight import holdout_of

    context = e.context + 1.0 if e.model == "conv" and e.context > 1.0 else 1.0  # room to move the crops
    slices = training_slices(image, patches, norm, e.img_size_px, e.max_train_slices + e.heldout_slices, spec.run.seed,
                             progress=progress, context=context, avoid=holdout_of(spec, image.shape))
    n_held = min(e.heldout_slices, len(slices) // 5)
    order = torch.randperm(len(slices), generator=torch.Generator().manual_seed(spec.run.seed + 3))
    heldout, slices = slices[order[:n_held]], slices[torch.sort(order[n_held:]).values]
    res, device = device_for(spec.resources.embedding, label="resources.embedding")
    checkpoint = st.join(model_dir, "checkpoint_latest.pt")
    world = 1
    if runner is not None and runner.name == "ray":
        world = spec.resources.embedding.workers or (runner.capacity(res) if device == "cuda" else 1)
    torch.manual_seed(spec.run.seed)
    model = build_mae(e)
    if world > 1:
        from alseg.embed.distributed import train_distributed
        from alseg.embed.train import load_bytes

        fit = runner.capacity(res)
        if fit < world:
            from alseg.errors import SpecError

            raise SpecError(f"data-parallel MAE training with {world} ranks, but the cluster fits only "
                            f"{fit} workers of resources.embedding at once")
        result = train_distributed(e, slices, world=world, runner=runner, checkpoint_url=checkpoint, signature=sig_sha,
                                   seed=spec.run.seed, device=device, rendezvous_dir=st.join(spec.run.dir, "work", "mae"),
                                   resources=res, local=getattr(runner, "address", None) is None)
        model.load_state_dict(load_bytes(checkpoint)["model"])
    else:
        result = train_mae(model, slices, e, checkpoint_url=checkpoint, signature=sig_sha, seed=spec.run.seed, device=device,
                           progress=progress)
    result.update(heldout_figures(model, heldout, e.mask_ratio, spec.run.seed, device))
    state = {"kind": "mae", "embedding_spec": e.model_dump(mode="json"), "model": model.cpu().state_dict(), "signature": sig_sha}
    return state, {"device": device, "ranks": world, **result}


def run_embed(spec: JobSpec, *, runner: Any = None, progress: bool = True, pretrained: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage 4b: embed every candidate patch into ``<run dir>/embedding/embeddings.zarr``.

    The store's signature names the data, the model checkpoint (sha256 of its bytes), the embedding
    parameters and alseg's version; a store with another signature is stale and recomputed, a
    complete one with the same signature is reused, a partial one resumes.
    """
    from alseg.runtime import runner_from_spec

    own = runner is None
    runner = runner or runner_from_spec(spec.resources, progress=progress)
    try:
        return _embed_with(spec, runner, progress, pretrained)
    finally:
        if own:
            runner.close()


def _embed_with(spec: JobSpec, runner: Any, progress: bool, pretrained: dict[str, Any] | None) -> dict[str, Any]:
    from alseg import __version__
    from alseg.embed import EmbeddingStore, StaleEmbeddingsError, embed_patches
    from alseg.embed.store import FORMAT
    from alseg.errors import StoreError
    from alseg.preflight import patch_grid_of

    intensity = input_norm(spec)
    mae = run_mae(spec, runner=runner, norm=intensity, progress=progress, pretrained=pretrained)
    e = spec.embedding
    image = input_volume(spec)
    patches = patch_grid_of(spec, image.shape).patches()
    norm = intensity.to_json()
    model_sha = st.sha256(mae["checkpoint"])
    signature = {"data": {"input": st.redact(spec.input.url), "level": spec.input.level, "shape": list(image.shape), "norm": norm},
                 "model": model_sha,
                 "parameters": {"source": e.source, "slices_per_patch": e.slices_per_patch,
                                "patches": spec.patches.model_dump(mode="json"), "rows_per_chunk": e.rows_per_chunk},
                 "version": {"alseg": __version__, "format": FORMAT}}
    url = st.join(embedding_dir(spec), "embeddings.zarr")
    work = st.join(spec.run.dir, "work", "embed", digest(signature)[:16])
    store = None
    try:
        store = EmbeddingStore.open(url, signature=signature)
        if store.complete:
            return {"url": url, "rows": len(store), "dim": store.meta["dim"], "mae": mae, "reused": True}
    except (StoreError, StaleEmbeddingsError):
        store = None
    if store is None:
        from alseg.embed.sources import load_embedder

        dim = load_embedder(mae["checkpoint"])[0].dim
        boxes = [(*p.valid.start, *p.valid.stop) for p in patches]
        store = EmbeddingStore.create(url, boxes=boxes, dim=dim, rows_per_chunk=e.rows_per_chunk, signature=signature)
        st.remove(work)
    res, device = device_for(spec.resources.embedding, label="resources.embedding")
    workers = spec.resources.embedding.workers or runner.capacity(res)
    embed_patches(store, spec.input.url, patches, checkpoint_url=mae["checkpoint"], norm=norm, slices=e.slices_per_patch,
                  level=spec.input.level, runner=runner, work_dir=work, workers=workers, resources=res, device=device,
                  missing_chunks=spec.input.missing_chunks)
    store.mark_complete()
    return {"url": url, "rows": len(store), "dim": store.meta["dim"], "mae": mae, "reused": False}
