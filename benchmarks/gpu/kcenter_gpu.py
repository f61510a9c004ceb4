"""alseg's kcenter_greedy with device="cuda": median of a few whole runs, on the same data as
benchmarks/coreset.py's defaults (n 1,000,000 Gaussian rows of d 256, float32, normalised; k 1,000
picks from the same 3 random starts, seed 0), plus one greedy step (torch.mv) timed with CUDA events.

    PYTHONPATH=. python3 benchmarks/gpu/kcenter_gpu.py --out kcenter.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--check-picks", type=int, default=50, help="CPU picks to compare with (numpy path)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from alseg.select import kcenter_greedy, normalize_rows

    rng = np.random.default_rng(0)  # as benchmarks/coreset.py (--seed 0)
    raw = rng.standard_normal((args.n, args.d), dtype=np.float32)
    x = normalize_rows(raw)
    starts = rng.choice(args.n, 3, replace=False)
    del raw
    res = {"n": args.n, "d": args.d, "k": args.k, "torch": torch.__version__, "device_name": torch.cuda.get_device_name()}

    kcenter_greedy(x[:10000], 10, starts=[0, 1, 2], device="cuda")  # warm-up: CUDA context, kernels
    torch.cuda.synchronize()
    t = time.perf_counter()
    xg = torch.from_numpy(x).cuda()
    torch.cuda.synchronize()
    res["upload_seconds"] = round(time.perf_counter() - t, 3)
    cg = xg[int(starts[0])]
    times = []
    for i in range(23):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        torch.mv(xg, cg)
        b.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(a.elapsed_time(b) / 1000)
    step = statistics.median(times)
    res["torch_mv_step_seconds_median"] = round(step, 6)
    res["torch_mv_step_GBps"] = round(args.n * args.d * 4 / step / 1e9, 1)
    del xg
    runs, picks = [], None
    for _ in range(args.runs):
        t = time.perf_counter()
        out = kcenter_greedy(x, args.k, starts=starts, device="cuda")
        torch.cuda.synchronize()
        runs.append(time.perf_counter() - t)
        picks = out.picks
        torch.cuda.empty_cache()
    res["kcenter_cuda_seconds"] = [round(r, 3) for r in runs]
    res["kcenter_cuda_seconds_median"] = round(statistics.median(runs), 3)
    res["per_pick_ms"] = round(statistics.median(runs) / args.k * 1000, 3)
    t = time.perf_counter()
    cpu = kcenter_greedy(x, args.check_picks, starts=starts)
    res["cpu_seconds_for_check_picks"] = round(time.perf_counter() - t, 2)
    res["first_picks_equal_cpu"] = bool(np.array_equal(cpu.picks, picks[: args.check_picks]))
    res["check_picks"] = args.check_picks
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
