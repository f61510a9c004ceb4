"""The ``pixels`` and ``nnunet`` embedding sources against direct computations, and the
embedding-quality stage's figures against the measures run on the store itself.

Real nnU-Net (tiny plans, two pretraining iterations) on a small synthetic volume (128 patches).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from alseg.embed import EmbeddingStore
from alseg.embed.train import load_bytes
from alseg.geometry import Box
from alseg.spec import parse_spec
from tests.pipeline.test_run import _spec_dict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from alseg.pipeline.pretrain import run_pretrain
    from alseg.pipeline.pseudolabels import run_pseudolabels

    from alseg.synth import SynthParams, write_synthetic

    tmp = tmp_path_factory.mktemp("sources")
    write_synthetic(tmp / "v.zarr", SynthParams.preset("medium", shape=(16, 128, 128), seed=3))  # 7 % mitochondria
    spec = parse_spec(_spec_dict(tmp))
    pseudo = run_pseudolabels(spec, progress=False)
    return tmp, pseudo, run_pretrain(spec, progress=False)


def _source_spec(tmp, source, **embedding):
    d = _spec_dict(tmp, **{"run.dir": str(tmp / f"run-{source}"), "patches.shape_vox": [8, 16, 16], "patches.holdout": None})
    d["embedding"] = {"source": source, "slices_per_patch": 2, "rows_per_chunk": 4, **embedding}
    return parse_spec(d)


def _cos(rows):
    u = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return u @ u.T


def test_pixels_source_is_a_pca_of_block_averaged_sections(pretrained):
    from alseg.embed.data import slice_indices
    from alseg.io.omezarr import open_volume
    from alseg.nnunet import IntensityNorm
    from alseg.pipeline.embedding import run_embed

    tmp, _, _ = pretrained
    spec = _source_spec(tmp, "pixels", img_size_px=8, pixels_dim=4)
    info = run_embed(spec, progress=False)
    store = EmbeddingStore.open(info["url"])
    rows = store.load()
    vol = open_volume(spec.input.url)
    norm = IntensityNorm.of_volume(spec.input.url)
    feats = []
    for b in store.boxes:  # each 16 x 16 section area-averaged to 8 x 8 (2 x 2 blocks), sections averaged
        box = Box(tuple(b[:3]), tuple(b[3:]))
        secs = [norm(vol.read(Box((z, *box.start[1:]), (z + 1, *box.stop[1:])))[0]) for z in slice_indices(box, 2)]
        feats.append(np.mean([s.reshape(8, 2, 8, 2).mean(axis=(1, 3)) for s in secs], axis=0).ravel())
    ref = PCA(4).fit_transform(np.array(feats, dtype=np.float64))
    assert rows.shape == (len(store.boxes), 4)
    np.testing.assert_allclose(_cos(rows), _cos(ref), atol=2e-4)  # cosines do not see the components' signs


def test_nnunet_source_pools_the_pretrained_encoder_stage(pretrained):
    import torch

    from alseg.io.omezarr import open_volume
    from alseg.nnunet import IntensityNorm
    from alseg.nnunet.predict import load_predictor
    from alseg.pipeline.embedding import run_embed

    tmp, _, pre = pretrained
    spec = _source_spec(tmp, "nnunet", nnunet_stage=-2)
    info = run_embed(spec, progress=False, pretrained=pre)
    store = EmbeddingStore.open(info["url"])
    rows = store.load()
    ckpt = load_bytes(info["mae"]["checkpoint"])
    net = load_predictor(pre["model_folder"]).network.eval()
    norm = IntensityNorm(**pre["norm"])
    vol = open_volume(spec.input.url)
    ref = []
    for b in store.boxes:
        data = norm(vol.read(Box(tuple(b[:3]), tuple(b[3:]))))
        with torch.no_grad():
            skips = net.encoder(torch.from_numpy(data)[None, None])  # nnU-Net's own encoder forward, every stage
        f = skips[-2][0].flatten(1)
        raw = torch.cat([f.mean(dim=1), f.std(dim=1, unbiased=False)]).numpy()
        ref.append((raw - ckpt["centre"]) / ckpt["scale"])
    ref = np.array(ref)
    np.testing.assert_allclose(rows, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)


def test_quality_stage_figures_equal_the_measures_on_the_store(pretrained):
    from alseg.embed import quality as q
    from alseg.pipeline.content import foreground_fractions
    from alseg.pipeline.embedding import run_embed
    from alseg.pipeline.embedquality import run_embedding_quality

    tmp, pseudo, _ = pretrained
    spec = _source_spec(tmp, "mae", epochs=2, batch_size=8, heldout_slices=8)
    info = run_embed(spec, progress=False)
    got = run_embedding_quality(spec, info, info["mae"], pseudolabel_url=pseudo["url"])
    store = EmbeddingStore.open(info["url"])
    rows, boxes = store.load(), [Box(tuple(b[:3]), tuple(b[3:])) for b in store.boxes]
    gt = foreground_fractions(f"{spec.input.url}/labels/mitochondria", boxes, missing_chunks="empty")
    assert got["patches"] == len(rows) == 128  # a pool this small is measured whole
    e = got["embedding"]
    assert e["r2_ground_truth"] == pytest.approx(q.ridge_r2(rows, gt)[0], abs=1e-9)
    assert e["neighbour_ratio_ground_truth"] == pytest.approx(q.neighbour_ratio(rows, gt))
    assert e["participation_ratio"] == pytest.approx(q.participation_ratio(rows))
    assert got["heldout_ratio"] == pytest.approx(info["mae"]["heldout_loss"] / info["mae"]["heldout_mean_predictor"])
    assert set(got["pixels"]) == set(e)
    assert (tmp / "run-mae" / "embedding" / "quality.json").is_file()
    assert (tmp / "run-mae" / "embedding" / "reconstructions.png").read_bytes().startswith(b"\x89PNG")
