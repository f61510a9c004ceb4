"""Whole objects from the weight-free pseudo-labeller (issue 16, items 2 and 3): VNC and two synthetic difficulties.

    .venv/bin/python benchmarks/pseudolabel_objects.py [--vnc ../shared/data/vnc] [--tune 7] [--seeds 0 1]

For each setting of the classical labeller below, the 2D instances of every section are linked
into 3D (alseg's ``link_stack``, with or without gap closing) and scored against the ground truth
with the project's metrics: foreground IoU, F1 at IoU 0.5 and 0.75, objects predicted / true,
splits and merges, and the labeller's wall time per slice (medians of its batches). Settings:

* ``default``: the classical default (darkest 22 % of each slice), tuned on VNC;
* ``otsu``: a global Otsu threshold;
* ``+ pieces``: with ``filter_pieces``: the watershed splits each connected component first and
  the area and solidity tests judge its pieces, so touching or branched organelles (not convex
  together) are kept (``otsu + pieces`` with ``link_gap: 1`` is the demo's setting);
* each of them with ``link_gap: 1`` (gap closing over one missed section).

VNC (20 x 1024 x 1024 at 50 x 4.6 x 4.6 nm): scored on the first ``--tune`` sections (a third,
rounded up: where settings may be chosen) and separately on the rest (held out), each part linked
on its own. Synthetic: ``alseg synth`` volumes of 32 x 512 x 512 at 30 x 8 x 8 nm, medium and
hard, one per ``--seeds``, scored whole (their settings were not tuned on them).

A ground-truth object is *split* when two or more predicted objects each hold at least half of
their voxels inside it; a predicted object is a *merge* when two or more ground-truth objects each
have at least half of their voxels inside it. Both are counted from the overlap table, so a split
object need not be missed at IoU 0.5, nor a merge be false.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from alseg.evaluate.metrics import OverlapTable, overlap_table, score_table
from alseg.geometry import Box
from alseg.ingest import ingest_vnc
from alseg.io.omezarr import open_volume
from alseg.pseudolabel.classical import ClassicalLabeller
from alseg.pseudolabel.link import link_stack
from alseg.spec import ClassicalPseudoLabel
from alseg.synth import SynthParams, SyntheticVolume

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "default": {},
    "default + pieces": {"filter_pieces": True},
    "otsu": {"threshold": "otsu"},
    "otsu + pieces": {"threshold": "otsu", "filter_pieces": True},
}


def splits_and_merges(table: OverlapTable) -> tuple[int, int]:
    """(ground-truth objects split, predicted objects that merge), by the half-of-its-voxels rule."""
    inside_gt: dict[int, int] = {}  # gt id -> predicted objects mostly inside it
    holds_gt: dict[int, int] = {}  # pred id -> ground-truth objects mostly inside it
    for (g, p), n in table.pairs.items():
        if 2 * n >= table.pred_sizes[p]:
            inside_gt[g] = inside_gt.get(g, 0) + 1
        if 2 * n >= table.gt_sizes[g]:
            holds_gt[p] = holds_gt.get(p, 0) + 1
    return sum(c >= 2 for c in inside_gt.values()), sum(c >= 2 for c in holds_gt.values())


def labelled(img: np.ndarray, pixel_nm: float, settings: dict, batch: int = 4) -> tuple[np.ndarray, float]:
    """2D instances of every slice and the median seconds per slice over batches of ``batch``."""
    lab = ClassicalLabeller(ClassicalPseudoLabel(**settings), pixel_size_nm=pixel_nm)
    out, times = [], []
    for z in range(0, len(img), batch):
        t = time.perf_counter()
        out.append(lab(img[z:z + batch]))
        times.append((time.perf_counter() - t) / len(img[z:z + batch]))
    return np.concatenate(out), statistics.median(times)


def row(gt: np.ndarray, inst: np.ndarray) -> str:
    table = overlap_table(gt, inst)
    s = score_table(table)
    split, merge = splits_and_merges(table)
    return (f"{s['foreground_iou']:.3f} | {s['at']['0.5']['f1']:.3f} | {s['at']['0.75']['f1']:.3f} | "
            f"{s['objects_pred']} / {s['objects_gt']} | {split} | {merge}")


def report(name: str, img: np.ndarray, gt: np.ndarray, pixel_nm: float, min_size_vox: int, parts: dict[str, slice]) -> None:
    """One table row per setting, link_gap and part; each part is linked on its own (no object spans two)."""
    print(f"\n{name}\n")
    print("| setting | link_gap | part | foreground IoU | F1 @ 0.5 | F1 @ 0.75 | objects / true | split | merged | ms / slice |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    link_iou = ClassicalPseudoLabel().link_iou
    for setting, kw in SETTINGS.items():
        masks, per_slice = labelled(img, pixel_nm, kw)
        for gap in (0, 1):
            for part, sl in parts.items():
                inst = link_stack(masks[sl], link_iou, min_size_vox, gap=gap)
                print(f"| {setting} | {gap} | {part} | {row(gt[sl], inst)} | {1000 * per_slice:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vnc", default=str(REPO.parent / "shared" / "data" / "vnc"))
    ap.add_argument("--tune", type=int, default=7, help="VNC: the first TUNE sections are the tuning set (default 7 of 20)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="synthetic volumes' seeds (default 0 1)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        url = os.path.join(tmp, "vnc.zarr")
        ingest_vnc(args.vnc, url, chunks=(4, 256, 256))
        raw = open_volume(url).read()
        gt = open_volume(os.path.join(url, "labels", "mitochondria")).read()
    n = len(raw)
    if not 1 <= args.tune <= -(-n // 3):
        raise SystemExit(f"--tune must be between 1 and {-(-n // 3)} (a third of {n} sections, rounded up)")
    report(f"VNC {raw.shape} at 50 x 4.6 x 4.6 nm, 3D minimum size 1,000 voxels (the default)", raw, gt, 4.6, 1000,
           {f"tune 0-{args.tune - 1}": slice(0, args.tune), f"held-out {args.tune}-{n - 1}": slice(args.tune, n)})
    for difficulty in ("medium", "hard"):
        for seed in args.seeds:
            p = SynthParams.preset(difficulty, shape=(32, 512, 512), seed=seed)
            img, truth = SyntheticVolume(p).block(Box.from_shape(p.shape))
            report(f"synthetic {difficulty}, seed {seed}, {p.shape} at 30 x 8 x 8 nm, 3D minimum size 50 voxels (the demo's)",
                   img, truth, 8.0, 50, {"whole": slice(0, len(img))})
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
