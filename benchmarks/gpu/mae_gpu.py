"""MAE training step time on the GPU for configs/vnc.yaml's embedding settings, with alseg's own code.

    PYTHONPATH=. python3 benchmarks/gpu/mae_gpu.py --out mae.json

configs/vnc.yaml: ``embedding: {img_size_px: 256, epochs: 100, slices_per_patch: 5}``, the rest
EmbeddingSpec's defaults (vit_tiny_patch16_224 encoder, decoder 128 x 2, batch 64, mask 0.75).
The VNC pool is 16 patches of 10 x 256 x 256: 160 training slices, so 2 steps per epoch and 200
steps in all (the CPU took 6 s per step, 20 min). Slices here are random float16 images of that
shape (speed does not depend on content).

1. Steps timed one by one: the body of alseg.embed.train.train_mae's loop (augment, random_keep,
   MaskedAutoencoder forward + loss, backward, AdamW step, float(loss) which synchronises), on
   the model build_mae(EmbeddingSpec) builds; median after warm-up. Same on this machine's CPU
   for a same-run reference (fewer steps).
2. The whole train_mae call for the vnc schedule (checkpoint written after each epoch, fixed-set
   eval loss before and after), wall time; with max_epochs when the full run would not fit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

T0 = time.perf_counter()


def log(*a):
    print(f"[{time.perf_counter() - T0:7.1f}s]", *a, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--slices", type=int, default=160)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cpu-steps", type=int, default=2)
    ap.add_argument("--full-budget-s", type=float, default=45.0, help="run the whole schedule only if it should fit")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from alseg.embed.data import augment
    from alseg.embed.mae import build_mae
    from alseg.embed.train import _generators, _param_groups, train_mae
    from alseg.spec import EmbeddingSpec

    # configs/vnc.yaml as it was when measured (the ViT MAE; the default is now the conv MAE)
    spec = EmbeddingSpec(model="vit", img_size_px=256, epochs=100, slices_per_patch=5, mask_ratio=0.75, learning_rate=1.5e-4,
                         warmup_epochs=5)
    g = torch.Generator().manual_seed(0)
    slices = torch.randn((args.slices, 1, spec.img_size_px, spec.img_size_px), generator=g).to(torch.float16)
    batch = min(spec.batch_size, args.slices)
    res = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "cpus": os.cpu_count(),
           "spec": {k: v for k, v in spec.model_dump().items() if k in ("backbone", "img_size_px", "batch_size", "epochs",
                                                                         "mask_ratio", "decoder_dim", "decoder_depth")},
           "slices": args.slices, "batch": batch}

    def save():
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=1)

    def step_times(device: str, n: int, warm: int) -> dict:
        torch.manual_seed(0)
        model = build_mae(spec).to(device).train()
        opt = torch.optim.AdamW(_param_groups(model, spec.weight_decay), lr=spec.learning_rate, betas=(0.9, 0.95))
        gens = _generators(0)
        total, aug = [], []
        for s in range(warm + n):
            t = time.perf_counter()
            order = torch.randperm(args.slices, generator=gens["order"])
            imgs = augment(slices[order[:batch]], gens["augment"])
            ta = time.perf_counter() - t
            keep, mask = model.random_keep(batch, spec.mask_ratio, gens["mask"])
            loss = model(imgs.float().to(device), keep, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())  # synchronises, as train_mae's float(reported)
            if s >= warm:
                total.append(time.perf_counter() - t)
                aug.append(ta)
        return {"step_seconds_median": round(statistics.median(total), 4), "step_seconds_min_max": [round(min(total), 4), round(max(total), 4)],
                "augment_seconds_median": round(statistics.median(aug), 4), "steps_timed": n, "last_loss": value,
                "params": sum(p.numel() for p in model.parameters())}

    r = step_times(args.device, args.steps, args.warmup)
    res["gpu_steps" if args.device == "cuda" else "steps"] = r
    log(f"{args.device}: {r['step_seconds_median'] * 1000:.1f} ms per step (median of {args.steps}), of which augmentation "
        f"(CPU) {r['augment_seconds_median'] * 1000:.1f} ms")
    save()
    if args.full_budget_s > 0:
        # the whole train_mae call for the vnc schedule
        steps_per_epoch = max(1, args.slices // batch)
        est = r["step_seconds_median"] * spec.epochs * steps_per_epoch
        max_epochs = None if est < args.full_budget_s else max(1, int(spec.epochs * args.full_budget_s / est))
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            model = build_mae(spec)
            t = time.perf_counter()
            out = train_mae(model, slices, spec, checkpoint_url=os.path.join(tmp, "ckpt.pt"), signature="bench", seed=0,
                            device=args.device, progress=False, max_epochs=max_epochs)
            wall = time.perf_counter() - t
        run_steps = (max_epochs or spec.epochs) * steps_per_epoch
        res["train_mae"] = {"epochs_run": max_epochs or spec.epochs, "steps_run": run_steps, "wall_seconds": round(wall, 2),
                            "seconds_per_step_incl_checkpoints_and_eval": round(wall / run_steps, 4),
                            "full_schedule_steps": out["steps"], "loss_first_last_epoch": [out["losses"][0], out["losses"][-1]],
                            "eval_before_after": [out["eval_before"], out["eval_after"]]}
        log(f"train_mae: {run_steps} steps ({max_epochs or spec.epochs} epochs) in {wall:.1f} s = "
            f"{wall / run_steps * 1000:.1f} ms per step with checkpoints and eval")
        save()
        if args.cpu_steps and args.device == "cuda":
            torch.set_num_threads(os.cpu_count() or 1)
            rc = step_times("cpu", args.cpu_steps, 1)
            res["cpu_steps_same_machine"] = rc
            res["gpu_over_cpu_speedup"] = round(rc["step_seconds_median"] / r["step_seconds_median"], 1)
            log(f"cpu ({os.cpu_count()} cores) same run: {rc['step_seconds_median']:.2f} s per step -> GPU {res['gpu_over_cpu_speedup']}x")
    res["total_seconds"] = round(time.perf_counter() - T0, 1)
    save()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
