"""MAE training loop: seeded, resumable, single process or data-parallel ranks.

All randomness (epoch order, augmentation, masks) is drawn on the CPU from three generators seeded
from the run seed, for the *global* batch, on every rank; rank ``r`` of ``world`` trains on its
contiguous share of that batch. Gradients are averaged over ranks (torch DDP), so ``world`` ranks
follow the same trajectory as one process with the same global batch, up to float rounding.

The checkpoint (model, optimiser, generators, losses) is written after every epoch (rank 0, to a
temporary name then moved), so an interrupted training resumes at the next epoch.
"""

from __future__ import annotations

import io
import math
import pickle
import time
from typing import Any

import numpy as np
import torch

from alseg.embed.data import augment, centre_crop, crop_augment
from alseg.embed.mae import MaskedAutoencoder
from alseg.errors import AlsegError
from alseg.io import store as st
from alseg.progress import progress_bar

EVAL_SLICES = 64


def _generators(seed: int) -> dict[str, torch.Generator]:
    return {name: torch.Generator().manual_seed(seed * 1000 + k) for k, name in enumerate(("order", "augment", "mask"))}


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "pos" not in name and "token" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_size(model: MaskedAutoencoder, slices: torch.Tensor) -> int:
    """The side of the images the model trains on (its ``train_side``; the stored slices are at least that)."""
    if model.train_side > slices.shape[-1]:
        raise ValueError(f"training slices of {slices.shape[-1]} px cannot give the model's {model.train_side} px crops")
    return int(model.train_side)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up then half-cosine decay to zero."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def save_bytes(obj: Any, url: str) -> None:
    """``torch.save`` to a local path or object-storage URL, atomically (temporary name, then moved)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    fs, path = st.filesystem(url)
    tmp = f"{path}.tmp"
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
    fs.mv(tmp, path)


def _safe_globals() -> list[Any]:
    """What alseg's checkpoints hold beyond tensors: numpy arrays (standardisation, the pixels
    source's components) of these dtypes."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct
    kinds = (np.float32, np.float64, np.int64, np.int32, np.uint8, np.uint16, np.bool_)
    return [np.ndarray, np.dtype, _reconstruct, *{type(np.dtype(k)) for k in kinds}]


def load_bytes(url: str) -> Any:
    """A checkpoint, unpickled with torch's ``weights_only`` loader: tensors, containers, numbers,
    strings and numpy arrays, never an object that runs code (a file a spec names is data)."""
    fs, path = st.filesystem(url)
    with fs.open(path, "rb") as fh:
        data = fh.read()
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's refusal of a global, or a damaged file
        lines = str(err).strip().splitlines() or [type(err).__name__]
        why = next((line.strip() for line in lines if "Unsupported global" in line), lines[0])
        raise AlsegError(f"{st.redact(url)} is not a checkpoint alseg can load safely (only tensors, numbers, strings "
                         f"and arrays are read): {why}") from None


@torch.no_grad()
def eval_loss(model: MaskedAutoencoder, slices: torch.Tensor, mask_ratio: float, seed: int, device: str) -> tuple[float, float]:
    """Reconstruction loss on a fixed set of slices with fixed masks (no augmentation), and the
    loss of the mean predictor (each masked patch or block predicted as its own mean) on the same."""
    model.eval()
    g = torch.Generator().manual_seed(seed + 7)
    n = min(EVAL_SLICES, len(slices))
    idx = torch.randperm(len(slices), generator=g)[:n]
    keep, mask = model.random_keep(n, mask_ratio, g)
    losses, base = [], []
    for a in range(0, n, 16):
        b = min(n, a + 16)
        imgs = centre_crop(slices[idx[a:b]], train_size(model, slices)).float().to(device)
        losses.append(float(model.loss(imgs, keep[a:b], mask[a:b])) * (b - a))
        base.append(model.baseline(imgs, keep[a:b], mask[a:b]) * (b - a))
    model.train()
    return sum(losses) / n, sum(base) / n


def train_mae(
    model: MaskedAutoencoder,
    slices: torch.Tensor,
    spec: Any,
    *,
    checkpoint_url: str,
    signature: str,
    seed: int = 0,
    device: str = "cpu",
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
    max_epochs: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``slices`` ``(N, 1, H, W)`` as ``spec`` (an ``EmbeddingSpec``) says.

    Resumes from ``checkpoint_url`` when it holds an unfinished run with the same ``signature``.
    ``max_epochs`` stops after that many epochs in this call (a job with a wall-time limit on a
    shared cluster): the next call resumes where it stopped.
    Returns the per-epoch mean losses, the fixed-set reconstruction loss before and after, and the
    seconds this call spent in the training loop.
    """

    n = len(slices)
    batch = min(spec.batch_size, n)
    batch -= batch % world
    if batch == 0:
        raise ValueError(f"{n} training slices cannot feed {world} ranks")
    steps_per_epoch = max(1, n // batch)
    total = spec.epochs * steps_per_epoch
    warmup = min(total, spec.warmup_epochs * steps_per_epoch)
    model.to(device).train()
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=None if device == "cpu" else [torch.device(device).index or 0])
    opt = torch.optim.AdamW(_param_groups(model, spec.weight_decay), lr=spec.learning_rate, betas=(0.9, 0.95))
    gens = _generators(seed)
    state: dict[str, Any] = {"epoch": 0, "losses": [], "eval_before": None}
    fs, path = st.filesystem(checkpoint_url)
    if fs.exists(path):
        ckpt = load_bytes(checkpoint_url)
        if ckpt.get("signature") == signature:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            for k, g in gens.items():
                g.set_state(ckpt["generators"][k])
            state = {k: ckpt[k] for k in ("epoch", "losses", "eval_before")}
    if state["eval_before"] is None:
        state["eval_before"] = eval_loss(model, slices, spec.mask_ratio, seed, device)[0]
    share = slice(rank * batch // world, (rank + 1) * batch // world)
    bar = progress_bar(total=total, initial=state["epoch"] * steps_per_epoch, desc="MAE training", unit="step",
               disable=not progress or rank != 0)
    started = time.perf_counter()
    first_epoch = int(state["epoch"])
    try:
        last = spec.epochs if max_epochs is None else min(spec.epochs, state["epoch"] + max_epochs)
        for epoch in range(state["epoch"], last):
            order = torch.randperm(n, generator=gens["order"])
            epoch_loss = 0.0
            for s in range(steps_per_epoch):
                step = epoch * steps_per_epoch + s
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, total, warmup, spec.learning_rate)
                chosen = slices[order[s * batch : (s + 1) * batch]]
                if getattr(model, "context", 1.0) > 1.0:  # random positions in the context, pixel size kept
                    imgs = crop_augment(chosen, train_size(model, slices), gens["augment"])
                else:
                    imgs = augment(chosen, gens["augment"])
                keep, mask = model.random_keep(batch, spec.mask_ratio, gens["mask"])
                loss = net(imgs[share].float().to(device), keep[share], mask[share])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                reported = loss.detach().clone()
                if world > 1:  # the global batch's loss, as one process would report it
                    torch.distributed.all_reduce(reported)
                    reported /= world
                value = float(reported)
                epoch_loss += value
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
            state["losses"].append(epoch_loss / steps_per_epoch)
            state["epoch"] = epoch + 1
            if rank == 0:
                save_bytes({"signature": signature, "model": model.state_dict(), "optimizer": opt.state_dict(),
                            "generators": {k: g.get_state() for k, g in gens.items()}, **state}, checkpoint_url)
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    after = eval_loss(model, slices, spec.mask_ratio, seed, device)[0]
    return {"losses": [float(v) for v in state["losses"]], "eval_before": float(state["eval_before"]),
            "eval_after": float(after), "steps": total, "batch": batch, "slices": n, "resumed_from_epoch": first_epoch,
            "train_seconds": seconds}  # this call's training loop (a resumed run: only the steps it took)


def heldout_figures(model: MaskedAutoencoder, heldout: torch.Tensor, mask_ratio: float, seed: int,
                    device: str = "cpu") -> dict[str, Any]:
    """The trained model's masked-reconstruction loss on slices it never trained on, beside the
    mean predictor's on the same slices and masks, and their ratio (1: the model learned nothing
    a block's own mean does not give; the trivial solution)."""
    if not len(heldout):
        return {}
    model.to(device)
    loss, base = eval_loss(model, heldout, mask_ratio, seed + 1, device)
    return {"heldout_loss": loss, "heldout_mean_predictor": base, "heldout_ratio": loss / base if base > 0 else None,
            "heldout_slices": int(min(EVAL_SLICES, len(heldout)))}
