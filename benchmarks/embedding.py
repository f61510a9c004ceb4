"""How much each embedding source knows of where the mitochondria are, on real EM and on a synthetic volume.

    .venv/bin/python benchmarks/embedding.py [--data vnc|synth] [--sources pixels,mae,nnunet]
        [--mae-epochs N] [--pretrain-iterations N] [--poolings] [--work DIR]

For each source, alseg's own stages run on the pool (the held-out half of the stack excluded):
pseudo-labels, nnU-Net pretraining on them (for ``nnunet``), the embedding model, the store, and
the embedding-quality stage, which measures on the pool patches: the cross-validated ridge R^2 of
each patch's ground-truth mitochondria fraction from its embedding, beside the ``pixels`` baseline
measured in the same run; the nearest-neighbour content ratio (1.0: neighbours no closer in
content than random pairs); the MAE's held-out loss over the mean predictor's; participation ratio
and mean cosine. Then k-center (cosine, deterministic ``central`` start and 3 random starts) on
each store against uniform random picks: the mean ground-truth fraction of the picks and how many
content quartiles they cover, at budgets 2, 4, 8 (random: mean over 200 draws).

Data: ``vnc`` is the real Drosophila VNC stack (``../shared/data/vnc``: 20 x 1024 x 1024 at 50 x
4.6 x 4.6 nm; patches 5 x 128 x 128, sections 10-19 held out: a pool of 128 patches); ``synth``
is a medium ``alseg synth`` volume of 32 x 512 x 512 at 30 x 8 x 8 nm (patches 8 x 64 x 64, the last
half in z held out: a pool of 128 patches).
With ``--poolings``, other poolings of the trained conv MAE's encoder
are measured beside the default (which stages, with or without per-channel spreads). Wall times
are printed for each stage. Prints one JSON object at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402


def _spec(data_url: str, run_dir: str, patch: list[int], source: str, mae_epochs: int, pretrain_iterations: int):
    from alseg.spec import parse_spec

    return parse_spec({
        "input": {"url": data_url, "ground_truth": "mitochondria"}, "run": {"dir": run_dir, "seed": 0, "overwrite": True},  # its own work folder, rerun with other settings
        "patches": {"shape_vox": patch, "holdout": {"kind": "fraction", "axis": "z", "fraction": 0.5, "side": "end"}},
        "pseudolabel": {"method": "classical", "block_shape_vox": [patch[0], 512, 512], "halo_px": 64, "min_size_vox": 1000},
        "nnunet": {"plan_overrides": {"n_stages": 5, "features_per_stage": [16, 32, 64, 128, 256]},
                   "pretrain": {"epochs": max(1, pretrain_iterations // 50), "iterations_per_epoch": min(50, pretrain_iterations)}},
        "embedding": {"source": source, "epochs": mae_epochs, "batch_size": 64},
        "selection": {"method": "kcenter", "budget": 8},
        "resources": {"backend": "serial"},
    })


def _coverage(y: np.ndarray, picks: np.ndarray, edges: np.ndarray) -> int:
    return len(set(np.digitize(y[picks], edges).tolist()))


def _selection(rows: np.ndarray, y: np.ndarray, seed: int = 0) -> dict:
    from alseg.select import kcenter_greedy

    edges = np.quantile(y, [0.25, 0.5, 0.75])
    out = {}
    rng = np.random.default_rng(seed)
    for k in (2, 4, 8):
        central = kcenter_greedy(rows, k, start="central").picks
        rand_starts = [kcenter_greedy(rows, k, seed=s, start="random").picks for s in range(20)]
        uniform = [rng.choice(len(y), k, replace=False) for _ in range(200)]
        out[str(k)] = {
            "kcenter_central": {"mean_fraction": float(y[central].mean()), "quartiles": _coverage(y, central, edges)},
            "kcenter_random_starts": {"mean_fraction": float(np.mean([y[p].mean() for p in rand_starts])),
                                      "quartiles": float(np.mean([_coverage(y, p, edges) for p in rand_starts]))},
            "uniform_random": {"mean_fraction": float(np.mean([y[p].mean() for p in uniform])),
                               "quartiles": float(np.mean([_coverage(y, p, edges) for p in uniform]))},
        }
    return out


POOLINGS = {"stages 1-2, mean (default)": ((1, 2), False), "stages 1-3, mean + std (before)": ((1, 2, 3), True),
            "stages 0-2, mean + std": ((0, 1, 2), True), "stages 1-2, mean + std": ((1, 2), True),
            "stages 1-3, mean": ((1, 2, 3), False)}
"""Pooling name: (stages, with per-channel standard deviations). The first is the spec's default (checked at start)."""


def _poolings(checkpoint: str, image, norm, boxes, patch, y: np.ndarray) -> dict:
    """R^2 and neighbour ratio of the ground-truth fraction for other poolings of the same trained
    conv MAE's encoder (rows standardised and L2-normalised as the store's are)."""
    import torch

    from alseg.embed.data import patch_inputs
    from alseg.embed.quality import neighbour_ratio, ridge_r2
    from alseg.embed.sources import load_embedder

    embedder, _ = load_embedder(checkpoint)
    model = embedder.model
    if next(iter(POOLINGS.values())) != (tuple(model.embed_stages), False):
        raise SystemExit(f"POOLINGS' first row is not the model's pooling (stages {model.embed_stages}, means only)")
    feats = []
    for b in boxes:
        x = patch_inputs(image, b, patch[1:], norm, embedder.slices, embedder.spec.img_size_px)
        with torch.no_grad():
            feats.append(model.features(x, torch.zeros_like(x[:, :1])))
    out = {}
    for name, (stages, spread) in POOLINGS.items():
        rows = []
        for f in feats:
            parts = [f[k].flatten(2).mean(2) for k in stages] + ([f[k].flatten(2).std(2, correction=0) for k in stages] if spread else [])
            rows.append(torch.cat(parts, 1).mean(0).numpy())
        x = np.stack(rows).astype(np.float64)
        sd = x.std(0)
        x = (x - x.mean(0)) / np.where(sd > 1e-9, sd, 1.0)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        r2, r2_std = ridge_r2(x, y)
        out[name] = {"r2_ground_truth": r2, "r2_ground_truth_std": r2_std, "neighbour_ratio_ground_truth": neighbour_ratio(x, y)}
        print(f"  pooling {name:32s} R^2 GT {r2:.3f} +- {r2_std:.3f}; neighbour ratio GT {out[name]['neighbour_ratio_ground_truth']:.2f}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=("vnc", "synth"), default="vnc")
    ap.add_argument("--sources", default="pixels,mae,nnunet")
    ap.add_argument("--mae-epochs", type=int, default=None, help="default: 180 on vnc, 100 on synth (10.4 and 9.5 min of training on cpu-2c)")
    ap.add_argument("--pretrain-iterations", type=int, default=250)
    ap.add_argument("--poolings", action="store_true", help="also measure other poolings of the trained conv MAE's encoder")
    ap.add_argument("--work", default=None, help="folder for the volume and the runs (default: a temporary one)")
    args = ap.parse_args(argv)
    sources = [s for s in args.sources.split(",") if s]

    from alseg.embed import EmbeddingStore
    from alseg.pipeline.content import foreground_fractions
    from alseg.pipeline.embedding import run_embed
    from alseg.pipeline.embedquality import run_embedding_quality
    from alseg.pipeline.pretrain import run_pretrain
    from alseg.pipeline.pseudolabels import run_pseudolabels

    work = args.work or tempfile.mkdtemp(prefix="alseg-embedding-")
    os.makedirs(work, exist_ok=True)
    url = os.path.join(work, f"{args.data}.zarr")
    timings: dict[str, float] = {}
    if not os.path.exists(url):
        t0 = time.perf_counter()
        if args.data == "vnc":
            from alseg.ingest import ingest_vnc

            here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            ingest_vnc(os.path.join(here, "..", "shared", "data", "vnc"), url)
        else:
            from alseg.synth import SynthParams, write_synthetic

            write_synthetic(url, SynthParams.preset("medium", shape=(32, 512, 512), seed=0))
        timings["input"] = time.perf_counter() - t0
    patch = [5, 128, 128] if args.data == "vnc" else [8, 64, 64]
    if args.mae_epochs is None:
        args.mae_epochs = 180 if args.data == "vnc" else 100
    results: dict[str, dict] = {}
    shared = os.path.join(work, "run-shared")
    base = _spec(url, shared, patch, "pixels", args.mae_epochs, args.pretrain_iterations)
    t0 = time.perf_counter()
    pseudo = run_pseudolabels(base, progress=False)
    timings["pseudolabels"] = time.perf_counter() - t0
    pretrained = None
    if "nnunet" in sources:
        t0 = time.perf_counter()
        pretrained = run_pretrain(base, progress=False)
        timings["pretrain"] = time.perf_counter() - t0
    for source in sources:
        spec = _spec(url, os.path.join(work, f"run-{source}"), patch, source, args.mae_epochs, args.pretrain_iterations)
        t0 = time.perf_counter()
        info = run_embed(spec, progress=False, pretrained=pretrained if source == "nnunet" else None)
        timings[f"embed-{source}"] = time.perf_counter() - t0
        q = run_embedding_quality(spec, info, info["mae"], pseudolabel_url=pseudo["url"])
        store = EmbeddingStore.open(info["url"])
        rows = store.load()
        from alseg.geometry import Box

        boxes = [Box(tuple(b[:3]), tuple(b[3:])) for b in store.boxes]
        y = foreground_fractions(f"{url}/labels/mitochondria", boxes, missing_chunks="empty")
        results[source] = {"quality": {k: v for k, v in q.items() if k != "reconstructions"}, "selection": _selection(rows, y),
                           "mae": {k: info["mae"].get(k) for k in ("heldout_ratio", "steps", "img_size_px", "train_seconds") if k in info["mae"]}}
        e = q["embedding"]
        print(f"{source:7s} R^2 GT {e.get('r2_ground_truth', float('nan')):.3f} +- {e.get('r2_ground_truth_std', float('nan')):.3f}"
              f" (pixels {q['pixels'].get('r2_ground_truth', float('nan')):.3f}); R^2 pseudo-labels "
              f"{e.get('r2_pseudolabels', float('nan')):.3f}; neighbour ratio GT {e.get('neighbour_ratio_ground_truth', float('nan')):.2f}; "
              f"PR {e['participation_ratio']:.1f}; mean cos {e['mean_cosine']:.3f}; held-out ratio {q.get('heldout_ratio')}; "
              f"{timings[f'embed-{source}']:.0f} s", flush=True)
        if args.poolings and source == "mae":
            from alseg.pipeline.common import input_volume, input_norm

            results[source]["poolings"] = _poolings(info["mae"]["checkpoint"], input_volume(spec), input_norm(spec), boxes, patch, y)
    print(json.dumps({"data": args.data, "patch": patch, "pool": len(y), "machine": platform.platform(),
                      "cpus": os.cpu_count(), "timings_s": timings, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
