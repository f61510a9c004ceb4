"""Options for a stronger weight-free pseudo-labeller (issue 16, item 2), measured on the real VNC stack.

    .venv/bin/python benchmarks/pseudolabel_options.py [--vnc ../shared/data/vnc] [--tune 7]

The classical default (alseg.pseudolabel.classical) finds a third of the mitochondrial voxels and
few whole 3D objects. Before changing it, this script measures where it fails and what the
options named in the issue give, tuning on the first ``--tune`` sections (at most a third) and
reporting every figure on those and on the remaining, held-out sections:

1. **where the default fails**: voxel precision / recall / foreground IoU; 2D ground-truth
   objects (>= 200 px) the mask misses (< 10 % covered) and their share of the mitochondrial area;
2. **its parameters**: a grid around the defaults (denoising, dark fraction, opening, solidity,
   minimum area; at pyramid level 1, 9.2 nm, for speed), best settings on the tuning sections
   then scored on the held-out ones;
3. **self-training on pixel features**: a random forest on scikit-image's multiscale features
   (intensity, edges, texture at 1-16 px of level 1) trained on the default's own mask (all of
   it, or only its confident core against confident background); and, as the upper bound of
   this feature set, the same forest trained on the ground truth of the tuning sections;
4. **3D linking**: today's IoU matching of consecutive sections against the same matching plus
   gap closing over one missed section (a piece with no link forward is matched to a piece two
   sections on with no link backward; implemented here as a plain reference, which alseg's
   ``link_gap: 1`` is asserted to equal), at 3D minimum
   sizes of 1,000 (default) and 5,000 voxels: objects, foreground IoU, F1 at IoU 0.5 and 0.75.

Quality is computed with the project's metrics (alseg.evaluate.metrics) against the VNC
mitochondria (labels == 191, 3D connected components, 26-connectivity), cut to each set of
sections.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PX_NM = 4.6  # VNC's in-plane pixel; level 1 is 9.2 nm


def voxel_scores(mask, gt) -> tuple[float, float, float]:
    tp = float((mask & gt).sum())
    return tp / max(float(mask.sum()), 1.0), tp / max(float(gt.sum()), 1.0), tp / max(float((mask | gt).sum()), 1.0)


def missed_objects(mask, gt) -> tuple[int, int, float]:
    from skimage import measure

    total = missed = 0
    area = missed_area = 0
    for m, g in zip(mask, gt):
        lab = measure.label(g)
        for r in measure.regionprops(lab):
            if r.area < 200:
                continue
            cov = float(m[lab == r.label].mean())
            total += 1
            area += r.area
            if cov < 0.1:
                missed += 1
                missed_area += r.area
    return total, missed, missed_area / max(area, 1)


def same_partition(a, b) -> bool:
    """The same objects, whatever their ids."""
    fg = (a > 0) | (b > 0)
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[fg])) == len(np.unique(b[fg]))


def gap_link(masks, min_iou: float, min_size: int):
    """Plain reference: IoU matching of consecutive sections (as alseg's link_stack) plus gap
    closing over one section between pieces left without a forward / backward link."""
    from skimage.segmentation import relabel_sequential

    from alseg.postprocess.stitch import UnionFind
    from alseg.pseudolabel.link import match_planes

    unique = np.zeros(masks.shape, np.int64)
    off = 0
    for z, m in enumerate(masks):
        unique[z] = np.where(m > 0, m.astype(np.int64) + off, 0)
        off += int(m.max())
    uf, forward, backward = UnionFind(), set(), set()
    for z in range(len(masks) - 1):
        for a, b in match_planes(unique[z], unique[z + 1], min_iou):
            uf.union(a, b)
            forward.add(a)
            backward.add(b)
    for z in range(len(masks) - 2):
        ends = np.where(np.isin(unique[z], sorted(forward)), 0, unique[z])
        starts = np.where(np.isin(unique[z + 2], sorted(backward)), 0, unique[z + 2])
        for a, b in match_planes(ends, starts, min_iou):
            uf.union(a, b)
    ids = np.unique(unique[unique > 0])
    lut = np.zeros(off + 1, np.int64)
    lut[ids] = [uf.find(int(i)) for i in ids]
    out = relabel_sequential(lut[unique])[0]
    if min_size:
        sizes = np.bincount(out.ravel())
        small = sizes < min_size
        small[0] = False
        out[small[out]] = 0
        out = relabel_sequential(out)[0]
    return out.astype(np.uint32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vnc", default=str(REPO.parent / "shared" / "data" / "vnc"))
    ap.add_argument("--tune", type=int, default=7, help="the first TUNE sections tune, the rest are held out (default 7 of 20)")
    ap.add_argument("--trees", type=int, default=100, help="random-forest size (option 3)")
    args = ap.parse_args()

    from skimage.feature import multiscale_basic_features
    from sklearn.ensemble import RandomForestClassifier

    from alseg.evaluate.metrics import overlap_table, score_table
    from alseg.ingest import ingest_vnc
    from alseg.io.omezarr import open_volume
    from alseg.pseudolabel.classical import ClassicalLabeller
    from alseg.pseudolabel.link import link_stack
    from alseg.spec import ClassicalPseudoLabel

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        url = os.path.join(tmp, "vnc.zarr")
        ingest_vnc(args.vnc, url, chunks=(4, 256, 256))
        raw = {lv: open_volume(url, level=lv).read() for lv in (0, 1)}
        inst = {lv: open_volume(os.path.join(url, "labels", "mitochondria"), level=lv).read() for lv in (0, 1)}
    n = raw[0].shape[0]
    if not 1 <= args.tune <= n // 3 + 1:
        raise SystemExit(f"--tune must be between 1 and {n // 3 + 1} (a third of {n} sections)")
    sets = {"tune": slice(0, args.tune), "held-out": slice(args.tune, n)}
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; VNC {raw[0].shape} at 50 x {PX_NM} x {PX_NM} nm; "
          f"tuning sections 0-{args.tune - 1}, held out {args.tune}-{n - 1}")

    default = ClassicalPseudoLabel()
    lab0 = ClassicalLabeller(default, pixel_size_nm=PX_NM)
    fg0 = np.stack([lab0.foreground(s) for s in raw[0]])
    print("\n1. where the default fails (level 0)")
    for name, sl in sets.items():
        p, r, iou = voxel_scores(fg0[sl], inst[0][sl] > 0)
        total, missed, share = missed_objects(fg0[sl], inst[0][sl] > 0)
        print(f"  {name:>8}: voxel precision {p:.3f} recall {r:.3f} foreground IoU {iou:.3f}; "
              f"2D objects missed {missed} of {total} ({share:.0%} of the mitochondrial area)")

    print("\n2. parameter grid around the defaults (level 1, 9.2 nm), best 5 on the tuning sections")
    gt1 = inst[1] > 0
    grid = []
    for sig, df, op, sol, area in itertools.product([23, 40, 60], [0.18, 0.22, 0.28, 0.34], [14, 28, 46], [0.8, 0.9], [21000, 40000]):
        spec = ClassicalPseudoLabel(denoise_sigma_nm=sig, dark_fraction=df, opening_radius_nm=op, min_solidity=sol, min_area_nm2=area)
        lab = ClassicalLabeller(spec, pixel_size_nm=2 * PX_NM)
        fg = np.stack([lab.foreground(s) for s in raw[1][sets["tune"]]])
        grid.append((voxel_scores(fg, gt1[sets["tune"]])[2], (sig, df, op, sol, area), spec))
    grid.sort(key=lambda g: -g[0])
    for iou, params, spec in grid[:5]:
        lab = ClassicalLabeller(spec, pixel_size_nm=2 * PX_NM)
        held = voxel_scores(np.stack([lab.foreground(s) for s in raw[1][sets["held-out"]]]), gt1[sets["held-out"]])[2]
        mark = " (the defaults)" if spec == default else ""
        print(f"  sigma {params[0]} nm, dark {params[1]}, opening {params[2]} nm, solidity {params[3]}, area {params[4]} nm2: "
              f"foreground IoU tune {iou:.3f}, held-out {held:.3f}{mark}")

    print(f"\n3. self-training a random forest ({args.trees} trees) on multiscale pixel features (level 1)")
    feats = np.stack([multiscale_basic_features(s.astype(np.float32) / 255, sigma_min=1, sigma_max=16, num_sigma=5) for s in raw[1]])
    flat = feats.reshape(-1, feats.shape[-1])
    from scipy import ndimage

    pseudo1 = fg0[:, ::2, ::2]
    core = np.stack([ndimage.binary_erosion(s, iterations=3) for s in pseudo1])
    far = np.stack([~ndimage.binary_dilation(s, iterations=6) for s in pseudo1])
    rng = np.random.default_rng(0)
    tune_mask = np.zeros(pseudo1.shape, bool)
    tune_mask[sets["tune"]] = True
    print(f"  the default's mask at level 1: foreground IoU tune {voxel_scores(pseudo1[sets['tune']], gt1[sets['tune']])[2]:.3f}, "
          f"held-out {voxel_scores(pseudo1[sets['held-out']], gt1[sets['held-out']])[2]:.3f}")
    for name, pos, neg in [("on the default's mask", pseudo1, ~pseudo1), ("on its confident core", core, far),
                           ("on the ground truth (upper bound)", gt1, ~gt1)]:
        idx = []
        for cls in (pos & tune_mask, neg & tune_mask):
            where = np.flatnonzero(cls.ravel())
            idx.append(rng.choice(where, min(20000, len(where)), replace=False))
        x = flat[np.concatenate(idx)]
        y = np.r_[np.ones(len(idx[0])), np.zeros(len(idx[1]))]
        forest = RandomForestClassifier(args.trees, max_depth=12, n_jobs=1, random_state=0).fit(x, y)
        prob = forest.predict_proba(flat)[:, 1].reshape(pseudo1.shape)
        best = max((0.3, 0.5, 0.7), key=lambda th: voxel_scores(prob[sets["tune"]] > th, gt1[sets["tune"]])[2])
        scores = {k: voxel_scores(prob[sl] > best, gt1[sl]) for k, sl in sets.items()}
        print(f"  trained {name}, threshold {best}: " + "; ".join(
            f"{k} precision {p:.3f} recall {r:.3f} foreground IoU {iou:.3f}" for k, (p, r, iou) in scores.items()))

    print("\n4. 3D linking of the default's 2D instances (level 0)")
    masks = np.stack([lab0.segment(s) for s in raw[0]])
    for name, sl in sets.items():
        gt = inst[0][sl]
        for min_size in (default.min_size_vox, 5000):
            closed = gap_link(masks[sl], default.link_iou, min_size)
            ours = link_stack(masks[sl], default.link_iou, min_size, gap=1)
            assert same_partition(closed, ours), "alseg's gap closing (link_gap: 1) differs from the plain reference"
            for how, pred in [("today", link_stack(masks[sl], default.link_iou, min_size)), ("gap closing", closed)]:
                s = score_table(overlap_table(gt, pred))
                a, b = s["at"]["0.5"], s["at"]["0.75"]
                print(f"  {name:>8}, min size {min_size:>5}, {how:>11}: {s['objects_pred']:>3} objects for {s['objects_gt']}, "
                      f"foreground IoU {s['foreground_iou']:.3f}, F1@0.5 {a['f1']:.3f} (TP {a['tp']}, FP {a['fp']}, FN {a['fn']}), "
                      f"F1@0.75 {b['f1']:.3f}")
    print(f"\nwall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
