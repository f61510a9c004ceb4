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
nnU-Net's own predictor runs one tile at a time. Where a plan's layers are large enough to take
oneDNN alone (a 32-256-feature plan: 216.6 ms a tile alone, 217.0 ms in pairs) pairs gain nothing,
so on a CPU the automatic batch is measured once per runner (:func:`cpu_batch`): pairs where a pair
costs less than :data:`PAIR_COST` times one tile, else one tile at a time. In pairs a lone last tile
runs with a copy of itself (its twin's output dropped). ``batch_tiles: 1`` is nnU-Net's
one-at-a-time way. On CUDA a batch that runs out of memory is split in halves and the runner keeps
the smaller batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

#: tiles per forward pass on a CPU (``prediction.batch_tiles: 0``) where pairs pay, measured in benchmarks/RESULTS.md
CPU_BATCH = 2
#: pairs pay on a CPU when a pair's forward costs less than this many single tiles' (so that a lone
#: last tile's twin costs less than it saves)
PAIR_COST = 1.5
#: at most this many tiles per forward pass when the batch follows the GPU's free memory
MAX_BATCH = 16


def batch_for_memory(free_bytes: int, per_tile_bytes: int, *, share: float = 0.6, cap: int = MAX_BATCH) -> int:
    """Tiles per forward pass that fit ``share`` of ``free_bytes`` when one tile's forward needs
    ``per_tile_bytes`` at its peak (at least 1, at most ``cap``)."""
    if per_tile_bytes <= 0:
        raise ValueError(f"a tile's memory must be positive, got {per_tile_bytes}")
    return int(max(1, min(cap, (share * free_bytes) // per_tile_bytes)))


def cpu_batch(one_s: float, pair_s: float) -> int:
    """The automatic CPU batch from one tile's forward time and a pair's: :data:`CPU_BATCH` when pairs
    pay (:data:`PAIR_COST`), else 1."""
    if one_s <= 0 or pair_s <= 0:
        raise ValueError(f"forward times must be positive, got {one_s} and {pair_s}")
    return CPU_BATCH if pair_s < PAIR_COST * one_s else 1


class TileRunner:
    """The tiles of one nnU-Net predictor (its network, patch, mirroring and Gaussian), ``batch``
    per forward pass (0: automatic: on a CPU pairs where they pay, :func:`cpu_batch`; on CUDA from
    the free memory)."""

    def __init__(self, predictor: Any, batch: int = 0) -> None:
        import torch
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        if batch < 0:
            raise ValueError(f"batch_tiles must be >= 0 (0: automatic), got {batch}")
        self.predictor = predictor
        self.device = predictor.device
        predictor.network = predictor.network.to(self.device)  # once: nnU-Net builds it on the CPU
        self.patch = tuple(int(p) for p in predictor.configuration_manager.patch_size)
        self.gauss = compute_gaussian(self.patch, sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float32,
                                      device=torch.device("cpu")).numpy()
        self.forward_s: tuple[float, float] | None = None  # set where the CPU batch is measured
        self.batch = batch or self._auto_batch()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def _autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if not self.cuda:
            return contextlib.nullcontext()
        # native bf16 from compute capability 8 (Ampere) on; torch's is_bf16_supported() also says yes
        # where bf16 is only emulated (V100, T4), which is slow: fp16 there
        dtype = torch.bfloat16 if torch.cuda.get_device_capability(self.device)[0] >= 8 else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def _auto_batch(self) -> int:
        """CPU: pairs where they pay (:func:`cpu_batch`, timed here). CUDA: one tile's measured peak
        memory against the free memory."""
        import time

        import torch

        if not self.cuda:
            net = self.predictor.network.eval()
            x = torch.zeros((2, 1, *self.patch))
            took: dict[int, list[float]] = {1: [], 2: []}
            with torch.inference_mode():
                for n in (1, 2, 1, 2, 1, 2):  # the first of each warms up; the least of the others counts
                    t0 = time.perf_counter()
                    net(x[:n])
                    took[n].append(time.perf_counter() - t0)
            self.forward_s = (min(took[1][1:]), min(took[2][1:]))
            return cpu_batch(*self.forward_s)
        self.predictor.network.eval()
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
        self.predictor.network.eval()
        with ThreadPoolExecutor(max_workers=1) as pool, torch.inference_mode(), self._autocast():
            nxt = pool.submit(self._gather, data, batches[0])
            for i, tiles in enumerate(batches):
                x = nxt.result()
                if i + 1 < len(batches):  # the next batch is gathered while this one runs
                    nxt = pool.submit(self._gather, data, batches[i + 1])
                out = self._forward(x)[:len(tiles)]
                for sl, logits in zip(tiles, out):
                    acc[(slice(None),) + sl] += logits * self.gauss
                    weight[sl] += self.gauss

    def _forward(self, x: Any) -> np.ndarray:
        """The logits of the tiles ``x`` (float32, on the host); on CUDA a batch that runs out of memory
        runs in halves, and later batches take the smaller size."""
        import torch

        try:
            return self.predictor._internal_maybe_mirror_and_predict(x).float().cpu().numpy()
        except torch.OutOfMemoryError:
            if x.shape[0] == 1:
                raise
            if self.cuda:
                torch.cuda.empty_cache()
            half = (x.shape[0] + 1) // 2
            self.batch = max(1, min(self.batch, half))
            return np.concatenate([self._forward(x[:half]), self._forward(x[half:])])

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
