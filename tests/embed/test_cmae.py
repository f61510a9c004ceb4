"""The convolutional MAE's pieces against plain references: smoothing (scipy), block-normalised
targets and the mean predictor's loss (numpy loops), the embedding's pooling, the spec's checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from alseg.embed.cmae import ConvMaskedAutoencoder, gaussian_blur
from alseg.embed.mae import build_mae
from alseg.embed.train import load_bytes, save_bytes
from alseg.errors import SpecError
from alseg.spec import EmbeddingSpec, parse_spec
from tests.pipeline.test_run import _spec_dict


def test_gaussian_blur_matches_scipy():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(24, 20)).astype(np.float64)
    for sigma in (0.7, 1.0, 2.0):
        r = int(3 * sigma + 0.5)
        got = gaussian_blur(torch.from_numpy(img)[None, None], sigma)[0, 0].numpy()
        # torch's "reflect" padding is scipy's "mirror" (the edge pixel not repeated)
        want = ndimage.gaussian_filter(img, sigma, mode="mirror", truncate=r / sigma)
        np.testing.assert_allclose(got, want, atol=1e-10)


def _plain_target(img: np.ndarray, sigma: float, block: int) -> np.ndarray:
    r = int(3 * sigma + 0.5)
    t = ndimage.gaussian_filter(img, sigma, mode="mirror", truncate=r / sigma)
    out = np.empty_like(t)
    for y in range(0, t.shape[0], block):
        for x in range(0, t.shape[1], block):
            b = t[y:y + block, x:x + block]
            out[y:y + block, x:x + block] = (b - b.mean()) / (b.std(ddof=1) + 1e-3)
    return out


def test_target_and_mean_predictor_against_loops():
    torch.manual_seed(0)
    model = ConvMaskedAutoencoder(32, block=8, target_sigma=1.0)
    rng = np.random.default_rng(1)
    imgs = rng.normal(size=(3, 32, 32))
    x = torch.from_numpy(imgs).float()[:, None]
    got = model.target(x)[:, 0].numpy()
    for i in range(3):
        np.testing.assert_allclose(got[i], _plain_target(imgs[i].astype(np.float32).astype(np.float64), 1.0, 8), atol=2e-4)
    keep, mask = model.random_keep(3, 0.6, torch.Generator().manual_seed(2))
    assert mask.shape == (3, 16) and int((~mask).sum(1).unique()) == len(keep[0]) == 6
    # the mean predictor (every masked block predicted as its own mean: 0 after normalisation)
    m = mask.numpy().reshape(3, 4, 4).repeat(8, 1).repeat(8, 2)
    want = (got ** 2 * m).sum() / m.sum()
    assert model.baseline(x, keep, mask) == pytest.approx(want, rel=1e-5)


def test_embedding_is_the_mean_of_the_chosen_stages():
    torch.manual_seed(0)
    model = ConvMaskedAutoencoder(32, width=8, embed_stages=(1, 2)).eval()
    x = torch.randn(2, 1, 32, 32)
    feats = model.features(x, torch.zeros_like(x))
    want = torch.cat([feats[1].mean(dim=(2, 3)), feats[2].mean(dim=(2, 3))], dim=1)
    got = model.embed(x)
    assert got.shape == (2, 8 * 2 + 8 * 4) == (2, model.embed_dim)
    torch.testing.assert_close(got, want)
    # channels-last is a layout, not another network: the same loss as a plain contiguous copy
    plain = ConvMaskedAutoencoder(32, width=8)
    plain.load_state_dict(model.state_dict())
    plain.to(memory_format=torch.contiguous_format)
    keep, mask = model.random_keep(2, 0.6, torch.Generator().manual_seed(3))
    h = torch.cat([x, torch.zeros_like(x)], dim=1)
    a = model.stages[0](h.contiguous(memory_format=torch.channels_last))
    b = plain.stages[0](h)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert float(model.loss(x, keep, mask)) == pytest.approx(float(plain.loss(x, keep, mask)), rel=1e-4)


def test_checkpoint_round_trip_keeps_the_embedding(tmp_path):
    spec = EmbeddingSpec(img_size_px=32, conv_width=8, embed_stages=[0, 2])
    model = build_mae(spec).eval()
    assert model.embed_stages == (0, 2) and model.embed_dim == 8 + 32  # the spec's stages reach the model
    save_bytes({"model": model.state_dict()}, str(tmp_path / "m.pt"))
    fresh = build_mae(spec).eval()
    fresh.load_state_dict(load_bytes(str(tmp_path / "m.pt"))["model"])
    x = torch.randn(3, 1, 32, 32)
    torch.testing.assert_close(fresh.embed(x), model.embed(x), rtol=0, atol=0)
    with pytest.raises(SpecError, match="stage numbers from 0 to 3"):
        ConvMaskedAutoencoder(32, embed_stages=(4,))

def test_embed_stages_are_checked():
    assert EmbeddingSpec().embed_stages == [1, 2]
    with pytest.raises(ValueError, match="stages 0 to 3"):
        EmbeddingSpec(embed_stages=[1, 4])
    with pytest.raises(ValueError):
        EmbeddingSpec(embed_stages=[])


def test_new_pooling_reuses_the_trained_weights_and_old_checkpoints_are_refused(tmp_path):
    """``embed_stages`` changes the embedding, not training: a new value refits the standardisation
    on the same weights. A checkpoint whose standardisation has another width is refused by name."""
    from alseg.embed.sources import load_embedder
    from alseg.pipeline.embedding import run_mae

    def spec(**embedding):
        d = _spec_dict(tmp_path, **{"run.overwrite": True})
        d["embedding"] = {"epochs": 2, "batch_size": 8, "heldout_slices": 8, "conv_width": 8, **embedding}
        return parse_spec(d)

    first = run_mae(spec(), progress=False)
    second = run_mae(spec(embed_stages=[0, 1, 2]), progress=False)
    assert not second["reused"] and second["signature_sha256"] != first["signature_sha256"]
    assert second["losses"] == first["losses"] and second["train_seconds"] < first["train_seconds"]
    b = load_bytes(second["checkpoint"])
    embedder, std = load_embedder(second["checkpoint"])
    assert embedder.dim == 8 + 16 + 32 == len(std["centre"])
    # a checkpoint as an earlier alseg wrote it: the same weights, the standardisation of another pooling
    old = dict(b, centre=np.zeros(224, np.float32), scale=np.ones(224, np.float32))
    save_bytes(old, str(tmp_path / "old.pt"))
    with pytest.raises(SpecError, match="standardises 224 features but its model embeds 56"):
        load_embedder(str(tmp_path / "old.pt"))
