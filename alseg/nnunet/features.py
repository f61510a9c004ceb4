"""The pretrained nnU-Net's encoder features of a candidate patch (the ``nnunet`` embedding source).

The model trained on the pseudo-labels already knows what the data's organelles look like; its
encoder, run on the whole 3D patch (normalised as for prediction, mirrored up to the nominal patch
shape and to a multiple of the network's total stride; a 2d network on each of its sections),
gives feature maps per stage. The
embedding of the patch is the per-channel mean and standard deviation of one stage's map
(``stage``: an index into the encoder's stages, negative from the deepest). No training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alseg.errors import SpecError
from alseg.geometry import Box
from alseg.nnunet.dataset import IntensityNorm
from alseg.nnunet.predict import load_predictor


def _total_stride(encoder: object, ndim: int = 3) -> tuple[int, ...]:
    """The encoder's total stride on the (z, y, x) patch; a 2d network (``ndim`` 2) has none in z."""
    total = None
    for s in getattr(encoder, "strides", []):
        s = (s,) * ndim if isinstance(s, int) else tuple(int(v) for v in s)
        total = s if total is None else tuple(a * b for a, b in zip(total, s))
    return (1,) * (3 - ndim) + (total or (1,) * ndim)


class NnunetFeatures:
    """An :class:`alseg.embed.sources.Embedder` over a trained nnU-Net (fold ``all``)."""

    def __init__(self, model_folder: str, norm: dict[str, float], *, stage: int = -2, device: str = "cpu") -> None:
        import torch

        self.predictor = load_predictor(model_folder, device=device)
        self.network = self.predictor.network.to(torch.device(device)).eval()
        self.encoder = getattr(self.network, "encoder", None)
        stages = getattr(self.encoder, "stages", None)
        if stages is None:
            raise SpecError(f"the nnU-Net at {model_folder} has no encoder with stages (a plain or residual U-Net is needed)")
        n = len(stages)
        if not -n <= stage < n:
            raise SpecError(f"embedding.nnunet_stage {stage}: the encoder has {n} stages")
        self.stage = stage % n
        self.ndim = len(self.predictor.configuration_manager.patch_size)  # 2: a 2d model sees sections
        self.stride = _total_stride(self.encoder, self.ndim)
        self.norm = IntensityNorm(**norm)
        self.device = device
        width = getattr(self.encoder, "output_channels", None)
        self.dim = 2 * int(width[self.stage]) if width is not None else self._probe_dim()

    def _probe_dim(self) -> int:
        return int(self._features(np.zeros(self.stride, np.float32)).shape[0])

    def _features(self, data: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        # a 3D network sees the patch as one (1, 1, z, y, x) input; a 2d one its sections as a batch
        x = (x[None, None] if self.ndim == 3 else x[:, None]).to(self.device)
        with torch.no_grad():
            h = x
            for k, stage in enumerate(self.encoder.stages):
                h = stage(h)
                if k == self.stage:
                    break
            f = h.float().transpose(0, 1).flatten(1)  # channels x (sections and voxels)
            return torch.cat([f.mean(dim=1), f.std(dim=1, unbiased=False)]).cpu().numpy()

    def embed_patch(self, volume: object, valid: Box, nominal: Sequence[int], norm: object) -> np.ndarray:
        data = self.norm(volume.read(valid))  # nnU-Net's own normalisation, not the MAE's
        target = [max(int(n), int(s)) for n, s in zip(nominal, data.shape)]
        target = [-(-t // k) * k for t, k in zip(target, self.stride)]
        pad = [(0, t - s) for t, s in zip(target, data.shape)]
        if any(p[1] for p in pad):
            data = np.pad(data, pad, mode="symmetric")
        return self._features(data).astype(np.float32)
