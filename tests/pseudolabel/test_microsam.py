"""The micro-SAM backend through the spec, the labeller and the blockwise engine, against micro-SAM's own
``automatic_instance_segmentation`` on the same slices and weights (no weights are reachable here:
the model is the tiny random one below)."""

from __future__ import annotations

import hashlib
import pickle
import sys
import warnings
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
from partitions import same_partition
import torch
from conftest import em_like
from pydantic import TypeAdapter, ValidationError

from alseg.errors import DependencyError
from alseg.io.omezarr import create_image, open_volume
from alseg.pseudolabel import link_stack, make_labeller, pseudolabel_volume, signature
from alseg.pseudolabel.base import robust_uint8
from alseg.pseudolabel.microsam import consecutive
from alseg.spec import MicroSAMPseudoLabel, PseudoLabel

with warnings.catch_warnings():  # micro_sam.util imports napari, whose models warn on pydantic 2
    warnings.simplefilter("ignore", DeprecationWarning)
    pytest.importorskip("micro_sam.automatic_segmentation")
from micro_sam.__version__ import __version__ as micro_sam_version  # noqa: E402
from micro_sam import util as ms_util  # noqa: E402
from micro_sam.automatic_segmentation import automatic_instance_segmentation, get_predictor_and_segmenter  # noqa: E402
from micro_sam.instance_segmentation import (  # noqa: E402
    AutomaticMaskGenerator,
    InstanceSegmentationWithDecoder,
    TiledInstanceSegmentationWithDecoder,
    get_unetr,
)

IMG_SIZE = 64  # SAM's input side (1024 in the published models)
# not micro-SAM's defaults, so that a setting the adapter dropped would show
AIS = {"center_distance_threshold": 0.52, "boundary_distance_threshold": 0.48, "foreground_threshold": 0.49,
       "distance_smoothing": 1.2, "min_size": 5}
AMG = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def tiny_vit_b_sam(checkpoint=None, **_):
    """SAM of the real architecture (segment_anything's classes), shrunk: one ViT block at 64 px. Its
    width stays vit_b's 768, which micro-SAM reads from a checkpoint to pick the architecture."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim = 32
    return Sam(
        image_encoder=ImageEncoderViT(img_size=IMG_SIZE, patch_size=16, embed_dim=768, depth=1, num_heads=12, mlp_ratio=1.0,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
                                      global_attn_indexes=(0,), window_size=14, out_chans=dim),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(IMG_SIZE // 16,) * 2,
                                     input_image_size=(IMG_SIZE, IMG_SIZE), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
                                 transformer_dim=dim, iou_head_depth=1, iou_head_hidden_dim=16),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    ).eval()


@pytest.fixture(scope="module")
def tiny_random_microsam_checkpoint(tmp_path_factory):
    """TEST DOUBLE of micro-SAM's weights: a tiny RANDOMLY INITIALISED SAM (:func:`tiny_vit_b_sam`) and
    micro-SAM's own UNETR decoder on its encoder (``get_unetr``), saved in micro-SAM's layouts:
    ``joint`` ({model_state, decoder_state}, as micro-SAM's training exports), ``sam`` (a plain SAM
    state dict, no decoder) and ``decoder`` (decoder weights alone, as BioImage.IO publishes them).
    While this module runs, micro-SAM's 'vit_b' builder makes the tiny architecture, so its own
    loader reads these files; nothing else of micro-SAM is replaced."""
    folder = tmp_path_factory.mktemp("microsam")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(ms_util.sam_model_registry, "vit_b", tiny_vit_b_sam)
        torch.manual_seed(0)
        sam = tiny_vit_b_sam()
        unetr = get_unetr(sam.image_encoder, device="cpu")
        decoder = {k: v for k, v in unetr.state_dict().items() if not k.startswith("encoder")}
        paths = SimpleNamespace(joint=folder / "joint.pt", sam=folder / "vit_b.pt", decoder=folder / "vit_b_decoder.pt")
        torch.save({"model_state": sam.state_dict(), "decoder_state": decoder}, paths.joint)
        torch.save(sam.state_dict(), paths.sam)
        torch.save(decoder, paths.decoder)
        yield SimpleNamespace(**{k: str(v) for k, v in vars(paths).items()})


def spec_for(checkpoint, **kw):
    return MicroSAMPseudoLabel(checkpoint=checkpoint, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                               center_distance_threshold=0.52, boundary_distance_threshold=0.48, foreground_threshold=0.49,
                               distance_smoothing=1.2, **{"min_size_px": 5, **kw})


def micro_sams_own(checkpoint, mode, *, decoder=None, tile=None, halo=None, **generate):
    """micro-SAM's own 2D call, from its own loader (the oracle): a function of one slice."""
    predictor, state = ms_util.get_sam_model(model_type="vit_b", device="cpu", checkpoint_path=checkpoint,
                                             decoder_path=decoder, return_state=True)
    predictor, segmenter = get_predictor_and_segmenter(
        "vit_b", checkpoint, device="cpu", segmentation_mode=mode, is_tiled=tile is not None, predictor=predictor,
        state=state, **({"points_per_side": 8} if mode == "amg" else {}))
    return lambda img: automatic_instance_segmentation(predictor, segmenter, robust_uint8(img), ndim=2, tile_shape=tile,
                                                       halo=halo, verbose=False, **generate)


def assert_consecutive(masks):
    assert masks.dtype == np.uint32
    for m in masks:
        assert set(np.unique(m).tolist()) == set(range(int(m.max()) + 1)), "ids 1..k per slice"


def test_ais_equals_micro_sams_own_call_on_every_slice(tiny_random_microsam_checkpoint):
    ck = tiny_random_microsam_checkpoint
    lab = make_labeller(spec_for(ck.joint, batch_size=3), device="cpu")
    assert lab.mode == "ais" and type(lab.segmenter) is InstanceSegmentationWithDecoder
    img = em_like(shape=(4, 48, 56))
    got = lab(img)
    assert got.shape == img.shape
    assert_consecutive(got)
    own = micro_sams_own(ck.joint, "ais", **AIS)
    for i in range(len(img)):
        ref = own(img[i])
        assert len(np.unique(ref)) > 2, "the random model still makes several instances"
        assert same_partition(got[i], ref), f"slice {i}"


def test_amg_without_a_decoder_equals_micro_sams_own_call(tiny_random_microsam_checkpoint):
    ck = tiny_random_microsam_checkpoint
    lab = make_labeller(spec_for(ck.sam, min_size_px=2), device="cpu")  # the random model's masks are small
    assert lab.mode == "amg" and type(lab.segmenter) is AutomaticMaskGenerator
    img = em_like(shape=(2, 48, 56), seed=1)
    got = lab(img)
    assert_consecutive(got)
    own = micro_sams_own(ck.sam, "amg", **AMG)
    for i in range(len(img)):
        ref = own(img[i])
        ids, sizes = np.unique(ref[ref > 0], return_counts=True)
        assert (sizes < 2).any() and (sizes >= 2).sum() > 1, "the random model proposes masks on both sides of min_size_px"
        ref[np.isin(ref, ids[sizes < 2])] = 0
        assert same_partition(got[i], ref), f"slice {i}"


def test_a_decoder_beside_the_encoder_runs_ais_as_the_joint_checkpoint(tiny_random_microsam_checkpoint):
    ck = tiny_random_microsam_checkpoint
    img = em_like(shape=(2, 48, 56), seed=2)
    spec = spec_for(ck.sam, decoder_checkpoint=ck.decoder)
    lab = make_labeller(spec, device="cpu")
    assert lab.mode == "ais"
    assert np.array_equal(lab(img), make_labeller(spec_for(ck.joint), device="cpu")(img))
    with open(ck.decoder, "rb") as f:
        assert signature(spec)["decoder_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert "decoder_sha256" not in signature(spec_for(ck.joint)), "other signatures unchanged"
    assert signature(spec)["micro_sam"] == micro_sam_version and micro_sam_version


def test_segmentation_mode_is_obeyed(tiny_random_microsam_checkpoint):
    ck = tiny_random_microsam_checkpoint
    assert make_labeller(spec_for(ck.joint, segmentation_mode="amg"), device="cpu").mode == "amg"
    with pytest.raises(DependencyError, match="needs micro-SAM's instance-segmentation decoder.*decoder_checkpoint"):
        make_labeller(spec_for(ck.sam, segmentation_mode="ais"), device="cpu")


def test_micro_sams_tiling_equals_its_own_tiled_call(tiny_random_microsam_checkpoint):
    ck = tiny_random_microsam_checkpoint
    lab = make_labeller(spec_for(ck.joint, tile_shape_px=(32, 32), tile_halo_px=(8, 8), batch_size=2), device="cpu")
    assert type(lab.segmenter) is TiledInstanceSegmentationWithDecoder
    img = em_like(shape=(2, 32, 56), seed=3)  # 1 x 2 tiles per slice
    got = lab(img)
    assert_consecutive(got)
    # micro-SAM's tiled smoothing races between threads (labels vary run to run): one thread, as alseg;
    # its decoder one tile at a time (its default), while alseg embeds the tiles batch_size at a time
    own = micro_sams_own(ck.joint, "ais", tile=(32, 32), halo=(8, 8), n_threads=1, **AIS)
    for i in range(len(img)):
        ref = own(img[i])
        assert len(np.unique(ref)) > 2
        assert same_partition(got[i], ref), f"slice {i}"


def test_whole_volume_through_the_engine_and_batching_changes_nothing(tiny_random_microsam_checkpoint, tmp_path):
    ck = tiny_random_microsam_checkpoint
    data = em_like(shape=(5, 48, 56), seed=4)
    vol = create_image(tmp_path / "img.zarr", shape=data.shape, dtype="uint8", chunks=(5, 48, 56), voxel_size_nm=(30, 8, 8))
    vol.write(vol.bounds, data)
    out = {}
    for batch in (1, 3):
        spec = spec_for(ck.joint, batch_size=batch, block_shape_vox=(5, 48, 56), halo_px=0, min_size_vox=0)
        res = pseudolabel_volume(vol.url, tmp_path / f"pl{batch}.zarr", spec, work_dir=tmp_path / "work",
                                 block_shape=(5, 48, 56), halo_yx=0, device="cpu")
        out[batch] = open_volume(tmp_path / f"pl{batch}.zarr").read()
        assert res["method"] == "microsam" and res["objects"] == out[batch].max() > 0
    assert np.array_equal(out[1], out[3]), "batch_size 1 and 3 give identical labels"
    ref = link_stack(make_labeller(spec_for(ck.joint), device="cpu")(data), spec.link_iou, 0)
    assert same_partition(out[3], ref), "the engine equals labelling the slices and linking them in memory"


def test_missing_and_corrupt_checkpoints_fail_clearly(tiny_random_microsam_checkpoint, tmp_path):
    ck = tiny_random_microsam_checkpoint
    missing = tmp_path / "vit_b_em_organelles.pt"
    with pytest.raises(DependencyError, match=f"checkpoint not found at {missing}.*BioImage.IO"):
        make_labeller(spec_for(str(missing)), device="cpu")
    with pytest.raises(DependencyError, match="decoder_checkpoint not found"):
        make_labeller(spec_for(ck.sam, decoder_checkpoint=str(missing)), device="cpu")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    unpickler = pickle.Unpickler
    with pytest.raises(DependencyError, match=f"{garbage} is not a micro-SAM vit_b_em_organelles checkpoint: expected"):
        make_labeller(spec_for(str(garbage)), device="cpu")
    with pytest.raises(DependencyError, match=f"decoder {garbage}"):
        make_labeller(spec_for(ck.sam, decoder_checkpoint=str(garbage)), device="cpu")
    other = tmp_path / "other.pt"
    torch.save({"not": torch.zeros(1)}, other)
    with pytest.raises(DependencyError, match="is not a micro-SAM"):
        make_labeller(spec_for(str(other)), device="cpu")
    assert pickle.Unpickler is unpickler, "micro-SAM's loader leaves pickle as it was"


def test_missing_package_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "micro_sam", None)  # import fails as if absent
    with pytest.raises(DependencyError, match="pip install 'micro_sam"):
        make_labeller(MicroSAMPseudoLabel(checkpoint="vit_b.pt"))


def test_spec_section():
    spec = TypeAdapter(PseudoLabel).validate_python({"method": "microsam", "checkpoint": "/w/vit_b.pt"})
    assert type(spec) is MicroSAMPseudoLabel and spec.model_type == "vit_b_em_organelles" and spec.segmentation_mode == "auto"
    for bad in ({"model_type": "vitb_em"}, {"tile_shape_px": (512, 512)}, {"checkpoint": "s3://KEY:SECRET@bucket/vit_b.pt"},
                {"center_distance_treshold": 0.3}):
        with pytest.raises(ValidationError):
            MicroSAMPseudoLabel(**{"checkpoint": "/w/vit_b.pt", **bad})


def test_consecutive_keeps_the_partition_and_drops_small_objects():
    seg = np.array([[0, 7, 7], [3, 0, 9]], np.uint64)
    assert consecutive(seg).tolist() == [[0, 2, 2], [1, 0, 3]] and consecutive(seg).dtype == np.uint32
    assert consecutive(seg, 2).tolist() == [[0, 1, 1], [0, 0, 0]]
