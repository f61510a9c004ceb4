"""The job spec: one validated, immutable description of an alseg job.

A YAML file is parsed once (:func:`load_spec`) into a frozen :class:`JobSpec` and passed down
explicitly. Every model forbids unknown fields, so a typo is an error, not a silent default.
Method choices are discriminated unions on a ``method`` field, each variant carrying only its own
parameters. Defaults follow the paper's MitoEM set-up: 32 x 512 x 512 candidate patches,
k-center greedy on cosine distance, MAE with mask ratio 0.75; one departure: k-center starts from
the most central patch (``selection.start: central``) rather than the paper's 3 random picks
(``start: random``), so that a small budget is spent on the greedy and picks do not depend on the seed.

The spec never holds credentials: storage options come from the environment / fsspec
configuration. Every URL field refuses user info (``KEY:SECRET@``, ``KEY@``) and query parameters
that carry tokens, with a message that never repeats them; no error message echoes a URL
unredacted or a whole section of the spec. Duplicate YAML keys are errors (YAML would keep the
last one silently).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alseg.errors import SpecError
from alseg.io import store as st
from alseg.io.urls import find_credentials, scrub

Shape3 = tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]]
NonNeg3 = tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]
PosFloat3 = tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_url(url: str | None) -> str | None:
    if url is None:
        return None
    url = url.strip()
    if not url:
        raise ValueError("expected a path or URL, got an empty string")
    found = find_credentials(url)
    if found:
        raise ValueError(
            f"credentials must not be written into the spec (this URL carries {found}): remove them and provide "
            "them through the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...) or fsspec's configuration"
        )
    return url


def _urls(*fields: str):
    """A validator that applies :func:`_check_url` to ``fields``."""
    return field_validator(*fields)(_check_url)


# --------------------------------------------------------------------------------------------- #
# input and run directory
# --------------------------------------------------------------------------------------------- #
class InputSpec(_Model):
    """The volume to segment: an OME-Zarr image at any fsspec URL (local path, s3://, gs://, http(s)://)."""

    url: str = Field(description="OME-Zarr image group (the folder holding the NGFF multiscales metadata)")
    level: int = Field(0, ge=0, description="multiscale level to work on (0 = full resolution)")
    ground_truth: str | None = Field(
        None,
        description="labels used for evaluation and by the simulated annotator: a label name inside "
        "the image's 'labels' group, or the URL of a separate OME-Zarr label image",
    )

    missing_chunks: Literal["error", "empty"] = Field(
        "error", description="what an absent chunk of the image means: error (the volume is incomplete; the read fails "
        "naming the chunk) or empty (the volume was written without its empty chunks; they read as zeros). Label "
        "images (the ground truth) always read absent chunks as background")

    _url = _urls("url", "ground_truth")


class RunSpec(_Model):
    """Where every artefact of the job goes."""

    dir: str = Field(description="run directory (a local path or an fsspec URL); one per job")
    overwrite: bool = Field(False, description="allow reusing a run directory that belongs to a different spec")
    seed: int = Field(0, ge=0, description="master random seed; every stage derives its own from it")

    _dir = _urls("dir")


# --------------------------------------------------------------------------------------------- #
# patches
# --------------------------------------------------------------------------------------------- #
class FractionHoldout(_Model):
    """Hold out a slab at one end of an axis (the paper kept MitoEM's last 500 slices for testing)."""

    kind: Literal["fraction"] = "fraction"
    axis: Literal["z", "y", "x"] = "z"
    fraction: float = Field(0.5, gt=0.0, lt=1.0)
    side: Literal["start", "end"] = "end"


class BoxHoldout(_Model):
    """Hold out an explicit box ``[start, stop)`` in voxels."""

    kind: Literal["box"] = "box"
    start: NonNeg3
    stop: Shape3

    @model_validator(mode="after")
    def _ordered(self) -> "BoxHoldout":
        if any(b <= a for a, b in zip(self.start, self.stop)):
            raise ValueError(f"holdout stop {self.stop} must exceed start {self.start} on every axis")
        return self


Holdout = Annotated[Union[FractionHoldout, BoxHoldout], Field(discriminator="kind")]


class PatchSpec(_Model):
    """The candidate-patch pool of active learning."""

    shape_vox: Shape3 = Field((32, 512, 512), description="patch shape in voxels (z, y, x)")
    edge: Literal["pad", "drop"] = Field("pad", description="keep partial edge patches (padded) or drop them")
    holdout: Holdout | None = Field(
        default_factory=FractionHoldout, description="evaluation region, never in the pool (null: none)"
    )


# --------------------------------------------------------------------------------------------- #
# pseudo-labels
# --------------------------------------------------------------------------------------------- #
class _Linking(_Model):
    block_shape_vox: Shape3 = Field((16, 512, 512), description="blocks of the pseudo-label pass (slices x tile)")
    halo_px: int = Field(64, ge=0, description="in-plane context around each tile: wider than the largest organelle")
    link_iou: float = Field(0.2, gt=0.0, le=1.0, description="minimum score to link 2D instances between slices")
    link_measure: Literal["iou", "overlap"] = Field(
        "iou", description="linking score: IoU, or the overlap coefficient |a & b| / min(|a|, |b|) (links a small "
        "cross-section to a larger one it lies in)")
    min_size_vox: int = Field(1000, ge=0, description="3D instances smaller than this are dropped")
    link_gap: int = Field(0, ge=0, le=1, description="1: bridge one section where an object is missed (a piece "
                          "without a link to the next section is linked to one two sections on without a link back)")


    @model_validator(mode="after")
    def _halo_fits_tile(self) -> "_Linking":
        if self.halo_px > min(self.block_shape_vox[1:]):
            raise ValueError(f"halo_px {self.halo_px} is larger than the tile {self.block_shape_vox[1:]}")
        return self


class ClassicalPseudoLabel(_Linking):
    """Weight-free EM default: dark, compact, membrane-bounded organelles in each slice.

    Denoise, optionally equalise local contrast, keep the dark side of a threshold, open with a disk
    wider than membranes (which are thin and dark too), fill holes, keep compact objects, split
    touching ones with a distance-transform watershed. Sizes are physical (nm), so one setting
    serves volumes of any pixel size; the defaults were chosen on the VNC stack (4.6 nm pixels).
    """

    method: Literal["classical"] = "classical"
    denoise_sigma_nm: float = Field(23.0, ge=0.0, description="Gaussian denoising sigma")
    local_contrast: bool = Field(False, description="equalise local contrast (CLAHE) before thresholding")
    contrast_window_nm: float = Field(1000.0, gt=0.0, description="local-contrast (CLAHE) and local-threshold window")
    threshold: Literal["quantile", "otsu", "local"] = Field(
        "quantile", description="quantile: the darkest dark_fraction of each slice; otsu: global; local: adaptive")
    dark_fraction: float = Field(0.22, gt=0.0, lt=1.0, description="quantile threshold: fraction of darkest pixels kept")
    opening_radius_nm: float = Field(14.0, ge=0.0, description="disk opening that removes membranes thinner than twice this")
    min_area_nm2: float = Field(21000.0, ge=0.0, description="smaller 2D objects are dropped (21,000 nm2: a disk of radius 82 nm)")
    min_solidity: float = Field(0.8, ge=0.0, le=1.0, description="objects less convex than this are dropped")
    watershed_min_distance_nm: float = Field(70.0, gt=0.0, description="closest centres of two touching organelles")
    filter_pieces: bool = Field(
        False, description="test area and solidity on the watershed's pieces, not on whole connected components: keeps "
        "touching or branched organelles that are not convex together (the synthetic volumes); on VNC it adds false pieces")


class CellSAMPseudoLabel(_Linking):
    """CellSAM (installed from its repository; not on PyPI)."""

    method: Literal["cellsam"] = "cellsam"
    weights_path: str | None = Field(None, description="local weights file; else CellSAM's own token variable")
    batch_size: int = Field(8, gt=0)
    bbox_threshold: float = Field(0.4, gt=0.0, lt=1.0)

    _url = _urls("weights_path")


class SAMPseudoLabel(_Linking):
    """segment-anything's automatic mask generator from a local checkpoint."""

    method: Literal["sam"] = "sam"
    checkpoint: str = Field(description="local SAM checkpoint (.pth)")
    model_type: Literal["vit_b", "vit_l", "vit_h"] = "vit_b"
    points_per_side: int = Field(32, gt=0)
    pred_iou_thresh: float = Field(0.88, gt=0.0, lt=1.0)
    stability_score_thresh: float = Field(0.95, ge=0.0, le=1.0)
    min_mask_area_px: int = Field(50, ge=0, description="smaller masks are dropped")
    batch_size: int = Field(4, gt=0)

    _url = _urls("checkpoint")


class MicroSAMPseudoLabel(_Linking):
    """micro-SAM's automatic instance segmentation from a local checkpoint (nothing is downloaded).

    AIS (the checkpoint's instance-segmentation decoder: foreground, centre and boundary distances,
    then a seeded watershed) where the checkpoint, or ``decoder_checkpoint``, holds a decoder; else
    AMG (SAM's point-grid mask generator). The defaults are micro-SAM's own (its ``generate``
    arguments); its annotator's setting for the EM organelle models is centre 0.3, boundary 0.4,
    distance smoothing 1.2, minimum size 100 px.
    """

    method: Literal["microsam"] = Field("microsam", description="micro-SAM's automatic instance segmentation")
    checkpoint: str = Field(
        description="local micro-SAM checkpoint (.pt): a SAM state dict, or micro-SAM's {model_state, decoder_state} "
        "with the instance-segmentation decoder; downloaded by hand, never at run time")
    decoder_checkpoint: str | None = Field(
        None, description="local decoder weights published beside the encoder (BioImage.IO's vit_b_decoder.pt for "
        "vit_b_em_organelles); null: the decoder in checkpoint, if any")
    model_type: str = Field(
        "vit_b_em_organelles", pattern=r"^vit_[blht](_[a-z0-9_]+)?$",
        description="micro-SAM model name (vit_b_em_organelles, vit_l_em_organelles, vit_b_lm, vit_b, ...); its "
        "first five letters name the encoder architecture of the checkpoint")
    segmentation_mode: Literal["auto", "ais", "amg"] = Field(
        "auto", description="auto: AIS when a decoder is present, else AMG; ais: require the decoder; amg: point grid")
    tile_shape_px: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] | None = Field(
        None, description="micro-SAM's own tiling of each slice (y, x) for embeddings and post-processing; null: whole "
        "slices, resized by SAM to its input size")
    tile_halo_px: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]] | None = Field(
        None, description="overlap of micro-SAM's tiles (y, x); required with tile_shape_px")
    center_distance_threshold: float = Field(0.5, gt=0.0, le=1.0, description="AIS: seeds where the centre distance is below this")
    boundary_distance_threshold: float = Field(0.5, gt=0.0, le=1.0, description="AIS: seeds where the boundary distance is below this")
    foreground_threshold: float = Field(0.5, ge=0.0, lt=1.0, description="AIS: foreground where the prediction is above this")
    distance_smoothing: float = Field(1.6, ge=0.0, description="AIS: Gaussian sigma (px) on the distance predictions")
    points_per_side: int = Field(32, gt=0, description="AMG: prompt grid of points_per_side squared points per slice or tile")
    pred_iou_thresh: float = Field(0.88, ge=0.0, lt=1.0, description="AMG: masks of lower predicted IoU are dropped")
    stability_score_thresh: float = Field(0.95, ge=0.0, le=1.0, description="AMG: masks of lower stability are dropped")
    min_size_px: int = Field(0, ge=0, description="smaller 2D objects are dropped (micro-SAM's AIS min_size; after AMG "
                             "the same filter)")
    batch_size: int = Field(4, gt=0, description="slices per labeller call, and slices (or tiles) per encoder pass "
                            "(the decoder takes one at a time: its batch statistics would change the labels)")

    _url = _urls("checkpoint", "decoder_checkpoint")

    @model_validator(mode="after")
    def _tiling(self) -> "MicroSAMPseudoLabel":
        if (self.tile_shape_px is None) != (self.tile_halo_px is None):
            raise ValueError("tile_shape_px and tile_halo_px go together: give both (micro-SAM tiling) or neither")
        return self


PseudoLabel = Annotated[
    Union[ClassicalPseudoLabel, CellSAMPseudoLabel, SAMPseudoLabel, MicroSAMPseudoLabel], Field(discriminator="method")
]


# --------------------------------------------------------------------------------------------- #
# nnU-Net
# --------------------------------------------------------------------------------------------- #
class PlanOverrides(_Model):
    """Edits to nnU-Net's own plans before training (tests and CPU demos shrink the network)."""

    patch_size_vox: Shape3 | tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] | None = Field(
        None, description="nnU-Net's training patch: (z, y, x), or (y, x) for configuration 2d")
    batch_size: int | None = Field(None, gt=0)
    features_per_stage: tuple[Annotated[int, Field(gt=0)], ...] | None = None
    n_stages: int | None = Field(None, gt=0)
    dropout_p: float | None = Field(
        None, ge=0.0, lt=1.0, description="dropout after every encoder and decoder convolution (nnU-Net has none by "
        "default); needed for selection.mode mc_dropout")


class TrainingSpec(_Model):
    epochs: int = Field(1000, gt=0)
    iterations_per_epoch: int = Field(250, gt=0)
    val_iterations_per_epoch: int = Field(50, ge=0)
    learning_rate: float = Field(1e-2, gt=0.0)
    batch_size: int | None = Field(
        None, gt=0, description="training batch of this stage (default: the plan's, nnunet.plan_overrides.batch_size "
        "or nnU-Net's own); the architecture does not depend on it, so a fine-tuning stage on a few annotated patches "
        "can take smaller batches than pretraining")
    final_validation: bool = True
    snapshot_every: int = Field(0, ge=0, description="keep the weights every this many epochs as checkpoint_ep<N>.pth "
                                "(0: none), e.g. for a learning curve")


class NnUNetSpec(_Model):
    configuration: Literal["3d_fullres", "3d_lowres", "2d"] = "3d_fullres"
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="training device (auto: CUDA when present)")
    boundary_class: bool = Field(False, description="add a boundary class to separate touching objects")
    plan_overrides: PlanOverrides = Field(default_factory=PlanOverrides)
    pretrain: TrainingSpec = Field(default_factory=TrainingSpec)
    finetune: TrainingSpec = Field(default_factory=lambda: TrainingSpec(epochs=250, learning_rate=1e-3))
    finetune_from: Literal["pretrained", "scratch"] = Field(
        "pretrained", description="each round fine-tunes the model pretrained on pseudo-labels, or trains from scratch "
        "on the annotated patches alone (the paper's 'w/o pretraining' rows)")

    @model_validator(mode="after")
    def _patch_axes(self) -> "NnUNetSpec":
        patch = self.plan_overrides.patch_size_vox
        axes = 2 if self.configuration == "2d" else 3
        if patch is not None and len(patch) != axes:
            raise ValueError(f"plan_overrides.patch_size_vox {list(patch)} has {len(patch)} axes; configuration "
                             f"{self.configuration} trains on {'(y, x) sections' if axes == 2 else '(z, y, x) patches'}")
        return self


# --------------------------------------------------------------------------------------------- #
# embedding
# --------------------------------------------------------------------------------------------- #
CONV_MAE_STAGES = 4
"""Encoder stages of the conv MAE (alseg/embed/cmae.py): stage k at 2^k times the input pixel size."""
CONV_MAE_EMBED_STAGES = (1, 2)
"""The stages the conv MAE's embedding pools by default (``embedding.embed_stages``)."""


class EmbeddingSpec(_Model):
    """Embeddings of the candidate patches for diversity selection, from one of three sources.

    ``source: mae`` trains a self-supervised masked autoencoder on 2D sections of the pool
    (``model: conv``, the default, or ``model: vit``, a timm ViT); ``nnunet`` pools the pretrained
    nnU-Net's encoder features (no extra training); ``pixels`` is the trivial baseline (PCA of
    the downsampled sections)."""

    source: Literal["mae", "nnunet", "pixels"] = Field(
        "mae", description="where patch embeddings come from: a masked autoencoder trained here, the pretrained nnU-Net's "
        "encoder features, or a PCA of downsampled pixels (the baseline every run measures the others against)")
    model: Literal["conv", "vit"] = Field(
        "conv", description="the MAE: convolutional (block masking, denoised block-normalised targets) or a timm ViT")
    pixel_size_nm: float = Field(
        18.0, gt=0.0, description="in-plane pixel size the model sees (sections are area-averaged to it, so an "
        "organelle spans several mask blocks); sets img_size_px when that is not given")
    img_size_px: int | None = Field(
        None, gt=0, description="side of the model's square input; default: the patch's y-x side at pixel_size_nm, "
        "rounded to the model's granularity (8 px for conv, the ViT's patch size for vit)")
    conv_width: int = Field(16, gt=0, description="conv MAE: channels of its first stage (doubled at each of 4 stages)")
    mask_block_px: int = Field(8, gt=0, description="conv MAE: side of the square blocks that are masked")
    target_sigma_px: float = Field(1.0, ge=0.0, description="conv MAE: Gaussian smoothing of the reconstruction target "
                                   "(removes shot noise, which no model can predict)")
    context: float = Field(2.0, ge=1.0, description="conv MAE: training crops span this many times the patch's side, "
                           "at random positions in the area around it (same pixel size); 1: the patch's sections alone")
    embed_stages: list[int] = Field(
        list(CONV_MAE_EMBED_STAGES), min_length=1, description="conv MAE (ignored by vit, which embeds its mean patch token): encoder stages (0-3; stage k at 2^k times the input pixel size) whose "
        "per-channel means over the section form the embedding; the deepest is left out by default (see alseg/embed/cmae.py); with weights_path, "
        "the checkpoint's")
    backbone: str = Field("vit_tiny_patch16_224", description="vit: timm model name of the encoder (a ViT with a class token)")
    backbone_args: dict[str, int | float | bool] = Field(
        default_factory=dict, description="vit: extra timm arguments, e.g. {embed_dim: 64, depth: 2, num_heads: 2} for a tiny encoder")
    mask_ratio: float = Field(0.6, gt=0.0, lt=1.0)
    decoder_dim: int = Field(128, gt=0, description="vit: decoder width")
    decoder_depth: int = Field(2, gt=0, description="vit: decoder blocks")
    decoder_heads: int = Field(4, gt=0, description="vit: decoder attention heads")
    epochs: int = Field(100, gt=0)
    batch_size: int = Field(64, gt=0)
    learning_rate: float = Field(2e-3, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    warmup_epochs: int = Field(2, ge=0)
    max_train_slices: int = Field(4096, gt=0, description="slices sampled (seeded) from the pool to train on, held in memory at img_size_px")
    heldout_slices: int = Field(64, gt=0, description="of those, slices kept out of training to measure the MAE's loss against the mean predictor's")
    slices_per_patch: int = Field(5, gt=0, description="evenly spaced slices embedded per 3D patch")
    pixels_dim: int = Field(32, gt=0, description="pixels source: PCA components kept")
    nnunet_stage: int = Field(-2, description="nnunet source: encoder stage whose features are pooled (negative: from the deepest)")
    rows_per_chunk: int = Field(1024, gt=0, description="embedding-store rows per chunk (and per work item)")
    weights_path: str | None = Field(None, description="mae: reuse a trained MAE checkpoint instead of training")

    _url = _urls("weights_path")

    @model_validator(mode="after")
    def _embed_stages(self) -> "EmbeddingSpec":
        if any(not 0 <= k < CONV_MAE_STAGES for k in self.embed_stages):
            raise ValueError(f"embed_stages {self.embed_stages}: the conv MAE has stages 0 to {CONV_MAE_STAGES - 1}")
        return self

    @model_validator(mode="after")
    def _heads_divide(self) -> "EmbeddingSpec":
        if self.model == "conv" and self.backbone_args:
            raise ValueError("backbone_args apply to model: vit (the timm encoder); the conv MAE takes conv_width")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"decoder_dim {self.decoder_dim} is not divisible by decoder_heads {self.decoder_heads}")
        return self


# --------------------------------------------------------------------------------------------- #
# selection
# --------------------------------------------------------------------------------------------- #
class _Budget(_Model):
    budget: int = Field(128, gt=0, description="patches selected per active-learning round")
    rounds: int = Field(1, gt=0)


class KCenterSelection(_Budget):
    method: Literal["kcenter"] = "kcenter"
    initial: Literal["random", "annotated"] = Field(
        "annotated", description="centres the greedy starts from: the patches annotated in earlier rounds (a start "
        "as `start` says while none is, i.e. in round 1), or a fresh start in every round (earlier rounds' patches "
        "are still never picked again)")
    start: Literal["random", "central", "outlier"] = Field(
        "central", description="first pick when the greedy has no centres yet (no annotated patches in play): random "
        "= n_initial seeded random patches (the paper's option); central = the one patch nearest the mean of the "
        "candidates' embeddings (L2-normalised for cosine); outlier = the one patch farthest from that mean. central "
        "and outlier do not depend on the seed and leave the rest of the budget to the greedy")
    n_initial: int = Field(3, ge=1, description="random initial picks with start: random (the paper's k = 3)")
    distance: Literal["cosine", "euclidean"] = "cosine"
    foreground_min: float | None = Field(
        None, ge=0.0, lt=1.0, description="foreground-aware k-center: only patches whose pseudo-label foreground "
        "fraction is above this are candidates (0.0: every patch whose pseudo-labels hold any mitochondrion), as long "
        "as at least the budget of them is left; else k-center over all. None: every patch")


class RandomSelection(_Budget):
    method: Literal["random"] = "random"


class ForegroundRandomSelection(_Budget):
    """Random among the patches whose pseudo-labels hold mitochondria, each with probability in
    proportion to its pseudo-label foreground: the foreground-aware random baseline that
    label-efficiency studies (nnActive, TMLR 2025) found most query strategies fail to beat."""

    method: Literal["foreground_random"] = "foreground_random"
    min_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="patches whose pseudo-label foreground fraction is at or "
                                "below this are picked only when too few others are left (then uniformly)")


class KMeansSelection(_Budget):
    method: Literal["kmeans"] = "kmeans"
    iterations: int = Field(25, gt=0)


class EntropySelection(_Budget):
    method: Literal["entropy"] = "entropy"


class LeastConfidenceSelection(_Budget):
    method: Literal["least_confidence"] = "least_confidence"


class BALDSelection(_Budget):
    method: Literal["bald"] = "bald"
    mode: Literal["mc_dropout", "tta"] = Field(
        "tta", description="tta: disagreement over nnU-Net's mirror flips (its networks have no dropout); "
        "mc_dropout: dropout kept on at inference, only for networks that have dropout layers")
    samples: int = Field(8, gt=1)


class HybridSelection(_Budget):
    method: Literal["hybrid"] = "hybrid"
    uncertainty: Literal["entropy", "least_confidence"] = "entropy"
    shortlist_factor: int = Field(4, gt=1, description="k-center picks budget from the top factor x budget uncertain")


Selection = Annotated[
    Union[
        KCenterSelection,
        RandomSelection,
        ForegroundRandomSelection,
        KMeansSelection,
        EntropySelection,
        LeastConfidenceSelection,
        BALDSelection,
        HybridSelection,
    ],
    Field(discriminator="method"),
]


# --------------------------------------------------------------------------------------------- #
# annotation
# --------------------------------------------------------------------------------------------- #
class SimulatedAnnotation(_Model):
    """An oracle that copies the ground truth of the selected patches (benchmarks)."""

    method: Literal["simulated"] = "simulated"


class ManualAnnotation(_Model):
    """Export selected patches for napari / micro-SAM and import the labels people draw."""

    method: Literal["manual"] = "manual"
    export_format: Literal["tif", "zarr"] = "tif"
    import_dir: str | None = Field(None, description="where annotated labels are read back from")

    _url = _urls("import_dir")


Annotation = Annotated[Union[SimulatedAnnotation, ManualAnnotation], Field(discriminator="method")]


# --------------------------------------------------------------------------------------------- #
# prediction, post-processing, evaluation
# --------------------------------------------------------------------------------------------- #
class _Blockwise(_Model):
    block_shape_vox: Shape3 = Field((64, 512, 512))
    halo_vox: NonNeg3 = Field((8, 64, 64))

    @model_validator(mode="after")
    def _halo_fits(self) -> "_Blockwise":
        if any(h > b for h, b in zip(self.halo_vox, self.block_shape_vox)):
            raise ValueError(f"halo {self.halo_vox} is larger than the block {self.block_shape_vox} on some axis")
        return self


class PredictionSpec(_Blockwise):
    tiling: Literal["global", "halo"] = Field(
        "global", description="global: nnU-Net's tiles placed on the whole volume, each computed once (no halo needed); "
        "halo: each block slides its own window over the block grown by halo_vox")
    mirroring: bool = False
    tile_step: float = Field(
        0.5, ge=0.25, le=1.0, description="nnU-Net's tile_step_size: tiles start at most this fraction of the patch apart "
        "(0.5, nnU-Net's default; 1.0 abuts tiles: about 7x fewer for a 3D patch; costs in docs/DECISIONS.md)")
    batch_tiles: int = Field(
        0, ge=0, le=64, description="tiles per forward pass (0: automatic: pairs on a CPU where they pay, from the free memory on a GPU; "
        "1: one at a time, as nnU-Net's own predictor)")
    gaussian_blending: bool = True
    output: Literal["semantic", "probabilities"] = "semantic"


class PostprocessSpec(_Blockwise):
    halo_vox: NonNeg3 = Field((0, 0, 0))
    connectivity: Literal[6, 26] = 26
    min_size_vox: int = Field(500, ge=0)
    watershed: Literal["none", "distance", "boundary"] = Field(
        "none", description="split touching objects: seeded watershed on the distance transform or a boundary map")
    seed_distance_nm: float = Field(50.0, gt=0.0, description="distance watershed: seeds lie at least this deep inside objects")
    boundary_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="boundary watershed: seeds lie where the boundary map is below this")


class EvaluationSpec(_Model):
    iou_thresholds: tuple[Annotated[float, Field(gt=0.0, le=1.0)], ...] = (0.5, 0.75)

    @field_validator("iou_thresholds")
    @classmethod
    def _non_empty(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v:
            raise ValueError("expected at least one IoU threshold")
        return v


# --------------------------------------------------------------------------------------------- #
# resources
# --------------------------------------------------------------------------------------------- #
class StageResources(_Model):
    """Per-worker resources of one stage, handed to Ray (never hard-coded in decorators)."""

    cpus: float = Field(1.0, ge=0.0)
    gpus: float = Field(0.0, ge=0.0)
    memory_gb: float | None = Field(None, gt=0.0)
    workers: int | None = Field(None, gt=0, description="concurrent workers (default: what the cluster fits)")


class ResourcesSpec(_Model):
    backend: Literal["serial", "ray"] = "serial"
    ray_address: str | None = Field(None, description="existing cluster ('auto' or host:port); null starts a local one")
    max_in_flight: int | None = Field(None, gt=0, description="bounded work in flight (default: 2 x workers)")
    retries: int = Field(2, ge=0, description="retries per work item before the job fails naming it")
    pseudolabel: StageResources = Field(default_factory=StageResources)
    nnunet: StageResources = Field(default_factory=lambda: StageResources(cpus=4, gpus=1))
    embedding: StageResources = Field(default_factory=lambda: StageResources(cpus=2, gpus=1))
    prediction: StageResources = Field(default_factory=lambda: StageResources(cpus=2, gpus=1))
    postprocess: StageResources = Field(default_factory=StageResources)
    node_wait_s: float = Field(
        0.0, ge=0.0, description="on an existing (autoscaling) cluster, how long a stage waits for a node that fits "
        "its per-worker request before failing; a local cluster fails at once")

    _url = _urls("ray_address")


# --------------------------------------------------------------------------------------------- #
# the job
# --------------------------------------------------------------------------------------------- #
class JobSpec(_Model):
    """A whole alseg job. Only ``input`` and ``run`` are required."""

    version: Literal[1] = 1
    name: str = Field("alseg-job", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    input: InputSpec
    run: RunSpec
    patches: PatchSpec = Field(default_factory=PatchSpec)
    pseudolabel: PseudoLabel = Field(default_factory=ClassicalPseudoLabel)
    nnunet: NnUNetSpec = Field(default_factory=NnUNetSpec)
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec)
    selection: Selection = Field(default_factory=KCenterSelection)
    annotation: Annotation = Field(default_factory=SimulatedAnnotation)
    prediction: PredictionSpec = Field(default_factory=PredictionSpec)
    postprocess: PostprocessSpec = Field(default_factory=PostprocessSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @model_validator(mode="after")
    def _consistent(self) -> "JobSpec":
        if isinstance(self.annotation, SimulatedAnnotation) and self.input.ground_truth is None:
            raise ValueError("annotation.method 'simulated' needs input.ground_truth (the oracle's labels)")
        sel = self.selection
        if isinstance(sel, KCenterSelection) and sel.start == "random" and sel.n_initial > sel.budget:
            raise ValueError(f"selection.n_initial ({sel.n_initial}) exceeds selection.budget ({sel.budget})")
        return self

    def digest(self) -> str:
        """A stable hash of the spec's content (defaults included), for provenance and caches."""
        return _sha16(without_neutral_additions(self.model_dump(mode="json")))

    def job_content(self) -> dict[str, Any]:
        """What makes this job this job: the spec without where and how it runs (``resources``) and
        without ``run.overwrite`` (a permission, not content)."""
        data = self.model_dump(mode="json", exclude={"resources": True, "run": {"overwrite"}})
        return without_neutral_additions(data)

    def job_digest(self) -> str:
        """The hash a run directory records of the job that owns it (:meth:`job_content`)."""
        return _sha16(self.job_content())


def ground_truth_url(spec: JobSpec) -> str | None:
    """The ground-truth label image a spec names: a label inside the image, or its own URL."""
    gt = spec.input.ground_truth
    if gt is None:
        return None
    return gt if ("/" in gt or ":" in gt) else st.join(spec.input.url, "labels", gt)


# Fields added after jobs were run, with the value that does what the code did before them: left out
# of a job's content (and of a pseudo-label signature) at that value, so that adding one does not make
# every stored run, sweep result and pseudo-label volume stale. Any other value is content.
NEUTRAL_ADDITIONS: dict[str, dict[str, Any]] = {"pseudolabel": {"link_gap": 0, "filter_pieces": False}, "selection": {"foreground_min": None},
                                                 "prediction": {"tile_step": 0.5, "batch_tiles": 0}}


def without_neutral_additions(content: dict[str, Any], section: str | None = None) -> dict[str, Any]:
    """``content`` (a job's, or with ``section`` that section's own dump) less the added fields at
    their neutral value (:data:`NEUTRAL_ADDITIONS`)."""
    out = dict(content)
    for name, fields in NEUTRAL_ADDITIONS.items():
        if section is not None and name != section:
            continue
        part = out if section is not None else out.get(name)
        if not isinstance(part, dict):
            continue
        part = {k: v for k, v in part.items() if not (k in fields and v == fields[k])}
        if section is not None:
            out = part
        else:
            out[name] = part
    return out


def _sha16(obj: Any) -> str:
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------- #
# loading
# --------------------------------------------------------------------------------------------- #
def _path_of(loc: tuple[Any, ...]) -> str:
    # pydantic puts the discriminator's tag in the location ("selection.kcenter.budget"); keep it,
    # it tells which variant was being validated.
    return ".".join(str(p) for p in loc) or "<root>"


def problems_of(err: ValidationError) -> list[tuple[str, str]]:
    """``(field path, message)`` for every error pydantic found.

    The offending value is shown only when it is a short scalar that is not a URL carrying
    credentials (and then with every URL in it redacted): never a whole section of the spec.
    """
    out = []
    for e in err.errors(include_url=False):
        msg = scrub(e["msg"])
        if e["type"] == "extra_forbidden":
            msg = "unknown field (not part of the spec: check its spelling)"
        elif "input" in e and e["type"] not in ("missing",) and _showable(e["input"]):
            shown = scrub(repr(e["input"]))
            msg = f"{msg} (got {shown if len(shown) < 80 else shown[:77] + '...'})"
        out.append((_path_of(e["loc"]), msg))
    return out


def _showable(value: Any) -> bool:
    if isinstance(value, (dict, list, tuple, set)):
        return False
    return not (isinstance(value, str) and find_credentials(value))


def parse_spec(data: Any, *, source: str = "<spec>") -> JobSpec:
    """Validate a mapping into a :class:`JobSpec`, raising :class:`SpecError` with every problem."""
    if not isinstance(data, dict):
        raise SpecError(
            f"{source}: expected a mapping of sections (input, run, ...), got {type(data).__name__}",
            [("<root>", f"expected a mapping, got {type(data).__name__}")],
        )
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        problems = problems_of(err)
        lines = "\n".join(f"  {path}: {msg}" for path, msg in problems)
        # not chained: pydantic's own text repeats the offending values, which may carry secrets
        raise SpecError(f"{source}: {len(problems)} problem(s) in the job spec:\n{lines}", problems) from None


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate a YAML job spec file."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError as err:
        raise SpecError(f"job spec {p} does not exist", [("<file>", "not found")]) from err
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise SpecError(f"job spec {p} cannot be read: {err}", [("<file>", str(err))]) from err
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        msg = scrub(str(err))
        raise SpecError(f"{p}: not valid YAML: {msg}", [("<yaml>", msg)]) from err
    return parse_spec(data, source=str(p))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"found the key {key!r} twice (first at line {seen[key].line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def json_schema() -> dict[str, Any]:
    return JobSpec.model_json_schema()
