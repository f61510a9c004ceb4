"""nnU-Net's sliding-window tiles through the network several at a time.

A :class:`TileRunner` runs a trained nnU-Net's tiles in batches: the next batch is gathered
(sliced from the normalised block, stacked, copied to the device) on a helper thread while the
current one runs through the network; each tile's logits are weighted by nnU-Net's Gaussian and
summed in float32, in the tiles' own order, so the result is the one-tile-at-a-time sum up to the
rounding of the network's convolutions. On CUDA the forward runs under bf16 autocast (fp16 where
the GPU has no bf16), the logits cast back to float32 before they are summed.

Why batches help on a CPU too: PyTorch runs a 3D convolution on one sample through its slow
reference kernel (``slow_conv3d``) unless the layer is large, and through oneDNN from two samples
on (measured: a tiny plan's tile 5.6x faster per tile in pairs, a 16-128-feature plan's 3.2x);
nnU-Net's own predictor runs one tile at a time. So on a CPU a lone last tile is paired with a copy
of itself (its twin's output dropped), and ``batch_tiles: 1`` is nnU-Net's one-at-a-time way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

#: tiles per forward pass on a CPU (``prediction.batch_tiles: 0``), measured in benchmarks/RESULTS.md
CPU_BATCH = 2
#: at most this many tiles per forward pass when the batch follows the GPU's free memory
MAX_BATCH = 16


def batch_for_memory(free_bytes: int, per_tile_bytes: int, *, share: float = 0.6, cap: int = MAX_BATCH) -> int:
    """Tiles per forward pass that fit ``share`` of ``free_bytes`` when one tile's forward needs
    ``per_tile_bytes`` at its peak (at least 1, at most ``cap``)."""
    if per_tile_bytes <= 0:
        raise ValueError(f"a tile's memory must be positive, got {per_tile_bytes}")
    return int(max(1, min(cap, (share * free_bytes) // per_tile_bytes)))


class TileRunner:
    """The tiles of one nnU-Net predictor (its network, patch, mirroring and Gaussian), ``batch``
    per forward pass (0: :data:`CPU_BATCH` on a CPU, from the free memory on CUDA)."""

    def __init__(self, predictor: Any, batch: int = 0) -> None:
        import torch
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        if batch < 0:
            raise ValueError(f"batch_tiles must be >= 0 (0: automatic), got {batch}")
        self.predictor = predictor
        self.device = predictor.device
        self.patch = tuple(int(p) for p in predictor.configuration_manager.patch_size)
        self.gauss = compute_gaussian(self.patch, sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float32,
                                      device=torch.device("cpu")).numpy()
        self.batch = batch or self._auto_batch()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def _autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if not self.cuda:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def _auto_batch(self) -> int:
        """CPU: :data:`CPU_BATCH`. CUDA: one tile's measured peak memory against the free memory."""
        import torch

        if not self.cuda:
            return CPU_BATCH
        self.predictor.network = self.predictor.network.to(self.device).eval()
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        with torch.inference_mode(), self._autocast():
            self.predictor._internal_maybe_mirror_and_predict(torch.zeros((1, 1, *self.patch), device=self.device))
        per_tile = torch.cuda.max_memory_allocated(self.device) - base
        free, _ = torch.cuda.mem_get_info(self.device)
        return batch_for_memory(free, max(per_tile, 1))

    def _slices(self, corner: Sequence[int]) -> tuple[Any, ...]:
        """The tile at ``corner`` (z, y, x) of a block: a 3D box, or for a 2D model section z's box."""
        if len(self.patch) == 3:
            return tuple(slice(c, c + p) for c, p in zip(corner, self.patch))
        z, y, x = corner
        return (int(z), slice(y, y + self.patch[0]), slice(x, x + self.patch[1]))

    def _batches(self, corners: Sequence[Sequence[int]]) -> Iterator[list[tuple[Any, ...]]]:
        tiles = [self._slices(c) for c in corners]
        for i in range(0, len(tiles), self.batch):
            yield tiles[i:i + self.batch]

    def _gather(self, data: np.ndarray, tiles: list[tuple[Any, ...]]) -> Any:
        import torch

        stack = [data[sl] for sl in tiles]
        if not self.cuda and self.batch > 1 and len(stack) == 1:
            stack.append(stack[0])  # a lone tile in a pair: oneDNN's kernel, not the slow one (module doc)
        x = torch.from_numpy(np.ascontiguousarray(np.stack(stack)[:, None], dtype=np.float32))
        return x.to(self.device, non_blocking=True) if self.cuda else x

    def accumulate(self, data: np.ndarray, corners: Sequence[Sequence[int]], acc: np.ndarray, weight: np.ndarray) -> None:
        """Add the Gaussian-weighted logits of the tile at each of ``corners`` (in that order) into
        ``acc`` (classes, *data.shape) and the Gaussian into ``weight`` (data.shape), float32."""
        import torch

        batches = list(self._batches(corners))
        if not batches:
            return
        net = self.predictor
        net.network = net.network.to(self.device).eval()
        with ThreadPoolExecutor(max_workers=1) as pool, torch.inference_mode(), self._autocast():
            nxt = pool.submit(self._gather, data, batches[0])
            for i, tiles in enumerate(batches):
                x = nxt.result()
                if i + 1 < len(batches):  # the next batch is gathered while this one runs
                    nxt = pool.submit(self._gather, data, batches[i + 1])
                out = net._internal_maybe_mirror_and_predict(x)[:len(tiles)].float().cpu().numpy()
                for sl, logits in zip(tiles, out):
                    acc[(slice(None),) + sl] += logits * self.gauss
                    weight[sl] += self.gauss

    def window(self, data: np.ndarray) -> np.ndarray:
        """nnU-Net's sliding window over ``data`` (normalised, z, y, x): its tile placement (the
        array padded with zeros to at least one patch, as nnU-Net pads it), Gaussian-weighted mean
        logits summed in float32; (classes, *data.shape)."""
        from acvl_utils.cropping_and_padding.padding import pad_nd_image

        padded, revert = pad_nd_image(np.ascontiguousarray(data, dtype=np.float32)[None], self.patch, "constant", {"constant_values": 0},
                                      True, None)
        padded = padded[0]
        corners = []
        for sl in self.predictor._internal_get_sliding_window_slicers(padded.shape):
            spatial = sl[1:]  # (channel, z, y, x) or for a 2D model (channel, section, y, x)
            corners.append(tuple(s if isinstance(s, int) else s.start for s in spatial))
        n_cls = self.predictor.label_manager.num_segmentation_heads
        acc = np.zeros((n_cls, *padded.shape), np.float32)
        weight = np.zeros(padded.shape, np.float32)
        self.accumulate(padded, corners, acc, weight)
        return (acc / weight)[(slice(None),) + tuple(revert[1:])]
