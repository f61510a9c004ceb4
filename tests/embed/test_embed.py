"""MAE training, deterministic embeddings, the embedding store's signature, the embed/select stages."""

import json

import numpy as np
import pytest
import torch

from alseg.embed import EmbeddingStore, StaleEmbeddingsError, build_mae
from alseg.embed.data import augment, slice_indices
from alseg.geometry import Box
from alseg.spec import EmbeddingSpec, parse_spec

TINY = {"model": "vit", "backbone_args": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8}, "img_size_px": 32,
        "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2, "batch_size": 8, "warmup_epochs": 1}


def _spec(tmp_path, overwrite=False, **embedding):
    from alseg.synth import SynthParams, write_synthetic

    url = tmp_path / "v.zarr"
    if not url.exists():
        write_synthetic(url, SynthParams.preset("easy", shape=(16, 128, 128), seed=2))
    return parse_spec({"input": {"url": str(url), "ground_truth": "mitochondria"}, "run": {"dir": str(tmp_path / "run"), "overwrite": overwrite},
                          "patches": {"shape_vox": [8, 32, 32], "holdout": {"kind": "fraction", "axis": "z", "fraction": 0.5}},
                          "embedding": {**TINY, "epochs": 3, "slices_per_patch": 3, "rows_per_chunk": 5, **embedding},
                          "selection": {"method": "kcenter", "budget": 4, "rounds": 2, "start": "random"}})


def test_patchify_and_masks_against_plain_loops():
    model = build_mae(EmbeddingSpec(**TINY))
    imgs = torch.arange(2 * 32 * 32, dtype=torch.float32).reshape(2, 1, 32, 32)
    p = model.patchify(imgs)
    for b in range(2):
        for gy in range(4):
            for gx in range(4):
                np.testing.assert_array_equal(p[b, gy * 4 + gx].numpy(), imgs[b, 0, gy * 8:(gy + 1) * 8, gx * 8:(gx + 1) * 8].reshape(-1).numpy())
    keep, mask = model.random_keep(3, 0.75, torch.Generator().manual_seed(0))
    assert keep.shape == (3, 4) and mask.sum(dim=1).tolist() == [12, 12, 12]
    for b in range(3):
        assert not mask[b, keep[b]].any() and len(set(keep[b].tolist())) == 4


def test_augment_is_seeded_and_keeps_shape():
    x = torch.rand(4, 1, 32, 32)
    a = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, augment(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, augment(x, torch.Generator().manual_seed(2)))


def test_slice_indices_are_even_and_inside():
    assert slice_indices(Box((4, 0, 0), (12, 8, 8)), 3) == [4, 8, 11]
    assert slice_indices(Box((0, 0, 0), (2, 8, 8)), 4) == [0, 0, 1, 1]


def test_training_lowers_the_loss_and_resumes_exactly(tmp_path):
    from alseg.embed.train import train_mae

    spec = EmbeddingSpec(**{**TINY, "epochs": 6, "learning_rate": 2e-3})
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    slices = torch.from_numpy(np.stack([np.sin(xx / (2 + k % 5)) + 0.1 * rng.standard_normal((32, 32)) for k in range(24)])
                              .astype(np.float32))[:, None]

    def fresh():
        torch.manual_seed(0)
        return build_mae(spec)

    full = fresh()
    res = train_mae(full, slices, spec, checkpoint_url=str(tmp_path / "a.pt"), signature="s", progress=False)
    assert res["eval_after"] < 0.8 * res["eval_before"], res
    assert len(res["losses"]) == 6
    part = fresh()
    first = train_mae(part, slices, spec, checkpoint_url=str(tmp_path / "b.pt"), signature="s", progress=False, max_epochs=2)
    assert len(first["losses"]) == 2
    resumed = fresh()
    res_b = train_mae(resumed, slices, spec, checkpoint_url=str(tmp_path / "b.pt"), signature="s", progress=False)
    assert res_b["losses"][:2] == first["losses"] and res_b["losses"] == res["losses"]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    # another signature does not resume from a foreign checkpoint
    other = fresh()
    res_c = train_mae(other, slices, spec, checkpoint_url=str(tmp_path / "b.pt"), signature="t", progress=False, max_epochs=1)
    assert len(res_c["losses"]) == 1


def test_store_refuses_stale_signatures(tmp_path):
    sig = {"data": "a", "model": "m1", "parameters": {"k": 1}, "version": 1}
    store = EmbeddingStore.create(str(tmp_path / "e.zarr"), boxes=np.zeros((7, 6), int), dim=4, rows_per_chunk=3, signature=sig)
    assert store.chunk_ranges() == [(0, 3), (3, 6), (6, 7)] and not store.complete
    store.write_rows(3, np.ones((3, 4)))
    with pytest.raises(ValueError, match="chunk boundary"):
        store.write_rows(2, np.ones((1, 4)))
    store.mark_complete()
    again = EmbeddingStore.open(str(tmp_path / "e.zarr"), signature=sig)
    assert again.complete and np.isnan(again.load()[0]).all() and (again.load()[3:6] == 1).all()
    with pytest.raises(StaleEmbeddingsError, match="changed: model"):
        EmbeddingStore.open(str(tmp_path / "e.zarr"), signature={**sig, "model": "m2"})


def test_embed_stage_is_deterministic_reused_and_invalidated(tmp_path, ray_cluster):
    from alseg.pipeline.embedding import run_embed

    spec = _spec(tmp_path)
    info = run_embed(spec, progress=False)
    assert not info["reused"] and info["mae"]["eval_after"] < info["mae"]["eval_before"]
    store = EmbeddingStore.open(info["url"])
    rows = store.load()
    assert rows.shape == (16, 32) and store.complete
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)
    assert np.unique(rows.round(5), axis=0).shape[0] > 8  # patches differ
    assert run_embed(spec, progress=False)["reused"]
    # the same rows again, computed by two Ray workers from scratch: bit-identical
    import shutil

    shutil.rmtree(info["url"])
    shutil.rmtree(tmp_path / "run" / "work" / "embed")
    again = run_embed(spec, runner=ray_cluster, progress=False)
    assert not again["reused"] and again["mae"]["reused"]
    assert np.array_equal(EmbeddingStore.open(again["url"]).load(), rows)
    # another embedding parameter (another job: run.overwrite) makes the store stale (recomputed); the MAE is reused
    spec2 = _spec(tmp_path, overwrite=True, slices_per_patch=2)
    third = run_embed(spec2, progress=False)
    assert not third["reused"] and third["mae"]["reused"]
    assert not np.array_equal(EmbeddingStore.open(third["url"]).load(), rows)


def test_select_stage_rounds_picture_and_reference(tmp_path):
    from PIL import Image

    from alseg.embed import EmbeddingStore
    from alseg.pipeline.selection import run_select
    from tests.helpers.kcenter_reference import reference_kcenter

    spec = _spec(tmp_path)
    r1 = run_select(spec, round_index=1, progress=False)
    assert len(r1["patch_ids"]) == 4 and r1["detail"]["random_starts"] == 3
    rows = EmbeddingStore.open(str(tmp_path / "run" / "embedding" / "embeddings.zarr")).load()
    np.testing.assert_array_equal(r1["patch_ids"], reference_kcenter(rows, 4, r1["patch_ids"][:3]))
    png = Image.open(r1["picture"])
    assert png.size[0] > 400 and png.format == "PNG"
    r2 = run_select(spec, round_index=2, progress=False)
    assert r2["annotated_before"] == r1["patch_ids"] and not set(r2["patch_ids"]) & set(r1["patch_ids"])
    assert run_select(spec, round_index=2, progress=False)["reused"]
    with open(tmp_path / "run" / "selection" / "round-01.json") as fh:
        assert json.load(fh)["boxes"][0][3] - json.load(open(tmp_path / "run" / "selection" / "round-01.json"))["boxes"][0][0] == 8


def test_random_selection_needs_no_mae_and_uncertainty_asks_for_scores(tmp_path):
    from alseg.errors import SpecError
    from alseg.pipeline.selection import run_select

    spec = _spec(tmp_path)
    spec = spec.model_copy(update={"selection": parse_spec({**spec.model_dump(mode="json"),
                                                            "selection": {"method": "random", "budget": 5}}).selection})
    res = run_select(spec, round_index=1, progress=False)
    assert len(set(res["patch_ids"])) == 5 and max(res["patch_ids"]) < 16 and "picture" not in res
    assert not (tmp_path / "run" / "embedding").exists()
    spec_e = spec.model_copy(update={"selection": parse_spec({**spec.model_dump(mode="json"),
                                                              "selection": {"method": "entropy", "budget": 5}}).selection,
                                     "run": spec.run.model_copy(update={"overwrite": True})})  # another job: takes over the run dir
    with pytest.raises(SpecError, match="uncertainty"):
        run_select(spec_e, round_index=1, progress=False)


class _RunsCode:
    """Unpickling this creates a file: what a hostile checkpoint named in a spec could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    from alseg.embed.train import load_bytes, save_bytes
    from alseg.errors import AlsegError

    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _RunsCode(marker)}, hostile)
    with pytest.raises(AlsegError, match="not a checkpoint alseg can load safely"):
        load_bytes(str(hostile))
    assert not marker.exists()
    # what alseg writes loads: tensors, numbers, strings, numpy arrays of its dtypes
    ok = tmp_path / "ok.pt"
    arrays = {str(d): (np.arange(6) % 3).astype(d).reshape(2, 3) for d in (np.float32, np.float64, np.int64, np.uint8, np.bool_)}
    save_bytes({"model": {"w": torch.ones(3)}, "kind": "pixels", "side": 64, "arrays": arrays}, str(ok))
    got = load_bytes(str(ok))
    assert torch.equal(got["model"]["w"], torch.ones(3)) and got["side"] == 64
    assert all(np.array_equal(got["arrays"][k], v) and got["arrays"][k].dtype == v.dtype for k, v in arrays.items())
    # the file is truly hostile: torch's unrestricted loader runs it
    torch.load(hostile, weights_only=False)
    assert marker.exists()
