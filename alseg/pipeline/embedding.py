"""Stage 4a/b: the MAE and the embedding store of every candidate patch."""

from __future__ import annotations

from typing import Any

from alseg.io import store as st
from alseg.pipeline.common import device_for, digest, embedding_dir, input_norm, input_volume
from alseg.rundir import claim
from alseg.spec import JobSpec


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
    sig_sha = digest(signature)
    if st.exists(record_url) and st.exists(final):
        record = st.read_json(record_url)
        if record.get("signature_sha256") == sig_sha:
            return {**record, "checkpoint": final, "reused": True}
    patches = patch_grid_of(spec, image.shape).patches()
    slices = training_slices(image, patches, norm, e.img_size_px, e.max_train_slices, spec.run.seed, progress=progress)
    res, device = device_for(spec.resources.embedding, label="resources.embedding")
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
        result = train_distributed(e, slices, world=world, runner=runner, checkpoint_url=checkpoint, signature=sig_sha,
                                   seed=spec.run.seed, device=device, rendezvous_dir=st.join(spec.run.dir, "work", "mae"),
                                   resources=res, local=getattr(runner, "address", None) is None)
        state = load_bytes(checkpoint)["model"]
    else:
        torch.manual_seed(spec.run.seed)
        model = build_mae(e)
        result = train_mae(model, slices, e, checkpoint_url=checkpoint, signature=sig_sha, seed=spec.run.seed, device=device,
                           progress=progress)
        state = model.cpu().state_dict()
    save_bytes({"embedding_spec": e.model_dump(mode="json"), "model": state, "signature": sig_sha}, final)
    record = {"signature": signature, "signature_sha256": sig_sha, "device": device, "ranks": world, **result}
    st.write_json(record_url, record)
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
    work = st.join(spec.run.dir, "work", "embed", digest(signature)[:16])
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
    res, device = device_for(spec.resources.embedding, label="resources.embedding")
    workers = spec.resources.embedding.workers or runner.capacity(res)
    embed_patches(store, spec.input.url, patches, checkpoint_url=mae["checkpoint"], norm=norm, slices=e.slices_per_patch,
                  level=spec.input.level, runner=runner, work_dir=work, workers=workers, resources=res, device=device,
                  missing_chunks=spec.input.missing_chunks)
    store.mark_complete()
    return {"url": url, "rows": len(store), "dim": store.meta["dim"], "mae": mae, "reused": False}
