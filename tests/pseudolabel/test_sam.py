"""The SAM backend's code path with a tiny random-initialised SAM (no weights are reachable here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import em_like

from alseg.errors import DependencyError
from alseg.pseudolabel import make_labeller
from alseg.pseudolabel.sam import SAMLabeller, paint, to_sam_input
from alseg.spec import SAMPseudoLabel


def tiny_sam():
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    dim, size, patch = 32, 64, 16
    return Sam(
        image_encoder=ImageEncoderViT(img_size=size, patch_size=patch, embed_dim=dim, depth=1, num_heads=2, out_chans=dim),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(size // patch, size // patch), input_image_size=(size, size), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
                                 transformer_dim=dim, iou_head_depth=1, iou_head_hidden_dim=16),
    )


SPEC = SAMPseudoLabel(checkpoint="unused.pth", points_per_side=4, pred_iou_thresh=0.01, stability_score_thresh=0.0, min_mask_area_px=0)


def test_tiny_sam_runs_and_paints_like_a_plain_reference():
    from segment_anything import SamAutomaticMaskGenerator

    model = tiny_sam()
    lab = SAMLabeller(SPEC, device="cpu", model=model)
    img = em_like(shape=(2, 48, 56))
    got = lab(img)
    assert got.shape == img.shape and got.dtype == np.uint32
    ref_gen = SamAutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=0.01, stability_score_thresh=0.0)
    for i in range(2):
        with torch.inference_mode():
            masks = ref_gen.generate(to_sam_input(img[i]))
        assert masks, "the random model still proposes masks at these thresholds"
        # plain reference painting: largest first, then renumber by order of first appearance in painting order
        ref = np.zeros(img.shape[1:], np.int64)
        for k, m in enumerate(sorted(masks, key=lambda m: -m["area"])):
            ref[m["segmentation"]] = k + 1
        pairs = np.unique(np.stack([got[i].ravel(), ref.ravel()]), axis=1)
        assert pairs.shape[1] == len(np.unique(got[i])) == len(np.unique(ref)), "same partition"
        assert set(np.unique(got[i])) == set(range(int(got[i].max()) + 1)), "consecutive ids"


def test_painting_keeps_small_masks_on_top_and_drops_tiny_ones():
    big = np.zeros((10, 10), bool)
    big[1:9, 1:9] = True
    small = np.zeros((10, 10), bool)
    small[3:5, 3:5] = True
    tiny = np.zeros((10, 10), bool)
    tiny[0, 0] = True
    out = paint([{"segmentation": small, "area": 4}, {"segmentation": big, "area": 64}, {"segmentation": tiny, "area": 1}], (10, 10), min_area=2)
    assert out[3, 3] == 2 and out[1, 1] == 1 and out[0, 0] == 0 and out.max() == 2


def test_missing_checkpoint_says_where_weights_come_from(tmp_path):
    with pytest.raises(DependencyError, match="checkpoint not found"):
        make_labeller(SPEC.model_copy(update={"checkpoint": str(tmp_path / "sam_vit_b.pth")}))
    bad = tmp_path / "bad.pth"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(DependencyError, match="not a vit_b SAM checkpoint"):
        make_labeller(SPEC.model_copy(update={"checkpoint": str(bad)}))


def test_plain_nms_equals_a_brute_force_reference():
    from alseg.pseudolabel.sam import _plain_batched_nms

    g = torch.Generator().manual_seed(0)
    xy = torch.rand((40, 2), generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand((40, 2), generator=g) * 20], 1)
    scores = torch.rand(40, generator=g)
    cats = torch.randint(0, 3, (40,), generator=g)

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    keep = []
    for i in sorted(range(40), key=lambda i: -float(scores[i])):
        if all(int(cats[i]) != int(cats[k]) or iou(boxes[i].tolist(), boxes[k].tolist()) <= 0.5 for k in keep):
            keep.append(i)
    assert _plain_batched_nms(boxes, scores, cats, 0.5).tolist() == keep
