"""A convolutional masked autoencoder for 1-channel EM sections (the default MAE).

Why not only the ViT: on 4.6 nm sections, a ViT MAE with per-patch normalised targets learns the
trivial solution here (it predicts each masked patch's mean: loss 0.996 where the mean predictor
scores 0.996, embeddings no better than untrained ones; measured in issue 20). The targets were
mostly shot noise, and 16 px tokens at full resolution see texture, not organelles. This model
changes what it is asked: the section is read at an organelle-scale pixel size (``pixel_size_nm``,
area-averaged), square blocks of ``mask_block_px`` are masked (``mask_ratio`` of them), and the
target is the section smoothed by a Gaussian of ``target_sigma_px`` (the shot noise removed),
normalised per block (each block minus its mean, over its standard deviation) so that the mean
predictor scores about 1 and anything lower is predicted structure.

Network: four convolution stages (widths w, 2w, 4w, 8w; stride 2 between them; GroupNorm and
GELU), input the masked section and the mask; a decoder without skip connections (so everything
it reconstructs passes through the deepest stage) upsamples back. Embedding: the unmasked
section through the encoder, the per-channel mean over the section of the ``embed_stages``
(stages numbered from 0; default 1 and 2, at 2x and 4x the input pixel size), concatenated.
Not the deepest (3): at a patch's input side (32 px on VNC) it is a 4 x 4 map, the bottleneck of
the reconstruction. Measured on VNC with one trained model (benchmarks/embedding.py
--poolings): R^2 of the mitochondria fraction 0.406 with stages 1-3 pooled by mean and standard
deviation, 0.521 with stages 1-2 by mean (nearest-neighbour content ratio 0.71 and 0.62). On the
synthetic volume the spreads help instead (0.825 without, 0.877-0.906 with): the real data
chose the default.

Training images are ``context`` times the input side (``train_side``): crops at random positions
of wider sections around the pool's patches, at the same pixel size, so the model sees organelles
whole and a new crop every step (measured on VNC: training on the patch-aligned sections alone,
200 passes over 576 images, gave embeddings that knew nothing of the mitochondria; R^2 0.03).
The network is fully convolutional: it embeds the patch at ``img_size``.

The interface matches :class:`alseg.embed.mae.MaskedAutoencoder` (``random_keep``, ``loss``,
``baseline``, ``forward``, ``embed``, ``embed_dim``), so one training loop, its data-parallel
wrapper and its checkpoints serve both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from alseg.errors import SpecError
from alseg.spec import CONV_MAE_EMBED_STAGES as EMBED_STAGES
from alseg.spec import CONV_MAE_STAGES as STAGES


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(groups, cout), nn.GELU())


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of ``(B, 1, H, W)`` with mirrored borders (identity for sigma 0)."""
    if sigma <= 0:
        return images
    r = max(1, int(3 * sigma + 0.5))
    r = min(r, images.shape[-1] - 1, images.shape[-2] - 1)
    t = torch.arange(-r, r + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-(t**2) / (2 * sigma * sigma))
    k = k / k.sum()
    x = F.conv2d(F.pad(images, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


class ConvMaskedAutoencoder(nn.Module):
    def __init__(self, img_size: int, *, width: int = 16, block: int = 8, target_sigma: float = 1.0,
                 context: float = 1.0, embed_stages: tuple[int, ...] = EMBED_STAGES) -> None:
        super().__init__()
        step = 2 ** (STAGES - 1)
        if img_size % block or img_size % step:
            raise SpecError(f"the MAE input side {img_size} px is not a multiple of the mask block ({block} px) "
                            f"and of the network's stride ({step} px)")
        self.img_size, self.block, self.target_sigma, self.context = img_size, block, float(target_sigma), float(context)
        unit = math.lcm(block, step)
        self.train_side = max(img_size, int(round(img_size * max(1.0, context))) // unit * unit)
        self.grid = (self.train_side // block, self.train_side // block)  # the mask grid of training images
        w = [width * 2**k for k in range(STAGES)]
        self.stages = nn.ModuleList([nn.Sequential(_conv(2, w[0]), _conv(w[0], w[0]))] +
                                    [nn.Sequential(_conv(w[k - 1], w[k], 2), _conv(w[k], w[k])) for k in range(1, STAGES)])
        up: list[nn.Module] = []
        for k in range(STAGES - 1, 0, -1):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(w[k], w[k - 1])]
        self.decoder = nn.Sequential(*up, nn.Conv2d(w[0], 1, 1))
        if not embed_stages or any(not 0 <= k < STAGES for k in embed_stages):
            raise SpecError(f"embed_stages {list(embed_stages)}: expected stage numbers from 0 to {STAGES - 1}")
        self.embed_stages = tuple(sorted(set(int(k) for k in embed_stages)))
        self.embed_dim = sum(w[k] for k in self.embed_stages)
        # channels-last convolutions: 1.5x faster training steps on cpu-2c (538 -> 360 ms per batch of 64 crops of 64 px)
        self.to(memory_format=torch.channels_last)

    @property
    def n_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def random_keep(self, batch: int, mask_ratio: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept block indices ``(B, n_keep)`` and the boolean block mask ``(B, L)`` (True: masked), drawn on the CPU."""
        n = self.n_tokens
        n_keep = min(n - 1, max(1, int(round(n * (1.0 - mask_ratio)))))
        noise = torch.rand(batch, n, generator=generator)
        keep = torch.argsort(noise, dim=1)[:, :n_keep]
        mask = torch.ones(batch, n, dtype=torch.bool)
        mask.scatter_(1, keep, False)
        return keep, mask

    def _pixel_mask(self, mask: torch.Tensor, imgs: torch.Tensor) -> torch.Tensor:
        grid = (imgs.shape[-2] // self.block, imgs.shape[-1] // self.block)
        m = mask.reshape(mask.shape[0], 1, *grid).float()
        return m.repeat_interleave(self.block, dim=2).repeat_interleave(self.block, dim=3)

    def features(self, imgs: torch.Tensor, pixel_mask: torch.Tensor) -> list[torch.Tensor]:
        h = torch.cat([imgs * (1.0 - pixel_mask), pixel_mask], dim=1).contiguous(memory_format=torch.channels_last)
        out = []
        for stage in self.stages:
            h = stage(h)
            out.append(h)
        return out

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """The smoothed section, normalised block by block."""
        t = gaussian_blur(imgs.float(), self.target_sigma)
        b = self.block
        blocks = t.unfold(2, b, b).unfold(3, b, b)  # (B, 1, gh, gw, b, b)
        mean = blocks.mean(dim=(-1, -2), keepdim=True)
        std = blocks.std(dim=(-1, -2), keepdim=True)
        blocks = (blocks - mean) / (std + 1e-3)
        n, c, gh, gw = blocks.shape[:4]
        return blocks.permute(0, 1, 2, 4, 3, 5).reshape(n, c, gh * b, gw * b)

    def loss(self, imgs: torch.Tensor, keep: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the masked pixels, against the block-normalised smoothed section."""
        m = self._pixel_mask(mask.to(imgs.device), imgs)
        pred = self.decoder(self.features(imgs, m)[-1])
        return (((pred - self.target(imgs)) ** 2) * m).sum() / m.sum()

    @torch.no_grad()
    def baseline(self, imgs: torch.Tensor, keep: torch.Tensor, mask: torch.Tensor) -> float:
        """The loss of predicting each masked block's own mean (zero after block normalisation)."""
        m = self._pixel_mask(mask.to(imgs.device), imgs)
        return float(((self.target(imgs) ** 2) * m).sum() / m.sum())

    def forward(self, imgs: torch.Tensor, keep: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.loss(imgs, keep, mask)

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The masked input, the prediction and the target, each ``(B, 1, H, W)`` (for pictures)."""
        m = self._pixel_mask(mask.to(imgs.device), imgs)
        return imgs * (1.0 - m), self.decoder(self.features(imgs, m)[-1]), self.target(imgs)

    @torch.no_grad()
    def embed(self, imgs: torch.Tensor) -> torch.Tensor:
        """Per-channel mean of the ``embed_stages`` over the unmasked section: ``(B, D)``."""
        feats = self.features(imgs, torch.zeros_like(imgs[:, :1]))
        return torch.cat([feats[k].flatten(2).mean(dim=2) for k in self.embed_stages], dim=1)
