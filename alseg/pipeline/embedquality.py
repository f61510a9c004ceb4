"""Stage 4c: how good the embedding space is, measured in every run (no labels needed).

On a seeded sample of the pool (at most ``SAMPLE`` patches): the cross-validated R^2 of each
patch's pseudo-label foreground fraction from its embedding, beside the same from the ``pixels``
baseline (a PCA of the downsampled sections, fitted on the sample); nearest-neighbour content
ratios; the spread of the space (participation ratio, mean cosine similarity); the MAE's held-out
loss against the mean predictor's. With ground truth, the same against its foreground fraction.
A plain warning says when the embedding does no better than pixels (k-center on it would be
close to a random pick). Writes ``<run dir>/embedding/quality.json`` and, for an MAE, a picture of
reconstructions (``reconstructions.png``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alseg.embed.quality import mean_cosine, neighbour_ratio, participation_ratio, ridge_r2
from alseg.io import store as st
from alseg.pipeline.common import embedding_dir, input_norm, input_volume
from alseg.pipeline.content import foreground_fractions
from alseg.pipeline.embedding import resolved_embedding
from alseg.spec import JobSpec, ground_truth_url

SAMPLE = 1024
MARGIN = 0.02
"""R^2 the embedding must gain over pixels before it counts as better."""


def _space(rows: np.ndarray, contents: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {"participation_ratio": participation_ratio(rows), "mean_cosine": mean_cosine(rows)}
    for name, y in contents.items():
        mean, std = ridge_r2(rows, y)
        out[f"r2_{name}"] = mean
        out[f"r2_{name}_std"] = std
        out[f"neighbour_ratio_{name}"] = neighbour_ratio(rows, y)
    return out


def pixel_rows(image: Any, patches: list[Any], norm: Any, *, side: int, slices: int, dim: int) -> np.ndarray:
    """The pixels baseline of ``patches``: their downsampled sections, PCA to ``dim`` (fitted on them)."""
    from alseg.embed.sources import pixel_features

    x = np.stack([pixel_features(image, p.valid, p.box.shape, norm, slices, side) for p in patches]).astype(np.float64)
    x -= x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:dim].T


def run_embedding_quality(spec: JobSpec, embed: dict[str, Any], model: dict[str, Any], *, pseudolabel_url: str | None,
                          progress: bool = False) -> dict[str, Any]:
    from alseg.embed import EmbeddingStore
    from alseg.preflight import patch_grid_of

    image = input_volume(spec)
    patches = patch_grid_of(spec, image.shape).patches()
    rng = np.random.default_rng(spec.run.seed + 5)
    idx = np.sort(rng.choice(len(patches), size=min(len(patches), SAMPLE), replace=False))
    sample = [patches[int(i)] for i in idx]
    store = EmbeddingStore.open(embed["url"])
    rows = np.asarray(store.embeddings.oindex[idx, :], dtype=np.float64)
    e = resolved_embedding(spec, image)
    contents: dict[str, np.ndarray] = {}
    level = spec.input.level
    if pseudolabel_url is not None:
        contents["pseudolabels"] = foreground_fractions(pseudolabel_url, [p.valid for p in sample], missing_chunks="empty",
                                                        progress=progress)
    gt = ground_truth_url(spec)
    if gt is not None:
        contents["ground_truth"] = foreground_fractions(gt, [p.valid for p in sample], level=level,
                                                        missing_chunks="empty", progress=progress)
    norm = input_norm(spec)
    pixels = pixel_rows(image, sample, norm, side=e.img_size_px, slices=e.slices_per_patch, dim=e.pixels_dim)
    out: dict[str, Any] = {"source": e.source, "patches": len(sample), "pool": len(patches),
                           "embedding": _space(rows, contents), "pixels": _space(pixels, contents)}
    for key in ("heldout_loss", "heldout_mean_predictor", "heldout_ratio"):
        if model.get(key) is not None:
            out[key] = model[key]
    out["warnings"] = _warnings(out)
    if e.source == "mae" and model.get("checkpoint"):
        out["reconstructions"] = _picture(spec, model["checkpoint"], image, sample, norm)
    st.write_json(st.join(embedding_dir(spec), "quality.json"), out)
    return out


def _warnings(q: dict[str, Any]) -> list[str]:
    out = []
    emb, pix = q["embedding"], q["pixels"]
    for name in ("pseudolabels", "ground_truth"):
        a, b = emb.get(f"r2_{name}"), pix.get(f"r2_{name}")
        if a is None or b is None or not np.isfinite(a) or not np.isfinite(b) or q["source"] == "pixels":
            continue
        if a < b + MARGIN:
            what = "pseudo-label" if name == "pseudolabels" else "ground-truth"
            out.append(f"the {q['source']} embedding predicts the patches' {what} foreground no better than downsampled "
                       f"pixels do (R^2 {a:.2f} against {b:.2f}): a k-center core-set on it is close to a random pick")
    ratio = q.get("heldout_ratio")
    if ratio is not None and ratio > 0.95:
        out.append(f"the MAE's held-out loss is {ratio:.2f} of the mean predictor's: it learned little beyond each "
                   "block's mean (more epochs, a coarser pixel_size_nm, or source: nnunet)")
    return out


def _picture(spec: JobSpec, checkpoint: str, image: Any, sample: list[Any], norm: Any) -> str | None:
    """A PNG of a few sections: input, masked input, reconstruction, target (``reconstructions.png``)."""
    from alseg.embed.picture import reconstructions_png
    from alseg.embed.sources import MAEEmbedder, load_embedder

    embedder, _ = load_embedder(checkpoint)
    if not isinstance(embedder, MAEEmbedder):
        return None
    png = reconstructions_png(embedder.model, embedder.spec, image, sample[:4], norm, seed=spec.run.seed)
    if png is None:
        return None
    url = st.join(embedding_dir(spec), "reconstructions.png")
    st.write_bytes(url, png)
    return url
