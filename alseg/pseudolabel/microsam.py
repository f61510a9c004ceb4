"""micro-SAM's automatic instance segmentation as a pseudo-labeller (the only module importing micro_sam).

micro-SAM (Archit et al., Nature Methods 2025; MIT licence) fine-tunes SAM for microscopy; its
``vit_*_em_organelles`` models were trained on EM mitochondria and nuclei. Weights come from a
local checkpoint; nothing is downloaded at run time (micro-SAM would fetch into its cache when
given no checkpoint, so alseg always gives one). Two layouts are read, both through micro-SAM's
own loader (``micro_sam.util.get_sam_model``): a SAM state dict, optionally with the decoder in a
separate file (``decoder_checkpoint``; BioImage.IO publishes ``vit_b.pt`` and ``vit_b_decoder.pt``),
or micro-SAM's ``{"model_state": ..., "decoder_state": ...}``.

Segmentation is micro-SAM's own: AIS (``InstanceSegmentationWithDecoder``: the decoder's
foreground and distance maps, then a seeded watershed) when a decoder is present, else AMG
(``AutomaticMaskGenerator``, SAM's point grid; micro-SAM drops its largest mask as background),
or as ``segmentation_mode`` asks. A batch of slices is embedded as micro-SAM embeds a volume, its
planes ``batch_size`` at a time, then each plane is segmented on its own exactly as micro-SAM's
``automatic_instance_segmentation`` segments a 2D image (the tests hold the two equal). alseg
scales each grey slice robustly to uint8 first (:func:`~alseg.pseudolabel.base.robust_uint8`);
micro-SAM then stretches it (or each tile) to its full range and resizes it to SAM's input.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np

from alseg.errors import DependencyError
from alseg.pseudolabel.base import PseudoLabelError, check_batch, robust_uint8
from alseg.pseudolabel.sam import ensure_nms
from alseg.spec import MicroSAMPseudoLabel

INSTALL = "pip install 'micro_sam>=1.8' (it is in alseg's 'annotate' extra: pip install -e '.[annotate]')"
WEIGHTS = ("micro-SAM's published models: BioImage.IO (e.g. vit_b_em_organelles is 'noisy-ox', files vit_b.pt and "
           "vit_b_decoder.pt) or Zenodo; download on a machine with internet and give the local path")


def consecutive(seg: np.ndarray, min_size_px: int = 0) -> np.ndarray:
    """Instances of at least ``min_size_px`` pixels, renumbered ``1..k`` in increasing order of their
    old ids (0 stays background), uint32."""
    seg = np.asarray(seg)
    ids, sizes = np.unique(seg[seg > 0], return_counts=True)
    ids = ids[sizes >= min_size_px]
    keep = np.isin(seg, ids)
    out = np.zeros(seg.shape, dtype=np.uint32)
    out[keep] = np.searchsorted(ids, seg[keep]) + 1
    return out


def load_model(spec: MicroSAMPseudoLabel, device: str) -> tuple[Any, dict[str, Any]]:
    """micro-SAM's predictor and checkpoint state (``decoder_state`` in it where a decoder came)."""
    from micro_sam import util

    for field, path in (("checkpoint", spec.checkpoint), ("decoder_checkpoint", spec.decoder_checkpoint)):
        if path is not None and not os.path.isfile(path):
            raise DependencyError(f"micro-SAM {field} not found at {path}: expected a local {spec.model_type} weights "
                                  f"file; {WEIGHTS}")
    unpickler = pickle.Unpickler  # micro-SAM's loader replaces pickle.Unpickler process-wide; put it back
    try:
        return util.get_sam_model(model_type=spec.model_type, device=device, checkpoint_path=spec.checkpoint,
                                  decoder_path=spec.decoder_checkpoint, return_state=True)
    except Exception as err:
        files = spec.checkpoint + (f" (decoder {spec.decoder_checkpoint})" if spec.decoder_checkpoint else "")
        raise DependencyError(
            f"{files} is not a micro-SAM {spec.model_type} checkpoint: expected a SAM state dict of the "
            f"{spec.model_type[:5]} encoder, or micro-SAM's {{model_state, decoder_state}}; "
            f"micro-SAM said {type(err).__name__}: {err}") from err
    finally:
        pickle.Unpickler = unpickler


def choose_mode(spec: MicroSAMPseudoLabel, state: dict[str, Any]) -> str:
    """``ais`` or ``amg``: what ``segmentation_mode`` asks, given whether a decoder came."""
    has_decoder = "decoder_state" in state
    if spec.segmentation_mode == "ais" and not has_decoder:
        raise DependencyError(f"segmentation_mode ais needs micro-SAM's instance-segmentation decoder, and "
                              f"{spec.checkpoint} holds none: give decoder_checkpoint (e.g. vit_b_decoder.pt beside "
                              "vit_b.pt) or choose segmentation_mode amg")
    if spec.segmentation_mode == "auto":
        return "ais" if has_decoder else "amg"
    return spec.segmentation_mode


class MicroSAMLabeller:
    """The model is loaded once, in ``__init__`` (once per worker or actor); each call labels a batch."""

    name = "microsam"

    def __init__(self, spec: MicroSAMPseudoLabel, *, device: str | None = None) -> None:
        try:
            import torch
            from micro_sam import automatic_segmentation, instance_segmentation, util
        except ImportError as err:
            raise DependencyError(f"the microsam pseudo-labeller needs micro-SAM: {INSTALL}") from err
        self.spec = spec
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        predictor, state = load_model(spec, self.device)
        self.mode = choose_mode(spec, state)
        self.tiled = spec.tile_shape_px is not None
        ensure_nms(instance_segmentation, util)  # AMG's NMS, where torchvision's operators cannot load
        try:
            self.predictor, self.segmenter = automatic_segmentation.get_predictor_and_segmenter(
                spec.model_type, spec.checkpoint, device=self.device, segmentation_mode=self.mode,
                is_tiled=self.tiled, predictor=predictor, state=state,
                **({"points_per_side": spec.points_per_side} if self.mode == "amg" else {}))
        except Exception as err:
            raise DependencyError(f"micro-SAM could not build its {self.mode} segmenter from {spec.checkpoint}"
                                  f"{' and ' + spec.decoder_checkpoint if spec.decoder_checkpoint else ''}: "
                                  f"{type(err).__name__}: {err}") from err
        self._util = util

    def generate_kwargs(self) -> dict[str, Any]:
        """The arguments of micro-SAM's ``generate`` this spec sets (its defaults for the rest)."""
        s = self.spec
        if self.mode == "ais":
            kwargs = {"center_distance_threshold": s.center_distance_threshold,
                      "boundary_distance_threshold": s.boundary_distance_threshold,
                      "foreground_threshold": s.foreground_threshold, "distance_smoothing": s.distance_smoothing,
                      "min_size": s.min_size_px}
            if self.tiled:  # as automatic_instance_segmentation: the watershed runs on the same tiles,
                # in one thread: micro-SAM smooths its maps in place tile by tile, so threads race on the
                # halos and the labels vary from run to run (seen on 2 cores); pseudo-labels must not
                kwargs.update(tile_shape=s.tile_shape_px, halo=s.tile_halo_px, n_threads=1)
            return kwargs
        # not AMG's min_mask_region_area: that edits each mask (fills holes) and needs OpenCV, which
        # micro-SAM does not install; min_size_px drops small objects afterwards, as AIS's min_size does
        return {"pred_iou_thresh": s.pred_iou_thresh, "stability_score_thresh": s.stability_score_thresh}

    def __call__(self, slices: np.ndarray) -> np.ndarray:
        arr = check_batch(slices)
        out = np.zeros(arr.shape, dtype=np.uint32)
        if not len(arr):
            return out
        grey = np.stack([robust_uint8(img) for img in arr])
        try:
            embeddings = self._util.precompute_image_embeddings(
                self.predictor, grey, ndim=3, tile_shape=self.spec.tile_shape_px, halo=self.spec.tile_halo_px,
                verbose=False, batch_size=self.spec.batch_size)
        except Exception as err:
            raise PseudoLabelError(f"micro-SAM failed to embed slices 0..{len(arr) - 1} of the batch: "
                                   f"{type(err).__name__}: {err}") from err
        generate = self.generate_kwargs()
        for i, img in enumerate(grey):
            init: dict[str, Any] = {"image": img, "image_embeddings": embeddings, "i": i, "verbose": False}
            if self.tiled and self.mode == "ais":
                # micro-SAM's decoder runs in training mode, its BatchNorm on batch statistics: tiles decoded
                # together change each other's maps, so one at a time (micro-SAM's own default)
                init["batch_size"] = 1
            try:
                self.segmenter.initialize(**init)
                seg = np.asarray(self.segmenter.generate(**generate))
            except Exception as err:
                raise PseudoLabelError(f"micro-SAM ({self.mode}) failed on slice {i} of the batch: "
                                       f"{type(err).__name__}: {err}") from err
            if seg.shape != img.shape:
                raise PseudoLabelError(f"micro-SAM returned a mask of shape {seg.shape} for slice {i} of shape {img.shape}")
            out[i] = consecutive(seg, self.spec.min_size_px)
        return out
