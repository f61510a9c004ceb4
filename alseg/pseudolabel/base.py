"""The pseudo-labeller interface: a batch of 2D slices in, 2D instance masks out.

A labeller is a callable ``labeller(slices) -> masks`` with ``slices`` of shape ``(N, Y, X)`` (any
real dtype: raw EM intensities) and ``masks`` of the same shape, uint32, instance ids ``1..k``
per slice (0 background; ids need not be consistent between slices: linking makes 3D objects).
A labeller that cannot segment a slice raises :class:`PseudoLabelError`; it never returns an
empty mask in place of an error.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

import numpy as np

from alseg.errors import AlsegError
from alseg.spec import without_neutral_additions


class PseudoLabelError(AlsegError):
    """A pseudo-labeller failed on its input (the message names the slice and the cause)."""


class Labeller(Protocol):
    name: str

    def __call__(self, slices: np.ndarray) -> np.ndarray: ...


def check_batch(slices: np.ndarray) -> np.ndarray:
    arr = np.asarray(slices)
    if arr.ndim != 3:
        raise PseudoLabelError(f"expected a batch of 2D slices (N, Y, X), got shape {arr.shape}")
    if arr.dtype.kind not in "uif" or arr.dtype == np.float16:
        raise PseudoLabelError(f"expected real-valued slices, got dtype {arr.dtype}")
    if not np.isfinite(arr).all() if arr.dtype.kind == "f" else False:
        raise PseudoLabelError("slices contain NaN or infinite values")
    return arr


def check_masks(masks: np.ndarray, slices: np.ndarray, who: str) -> np.ndarray:
    out = np.asarray(masks)
    if out.shape != slices.shape:
        raise PseudoLabelError(f"{who} returned masks of shape {out.shape} for slices of shape {slices.shape}")
    if out.dtype.kind not in "ui" or (out.dtype.kind == "i" and out.size and out.min() < 0):
        raise PseudoLabelError(f"{who} returned masks of dtype {out.dtype}: expected non-negative integers")
    return out.astype(np.uint32, copy=False)


def robust_unit(img: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Intensities scaled to [0, 1] between two percentiles (float32), or between the extremes where
    the percentiles coincide (a few dark pixels in a flat tile); a flat slice becomes zeros."""
    img = np.asarray(img, dtype=np.float32)
    lo, hi = np.percentile(img, [low, high])
    if hi <= lo:
        lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.zeros_like(img)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)


def robust_uint8(img: np.ndarray) -> np.ndarray:
    """A grey slice robustly scaled (:func:`robust_unit`) to uint8: what the SAM-family models are fed."""
    return np.round(robust_unit(img) * 255).astype(np.uint8)


def file_digest(path: str | os.PathLike[str] | None) -> str | None:
    """sha256 of a weights file (the model part of a pseudo-label signature); None without a file."""
    from alseg.io import store as st

    return None if path is None else st.sha256(path)


def make_labeller(spec: Any, *, device: str | None = None, pixel_size_nm: float = 8.0) -> Labeller:
    """The labeller a pseudo-label spec section asks for (weights are loaded here, once);
    ``pixel_size_nm`` (in-plane) turns the classical method's physical sizes into pixels."""
    method = getattr(spec, "method", None)
    if method == "classical":
        from alseg.pseudolabel.classical import ClassicalLabeller

        return ClassicalLabeller(spec, pixel_size_nm=pixel_size_nm)
    if method == "sam":
        from alseg.pseudolabel.sam import SAMLabeller

        return SAMLabeller(spec, device=device)
    if method == "cellsam":
        from alseg.pseudolabel.cellsam import CellSAMLabeller

        return CellSAMLabeller(spec, device=device)
    if method == "microsam":
        from alseg.pseudolabel.microsam import MicroSAMLabeller

        return MicroSAMLabeller(spec, device=device)
    raise PseudoLabelError(f"unknown pseudo-label method {method!r}")


def signature(spec: Any) -> dict[str, Any]:
    """What decides a pseudo-label volume: method, parameters, model weights' hash, alseg version."""
    from alseg import __version__

    params = without_neutral_additions(spec.model_dump(mode="json"), "pseudolabel")
    weights = params.get("weights_path") or params.get("checkpoint")
    sig = {"method": spec.method, "params": params, "model_sha256": file_digest(weights), "alseg": __version__}
    if spec.method == "microsam":  # its post-processing is its own code: a new release may label differently
        sig["micro_sam"] = _version("micro_sam")
    if params.get("decoder_checkpoint") is not None:  # a decoder published beside the encoder (micro-SAM)
        sig["decoder_sha256"] = file_digest(params["decoder_checkpoint"])
    return sig


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None
