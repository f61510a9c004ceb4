"""nnU-Net's 2d configuration inside alseg (strongly anisotropic stacks are segmented section by
section): plan and train a tiny 2d model with weight snapshots, predict blockwise, compared with a
whole-volume float32 reference of nnU-Net's own sliding window; its encoder features and its
mirror axes for uncertainty on 3D patches."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from alseg.geometry import Box
from alseg.io.omezarr import create_image, open_volume
from alseg.nnunet import IntensityNorm, NnUNetDirs, export_dataset, plan_and_preprocess, train
from alseg.nnunet.predict import load_predictor, predict_volume
from alseg.spec import TrainingSpec
from alseg.synth import SynthParams, write_synthetic
from nnunet_reference import whole_volume_classes

TINY_2D = {"patch_size_vox": [64, 64], "batch_size": 4, "n_stages": 4, "features_per_stage": [8, 16, 32, 64]}
BOXES = [Box((z, y, x), (z + 8, y + 64, x + 64)) for z in (0, 8) for y in (0, 64) for x in (0, 64)]


@pytest.fixture(scope="module")
def model_2d(tmp_path_factory):
    root = tmp_path_factory.mktemp("nn2d")
    url = str(root / "v.zarr")
    write_synthetic(url, SynthParams.preset("easy", shape=(16, 128, 128), seed=3))
    dirs = NnUNetDirs(str(root / "nnunet"))
    norm = IntensityNorm.of_volume(url)
    export_dataset(dirs, 3, "sections", url, url + "/labels/mitochondria", BOXES, norm=norm)
    plans = plan_and_preprocess(dirs, 3, configuration="2d", overrides=TINY_2D)
    folder = train(dirs, 3, "sections", TrainingSpec(epochs=2, iterations_per_epoch=2, val_iterations_per_epoch=1,
                                                     final_validation=False, snapshot_every=1, batch_size=3),
                   configuration="2d", device="cpu")
    return root, url, norm, folder, plans


@pytest.mark.slow
def test_2d_plan_snapshots_and_blockwise_prediction(model_2d):
    root, url, norm, folder, plans = model_2d
    conf = plans["configurations"]["2d"]
    assert conf["patch_size"] == [64, 64] and conf["spacing"] == [8.0, 8.0], "in-plane patch and spacing"
    assert folder.endswith("__2d")
    fold = os.path.join(folder, "fold_all")
    assert os.path.isfile(os.path.join(fold, "checkpoint_ep1.pth")), "snapshot after epoch 1"
    assert os.path.isfile(os.path.join(fold, "checkpoint_final.pth"))
    with open(os.path.join(fold, "debug.json")) as fh:  # nnU-Net's dump of the trainer's attributes
        assert json.load(fh)["batch_size"] == "3", "the schedule's batch, not the plan's 4"

    # blockwise (blocks of 8 sections, the y-x plane whole): each section is predicted on its own
    out, whole = str(root / "blocks.zarr"), str(root / "whole.zarr")
    res = predict_volume(folder, url, out, norm=norm, block_shape=(8, 128, 128), halo=(0, 0, 0), work_dir=str(root / "w"))
    assert res["blocks"] == 2
    predict_volume(folder, url, whole, norm=norm, block_shape=(16, 128, 128), halo=(0, 0, 0))
    ours = open_volume(out).read()
    assert np.array_equal(ours, open_volume(whole).read()), "sections do not depend on the block they are in"
    predictor = load_predictor(folder)
    ref = whole_volume_classes(predictor, norm(open_volume(url).read()))
    assert (ours == ref).mean() >= 0.99, "nnU-Net's sliding window over every section (float16 accumulation aside)"
    # the snapshot is a model of its own: loadable, and a different one than the final weights
    early = load_predictor(folder, checkpoint="checkpoint_ep1.pth")
    w0 = early.network.state_dict()
    w1 = predictor.network.state_dict()
    assert any(not np.array_equal(w0[k].numpy(), w1[k].numpy()) for k in w0 if w0[k].dtype.is_floating_point)


def test_2d_voxel_size_is_checked_in_plane(model_2d, tmp_path):
    from alseg.errors import SpecError

    root, url, norm, folder, _ = model_2d
    other = create_image(tmp_path / "o.zarr", shape=(8, 64, 64), dtype="uint8", chunks=(8, 64, 64), voxel_size_nm=(30, 10, 10), levels=1)
    with pytest.raises(SpecError, match="trained at"):
        predict_volume(folder, other.url, str(tmp_path / "c.zarr"), norm=norm, block_shape=(8, 64, 64), halo=(0, 0, 0))


def test_2d_features_and_mirror_axes(model_2d):
    import torch

    from alseg.nnunet.features import NnunetFeatures
    from alseg.select.score import PatchScorer

    root, url, norm, folder, _ = model_2d
    feats = NnunetFeatures(folder, norm.to_json(), stage=-2)
    assert feats.stride == (1, 8, 8), "a 2d encoder (strides 1, 2, 2, 2) does not stride in z"
    vol = open_volume(url)
    box = Box((0, 0, 0), (5, 36, 36))
    row = feats.embed_patch(vol, box, (5, 36, 36), None)
    assert row.shape == (feats.dim,) and np.isfinite(row).all()
    # the same statistics from nnU-Net's own encoder call (its skips, one per stage) on the batch of sections
    data = IntensityNorm(**norm.to_json())(vol.read(box))
    data = np.pad(data, [(0, 0), (0, 4), (0, 4)], mode="symmetric")  # mirrored up to 40, a multiple of 8
    with torch.no_grad():
        skips = feats.network.encoder(torch.from_numpy(data)[:, None])
    f = skips[feats.stage].transpose(0, 1).flatten(1)
    np.testing.assert_allclose(row, torch.cat([f.mean(1), f.std(1, unbiased=False)]).numpy(), rtol=1e-4, atol=1e-5)
    scorer = PatchScorer(folder, norm.to_json(), mode="tta", samples=4)
    assert scorer.axes == (1, 2), "a 2d model's mirror axes are the sections' y and x"
    probs = scorer.probabilities(vol.read(Box((0, 0, 0), (2, 64, 64))), 0)
    assert probs.shape == (4, 2, 2, 64, 64) and np.allclose(probs.sum(1), 1, atol=1e-4)
