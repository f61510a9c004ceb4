"""Full supervision on the real VNC stack: the reference every annotation budget is compared to (issue 23).

    .venv/bin/python benchmarks/reference.py [--configuration 2d|3d_fullres] [--level L]
        [--patch P ...] [--batch B] [--features F ...] [--epochs E] [--iterations-per-epoch I]
        [--snapshot-every S] [--min-size V ...] [--work DIR] [--plot PNG]
        [--patches-from RUN_DIR] [--pretrained RUN_DIR]

nnU-Net is trained by alseg's own code (dataset export with alseg's intensity map, nnU-Net's
planner with alseg's plan overrides, alseg's trainer) on the *full ground truth* of the pool
(sections 0-9 of ``../shared/data/vnc``, tiled into cases of 10 x 256 x 256 at the chosen
pyramid level), keeping the weights every ``--snapshot-every`` epochs. Each snapshot predicts the
held-out sections 10-19 with alseg's block predictor (nnU-Net's sliding window, Gaussian
weighting, no mirroring), the class map is brought back to full resolution (nearest), cut into
instances as the post-processing stage does (26-connected components, objects under
``--min-size`` voxels at full resolution dropped) and scored with alseg's metrics against the
ground truth at full resolution: the learning curve (F1, precision and PQ at IoU 0.5, AP-75,
foreground IoU against training iterations). The ground-truth mask through the same
post-processing is the ceiling of the split. Prints one line per snapshot and one JSON object at
the end; ``--plot`` writes the curve as a PNG.

The same curve for a few annotated patches (issue 23's fine-tuning schedule): ``--patches-from``
an alseg run directory trains on exactly the patches its annotator labelled in round 1 (from
``annotation/imports.json``, at that job's level) instead of the whole pool, and
``--pretrained`` a run directory starts from its model pretrained on pseudo-labels (its weights
but the segmentation head, and its intensity map), as the pipeline's fine-tuning does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

VNC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "vnc")
POOL_SECTIONS = 10  # sections 0-9 train, 10-19 are held out


def instances(mask: np.ndarray, min_size: int) -> np.ndarray:
    """The post-processing stage's instances of a whole (small) mask: 26-connected components,
    objects under ``min_size`` voxels dropped (the blockwise stage equals this; tests/postprocess)."""
    from scipy import ndimage

    from alseg.postprocess.stitch import structure

    lab, n = ndimage.label(mask, structure=structure(26))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    ids = np.cumsum(keep) * keep
    return ids[lab].astype(np.uint32)


def score(gt: np.ndarray, mask: np.ndarray, min_size: int) -> dict:
    from alseg.evaluate.metrics import overlap_table, score_table

    pred = instances(mask, min_size)
    s = score_table(overlap_table(gt, pred))
    at = s["at"]["0.5"]
    return {"f1_50": at["f1"], "precision_50": at["precision"], "recall_50": at["recall"], "pq_50": at["panoptic_quality"],
            "f1_75": s["at"]["0.75"]["f1"], "ap75": s["ap75"], "foreground_iou": s["foreground_iou"],
            "objects": s["objects_pred"], "gt_objects": s["objects_gt"]}


def upsample(classes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour copy of a coarser level's map onto the full-resolution grid."""
    f = [int(round(s / c)) for s, c in zip(shape, classes.shape)]
    up = classes
    for axis, k in enumerate(f):
        if k > 1:
            up = np.repeat(up, k, axis=axis)
    return up[tuple(slice(0, s) for s in shape)]


def annotated_boxes(run_dir: str) -> list:
    """The boxes (at the job's level) of the patches annotated in round 1 of an alseg run."""
    from alseg.geometry import Box

    with open(os.path.join(run_dir, "annotation", "imports.json")) as fh:
        rounds = json.load(fh)["rounds"]
    return [Box(tuple(p["box"][:3]), tuple(p["box"][3:])) for r in rounds if r["round"] == 1 for p in r["patches"]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configuration", choices=["2d", "3d_fullres"], default="2d")
    ap.add_argument("--level", type=int, default=1, help="pyramid level trained and predicted on (1: 9.2 nm in y-x)")
    ap.add_argument("--case", type=int, default=256, help="y-x side of the training cases at that level")
    ap.add_argument("--patch", type=int, nargs="+", default=[256, 256], help="nnU-Net patch (2 axes for 2d, 3 for 3d)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128, 256, 256])
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--iterations-per-epoch", type=int, default=50)
    ap.add_argument("--snapshot-every", type=int, default=4)
    ap.add_argument("--learning-rate", type=float, default=1e-2)
    ap.add_argument("--min-size", type=int, nargs="+", default=[500, 2000], help="post-processing sizes (full-resolution voxels)")
    ap.add_argument("--work", default="/tmp/alseg-reference")
    ap.add_argument("--plot", default=None, help="write the learning curve here (PNG)")
    ap.add_argument("--vnc", default=VNC)
    ap.add_argument("--patches-from", default=None, help="an alseg run directory: train on the patches annotated in its round 1")
    ap.add_argument("--pretrained", default=None, help="an alseg run directory: start from its pretrained model")
    args = ap.parse_args(argv)

    from alseg.geometry import Box
    from alseg.ingest.write import ingest_vnc
    from alseg.io.omezarr import open_volume
    from alseg.nnunet.dataset import IntensityNorm, export_dataset
    from alseg.nnunet.paths import NnUNetDirs
    from alseg.nnunet.predict import BlockPredictor
    from alseg.nnunet.run import model_folder, plan_and_preprocess, train

    os.makedirs(args.work, exist_ok=True)
    url = os.path.join(args.work, "vnc.zarr")
    if not os.path.exists(os.path.join(url, "zarr.json")):
        ingest_vnc(args.vnc, url)
    labels_url = os.path.join(url, "labels", "mitochondria")
    image = open_volume(url, level=args.level)
    z, h, w = image.shape
    gt0_vol = open_volume(labels_url)
    full = gt0_vol.shape
    held0 = Box((POOL_SECTIONS, 0, 0), full)
    gt = gt0_vol.read(held0)
    c = args.case
    boxes = [Box((0, y, x), (POOL_SECTIONS, y + c, x + c)) for y in range(0, h - c + 1, c) for x in range(0, w - c + 1, c)]
    tag = (f"{args.configuration}-l{args.level}-p{'x'.join(map(str, args.patch))}-b{args.batch}-f{'_'.join(map(str, args.features))}"
           f"-e{args.epochs}x{args.iterations_per_epoch}-lr{args.learning_rate:g}")
    norm = IntensityNorm.of_volume(url)
    checkpoint = None
    if args.patches_from:
        boxes = annotated_boxes(args.patches_from)
        tag += f"-{len(boxes)}of-{os.path.basename(os.path.normpath(args.patches_from))}"
    if args.pretrained:
        with open(os.path.join(args.pretrained, "nnunet", "pretrain.json")) as fh:
            pre = json.load(fh)
        checkpoint = os.path.join(pre["model_folder"], "fold_all", "checkpoint_final.pth")
        norm = IntensityNorm(**pre["norm"])
        tag += "-pretrained"
    dirs = NnUNetDirs(os.path.join(args.work, tag))
    t0 = time.perf_counter()
    name = "vncfull"
    folder = model_folder(dirs, 1, name, args.configuration)
    overrides = {"patch_size_vox": args.patch, "batch_size": args.batch, "features_per_stage": args.features,
                 "n_stages": len(args.features)}
    if not os.path.isfile(os.path.join(folder, "fold_all", "checkpoint_final.pth")):
        export_dataset(dirs, 1, name, url, labels_url, boxes, norm=norm, level=args.level, labels_level=args.level)
        plans = plan_and_preprocess(dirs, 1, configuration=args.configuration, overrides=overrides)
        conf = plans["configurations"][args.configuration]
        print(f"plan: patch {conf['patch_size']}, batch {conf['batch_size']}, spacing {conf['spacing']}, "
              f"features {conf['architecture']['arch_kwargs']['features_per_stage']}", flush=True)
        schedule = {"epochs": args.epochs, "iterations_per_epoch": args.iterations_per_epoch, "val_iterations_per_epoch": 1,
                    "learning_rate": args.learning_rate, "final_validation": False, "snapshot_every": args.snapshot_every}
        t1 = time.perf_counter()
        train(dirs, 1, name, schedule, configuration=args.configuration, device="cpu", pretrained=checkpoint,
              echo=lambda line: print("  " + line, flush=True) if "Epoch time" in line or "train_loss" in line else None)
        train_s = time.perf_counter() - t1
    else:
        train_s = float("nan")
        print(f"reusing the trained model in {folder}", flush=True)

    held = open_volume(url, level=args.level).read(Box((POOL_SECTIONS, 0, 0), (z, h, w)))
    ceiling = {str(m): score(gt, gt > 0, m) for m in args.min_size}
    curve = []
    epochs = [e for e in range(args.snapshot_every, args.epochs + 1, args.snapshot_every)] if args.snapshot_every else []
    if args.epochs not in epochs:
        epochs.append(args.epochs)
    for e in epochs:
        ck = "checkpoint_final.pth" if e == args.epochs else f"checkpoint_ep{e}.pth"
        t1 = time.perf_counter()
        pred = BlockPredictor(folder, norm.to_json(), checkpoint=ck)
        classes = pred.logits(held).argmax(0).astype(np.uint8)
        predict_s = time.perf_counter() - t1
        mask = upsample(classes == 1, gt.shape)
        row = {"epoch": e, "iterations": e * args.iterations_per_epoch, "predict_s": round(predict_s, 1),
               "scores": {str(m): score(gt, mask, m) for m in args.min_size}}
        curve.append(row)
        print(f"iterations {row['iterations']:5d}: " + "; ".join(
            f"min {m}: F1@0.5 {s['f1_50']:.3f} P {s['precision_50']:.2f} PQ {s['pq_50']:.3f} AP-75 {s['ap75']:.3f} "
            f"fg IoU {s['foreground_iou']:.3f} ({s['objects']} obj)" for m, s in row["scores"].items())
            + f"  [predict {predict_s:.0f} s]", flush=True)
    result = {"tag": tag, "args": vars(args), "train_s": round(train_s, 1), "wall_s": round(time.perf_counter() - t0, 1),
              "machine": f"{platform.machine()} {os.cpu_count()} cpu", "ceiling": ceiling, "curve": curve}
    with open(os.path.join(args.work, f"{tag}.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        its = [r["iterations"] for r in curve]
        m = str(args.min_size[0])
        ax.plot(its, [r["scores"][m]["f1_50"] for r in curve], "o-", label="F1 at IoU 0.5")
        ax.plot(its, [r["scores"][m]["foreground_iou"] for r in curve], "s-", label="foreground IoU")
        ax.axhline(ceiling[m]["f1_50"], ls="--", c="grey", label="ceiling (ground truth, same post-processing)")
        ax.set_xlabel("training iterations")
        ax.set_ylim(0, 1)
        ax.set_title(f"VNC full annotation, held-out sections 10-19\n{tag}", fontsize=8)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
