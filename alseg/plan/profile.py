"""Throughput profiles: what one node measured (``alseg calibrate``), stored as JSON, read by ``alseg plan``.

A profile names the device it was measured on (CPU model and cores, GPU, torch), the spec
settings it was measured at (:data:`SETTINGS`: the fields that change a stage's speed), the
calibration volume, and one rate per stage, each per worker. ``alseg plan`` warns when the spec
it plans differs from those settings, and scales the rates only in the few ways
:mod:`alseg.plan.model` states.

The built-in :func:`default_profile` is an assumption, not a measurement of your machine: GPU
figures of ``benchmarks/RESULTS.md`` (nvidia-h200) for nnU-Net prediction and the MAE, cpu-2c
figures for the CPU stages, and plain guesses (each named in its ``notes``) where nothing was
measured. Every plan made with it says so.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from alseg.errors import SpecError
from alseg.pipeline.records import field_values
from alseg.spec import JobSpec, problems_of

FORMAT = "alseg-profile/1"
Positive = Annotated[float, Field(gt=0.0)]
NonNeg = Annotated[float, Field(ge=0.0)]

SETTINGS: tuple[str, ...] = (
    "pseudolabel",
    "patches.shape_vox",
    "nnunet.configuration",
    "nnunet.device",
    "nnunet.boundary_class",
    "nnunet.plan_overrides",
    "nnunet.pretrain.batch_size",
    "prediction.block_shape_vox",
    "prediction.halo_vox",
    "prediction.tiling",
    "prediction.mirroring",
    "embedding.source",
    "embedding.model",
    "embedding.backbone",
    "embedding.backbone_args",
    "embedding.conv_width",
    "embedding.pixel_size_nm",
    "embedding.img_size_px",
    "embedding.context",
    "embedding.slices_per_patch",
    "postprocess.block_shape_vox",
    "postprocess.connectivity",
    "postprocess.watershed",
    "resources.pseudolabel.gpus",
    "resources.prediction.gpus",
    "resources.embedding.gpus",
)
"""Spec fields that change how fast a stage runs: a profile records them, a plan compares them."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceInfo(_Model):
    name: str = Field(min_length=1, description="what the profile is named by: the GPU's name, else the host's")
    hostname: str | None = None
    cpu_model: str | None = None
    cpu_count: int = Field(gt=0)
    gpu: str | None = Field(None, description="GPU model (None: CPU only)")
    gpu_count: int = Field(0, ge=0)
    torch: str | None = None
    cuda: str | None = None
    python: str | None = None
    alseg: str | None = None


class PseudolabelRate(_Model):
    """The pseudo-label stage (``pseudolabel_volume``), one worker."""

    method: str
    device: str
    read_voxels_per_s: Positive = Field(description="segmentation pass: voxels of the blocks' read regions (halo included) per second")
    slices_per_s: Positive = Field(description="the same as tile sections (block y x plus halo) per second")
    finish_voxels_per_s: Positive = Field(description="linking, relabelling and the pyramid: volume voxels per second")
    startup_s: NonNeg = Field(description="loading the labeller once per worker")


class EvaluateRate(_Model):
    voxels_per_s: Positive = Field(description="scoring a label volume against ground truth, block by block")


class NnunetRate(_Model):
    """nnU-Net's dataset export, plans and preprocessing, and training (alseg's trainer)."""

    device: str
    patch_vox: list[int] = Field(description="the plan's patch at calibration")
    batch_size: int = Field(gt=0)
    s_per_iteration: Positive = Field(description="one training iteration (steady epochs; validation counted as 1/3)")
    train_startup_s: NonNeg = Field(description="a training process: start, data loaders, network, the first epoch's "
                                  "warm-up beyond a steady epoch, checkpoints")
    plan_fixed_s: NonNeg = Field(description="fingerprint + planning + preprocessing, less the per-case work")
    transfer_fixed_s: NonNeg = Field(description="carrying plans to a fine-tuning dataset, less the per-case work")
    preprocess_voxels_per_s: Positive = Field(description="nnU-Net's preprocessing of one case (in process)")
    export_voxels_per_s: Positive = Field(description="alseg's export of patches as nnU-Net cases")
    model_bytes: int = Field(ge=0, description="size of a checkpoint of the planned network")


class PredictRate(_Model):
    """nnU-Net prediction (``predict_volume``), one worker."""

    device: str
    patch_vox: list[int]
    mirroring: bool
    tiles_per_s: Positive
    tile_voxels_per_s: Positive = Field(description="tiles x patch voxels per second (scales to another patch)")
    load_s: NonNeg = Field(description="a worker loading the model (once per prediction)")
    warmup_s: NonNeg = Field(0.0, description="the first prediction of a process: the network warming up")
    classes: int = Field(gt=0)


class PostprocessRate(_Model):
    """What follows prediction (``run_predict``): class pyramid, mask, 3D instances."""

    stitch_voxels_per_s: Positive = Field(description="3D instances (label_components, or the watershed) per volume voxel")
    other_voxels_per_s: Positive = Field(description="class-map pyramid and mitochondria mask per volume voxel")


class MaeRate(_Model):
    device: str
    model: str
    img_size_px: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    steps_per_s: Positive
    slices_per_s: Positive = Field(description="reading and preparing training sections")
    fixed_s: NonNeg = Field(0.0, description="the rest outside the training loop: losses before and after, held-out "
                            "figures, checkpoints")


class EmbedRate(_Model):
    device: str
    source: str
    slices_per_patch: int = Field(gt=0)
    img_size_px: int = Field(gt=0)
    patches_per_s: Positive
    load_s: NonNeg


class StoreRate(_Model):
    url: str = Field(description="where it was measured (redacted)")
    read_mb_per_s: Positive = Field(description="OME-Zarr read, uncompressed MB (1e6 bytes) per second, one process")
    write_mb_per_s: Positive


class Rates(_Model):
    pseudolabel: PseudolabelRate
    evaluate: EvaluateRate
    nnunet: NnunetRate
    predict: PredictRate
    postprocess: PostprocessRate
    mae: MaeRate | None = Field(None, description="absent when embedding.source is not mae")
    embed: EmbedRate
    store: StoreRate


class Profile(_Model):
    format: Literal["alseg-profile/1"] = FORMAT
    device: DeviceInfo
    created: str
    assumption: bool = Field(False, description="true for the built-in default: not measured on your machine")
    notes: list[str] = Field(default_factory=list)
    settings: dict[str, Any] = Field(description="the spec settings (SETTINGS) the rates were measured at")
    volume_shape: list[int]
    voxel_size_nm: list[float]
    seconds: NonNeg = Field(0.0, description="how long the calibration took")
    rates: Rates

    @field_validator("volume_shape")
    @classmethod
    def _shape(cls, v: list[int]) -> list[int]:
        if len(v) != 3 or any(s <= 0 for s in v):
            raise ValueError(f"expected 3 positive sizes (z, y, x), got {v}")
        return v

    def describe(self) -> str:
        d = self.device
        hw = f"{d.gpu} x{d.gpu_count}" if d.gpu else f"{d.cpu_model or 'CPU'} ({d.cpu_count} cores)"
        what = "ASSUMED (built-in default profile, not measured here)" if self.assumption else f"measured {self.created}"
        return f"{d.name}: {hw}, torch {d.torch or '?'}; {what}"


def settings_of(spec: JobSpec) -> dict[str, Any]:
    """The spec's values of :data:`SETTINGS` (dotted leaves)."""
    return field_values(spec, SETTINGS)


def differences(profile: Profile, spec: JobSpec) -> list[str]:
    """Each setting where the spec differs from what the profile was measured at."""
    now = settings_of(spec)
    out = []
    for key in sorted(set(now) | set(profile.settings)):
        a, b = profile.settings.get(key, "<absent>"), now.get(key, "<absent>")
        if _norm(a) != _norm(b):
            out.append(f"{key}: profile measured at {a!r}, the spec has {b!r}")
    return out


def _norm(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples and lists compare equal, as JSON stores them


def slug(text: str) -> str:
    """A file-name-safe form of a device name (``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``)."""
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return out or "device"


def default_path(profile: Profile) -> Path:
    return Path("profiles") / f"{slug(profile.device.name)}.json"


def save_profile(profile: Profile, path: str | os.PathLike[str]) -> Path:
    """Write a profile as JSON (folders made; written to a temporary name, then moved)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(profile.model_dump(mode="json"), indent=1) + "\n")
    os.replace(tmp, p)
    return p


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read and validate a profile; :class:`SpecError` naming the file and every problem."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError as err:
        raise SpecError(f"profile {p} does not exist: make one with `alseg calibrate SPEC --out {p}` on the node kind "
                        "you will run on, or leave --profile out to plan with the built-in default (an assumption)") from err
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise SpecError(f"profile {p} cannot be read: {err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError(f"profile {p} is not JSON: {err}") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise SpecError(f"profile {p}: expected format {FORMAT!r} (a file `alseg calibrate` wrote), got {got!r}")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as err:
        problems = problems_of(err)
        lines = "; ".join(f"{path}: {msg}" for path, msg in problems)
        raise SpecError(f"profile {p}: {len(problems)} problem(s): {lines}", problems) from None
    bad = [k for k, v in _numbers(profile.model_dump()) if not math.isfinite(v)]
    if bad:
        raise SpecError(f"profile {p}: non-finite figures at {', '.join(bad)}")
    return profile


def _numbers(data: Any, prefix: str = "") -> list[tuple[str, float]]:
    if isinstance(data, dict):
        return [x for k, v in data.items() for x in _numbers(v, f"{prefix}.{k}" if prefix else k)]
    if isinstance(data, float):
        return [(prefix, data)]
    return []


def default_profile() -> Profile:
    """The built-in profile: an assumption, from figures measured elsewhere (see the module docstring)."""
    tile = (20, 320, 320)
    tile_vox = math.prod(tile)
    notes = [
        "ASSUMPTION: not measured on your machine; run `alseg calibrate SPEC` on the node kind you will use",
        "nnU-Net prediction: nvidia-h200, nnU-Net's default plan for 32 x 512 x 512 MitoEM-like cases (patch 20 x 320 x 320), "
        "no mirroring, 106 ms per tile, model load 1.5 s (benchmarks/RESULTS.md, GPU figures 2026-12-04)",
        "MAE: nvidia-h200, 60 ms per step at batch 64 and 256 px (vit_tiny; the conv MAE was not measured there)",
        "pseudo-labels: cpu-2c, classical backend, 2.89 slices of 1024 x 1024 per second per worker on blocks 4 x 512 x 512 "
        "with a 64 px halo; a foundation model (SAM, CellSAM, micro-SAM) is slower and was never measured",
        "stitching: cpu-2c, 128 x 1024 x 1024 in 6.1 s (benchmarks/stitch.py)",
        "GUESSES (never measured): nnU-Net training 0.3 s per iteration at batch 2 on the GPU, its start-up and "
        "preprocessing, evaluation, embedding 50 patches/s, object-store 200 MB/s read and 100 MB/s write per process",
    ]
    seg_read = 2.89 * 1024 * 1024 * (640 * 640) / (512 * 512)  # whole-slice rate on read voxels of 640 x 640 tiles
    return Profile(
        device=DeviceInfo(name="builtin-default", cpu_count=16, gpu="assumed: NVIDIA H200 figures", gpu_count=1),
        created="built-in", assumption=True, notes=notes,
        settings={}, volume_shape=[40, 1024, 1024], voxel_size_nm=[30.0, 8.0, 8.0],
        rates=Rates(
            pseudolabel=PseudolabelRate(method="classical", device="cpu", read_voxels_per_s=seg_read,
                                        slices_per_s=2.89 * 1024 * 1024 / (640 * 640), finish_voxels_per_s=20 * 1024 * 1024 / 2.0,
                                        startup_s=0.0),
            evaluate=EvaluateRate(voxels_per_s=2.0e7),
            nnunet=NnunetRate(device="cuda", patch_vox=list(tile), batch_size=2, s_per_iteration=0.3, train_startup_s=60.0,
                              plan_fixed_s=30.0, transfer_fixed_s=15.0, preprocess_voxels_per_s=3.0e7,
                              export_voxels_per_s=2.0e7, model_bytes=180_000_000),
            predict=PredictRate(device="cuda", patch_vox=list(tile), mirroring=False, tiles_per_s=1 / 0.106,
                                tile_voxels_per_s=tile_vox / 0.106, load_s=1.5, classes=2),
            postprocess=PostprocessRate(stitch_voxels_per_s=128 * 1024 * 1024 / 6.1, other_voxels_per_s=5.0e7),
            mae=MaeRate(device="cuda", model="vit", img_size_px=256, batch_size=64, steps_per_s=1 / 0.060, slices_per_s=500.0),
            embed=EmbedRate(device="cuda", source="mae", slices_per_patch=5, img_size_px=256, patches_per_s=50.0, load_s=2.0),
            store=StoreRate(url="assumed object store", read_mb_per_s=200.0, write_mb_per_s=100.0),
        ),
    )
