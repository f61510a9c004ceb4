"""nnU-Net inside alseg, end to end on CPU with a tiny plan: export, plan, pretrain, fine-tune from the
pretrained checkpoint, predict blockwise; compared with nnU-Net's own whole-array predictor."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from alseg.geometry import Box
from alseg.io.omezarr import create_image, open_volume
from alseg.nnunet import IntensityNorm, NnUNetDirs, NnUNetError, export_dataset, plan_and_preprocess, train, transfer_plans
from alseg.nnunet._worker import apply_overrides
from alseg.nnunet.dataset import targets
from alseg.nnunet.predict import load_predictor, predict_volume
from alseg.spec import TrainingSpec
from alseg.synth import SynthParams, write_synthetic
from nnunet_reference import assert_same_classes, wavefront_logits, whole_volume_logits

TINY = {"patch_size_vox": [16, 64, 64], "batch_size": 2, "n_stages": 4, "features_per_stage": [8, 16, 32, 64]}
BOXES = [Box((z, y, x), (z + 16, y + 64, x + 64)) for z in (0, 16) for y in (0, 64) for x in (0, 64)]


def read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    root = tmp_path_factory.mktemp("nn")
    url = str(root / "v.zarr")
    write_synthetic(url, SynthParams.preset("easy", shape=(32, 128, 128), seed=2))
    return root, url


def test_targets_boundary_and_ignore(tmp_path):
    labels = np.zeros((1, 8, 12), np.uint32)
    labels[0, 2:6, 1:6] = 3
    labels[0, 2:6, 6:11] = 4  # touching the first
    t = targets(labels, boundary=True)
    assert set(np.unique(t)) == {0, 1, 2}
    assert (t[0, 3:5, 2:5] == 1).all() and t[0, 2, 3] == 2 and t[0, 3, 5] == 2 and t[0, 3, 6] == 2, "inner borders, also where objects touch"
    assert set(np.unique(targets(labels, boundary=False))) == {0, 1}


def test_plan_overrides_are_checked():
    plans = {"configurations": {"3d_fullres": {"patch_size": [32, 128, 128], "batch_size": 2, "architecture": {"arch_kwargs": {
        "n_stages": 5, "features_per_stage": [32, 64, 128, 256, 320], "kernel_sizes": [[3, 3, 3]] * 5,
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]], "n_conv_per_stage": [2] * 5, "n_conv_per_stage_decoder": [2] * 4}}}}}
    out = apply_overrides(json.loads(json.dumps(plans)), "3d_fullres", TINY)
    arch = out["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert arch["n_stages"] == 4 and len(arch["strides"]) == 4 and len(arch["n_conv_per_stage_decoder"]) == 3
    assert out["configurations"]["3d_fullres"]["patch_size"] == [16, 64, 64]
    with pytest.raises(ValueError, match="not divisible"):
        apply_overrides(json.loads(json.dumps(plans)), "3d_fullres", {"patch_size_vox": [12, 64, 64]})
    with pytest.raises(ValueError, match="at most"):
        apply_overrides(json.loads(json.dumps(plans)), "3d_fullres", {"n_stages": 7})
    with pytest.raises(ValueError, match="entries"):
        apply_overrides(json.loads(json.dumps(plans)), "3d_fullres", {"features_per_stage": [8, 16]})


@pytest.mark.slow
def test_export_plan_pretrain_finetune_predict(volume, monkeypatch):
    root, url = volume
    dirs = NnUNetDirs(str(root / "nnunet"))
    before = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    norm = IntensityNorm.of_volume(url)
    labels = url + "/labels/mitochondria"

    # 1. pseudo-label dataset (here: the synthetic truth stands in), plans with the tiny overrides
    meta = export_dataset(dirs, 1, "pseudo", url, labels, BOXES[:6], norm=norm, boundary=True)
    assert meta["labels"] == {"background": 0, "mitochondria": 1, "boundary": 2} and meta["numTraining"] == 6
    plans = plan_and_preprocess(dirs, 1, overrides=TINY)
    assert plans["configurations"]["3d_fullres"]["spacing"] == [30.0, 8.0, 8.0], "spacing from the OME-Zarr voxel size"
    assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] == [8, 16, 32, 64]
    pre = train(dirs, 1, "pseudo", TrainingSpec(epochs=2, iterations_per_epoch=2, val_iterations_per_epoch=1, final_validation=False), device="cpu")
    ckpt = os.path.join(pre, "fold_all", "checkpoint_final.pth")
    log = read(os.path.join(dirs.logs, "train-001.log"))
    assert "train_loss" in log and "Epoch 1" in log

    # 2. sparse annotations: only the upper half of each patch is annotated, the rest is ignored
    annotated = create_image(root / "annotated.zarr", shape=(32, 128, 128), dtype="uint8", chunks=(16, 64, 64), voxel_size_nm=(30, 8, 8), levels=1)
    mask = np.zeros((32, 128, 128), np.uint8)
    mask[:, :, :64] = 1
    annotated.write(annotated.bounds, mask)
    meta2 = export_dataset(dirs, 2, "annotated", url, labels, BOXES[6:] + BOXES[:1], norm=norm, boundary=True, annotated_url=annotated.url)
    assert meta2["labels"]["ignore"] == 3
    transfer_plans(dirs, 1, 2)
    # a learning rate so small that fine-tuning cannot move the weights: what we read back is what was loaded
    fine = train(dirs, 2, "annotated", TrainingSpec(epochs=1, iterations_per_epoch=1, val_iterations_per_epoch=1, learning_rate=1e-12,
                                                      final_validation=False), device="cpu", pretrained=ckpt)
    w_pre = torch.load(ckpt, map_location="cpu", weights_only=False)["network_weights"]
    w_fine = torch.load(os.path.join(fine, "fold_all", "checkpoint_final.pth"), map_location="cpu", weights_only=False)["network_weights"]
    encoder = [k for k in w_pre if k.startswith("encoder.") and w_pre[k].dtype.is_floating_point and w_pre[k].numel() > 1]
    assert encoder and all(torch.allclose(w_pre[k], w_fine[k], atol=1e-6) for k in encoder), "pretrained weights were loaded"
    fresh = torch.nn.init  # a fresh network would start from random weights: they differ from the pretrained ones
    assert any(w_pre[k].std() > 0 for k in encoder) and fresh is not None
    assert "pretrained" in read(os.path.join(dirs.logs, "train-002.log")).lower()

    # 3. blockwise prediction (tiles on the global grid, overhangs handed between blocks) is the
    # whole-volume sliding window: equal to a plain float32 reference, whatever the block layout
    out = str(root / "classes.zarr")
    res = predict_volume(fine, url, out, norm=norm, block_shape=(16, 64, 64), halo=(0, 0, 0), work_dir=str(root / "work"))
    assert res["blocks"] == 8
    ours = open_volume(out).read()
    predictor = load_predictor(fine)
    data = norm(open_volume(url).read())
    assert_same_classes(ours, whole_volume_logits(predictor, data))
    # nnU-Net's own predictor accumulates in float16: a few near-tie voxels differ
    own = predictor.predict_single_npy_array(data[None], {"spacing": [30.0, 8.0, 8.0]})
    assert (ours == own).mean() >= 0.99
    assert {k: os.environ.get(k) for k in before} == before, "no nnU-Net environment left behind"


def test_the_tie_aware_comparison_allows_only_ties():
    # 3 classes at 3 voxels: voxel 0 ties classes 0 and 1 (class 2 far below), voxel 1 ties all
    # three, voxel 2 has one clear best (class 2)
    logits = np.array([[2.0, 5.0, 0.1], [2.0 + 1e-7, 5.0 - 1e-7, 0.2], [-3.0, 5.0, 0.9]], np.float32)[:, None, None, :]
    ok = dict(max_ties=1.0)
    assert_same_classes(np.array([[[0, 0, 2]]]), logits, **ok)
    assert_same_classes(np.array([[[1, 2, 2]]]), logits, **ok)
    for bad in ([[[2, 0, 2]]], [[[0, 0, 1]]], [[[0, 0, 0]]]):  # class 2 at a 0/1 tie; not the clear best
        with pytest.raises(AssertionError, match="away from any tie"):
            assert_same_classes(np.array(bad), logits, **ok)
    with pytest.raises(AssertionError, match="ties"):
        assert_same_classes(np.array([[[0, 0, 2]]]), logits)  # 2 of 3 voxels tie: too many to mean anything
    with pytest.raises(AssertionError, match="against logits"):
        assert_same_classes(np.zeros((1, 1, 2), np.uint8), logits, **ok)


def test_missing_model_and_checkpoint_errors(tmp_path):
    from alseg.errors import SpecError

    with pytest.raises(SpecError, match="no trained model"):
        load_predictor(str(tmp_path / "Dataset001_x" / "nnUNetTrainerAlseg__nnUNetPlans__3d_fullres"))
    with pytest.raises(NnUNetError, match="does not exist"):
        train(NnUNetDirs(str(tmp_path)), 1, "x", TrainingSpec(epochs=1), pretrained=str(tmp_path / "none.pth"))


@pytest.fixture(scope="module")
def tiny_model(volume):
    root, url = volume
    dirs = NnUNetDirs(str(root / "nnunet-tiny"))
    norm = IntensityNorm.of_volume(url)
    export_dataset(dirs, 7, "tiny", url, url + "/labels/mitochondria", BOXES[:4], norm=norm)
    plan_and_preprocess(dirs, 7, overrides=TINY)
    folder = train(dirs, 7, "tiny", TrainingSpec(epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1, final_validation=False), device="cpu")
    return folder, norm


@pytest.mark.slow
@pytest.mark.ray
def test_prediction_on_ray_actors_equals_serial_and_writes_probabilities(volume, tiny_model, ray_cluster, tmp_path):
    root, url = volume
    folder, norm = tiny_model
    serial, ray_out, prob = str(tmp_path / "s.zarr"), str(tmp_path / "r.zarr"), str(tmp_path / "p.zarr")
    serial_prob = str(tmp_path / "sp.zarr")
    predict_volume(folder, url, serial, norm=norm, block_shape=(32, 128, 128), halo=(0, 0, 0), probability_url=serial_prob)  # one block
    res = predict_volume(folder, url, ray_out, norm=norm, block_shape=(16, 64, 64), halo=(0, 0, 0), probability_url=prob,
                         runner=ray_cluster, workers=2, work_dir=str(tmp_path / "work"))
    assert res["blocks"] == 8 and len(list((tmp_path / "work" / "predict-tiles").glob("*.json"))) == 8
    classes, ps = open_volume(ray_out).read(), open_volume(serial_prob).read()
    # A Ray actor runs torch with its own thread count, and oneDNN's convolutions round differently
    # (measured: up to 4e-6 in probability; 8 serial blocks against one: 2e-7). This 2-iteration model
    # leaves ~180 voxels within 1e-4 of one half, where such rounding may flip the argmax: the classes
    # must agree everywhere else (CI failed once on an exact comparison).
    assert np.abs(open_volume(prob).read() - ps).max() < 1e-4, "8 blocks on Ray give one block's probabilities"
    clear = np.abs(ps - 0.5) >= 1e-4
    assert clear.mean() > 0.99 and np.array_equal(open_volume(serial).read()[clear], classes[clear]), "8 blocks on Ray equal one block"
    halo_mode = str(tmp_path / "h.zarr")
    predict_volume(folder, url, halo_mode, norm=norm, block_shape=(16, 64, 64), halo=(8, 32, 32), tiling="halo")
    assert (open_volume(halo_mode).read() == classes).mean() >= 0.99, "the halo mode runs nnU-Net's own window per block"
    p = open_volume(prob).read()
    assert p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1
    assert (classes[p > 0.5] == 1).all(), "a class-1 probability above one half is the argmax"


@pytest.mark.slow
def test_global_tiling_runs_in_two_phases_on_a_4x4x4_grid_and_equals_the_wavefront_version(tiny_model, tmp_path):
    """Prediction's dependency chain no longer grows with the block grid: 64 blocks in two phases
    (every block's tiles, then every block's seam), the result bit for bit the wavefront order's."""
    folder, norm = tiny_model
    url = str(tmp_path / "big.zarr")
    write_synthetic(url, SynthParams.preset("easy", shape=(52, 200, 200), seed=5))  # edge blocks (4 or 8 voxels) narrower than the patch
    out, prob, work = str(tmp_path / "c.zarr"), str(tmp_path / "p.zarr"), tmp_path / "work"
    # one tile per forward pass, as the reference runs them (batches move the convolutions' rounding: tested below)
    res = predict_volume(folder, url, out, norm=norm, block_shape=(16, 64, 64), halo=(0, 0, 0), probability_url=prob,
                         work_dir=str(work), batch_tiles=1)
    assert res["blocks"] == 64
    # two phases, whatever the grid: every block in the first, every block with a seam (all but the first) in the second
    assert sorted(p.name for p in work.iterdir() if p.name != "overhangs") == ["predict-seams", "predict-tiles"]
    assert len(list((work / "predict-tiles").glob("*.json"))) == 64 and len(list((work / "predict-seams").glob("*.json"))) == 63
    predictor = load_predictor(folder)
    logits = wavefront_logits(predictor, norm(open_volume(url).read()), (16, 64, 64))
    classes = open_volume(out).read()
    assert np.array_equal(classes, logits.argmax(0)), "the classes equal the wavefront version's"
    e = np.exp(logits - logits.max(0, keepdims=True))
    assert np.array_equal(open_volume(prob).read(), (e[1] / e.sum(0)).astype(np.float32)), "bit for bit"
    assert 0.01 < (classes == 1).mean() < 0.99, "a model that predicts both classes (else equality tests little)"
    assert res["foreground_voxels"] == int((classes == 1).sum())
    # a block whose lower neighbour's overhang is missing fails loudly instead of writing without it
    from alseg.errors import AlsegError

    piece = work / "overhangs" / "b_1_1_1" / "d100.npz"
    assert piece.exists()
    piece.unlink()
    for marker in (work / "predict-seams").glob("*.json"):
        marker.unlink()
    with pytest.raises((RuntimeError, AlsegError), match="missing"):
        predict_volume(folder, url, out, norm=norm, block_shape=(16, 64, 64), halo=(0, 0, 0), work_dir=str(work))


@pytest.mark.slow
@pytest.mark.s3
def test_global_tiling_hands_overhangs_through_object_storage(volume, tiny_model, s3_bucket, tmp_path):
    """Input, outputs and work directory on an S3 server: the overhang pieces travel through the
    work directory's URL (a block on another node reads them there), the result bit for bit the
    local run's, and a piece missing from the bucket fails the seam phase loudly."""
    from alseg.errors import AlsegError
    from alseg.io import store as st

    _, url = volume
    folder, norm = tiny_model
    local, local_prob = str(tmp_path / "c.zarr"), str(tmp_path / "p.zarr")
    predict_volume(folder, url, local, norm=norm, block_shape=(16, 64, 64), halo=(0, 0, 0), probability_url=local_prob,
                   work_dir=str(tmp_path / "w"), batch_tiles=1)
    remote_in = st.join(s3_bucket, "v.zarr")
    write_synthetic(remote_in, SynthParams.preset("easy", shape=(32, 128, 128), seed=2))  # the volume fixture's
    assert np.array_equal(open_volume(remote_in).read(), open_volume(url).read())
    out, prob, work = (st.join(s3_bucket, n) for n in ("c.zarr", "p.zarr", "work"))
    res = predict_volume(folder, remote_in, out, norm=norm, block_shape=(16, 64, 64), halo=(0, 0, 0), probability_url=prob,
                         work_dir=work, batch_tiles=1)
    assert res["blocks"] == 8
    assert np.array_equal(open_volume(out).read(), open_volume(local).read())
    assert np.array_equal(open_volume(prob).read(), open_volume(local_prob).read())
    fs, root = st.filesystem(st.join(work, "overhangs"))
    pieces = sorted(p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p in fs.find(root))
    assert "b_1_1_1/d100.npz" in pieces and all(p.endswith(".npz") for p in pieces), pieces
    assert sorted(os.listdir(tmp_path / "w" / "overhangs" / "b_1_1_1")) == sorted(p.split("/")[1] for p in pieces if p.startswith("b_1_1_1/"))
    st.remove(st.join(work, "overhangs", "b_1_1_1", "d100.npz"))
    for marker in fs.find(st.filesystem(st.join(work, "predict-seams"))[1]):
        fs.rm(marker)
    with pytest.raises((RuntimeError, AlsegError), match="missing"):
        predict_volume(folder, remote_in, out, norm=norm, block_shape=(16, 64, 64), halo=(0, 0, 0), work_dir=work)


def softmax1(logits: np.ndarray) -> np.ndarray:
    """Class 1's probability from (classes, ...) logits."""
    e = np.exp(logits - logits.max(0, keepdims=True))
    return e[1] / e.sum(0)


def test_cpu_batch_pairs_tiles_only_where_pairs_pay():
    from alseg.nnunet.tiles import CPU_BATCH, PAIR_COST, cpu_batch

    assert cpu_batch(0.1258, 0.0446) == CPU_BATCH, "the tiny plan: a pair costs a third of one tile"
    assert cpu_batch(0.2166, 0.4340) == 1, "a 32-256-feature plan: a pair costs two tiles, so a lone tile's twin would waste one"
    assert cpu_batch(1.0, PAIR_COST) == 1 and cpu_batch(1.0, 0.99 * PAIR_COST) == CPU_BATCH
    with pytest.raises(ValueError, match="positive"):
        cpu_batch(0.0, 1.0)


@pytest.mark.slow
def test_a_batch_out_of_memory_runs_in_halves_and_keeps_the_smaller_batch(tiny_model, volume):
    """A forward pass that runs out of memory (raised here by a hook on batches over 2, as a GPU
    would) is split in halves; the runner keeps the size that ran, and the sums are one tile at a
    time's within the convolutions' rounding."""
    from alseg.nnunet.tiles import TileRunner

    _, url = volume
    folder, norm = tiny_model
    data = norm(open_volume(url).read())
    predictor = load_predictor(folder)
    seen: list[int] = []

    def hook(_m, args):
        seen.append(int(args[0].shape[0]))
        if args[0].shape[0] > 2:
            raise torch.OutOfMemoryError("simulated: out of memory")

    handle = predictor.network.register_forward_pre_hook(hook)
    try:
        runner = TileRunner(predictor, 8)
        got = runner.window(data)
    finally:
        handle.remove()
    n = len(predictor._internal_get_sliding_window_slicers(data.shape))
    assert runner.batch == 2 and seen[:3] == [8, 4, 2], seen
    assert n % 8 > 1 and sum(b for b in seen if b <= 2) == n, "every tile ran once, in the calls that fitted"
    ref = TileRunner(predictor, 1).window(data)
    assert np.abs(softmax1(got) - softmax1(ref)).max() < 1e-4


def test_batch_for_memory_fits_a_share_of_the_free_memory():
    from alseg.nnunet.tiles import MAX_BATCH, batch_for_memory

    gib = 1 << 30
    assert batch_for_memory(10 * gib, gib) == 6  # 60 % of 10 GiB in tiles of 1 GiB
    assert batch_for_memory(10 * gib, 3 * gib, share=0.9) == 3
    assert batch_for_memory(gib, 2 * gib) == 1, "at least one tile, even where none fits"
    assert batch_for_memory(1000 * gib, gib) == MAX_BATCH
    with pytest.raises(ValueError, match="positive"):
        batch_for_memory(gib, 0)


@pytest.mark.slow
def test_tiles_run_in_batches_and_equal_one_at_a_time(volume, tiny_model, tmp_path):
    """``prediction.batch_tiles``: tiles go through the network several per forward pass (on a CPU a
    lone last tile in a pair: one sample takes PyTorch's slow kernel); the result is the float32
    one-tile-at-a-time reference up to the convolutions' rounding: classes equal away from ties,
    probabilities within 1e-5."""
    from alseg.nnunet.tiles import CPU_BATCH, TileRunner, cpu_batch

    _, url = volume
    folder, norm = tiny_model
    data = norm(open_volume(url).read())
    predictor = load_predictor(folder)
    ref = whole_volume_logits(predictor, data)  # one tile per network call
    n = len(predictor._internal_get_sliding_window_slicers(data.shape))
    seen: list[int] = []
    hook = predictor.network.register_forward_pre_hook(lambda _m, args: seen.append(int(args[0].shape[0])))
    try:
        runner = TileRunner(predictor, 4)
        got = runner.window(data)
        assert seen == [4] * (n // 4) + [n % 4], f"{n} tiles in batches of 4"
        seen.clear()
        acc, weight = np.zeros((2, *data.shape), np.float32), np.zeros(data.shape, np.float32)
        runner.accumulate(data, [(0, 0, 0), (0, 0, 64), (16, 0, 0), (16, 64, 0), (16, 64, 64)], acc, weight)
        assert seen == [4, 2], "the lone fifth tile ran paired with itself"
    finally:
        hook.remove()
    # the automatic CPU batch: pairs, where they pay as on this tiny plan (a single sample takes
    # PyTorch's reference kernel: several times a pair's cost per tile)
    auto = TileRunner(predictor)
    one_s, pair_s = auto.forward_s
    assert auto.batch == cpu_batch(one_s, pair_s) == CPU_BATCH, f"one tile {one_s:.3f} s, a pair {pair_s:.3f} s"
    assert np.abs(softmax1(got) - softmax1(ref)).max() < 1e-4
    assert_same_classes(got.argmax(0), ref)
    # the five tiles alone: their sums are the reference's over what they cover
    one = TileRunner(predictor, 1)
    acc1, weight1 = np.zeros_like(acc), np.zeros_like(weight)
    one.accumulate(data, [(0, 0, 0), (0, 0, 64), (16, 0, 0), (16, 64, 0), (16, 64, 64)], acc1, weight1)
    assert np.array_equal(weight, weight1) and np.abs(acc - acc1).max() <= 1e-5 * max(1.0, np.abs(acc1).max())
    # blockwise prediction with the default batch: the same agreement
    out, prob = str(tmp_path / "c.zarr"), str(tmp_path / "p.zarr")
    predict_volume(folder, url, out, norm=norm, block_shape=(16, 64, 64), halo=(0, 0, 0), probability_url=prob,
                   work_dir=str(tmp_path / "w"))
    classes = open_volume(out).read()
    assert_same_classes(classes, ref)
    assert np.abs(open_volume(prob).read() - softmax1(ref)).max() < 1e-4
    print(f"batched: {(classes == ref.argmax(0)).mean():.6f} of the voxels in the reference's class")


@pytest.mark.slow
def test_tile_step_places_nnunets_tiles_at_that_step_in_both_tilings(volume, tiny_model, tmp_path):
    """``prediction.tile_step`` is nnU-Net's ``tile_step_size``: the blockwise result equals the
    whole-array reference of a predictor made with that step (its own tile placement), and the
    plan's tile count is that placement's."""
    from alseg.errors import SpecError
    from alseg.plan import counts as cnt

    _, url = volume
    folder, norm = tiny_model
    data = norm(open_volume(url).read())
    half = whole_volume_logits(load_predictor(folder), data)
    for step in (0.3, 1.0):
        ref = load_predictor(folder, tile_step=step)
        assert len(list(ref._internal_get_sliding_window_slicers(data.shape))) == cnt.volume_tiles(data.shape, (16, 64, 64), step)
        want = whole_volume_logits(ref, data)
        assert np.abs(want - half).max() > 1e-3, "another step blends other tiles"
        out, prob = str(tmp_path / f"g{step}.zarr"), str(tmp_path / f"p{step}.zarr")
        predict_volume(folder, url, out, norm=norm, block_shape=(16, 64, 64), halo=(0, 0, 0), work_dir=str(tmp_path / f"w{step}"),
                       tile_step=step, probability_url=prob)
        assert_same_classes(open_volume(out).read(), want)
        # the probabilities are this step's: another step's differ by more than 1e-3, summation order
        # moves them by about 1e-5 (1.2e-5 seen on one machine)
        assert np.abs(open_volume(prob).read() - softmax1(want)).max() < 1e-4
        assert np.abs(softmax1(want) - softmax1(half)).max() > 1e-3
    # halo tiling: each block runs nnU-Net's window (its placement at that step, summed in float32); one
    # block is the whole array, so the result is the whole-array reference's
    one, prob = str(tmp_path / "h.zarr"), str(tmp_path / "hp.zarr")
    predict_volume(folder, url, one, norm=norm, block_shape=(32, 128, 128), halo=(0, 0, 0), tiling="halo", tile_step=1.0,
                   probability_url=prob)
    assert_same_classes(open_volume(one).read(), want)
    assert np.abs(open_volume(prob).read() - softmax1(want)).max() < 1e-4
    with torch.no_grad():  # and nnU-Net's own window (summed in float16) agrees with it
        own = ref.predict_sliding_window_return_logits(torch.from_numpy(data[None])).float().numpy()
    # at step 1 the tiles do not overlap, so a tile's corners carry Gaussian weights below float16's
    # smallest normal number: there nnU-Net's float16 products lose their digits; elsewhere they agree
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    g = compute_gaussian((16, 64, 64), 1.0 / 8, 10, torch.float16, torch.device("cpu")).float().numpy()
    faint = np.tile(g, (2, 2, 2)) < 2.0 ** -14
    differ = open_volume(one).read() != own.argmax(0)
    print(f"own window: {differ.mean():.5f} of the voxels differ, {faint.mean():.3f} faint, "
          f"largest logit gap elsewhere {np.abs(own - want)[:, ~faint].max():.2e}")
    gap = np.abs(own - want)[:, ~faint].max()
    assert gap <= 4e-3 * max(1.0, np.abs(want).max()), "float16's rounding, no more"
    top = np.sort(want, axis=0)
    near_tie = top[-1] - top[-2] <= 2 * gap
    assert not (differ & ~faint & ~near_tie).any(), "classes differ only where float16 cannot tell them apart"
    assert np.abs(softmax1(want) - softmax1(half)).max() > 1e-3, "step 0.5 would be told apart"
    assert cnt.volume_tiles(data.shape, (16, 64, 64), 1.0) < cnt.volume_tiles(data.shape, (16, 64, 64), 0.5)
    with pytest.raises(SpecError, match="tile_step"):
        predict_volume(folder, url, one, norm=norm, block_shape=(32, 128, 128), halo=(0, 0, 0), tile_step=0.0)


def test_prediction_refuses_another_voxel_size(volume, tiny_model, tmp_path):
    from alseg.errors import SpecError

    _, url = volume
    folder, norm = tiny_model
    other = create_image(tmp_path / "o.zarr", shape=(16, 64, 64), dtype="uint8", chunks=(16, 64, 64), voxel_size_nm=(40, 8, 8), levels=1)
    with pytest.raises(SpecError, match="trained at"):
        predict_volume(folder, other.url, str(tmp_path / "c.zarr"), norm=norm, block_shape=(16, 64, 64), halo=(0, 0, 0))
