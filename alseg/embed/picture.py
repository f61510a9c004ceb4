"""A picture of the embedding store: a 2D projection with the selected patches and thumbnails.

The projection is PCA (the two leading right singular vectors of a seeded sample of at most
``sample`` centred rows), applied to every row chunk by chunk, so a store of millions of rows is
drawn without loading it. Few rows are drawn as points, many as a 2D histogram. Selected patches
are numbered in pick order; the first ``thumbnails`` get the middle section of their patch as an
inset (the paper's Fig. 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def pca_2d(rows: Any, *, sample: int = 100_000, seed: int = 0, chunk: int = 65536) -> np.ndarray:
    """``(N, 2)`` PCA coordinates of ``rows`` (numpy or zarr, N x D)."""
    n = rows.shape[0]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(n, sample), replace=False))
    x = np.asarray(rows[idx] if isinstance(rows, np.ndarray) else rows.oindex[idx, :], dtype=np.float64)
    mean = x.mean(axis=0)
    if n < 2:
        return np.zeros((n, 2))
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    comp = np.zeros((2, x.shape[1]))
    comp[: min(2, len(vt))] = vt[:2]
    out = np.empty((n, 2))
    for a in range(0, n, chunk):
        out[a : a + chunk] = (np.asarray(rows[a : a + chunk], dtype=np.float64) - mean) @ comp.T
    return out


def draw(coords: np.ndarray, picks: Sequence[int], path: str, *, thumbs: dict[int, np.ndarray] | None = None,
         annotated: Sequence[int] = (), title: str = "") -> str:
    """Write the PNG to ``path`` (local file or object-storage URL); returns ``path``."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    from alseg.io import store as st

    fig, ax = plt.subplots(figsize=(9, 8), dpi=110)
    if len(coords) > 20000:
        ax.hexbin(coords[:, 0], coords[:, 1], gridsize=120, bins="log", cmap="Greys", mincnt=1)
    else:
        ax.scatter(coords[:, 0], coords[:, 1], s=6, c="0.7", lw=0, label=f"candidate patches ({len(coords)})")
    if len(annotated):
        a = coords[list(annotated)]
        ax.scatter(a[:, 0], a[:, 1], s=40, facecolors="none", edgecolors="tab:blue", label=f"annotated earlier ({len(a)})")
    p = coords[list(picks)]
    ax.scatter(p[:, 0], p[:, 1], s=40, c="tab:red", edgecolors="k", lw=0.5, label=f"selected ({len(p)})")
    for k, (x, y) in enumerate(p[:50]):
        ax.annotate(str(k + 1), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7)
    span = np.ptp(coords, axis=0) if len(coords) else np.ones(2)
    for k, (row, img) in enumerate((thumbs or {}).items()):
        angle = 2 * np.pi * k / max(1, len(thumbs))
        at = coords[row] + 0.35 * span * np.array([np.cos(angle), np.sin(angle)])
        box = AnnotationBbox(OffsetImage(img, cmap="gray", zoom=48 / max(img.shape)), coords[row], xybox=at,
                             xycoords="data", arrowprops={"arrowstyle": "-", "color": "tab:red", "lw": 0.6}, pad=0.1)
        ax.add_artist(box)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title or "embedding store (PCA)")
    ax.legend(loc="best", fontsize=8)
    ax.margins(0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    fs, fpath = st.filesystem(path)
    fs.makedirs(fpath.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(fpath, "wb") as fh:
        fh.write(buf.getvalue())
    return path


def thumbnail(volume: Any, valid: Any, size: int = 96) -> np.ndarray:
    """The middle section of a patch, shrunk to at most ``size`` pixels (strided)."""
    from alseg.geometry import Box

    z = (valid.start[0] + valid.stop[0] - 1) // 2
    sec = volume.read(Box((z, *valid.start[1:]), (z + 1, *valid.stop[1:])))[0]
    step = max(1, int(np.ceil(max(sec.shape) / size)))
    return np.asarray(sec[::step, ::step], dtype=np.float32)


def reconstructions_png(model: Any, spec: Any, volume: Any, patches: Sequence[Any], norm: Any, *, seed: int = 0) -> bytes | None:
    """One row per patch (its middle section): input, masked input, the MAE's reconstruction, the
    target. ``None`` for a model that cannot draw its reconstruction (the ViT)."""
    import io

    import matplotlib
    import torch

    from alseg.embed.data import patch_inputs

    if not hasattr(model, "reconstruct") or not len(patches):
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = torch.cat([patch_inputs(volume, p.valid, p.box.shape[1:], norm, 1, spec.img_size_px) for p in patches])
    blocks = (imgs.shape[-2] // model.block) * (imgs.shape[-1] // model.block)
    mask = torch.rand(len(imgs), blocks, generator=torch.Generator().manual_seed(seed + 13)) < spec.mask_ratio
    masked, pred, target = (t.float().numpy()[:, 0] for t in model.eval().reconstruct(imgs, mask))
    titles = ("section", "masked", "reconstruction", "target (smoothed, per block)")
    fig, axes = plt.subplots(len(imgs), 4, figsize=(8, 2 * len(imgs)), dpi=100, squeeze=False)
    for r, row in enumerate(zip(imgs.numpy()[:, 0], masked, pred, target)):
        for c, img in enumerate(row):
            axes[r, c].imshow(img, cmap="gray")
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(titles[c], fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
