"""A masked autoencoder (He et al., CVPR 2022) around a timm ViT encoder, for 1-channel EM slices.

Training: the encoder sees a random 25 % of the image's patches (mask ratio 0.75) with their
position embeddings; a small transformer decoder gets the encoded tokens back in place, a shared
learned mask token everywhere else, and predicts the pixels of every patch. The loss is the mean
squared error on the *masked* patches only, against per-patch normalised pixels (each target
patch minus its mean, over its standard deviation).

Embedding: the encoder on the whole image (no masking, no shuffling, no augmentation), the mean
of its patch tokens after the final norm. Deterministic for a given device, batch shape and
thread count.

Randomness (masks) comes only from an explicit ``torch.Generator``, so data-parallel ranks can
draw the same global batch of masks and each take its share.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from alseg.errors import SpecError


def make_encoder(backbone: str, img_size: int, backbone_args: dict[str, Any] | None = None) -> nn.Module:
    """A randomly initialised timm ViT with one input channel and no classifier head."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    try:
        enc = timm.create_model(backbone, pretrained=False, img_size=img_size, in_chans=1, num_classes=0,
                                **(backbone_args or {}))
    except (RuntimeError, TypeError, ValueError) as err:
        raise SpecError(f"embedding.backbone {backbone!r}: timm cannot build it ({err})") from err
    if not isinstance(enc, VisionTransformer) or enc.cls_token is None or getattr(enc, "no_embed_class", False) \
            or getattr(enc, "num_reg_tokens", 0) or enc.pos_embed is None:
        raise SpecError(f"embedding.backbone {backbone!r}: expected a timm VisionTransformer with a class token, "
                        "learned position embeddings covering it and no register tokens (e.g. vit_tiny_patch16_224)")
    return enc


class MaskedAutoencoder(nn.Module):
    def __init__(self, encoder: nn.Module, *, decoder_dim: int = 128, decoder_depth: int = 2, decoder_heads: int = 4) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.encoder = encoder
        self.patch = int(encoder.patch_embed.patch_size[0])
        self.grid = tuple(int(g) for g in encoder.patch_embed.grid_size)
        self.img_size = self.train_side = self.grid[0] * self.patch
        n_tokens = self.grid[0] * self.grid[1]
        dim = encoder.embed_dim
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, n_tokens + 1, decoder_dim))
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.decoder_pos, std=0.02)

    @property
    def n_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` to ``(B, L, p*p)`` in row-major patch order (the order of the tokens)."""
        b, p = imgs.shape[0], self.patch
        gh, gw = self.grid
        x = imgs.reshape(b, gh, p, gw, p).permute(0, 1, 3, 2, 4)
        return x.reshape(b, gh * gw, p * p)

    def _encode(self, imgs: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        enc = self.encoder
        x = enc.patch_embed(imgs) + enc.pos_embed[:, 1:, :]
        if keep is not None:
            x = torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))
        cls = (enc.cls_token + enc.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = enc.norm_pre(x)
        x = enc.blocks(x)
        return enc.norm(x)

    def random_keep(self, batch: int, mask_ratio: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept token indices ``(B, n_keep)`` and the boolean mask ``(B, L)`` (True: masked), drawn on the CPU."""
        n = self.n_tokens
        n_keep = max(1, int(round(n * (1.0 - mask_ratio))))
        noise = torch.rand(batch, n, generator=generator)
        keep = torch.argsort(noise, dim=1)[:, :n_keep]
        mask = torch.ones(batch, n, dtype=torch.bool)
        mask.scatter_(1, keep, False)
        return keep, mask

    def loss(self, imgs: torch.Tensor, keep: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on per-patch normalised pixels of the masked patches."""
        keep, mask = keep.to(imgs.device), mask.to(imgs.device)
        latent = self._encode(imgs, keep)
        b, n, d = latent.shape[0], self.n_tokens, self.decoder_embed.out_features
        tokens = self.decoder_embed(latent)
        full = self.mask_token.expand(b, n, d).clone()
        full.scatter_(1, keep[..., None].expand(-1, -1, d), tokens[:, 1:, :])
        x = torch.cat([tokens[:, :1, :], full], dim=1) + self.decoder_pos
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:, :]
        target = self.patchify(imgs)
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        m = mask.to(per_patch.dtype)
        return (per_patch * m).sum() / m.sum()

    @torch.no_grad()
    def baseline(self, imgs: torch.Tensor, keep: torch.Tensor, mask: torch.Tensor) -> float:
        """The loss of predicting each masked patch's own mean (zero after per-patch normalisation)."""
        target = self.patchify(imgs)
        target = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        m = mask.to(imgs.device).to(target.dtype)
        return float(((target**2).mean(dim=-1) * m).sum() / m.sum())

    @property
    def embed_dim(self) -> int:
        return int(self.encoder.embed_dim)

    def forward(self, imgs: torch.Tensor, keep: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The training loss (what data-parallel wrappers call)."""
        return self.loss(imgs, keep, mask)

    @torch.no_grad()
    def embed(self, imgs: torch.Tensor) -> torch.Tensor:
        """Mean patch token of the unmasked image after the encoder's final norm: ``(B, D)``."""
        return self._encode(imgs, None)[:, 1:, :].mean(dim=1)


def build_mae(spec: Any) -> MaskedAutoencoder | Any:
    """The MAE an :class:`alseg.spec.EmbeddingSpec` describes (random initialisation): the
    convolutional one (``model: conv``) or the ViT one (``model: vit``). ``spec.img_size_px`` must
    be resolved (see :func:`alseg.embed.data.input_side`)."""
    if spec.img_size_px is None:
        raise SpecError("embedding.img_size_px is not resolved yet (it follows from pixel_size_nm and the patch shape)")
    if spec.model == "conv":
        from alseg.embed.cmae import ConvMaskedAutoencoder

        return ConvMaskedAutoencoder(spec.img_size_px, width=spec.conv_width, block=spec.mask_block_px,
                                     target_sigma=spec.target_sigma_px, context=spec.context,
                                     embed_stages=tuple(spec.embed_stages))
    encoder = make_encoder(spec.backbone, spec.img_size_px, dict(spec.backbone_args))
    if spec.img_size_px % int(encoder.patch_embed.patch_size[0]):
        raise SpecError(f"embedding.img_size_px {spec.img_size_px} is not a multiple of the backbone's patch size "
                        f"{encoder.patch_embed.patch_size[0]}")
    return MaskedAutoencoder(encoder, decoder_dim=spec.decoder_dim, decoder_depth=spec.decoder_depth, decoder_heads=spec.decoder_heads)
