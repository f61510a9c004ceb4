"""The sweep's tables in the paper's shape, and its learning curves.

* ``configurations.csv``: one row per configuration (every metric, and the pixel classifier's
  F1 on the same picks);
* ``budgets.csv`` / ``budgets.md`` (Tab. 1 shape): per strategy, pretraining and budget, each
  metric as mean +- std over seeds and as % of the full-annotation mean (same pretraining); the
  first budget at which F1 at IoU 0.5 reaches 90 % of full annotation is marked ``*``; the
  baseline rows (pixel classifier per budget, pseudo-labels alone, pretrained model alone, full
  annotation, ceiling) in every table;
* ``strategies.md`` (Tab. 2 shape): strategy x pretraining at one budget;
* ``curves.png``: F1 at IoU 0.5 against the budget, one line per strategy (shaded: +- std over
  seeds), the baselines as lines.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from typing import Any

import numpy as np

from alseg.experiment.spec import ExperimentSpec

METRICS = (("f1@0.5", ("at", "0.5", "f1")), ("accuracy@0.5", ("at", "0.5", "accuracy")),
           ("pq@0.5", ("at", "0.5", "panoptic_quality")), ("precision@0.5", ("at", "0.5", "precision")),
           ("ap75", ("ap75",)), ("accuracy@0.75", ("accuracy75",)), ("foreground_iou", ("foreground_iou",)))
TARGET = 0.9


def metric(scores: dict[str, Any] | None, path: tuple[str, ...]) -> float:
    node: Any = scores
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return float("nan")
        node = node[part]
    return float(node)


def _stats(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of the finite values."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _row(strategy: str, pre: bool, budget: int, pool: int, scores: list[dict[str, Any]], ref: dict[str, float] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"strategy": strategy, "pretrained": pre, "budget": budget, "pool_percent": 100.0 * budget / pool,
                           "seeds": sum(np.isfinite(metric(s, ("at", "0.5", "f1"))) for s in scores)}
    for name, path in METRICS:
        m, s = _stats([metric(x, path) for x in scores])
        row[name], row[name + "_std"] = m, s
        row[name + "_pct_full"] = 100.0 * m / ref[name] if ref and ref.get(name) else float("nan")
    return row


def aggregate(results: list[dict[str, Any]], baselines: dict[str, Any], pool: int) -> list[dict[str, Any]]:
    """Rows (strategy, pretrained, budget) with mean and std of each metric over seeds, % of full."""
    groups: dict[tuple[str, bool, int], list[dict[str, Any]]] = defaultdict(list)
    forests: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["strategy"], r["pretrained"], r["budget"])].append(r["scores"])
        if r.get("forest"):
            forests[(r["strategy"], r["budget"])].append(r["forest"]["scores"])
    full = {pre: {name: _stats([metric(s, path) for s in groups[key]])[0] for name, path in METRICS}
            for key in groups if key[0] == "full" for pre in [key[1]]}
    rows = []
    for (strategy, pre, budget), scores in sorted(groups.items(), key=lambda kv: (kv[0][0] == "full", kv[0][0], not kv[0][1], kv[0][2])):
        # against full annotation of the same pretraining (else with pretraining: scratch_budgets runs no full without)
        rows.append(_row(strategy, pre, budget, pool, scores, full.get(pre, full.get(True))))
    for (strategy, budget), scores in sorted(forests.items()):
        # against full annotation with pretraining when there is one (the forest has none to compare with)
        rows.append(_row(f"pixel classifier on {strategy}'s picks", False, budget, pool, scores, full.get(True, full.get(False))))
    seeds = baselines.get("seeds", {})
    for label, key in (("pseudo-labels alone", "pseudolabels"), ("pretrained model alone", "pretrained")):
        vals = [v[key] for v in seeds.values() if v.get(key)]
        if vals:
            rows.append(_row(label, key == "pretrained", 0, pool, vals, None))
    if baselines.get("ceiling"):
        row = {"strategy": "ceiling (ground truth, same post-processing)", "pretrained": False, "budget": pool, "pool_percent": 100.0, "seeds": 1}
        for name, path in METRICS:
            row[name], row[name + "_std"] = metric(baselines["ceiling"], path), 0.0
        rows.append(row)
    return rows


def first_reaching(rows: list[dict[str, Any]], target: float = TARGET) -> dict[tuple[str, bool], int]:
    """Per (strategy, pretraining): the smallest budget whose mean F1 at IoU 0.5 reaches ``target`` of full."""
    out: dict[tuple[str, bool], int] = {}
    for r in sorted(rows, key=lambda r: r["budget"]):
        pct = r.get("f1@0.5_pct_full", float("nan"))
        key = (r["strategy"], r["pretrained"])
        if r["strategy"] != "full" and np.isfinite(pct) and pct >= 100 * target and key not in out:
            out[key] = r["budget"]
    return out


def _cell(r: dict[str, Any], name: str) -> str:
    m, s = r.get(name, float("nan")), r.get(name + "_std", float("nan"))
    if not np.isfinite(m):
        return "-"
    pct = r.get(name + "_pct_full", float("nan"))
    # one seed has no spread to show (a std of 0 would read as a measured one); a % just under 90
    # must not round up to the mark
    spread = f" +- {s:.3f}" if r.get("seeds", 0) > 1 and np.isfinite(s) else ""
    return f"{m:.3f}{spread}" + (f" ({pct:.1f} %)" if np.isfinite(pct) else "")


def write_tables(exp: ExperimentSpec, results: list[dict[str, Any]], baselines: dict[str, Any], *, pool: int,
                 command: str | None = None) -> dict[str, str]:
    """Write the CSVs, Markdown tables and the curves under ``<dir>/tables``; returns their paths."""
    out = os.path.join(exp.dir, "tables")  # exp.dir is absolute (load_experiment)
    os.makedirs(out, exist_ok=True)
    names = [n for n, _ in METRICS]
    paths = {"configurations": os.path.join(out, "configurations.csv"), "budgets": os.path.join(out, "budgets.csv"),
             "markdown": os.path.join(out, "budgets.md"), "strategies": os.path.join(out, "strategies.md"),
             "curves": os.path.join(out, "curves.png")}
    with open(paths["configurations"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["configuration", "strategy", "budget", "pretrained", "seed", *names, "forest_f1@0.5", "wall_s"])
        for r in results:
            w.writerow([r["key"], r["strategy"], r["budget"], r["pretrained"], r["seed"],
                        *[f"{metric(r['scores'], p):.6f}" for _, p in METRICS],
                        f"{metric((r.get('forest') or {}).get('scores'), ('at', '0.5', 'f1')):.6f}", r.get("wall_s")])
    rows = aggregate(results, baselines, pool)
    cols = ["strategy", "pretrained", "budget", "pool_percent", "seeds"] + [c for n in names for c in (n, n + "_std", n + "_pct_full")]
    with open(paths["budgets"], "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    reach = first_reaching(rows)
    lines = [f"# {exp.name}: scores on the held-out region by annotation budget", "",
             f"Mean +- sample std over the seeds each row has results for (column seeds; the sweep's: "
             f"{', '.join(map(str, exp.seeds))}; a row of one seed: its value alone); in brackets: % of full annotation's mean (of the same "
             "pretraining where it ran both ways, else with pretraining; the pixel classifier against full annotation "
             "with pretraining). "
             f"`*`: the first budget at which F1 at IoU 0.5 reaches {100 * TARGET:.0f} % of full annotation.", ""]
    if command:
        lines += ["    " + command, ""]
    lines += ["| strategy | pretrained | patches | % pool | seeds | " + " | ".join(names) + " |",
              "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for r in rows:
        mark = " *" if reach.get((r["strategy"], r["pretrained"])) == r["budget"] else ""
        lines.append(f"| {r['strategy']}{mark} | {'yes' if r['pretrained'] else 'no'} | {r['budget']} | {r['pool_percent']:.1f} | "
                     f"{'-' if r['strategy'].startswith('ceiling') else r['seeds']} | "
                     + " | ".join(_cell(r, n) for n in names) + " |")
    with open(paths["markdown"], "w") as fh:
        fh.write("\n".join(lines) + "\n")
    budgets = sorted({r["budget"] for r in rows if r["strategy"] != "full" and 0 < r["budget"] < pool})
    # the middle budget among those both with and without pretraining ran at (else among all)
    both = [b for b in budgets if {r["pretrained"] for r in rows if r["budget"] == b and not r["strategy"].startswith("pixel classifier")} == {True, False}]
    at = (both or budgets)[len(both or budgets) // 2] if budgets else 0
    strategies = sorted({r["strategy"] for r in rows if r["budget"] == at})
    t2 = [f"# {exp.name}: strategy x pretraining at {at} patches ({100 * at / pool:.1f} % of the pool), F1 at IoU 0.5", "",
          "| strategy | with pretraining | without pretraining |", "| --- | --- | --- |"]
    for s in strategies:
        cells = []
        for pre in (True, False):
            match = [r for r in rows if r["strategy"] == s and r["pretrained"] == pre and r["budget"] == at]
            cells.append(_cell(match[0], "f1@0.5") if match else "-")
        t2.append(f"| {s} | {cells[0]} | {cells[1]} |")
    with open(paths["strategies"], "w") as fh:
        fh.write("\n".join(t2) + "\n")
    _curves(rows, paths["curves"], exp.name, pool)
    return paths


def _curves(rows: list[dict[str, Any]], path: str, name: str, pool: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines = defaultdict(list)
    for r in rows:
        if 0 < r["budget"] < pool and not r["strategy"].startswith(("ceiling", "pseudo", "pretrained model")):
            lines[(r["strategy"], r["pretrained"])].append(r)
    for (strategy, pre), rs in sorted(lines.items()):
        rs = sorted(rs, key=lambda r: r["budget"])
        x = [r["pool_percent"] for r in rs]
        m = np.array([r["f1@0.5"] for r in rs])
        s = np.array([r["f1@0.5_std"] for r in rs])
        style = "-" if pre else "--"
        (line,) = ax.plot(x, m, style, marker="o", label=f"{strategy}{'' if pre else ' (no pretraining)'}")
        ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.15)
    for r in rows:
        if r["strategy"] == "full" or r["strategy"].startswith(("ceiling", "pseudo", "pretrained model")):
            ls = ":" if r["strategy"] != "full" else "-."
            ax.axhline(r["f1@0.5"], ls=ls, lw=1, color="grey" if r["strategy"] != "full" else "black",
                       label=f"{r['strategy']}{'' if r['strategy'] != 'full' or r['pretrained'] else ' (no pretraining)'}")
    ax.set_xscale("log")
    ax.set_xlabel("annotated patches (% of the pool)")
    ax.set_ylabel("F1 at IoU 0.5 (held-out)")
    ax.set_ylim(0, 1)
    ax.set_title(name)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
