"""nnU-Net prediction throughput on one GPU, default plan, with and without mirroring.

    PYTHONPATH=. python3 benchmarks/gpu/predict_gpu.py --plan .gpu/plan --out results.json

The plan is nnU-Net's own default 3d_fullres plan (no alseg overrides) for MitoEM-like training
patches (32 x 512 x 512 at 30 x 8 x 8 nm), made on the CPU with alseg's export_dataset +
plan_and_preprocess (benchmarks/gpu/make_plan.py) and carried as its plan files. Here, with alseg's own code:

1. a small synthetic training set (alseg.synth) gets those plans (alseg transfer_plans) and the
   network is trained for 1 iteration on the GPU (alseg train; weights do not matter for speed),
2. a random uint8 OME-Zarr volume (default 40 x 1024 x 1024 at 30 x 8 x 8 nm) is predicted by
   * nnU-Net's own predictor on the whole array (alseg.nnunet.predict.load_predictor +
     predict_single_npy_array; model loading excluded, as benchmarks/predict.py does), and
   * alseg's blockwise predict_volume (serial runner, one worker, default global tiling, blocks
     40 x 512 x 512, OME-Zarr output; model loading included, as benchmarks/predict.py does),
   each without and with mirroring (test-time augmentation),
3. the network's forward pass alone on one patch (fp16 autocast, as nnU-Net predicts on CUDA) is
   timed with CUDA events (median) for TFLOP/s and fraction of peak.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

T0 = time.perf_counter()


def log(*a):
    print(f"[{time.perf_counter() - T0:7.1f}s]", *a, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", default=".gpu/plan")
    ap.add_argument("--shape", nargs=3, type=int, default=(40, 1024, 1024))
    ap.add_argument("--block", nargs=3, type=int, default=(40, 512, 512))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--mirror-modes", default="0,1")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each no-mirroring prediction (mirroring: 1)")
    ap.add_argument("--forward-repeats", type=int, default=20)
    ap.add_argument("--flops-per-patch", type=float, default=1135335424000.0, help="from benchmarks/gpu/flops.py (FlopCounterMode)")
    ap.add_argument("--peak-tflops", type=float, default=788.0, help="measured bf16 dense matmul on this kind (KINDS.md)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--mitoem", nargs=3, type=int, default=(1000, 4096, 4096), help="volume of the projection (MitoEM rat)")
    ap.add_argument("--budget-s", type=float, default=150.0, help="skip repeats once this much time has passed")
    args = ap.parse_args()

    import torch

    from alseg.geometry import Box
    from alseg.io.omezarr import create_image, open_volume
    from alseg.nnunet import IntensityNorm, NnUNetDirs, export_dataset, train, transfer_plans
    from alseg.nnunet.predict import load_predictor, predict_volume
    from alseg.spec import TrainingSpec
    from alseg.synth import SynthParams, write_synthetic

    res: dict = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                 "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                 "cpus": os.cpu_count(), "shape": list(args.shape), "block": list(args.block)}

    def save():
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=1)

    os.environ.setdefault("nnUNet_compile", "f")  # training only: no torch.compile (minutes); prediction never compiles by default
    tmp = tempfile.mkdtemp(prefix="pgpu-")
    dirs = NnUNetDirs(os.path.join(tmp, "nnunet")).make()
    with open(os.path.join(args.plan, "nnUNetPlans.json")) as fh:
        plans = json.load(fh)
    src = os.path.join(dirs.preprocessed, plans["dataset_name"])
    os.makedirs(src)
    for f in ("nnUNetPlans.json", "dataset.json", "dataset_fingerprint.json"):
        shutil.copy(os.path.join(args.plan, f), os.path.join(src, f))
    conf = plans["configurations"]["3d_fullres"]
    patch = [int(p) for p in conf["patch_size"]]
    spacing = tuple(float(s) for s in conf["spacing"])
    res["plan"] = {"patch_size": patch, "batch_size": conf["batch_size"], "spacing": list(spacing),
                   "n_stages": conf["architecture"]["arch_kwargs"]["n_stages"],
                   "features_per_stage": conf["architecture"]["arch_kwargs"]["features_per_stage"]}
    log("plan", res["plan"])

    # 1. train the default-plan network for one iteration on the device (alseg's own route)
    t = time.perf_counter()
    turl = os.path.join(tmp, "train.zarr")
    tshape = (patch[0], patch[1], 2 * patch[2])
    write_synthetic(turl, SynthParams.preset("easy", shape=tshape, seed=1, voxel_size_nm=spacing), chunks=tuple(patch))
    tnorm = IntensityNorm.of_volume(turl)
    boxes = [Box((0, 0, 0), tuple(patch)), Box((0, 0, patch[2]), (patch[0], patch[1], 2 * patch[2]))]
    export_dataset(dirs, 2, "devtrain", turl, turl + "/labels/mitochondria", boxes, norm=tnorm)
    transfer_plans(dirs, 1, 2)
    log(f"training set ready ({time.perf_counter() - t:.1f} s)")
    t = time.perf_counter()
    folder = train(dirs, 2, "devtrain", TrainingSpec(epochs=1, iterations_per_epoch=1, val_iterations_per_epoch=1,
                                                     final_validation=False), device=args.device)
    res["train_1_iteration_seconds"] = round(time.perf_counter() - t, 1)
    log(f"trained 1 iteration in {res['train_1_iteration_seconds']} s -> {folder}")
    save()

    # 2. the volume to predict: random uint8 at the plan's spacing
    t = time.perf_counter()
    shape = tuple(args.shape)
    url = os.path.join(tmp, "v.zarr")
    vol = create_image(url, shape=shape, dtype="uint8", chunks=tuple(args.block), voxel_size_nm=spacing, levels=1)
    rng = np.random.default_rng(0)
    vol.write(Box((0, 0, 0), shape), rng.integers(0, 256, size=shape, dtype=np.uint8))
    norm = IntensityNorm.of_volume(url)
    vox = int(np.prod(shape))
    img = open_volume(url).read()
    log(f"volume {shape} written ({time.perf_counter() - t:.1f} s)")

    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    steps = compute_steps_for_sliding_window(shape, patch, 0.5)
    n_tiles = int(np.prod([len(s) for s in steps]))
    res["tiles"] = n_tiles
    res["flops_per_patch_forward"] = args.flops_per_patch
    res["flops_per_volume_voxel_no_mirroring"] = args.flops_per_patch * n_tiles / vox
    m_tiles = int(np.prod([len(s) for s in compute_steps_for_sliding_window(tuple(args.mitoem), patch, 0.5)]))
    res["mitoem"] = {"shape": list(args.mitoem), "tiles": m_tiles,
                     "flops_per_voxel_no_mirroring": args.flops_per_patch * m_tiles / float(np.prod(args.mitoem))}

    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    own_maps = {}
    for m in [int(v) for v in args.mirror_modes.split(",")]:
        key = "mirroring" if m else "no_mirroring"
        r = res.setdefault(key, {})
        t = time.perf_counter()
        pred = load_predictor(folder, device=args.device, mirroring=bool(m))
        r["load_predictor_seconds"] = round(time.perf_counter() - t, 2)
        r["mirror_axes"] = list(pred.allowed_mirroring_axes or []) if m else []
        passes = 2 ** len(r["mirror_axes"]) if m else 1
        # warm-up: one patch-sized array through nnU-Net's own predictor (kernels, cudnn benchmark)
        t = time.perf_counter()
        pred.predict_single_npy_array(norm(img[: patch[0], : patch[1], : patch[2]])[None], {"spacing": list(spacing)})
        sync()
        log(f"[{key}] warm-up {time.perf_counter() - t:.1f} s; mirror axes {r['mirror_axes']}")

        # forward pass alone on one patch (fp16 autocast as nnU-Net on CUDA), CUDA events
        if args.device == "cuda":
            pred.network.to(pred.device).eval()
            x = torch.from_numpy(norm(img[: patch[0], : patch[1], : patch[2]]))[None, None].to(pred.device)
            times = []
            with torch.inference_mode(), torch.autocast("cuda"):
                for i in range(args.forward_repeats + 3):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    out = pred._internal_maybe_mirror_and_predict(x)
                    b.record()
                    torch.cuda.synchronize()
                    if i >= 3:
                        times.append(a.elapsed_time(b) / 1000)
            med = statistics.median(times)
            r["patch_forward_seconds_median"] = round(med, 5)
            r["patch_forward_seconds_min_max"] = [round(min(times), 5), round(max(times), 5)]
            r["patch_forward_tflops"] = round(args.flops_per_patch * passes / med / 1e12, 1)
            r["patch_forward_fraction_of_peak"] = round(args.flops_per_patch * passes / med / 1e12 / args.peak_tflops, 3)
            r["network_only_voxels_per_s"] = round(vox / (med * n_tiles))
            log(f"[{key}] forward of one patch x{passes}: median {med * 1000:.2f} ms -> {r['patch_forward_tflops']} TFLOP/s "
                f"({r['patch_forward_fraction_of_peak']:.1%} of {args.peak_tflops} TFLOP/s); network alone "
                f"{r['network_only_voxels_per_s']:,} voxels/s on this volume")
            del out, x
        save()

        reps = args.repeats if not m else 1
        own_s, ours_s = [], []
        for rep in range(reps):
            if rep and time.perf_counter() - T0 > args.budget_s:
                log("budget reached: no more repeats")
                break
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            seg = pred.predict_single_npy_array(norm(img)[None], {"spacing": list(spacing)})
            sync()
            own_s.append(time.perf_counter() - t)
            own_maps[key] = seg.astype(np.uint8)
            if args.device == "cuda":
                r["nnunet_peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
            log(f"[{key}] nnU-Net whole array run {rep + 1}: {own_s[-1]:.2f} s, {vox / own_s[-1]:,.0f} voxels/s")
            out_url = os.path.join(tmp, f"ours-{key}-{rep}.zarr")
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            predict_volume(folder, url, out_url, norm=norm, block_shape=list(args.block), halo=[0, 0, 0], tiling="global",
                           work_dir=out_url + "-work", device=args.device, mirroring=bool(m))
            sync()
            ours_s.append(time.perf_counter() - t)
            if args.device == "cuda":
                r["alseg_peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
            agree = float((open_volume(out_url).read() == own_maps[key]).mean())
            r["class_maps_agree"] = agree
            log(f"[{key}] alseg blockwise run {rep + 1}: {ours_s[-1]:.2f} s, {vox / ours_s[-1]:,.0f} voxels/s; "
                f"agree {agree:.4%}")
            r["nnunet_seconds"] = [round(s, 2) for s in own_s]
            r["alseg_seconds"] = [round(s, 2) for s in ours_s]
            r["nnunet_voxels_per_s"] = round(vox / statistics.median(own_s))
            r["alseg_voxels_per_s"] = round(vox / statistics.median(ours_s))
            r["ratio_alseg_over_nnunet"] = round(statistics.median(own_s) / statistics.median(ours_s), 3)
            save()
            shutil.rmtree(out_url + "-work", ignore_errors=True)
        # projection to the MitoEM volume: same seconds per tile as here (alseg's whole path, one GPU)
        per_tile = statistics.median(ours_s) / n_tiles
        r["alseg_seconds_per_tile"] = round(per_tile, 4)
        r["mitoem_projection_alseg_gpu_hours"] = round(per_tile * res["mitoem"]["tiles"] / 3600, 2)
        if "patch_forward_seconds_median" in r:
            r["mitoem_projection_network_only_gpu_hours"] = round(r["patch_forward_seconds_median"] * res["mitoem"]["tiles"] / 3600, 2)
        log(f"[{key}] nnU-Net {r['nnunet_voxels_per_s']:,} voxels/s, alseg {r['alseg_voxels_per_s']:,} voxels/s, "
            f"ratio alseg/nnU-Net {r['ratio_alseg_over_nnunet']}x")
        del pred
        if args.device == "cuda":
            torch.cuda.empty_cache()
    res["total_seconds"] = round(time.perf_counter() - T0, 1)
    save()
    print(json.dumps(res, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
