"""k-center greedy: alseg's exact implementation vs the greedy written the usual way.

    .venv/bin/python benchmarks/coreset.py [--n 1000000] [--d 256] [--k 1000] [--ref-steps 20]

On random Gaussian rows (float32), from the same 3 random starts, times

* alseg's ``kcenter_greedy`` (one BLAS sgemv per chunk of rows and step, minimum kept in cache),
  all ``k`` picks;
* the reference: sklearn ``pairwise_distances(X, X[c], metric="cosine")`` on every step (it
  re-normalises all rows each time) and a numpy minimum / argmax. It is timed on its first
  ``--ref-steps`` greedy steps and scaled linearly to ``k`` (each step costs the same: one pass
  over all rows), which the output says;

and checks that the reference's picks equal alseg's first picks. Then it runs both to the end on
a smaller problem (``--n-full`` rows, ``--k-full`` picks) and checks all picks are identical.

It also times the alternatives measured before choosing: one greedy step with FAISS
(``faiss.pairwise_distances``) and with torch (``torch.mv``), and the distances of every row to
an annotated set of ``--annotated`` rows (one sgemv per centre, numpy sgemm in chunks as alseg
does, FAISS ``IndexFlatIP.search``). With ``--gpu`` (and a CUDA device) it adds one step with
``torch.mv`` on the GPU and the whole greedy with ``device="cuda"``, and whether its picks equal
the CPU's.
"""

from __future__ import annotations

import os
import sys

# This file is named like the standard library's ``select``: run as a script, its folder would
# shadow that module for everything imported after it. Put the repository root there instead.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def _timed(fn, repeat=3):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--ref-steps", type=int, default=20)
    ap.add_argument("--n-full", type=int, default=100_000)
    ap.add_argument("--k-full", type=int, default=200)
    ap.add_argument("--annotated", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpu", action="store_true")
    args = ap.parse_args(argv)

    from alseg.select import kcenter_greedy, normalize_rows
    from tests.helpers.kcenter_reference import sklearn_kcenter

    rng = np.random.default_rng(args.seed)
    raw = rng.standard_normal((args.n, args.d), dtype=np.float32)
    x = normalize_rows(raw)
    starts = rng.choice(args.n, 3, replace=False)

    t0 = time.perf_counter()
    ours = kcenter_greedy(x, args.k, starts=starts, progress=True)
    t_ours = time.perf_counter() - t0

    steps = min(args.ref_steps, args.k - 3)
    t0 = time.perf_counter()
    ref = sklearn_kcenter(raw, 3 + steps, starts)
    t_ref_part = time.perf_counter() - t0
    # both pay one pass per start and per step except the last pick: (picks - 1) passes
    t_ref = t_ref_part * (args.k - 1) / (3 + steps - 1)
    same_prefix = bool(np.array_equal(ref, ours.picks[: 3 + steps]))

    small = x[: args.n_full]
    t0 = time.perf_counter()
    ours_small = kcenter_greedy(small, args.k_full, starts=starts[starts < args.n_full][:1] if np.any(starts < args.n_full) else [0])
    t_small = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_small = sklearn_kcenter(raw[: args.n_full], args.k_full, ours_small.picks[:1])
    t_small_ref = time.perf_counter() - t0
    same_full = bool(np.array_equal(ref_small, ours_small.picks))

    # alternatives for one greedy step
    c = x[int(starts[0])]
    alt = {}
    alt["numpy sgemv (chunked, alseg)"] = _timed(lambda: [np.matmul(x[a : a + 16384], c) for a in range(0, args.n, 16384)])[0]
    try:
        import faiss

        alt["faiss.pairwise_distances"] = _timed(lambda: faiss.pairwise_distances(c[None], x, faiss.METRIC_INNER_PRODUCT))[0]
    except Exception as err:  # noqa: BLE001 - report, do not fail the benchmark
        alt["faiss.pairwise_distances"] = f"failed: {err}"
    import torch

    xt, ct = torch.from_numpy(x), torch.from_numpy(c)
    alt["torch.mv (cpu)"] = _timed(lambda: torch.mv(xt, ct))[0]
    if args.gpu and torch.cuda.is_available():
        xg, cg = xt.cuda(), ct.cuda()
        torch.cuda.synchronize()

        def gpu_step():
            out = torch.mv(xg, cg)
            torch.cuda.synchronize()
            return out

        alt["torch.mv (cuda)"] = _timed(gpu_step, repeat=10)[0]
        t0 = time.perf_counter()
        on_gpu = kcenter_greedy(x, args.k, starts=starts, device="cuda")
        gpu_seconds = time.perf_counter() - t0

    # distances of all rows to an annotated set
    ann = x[rng.choice(args.n, args.annotated, replace=False)]
    init = {}
    init["one sgemv per centre"] = _timed(lambda: [x @ a for a in ann[:8]], repeat=1)[0] * args.annotated / 8

    def gemm():
        out = np.empty(args.n, np.float32)
        for a in range(0, args.n, 16384):
            np.max(x[a : a + 16384] @ ann.T, axis=1, out=out[a : a + 16384])
        return out

    init["numpy sgemm, chunked (alseg)"] = _timed(gemm, repeat=1)[0]
    try:
        import faiss

        index = faiss.IndexFlatIP(args.d)
        index.add(ann)
        init["faiss IndexFlatIP.search k=1"] = _timed(lambda: index.search(x, 1), repeat=1)[0]
    except Exception as err:  # noqa: BLE001
        init["faiss IndexFlatIP.search k=1"] = f"failed: {err}"

    gpu = {}
    if args.gpu and torch.cuda.is_available():
        gpu = {"kcenter_cuda_seconds": round(gpu_seconds, 2), "speedup_vs_reference": round(t_ref / gpu_seconds, 1),
               "picks_equal_cpu": bool(np.array_equal(on_gpu.picks, ours.picks)),
               "first_difference": int(np.argmax(on_gpu.picks != ours.picks)) if not np.array_equal(on_gpu.picks, ours.picks) else None}
    report = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "n": args.n, "d": args.d, "k": args.k,
        "alseg_seconds": round(t_ours, 2),
        "reference_seconds_scaled": round(t_ref, 1),
        "reference_measured": f"{3 + steps} picks in {t_ref_part:.1f} s, scaled to {args.k} picks",
        "speedup": round(t_ref / t_ours, 1),
        "reference_picks_equal_alseg_prefix": same_prefix,
        "full_run": {"n": args.n_full, "k": args.k_full, "alseg_seconds": round(t_small, 2),
                     "reference_seconds": round(t_small_ref, 2), "speedup": round(t_small_ref / t_small, 1),
                     "identical_picks": same_full},
        "one_step_seconds": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in alt.items()},
        f"distances_to_{args.annotated}_annotated_seconds": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in init.items()},
        **({"gpu": gpu} if gpu else {}),
    }
    print(json.dumps(report, indent=1))
    return 0 if same_prefix and same_full else 1


if __name__ == "__main__":
    raise SystemExit(main())
