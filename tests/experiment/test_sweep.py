"""`alseg experiment` on a tiny synthetic volume: 2 strategies x 1 budget x 2 seeds (+ full annotation
and the baselines), then a second budget. Upstream stages run once per seed; a sweep killed half way resumes without
recomputing finished configurations; the tables equal the individual runs' records; the pixel
classifier baseline equals a forest fitted directly on the same patches.

Real nnU-Net (tiny plans), real pseudo-labels, simulated annotation from the ground truth.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import ndimage

from alseg.errors import SpecError
from alseg.experiment import Piece, budget_patches, configurations, in_folder, load_experiment, run_experiment
from alseg.experiment.spec import ExperimentSpec
from alseg.experiment.tables import METRICS, metric
from alseg.io.omezarr import open_volume
from alseg.pipeline.records import read_record

REPO = Path(__file__).resolve().parents[2]
TRAIN = {"epochs": 1, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1, "final_validation": False}


def _base(tmp: Path) -> dict:
    from alseg.synth import SynthParams, write_synthetic

    url = tmp / "v.zarr"
    if not url.exists():
        # 6 of the 9 pool patches hold mitochondria, the held-out half 4 objects
        write_synthetic(url, SynthParams.preset("easy", shape=(16, 96, 96), seed=1, mito_per_um3=30.0))
    return {"name": "tiny", "input": {"url": str(url), "ground_truth": "mitochondria"}, "run": {"dir": str(tmp / "unused")},
            "patches": {"shape_vox": [8, 32, 32], "holdout": {"kind": "fraction", "axis": "z", "fraction": 0.5}},
            "pseudolabel": {"method": "classical", "block_shape_vox": [8, 96, 96], "halo_px": 16, "min_size_vox": 20},
            "nnunet": {"device": "cpu", "plan_overrides": {"patch_size_vox": [8, 32, 32], "batch_size": 2, "n_stages": 3,
                                                            "features_per_stage": [4, 8, 16]},
                       "pretrain": TRAIN, "finetune": {**TRAIN, "learning_rate": 0.003}},
            "embedding": {"source": "pixels", "pixels_dim": 4, "slices_per_patch": 2},
            "selection": {"method": "random", "budget": 1},
            "prediction": {"block_shape_vox": [8, 96, 96], "halo_vox": [0, 8, 8]},
            "postprocess": {"block_shape_vox": [8, 96, 96], "min_size_vox": 5},
            "resources": {"backend": "serial"}}


def _experiment(tmp: Path, **over) -> Path:
    (tmp / "base.yaml").write_text(yaml.safe_dump(_base(tmp)))
    exp = {"name": "tiny-sweep", "base": "base.yaml", "dir": str(tmp / "sweep"),
           "strategies": [{"selection": {"method": "kcenter", "n_initial": 1}}, {"selection": {"method": "random"}}],
           "budgets": [1], "pretraining": [True], "seeds": [0, 1], **over}
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def test_experiment_spec_is_checked(tmp_path):
    assert budget_patches("25%", 8) == 2 and budget_patches(3, 8) == 3
    with pytest.raises(SpecError, match="whole patches"):
        budget_patches("5%", 8)
    with pytest.raises(SpecError, match="exceeds"):
        budget_patches(9, 8)
    with pytest.raises(ValueError, match="set by the sweep"):
        ExperimentSpec(base="b.yaml", dir="d", strategies=[{"selection": {"method": "random", "budget": 3}}], budgets=[1])
    with pytest.raises(ValueError, match="must differ"):
        ExperimentSpec(base="b.yaml", dir="d", strategies=[{"selection": {"method": "random"}}] * 2, budgets=[1])
    with pytest.raises(ValueError, match="percentage"):
        ExperimentSpec(base="b.yaml", dir="d", strategies=[{"selection": {"method": "random"}}], budgets=["half"])
    exp, base = load_experiment(_experiment(tmp_path, budgets=[1, 2]))
    configs = configurations(exp, base)
    # 2 strategies x 2 budgets x 2 seeds, and full annotation (the 9 pool patches) per seed
    assert len(configs) == 10 and sorted({c.budget for c in configs}) == [1, 2, 9]
    assert {c.key for c in configs if c.strategy == "full"} == {"full__b0009__pre__s0", "full__b0009__pre__s1"}
    assert all(c.forest == (c.strategy != "full") for c in configs)
    assert len({c.shared for c in configs}) == 2, "one shared upstream per seed"
    with pytest.raises(SpecError, match="whole patches"):
        configurations(exp.model_copy(update={"budgets": ["5%"]}), base)
    # the paper's k-center start (n_initial random picks) is checked against the sweep's budgets, not a probe's
    paper = exp.model_copy(update={"strategies": [exp.strategies[0].model_copy(update={"selection": {"method": "kcenter", "start": "random", "n_initial": 2}})],
                                   "budgets": [2]})
    assert len(configurations(paper, base)) == 4
    with pytest.raises(SpecError, match="kcenter at budget 1"):
        configurations(paper.model_copy(update={"budgets": [1]}), base)
    with pytest.raises(SpecError, match="holdout"):
        configurations(exp, base.model_copy(update={"patches": base.patches.model_copy(update={"holdout": None})}))
    with pytest.raises(ValueError, match="each once"):
        ExperimentSpec(base="b.yaml", dir="d", strategies=[{"selection": {"method": "random"}}], budgets=[1], pretraining=[True, True])
    assert exp.dir == str(tmp_path / "sweep"), "the folder is absolute"


def _mtimes(root: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (root / "results").glob("*.json")}


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 10 tiny nnU-Net trainings and 2 pretrainings (14 took 390-500 s on cpu-2c, near the suite's 600 s)
def test_sweep_shares_upstream_resumes_after_a_kill_and_tables_match_the_runs(tmp_path):
    path = _experiment(tmp_path)
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "alseg.cli", "experiment", str(path), "-q"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 900
    while len(_mtimes(sweep)) < 3:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "three configurations never finished"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = _mtimes(sweep)
    assert 3 <= len(finished) < 6, "killed half way"

    exp, base = load_experiment(path)
    said: list[str] = []
    out = run_experiment(exp, base, say=said.append, progress=False)
    assert any(f"({len(finished)} done before)" in line for line in said), said[:3]
    assert {k: v for k, v in _mtimes(sweep).items() if k in finished} == finished, "finished configurations are not recomputed"
    results = out["results"]
    assert len(results) == 6 and all(r["scores"] is not None for r in results)

    # upstream once per seed: every configuration reuses its seed's pseudo-labels and pretrained model
    configs = {c.key: c for c in configurations(exp, base)}
    for seed in (0, 1):
        shared = sorted({c.shared for c in configs.values() if c.seed == seed})
        assert len(shared) == 1
        tokens = {k: json.loads((Path(shared[0]) / "stages" / f"{k}.json").read_text())["token"]
                  for k in ("pseudolabels", "pretrain", "embed-model", "embed", "evaluate-00")}
        for r in results:
            if r["seed"] == seed:
                mine = ("pseudolabels", "pretrain", "evaluate-00") + (("embed-model", "embed") if r["strategy"] == "kcenter" else ())
                assert {k: r["tokens"].get(k) for k in mine} == {k: tokens[k] for k in mine}, r["key"]
                linked = (Path(configs[r["key"]].spec.run.dir) / "embedding").exists()
                assert linked == (r["strategy"] == "kcenter"), "embeddings are linked only where a strategy ranks by them"
        logs = list((sweep / "shared").glob(f"seed-{seed}-*/nnunet/logs/train-001.log"))
        assert len(logs) == 1
        run_logs = [p for p in (sweep / "runs").glob(f"*__s{seed}-*/nnunet/logs/train-001.log")]
        assert run_logs and all(p.stat().st_ino == logs[0].stat().st_ino for p in run_logs), "pretraining ran once, linked"
    assert len({r["tokens"]["pretrain"] for r in results}) == 2, "and each seed has its own"

    # the tables against the runs' own evaluation records
    rows = list(csv.DictReader(open(sweep / "tables" / "budgets.csv")))
    for (strategy, budget) in [("kcenter", 1), ("random", 1), ("full", 9)]:
        vals = []
        for seed in (0, 1):
            spec = configs[f"{strategy}__b{budget:04d}__pre__s{seed}"].spec
            vals.append(read_record(spec, "evaluate-01")["result"]["scores"])
        row = next(r for r in rows if r["strategy"] == strategy and int(r["budget"]) == budget)
        for name, p in METRICS:
            want = np.nanmean([metric(v, p) for v in vals])
            assert float(row[name]) == pytest.approx(want, abs=1e-6), (strategy, budget, name)
        assert float(row["f1@0.5_std"]) == pytest.approx(np.std([metric(v, ("at", "0.5", "f1")) for v in vals], ddof=1), abs=1e-6)
    md = (sweep / "tables" / "budgets.md").read_text()
    for label in ("pixel classifier on kcenter's picks", "pixel classifier on random's picks", "pseudo-labels alone", "pretrained model alone", "ceiling", "| full |"):
        assert label in md
    assert (sweep / "tables" / "curves.png").stat().st_size > 1000 and (sweep / "tables" / "strategies.md").exists()

    # a new budget runs only what is new, and never writes through the links into the shared upstream
    shared = {p: (p.stat().st_ino, hashlib.sha256(p.read_bytes()).hexdigest()) for p in (sweep / "shared").rglob("*") if p.is_file()}
    said.clear()
    more = exp.model_copy(update={"budgets": [1, 2]})
    out = run_experiment(more, base, say=said.append, progress=False)
    assert any("(6 done before)" in line for line in said) and len(out["results"]) == 10
    assert {p: (p.stat().st_ino, hashlib.sha256(p.read_bytes()).hexdigest()) for p in shared} == shared

    # a sweep carried to another folder (or machine) with only its results, baselines and owner file, run there
    # as a piece (seeds and budgets named on the command line): nothing is recomputed and the
    # tables are the same
    table = (sweep / "tables" / "budgets.csv").read_text()
    moved = tmp_path / "elsewhere"
    for folder in ("results", "baselines"):
        shutil.copytree(sweep / folder, moved / folder)
    shutil.copy(sweep / "alseg-experiment.json", moved)  # the folder's owner: the experiment's name
    shutil.rmtree(sweep)
    said.clear()
    moved_exp = in_folder(more, str(moved))
    again = run_experiment(moved_exp, base, say=said.append, progress=False, piece=Piece(seeds=(0, 1), budgets=(1, 2)))
    assert any("10 configurations (10 done before, a piece of the sweep's 10)" in line for line in said), said[:2]
    assert again["baselines"] == out["baselines"]
    assert not (moved / "shared").exists() and not (moved / "runs").exists()
    assert (moved / "tables" / "budgets.csv").read_text() == table
    said.clear()
    # a smaller piece (one seed, budget and strategy, and that seed's full annotation) writes the tables of
    # every stored result, not of its own two
    (moved / "tables" / "budgets.csv").unlink()
    out = run_experiment(moved_exp, base, say=said.append, progress=False,
                         piece=Piece(seeds=(1,), budgets=(2,), strategies=("random",)))
    assert any("2 configurations (2 done before, a piece of the sweep's 10)" in line for line in said), said[:2]
    assert len(out["results"]) == 10 and (moved / "tables" / "budgets.csv").read_text() == table


@pytest.mark.slow
def test_pixel_classifier_baseline_equals_a_direct_forest_on_the_same_patches(tmp_path):
    from alseg.baselines.forest import ForestClassifier
    from alseg.evaluate.metrics import overlap_table, score_table
    from alseg.experiment.baselines import forest_scores
    from alseg.geometry import Box
    from alseg.spec import parse_spec

    spec = parse_spec({**_base(tmp_path), "run": {"dir": str(tmp_path / "run")}})
    boxes = [Box((0, 0, 0), (8, 32, 32)), Box((0, 32, 64), (8, 64, 96))]
    got = forest_scores(spec, boxes, str(tmp_path / "forest"), seed=3)
    url = spec.input.url
    image, gt = open_volume(url).read(), open_volume(url + "/labels/mitochondria").read()
    direct = ForestClassifier((30.0, 8.0, 8.0), random_state=3).fit([image[b.slices] for b in boxes], [gt[b.slices] for b in boxes], seed=3)
    mask = np.zeros(gt.shape, bool)
    mask[8:] = direct.predict_proba(image[8:]) > 0.5  # whole sections: no block edges
    assert np.array_equal(open_volume(str(tmp_path / "forest" / "mask.zarr")).read() > 0, mask)
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(lab.ravel())
    lab[np.isin(lab, np.flatnonzero(sizes < 5))] = 0
    want = score_table(overlap_table(gt[8:], lab[8:]))
    assert got["scores"]["at"]["0.5"]["f1"] == pytest.approx(want["at"]["0.5"]["f1"])
    assert got["scores"]["foreground_iou"] == pytest.approx(want["foreground_iou"])
    assert got["patches"] == 2


def test_the_example_experiment_specs_are_valid():
    repo = Path(__file__).resolve().parents[2]
    found = sorted((repo / "configs" / "experiments").glob("*.yaml"))
    assert found
    for path in found:
        exp, base = load_experiment(path)
        assert base.patches.holdout is not None and base.input.ground_truth, path


def test_a_piece_is_the_whole_sweeps_configurations_that_match(tmp_path):
    """A piece never makes a smaller sweep: a strategy run alone keeps the shared upstream folder and
    pixel-classifier runs the whole sweep gives it (a smaller sweep would name another shared job and
    redo its seed's pseudo-labels and pretraining)."""
    path = _experiment(tmp_path, strategies=[{"selection": {"method": "kcenter", "n_initial": 1}, "embedding_source": "mae"},
                                             {"selection": {"method": "kcenter", "n_initial": 1}},
                                             {"selection": {"method": "random"}}],
                       pretraining=[True, False], scratch_budgets=[2], budgets=[1, 2])
    exp, base = load_experiment(path)
    whole = configurations(exp, base)
    pieces = [Piece(strategies=("random",)), Piece(seeds=(1,), budgets=(2,), pretraining=(False,)),
              Piece(strategies=("kcenter",), budgets=(1,)), Piece(strategies=("full",), seeds=(0,))]
    for piece in pieces:
        got = configurations(exp, base, piece)
        want = [c for c in whole if (piece.seeds is None or c.seed in piece.seeds)
                and (piece.pretraining is None or c.pretrained in piece.pretraining)
                and (c.strategy == "full" or ((piece.strategies is None or c.strategy in piece.strategies)
                                              and (piece.budgets is None or c.budget in piece.budgets)))]
        assert got and got == want, piece
    alone = {c.key: c for c in configurations(exp, base, Piece(strategies=("random",)))}
    assert {c.shared for c in alone.values()} == {c.shared for c in whole if c.strategy.startswith("kcenter-mae")}, \
        "the whole sweep's first shared folder per seed"
    assert [c.key for c in configurations(exp, base, pieces[3])] == ["full__b0009__pre__s0"]
    assert all(c.forest == (c.pretrained and c.strategy != "full") for c in whole)
    for bad, match in ((Piece(seeds=(5,)), "seeds \\[5\\] are not in"), (Piece(budgets=(3,)), "budgets \\[3\\]"),
                       (Piece(strategies=("entropy",)), "strategies \\['entropy'\\]")):
        with pytest.raises(SpecError, match=match):
            configurations(exp, base, bad)
    with pytest.raises(SpecError, match="names no configuration"):
        run_experiment(exp, base, piece=Piece(budgets=(1,), pretraining=(False,), strategies=("random",)), say=lambda m: None)
    assert not (tmp_path / "sweep").exists(), "checked before the folder is made"


def test_strategies_that_need_the_pretrained_model_run_with_pretraining_only(tmp_path):
    path = _experiment(tmp_path, strategies=[{"selection": {"method": "entropy"}}, {"selection": {"method": "random"}}],
                       pretraining=[True, False], seeds=[0])
    exp, base = load_experiment(path)
    keys = {c.key for c in configurations(exp, base)}
    assert "entropy__b0001__pre__s0" in keys and "random__b0001__scratch__s0" in keys
    assert not any(k.startswith("entropy") and "__scratch__" in k for k in keys)


def test_scratch_budgets_and_the_full_baselines_own_training(tmp_path):
    path = _experiment(tmp_path, pretraining=[True, False], seeds=[0], scratch_budgets=[2], budgets=[1, 2],
                       full_training={**TRAIN, "epochs": 3, "learning_rate": 0.01})
    exp, base = load_experiment(path)
    configs = {c.key: c for c in configurations(exp, base)}
    scratch = sorted(k for k in configs if "__scratch__" in k)
    assert scratch == ["kcenter__b0002__scratch__s0", "random__b0002__scratch__s0"], "without pretraining at budget 2 only"
    assert "full__b0009__pre__s0" in configs and "full__b0009__scratch__s0" not in configs
    full = configs["full__b0009__pre__s0"].spec.nnunet.finetune
    assert (full.epochs, full.learning_rate) == (3, 0.01), "the full baseline trains on its own schedule"
    others = {c.spec.nnunet.finetune for k, c in configs.items() if not k.startswith("full")}
    assert others == {base.nnunet.finetune}, "every other configuration on the base's"
    # a changed full schedule is a different job: a new folder, never the old one's files
    longer = exp.model_copy(update={"full_training": full.model_copy(update={"epochs": 4})})
    assert configurations(longer, base)[-1].spec.run.dir != configs["full__b0009__pre__s0"].spec.run.dir
    with pytest.raises(ValueError, match="not among the budgets"):
        ExperimentSpec(base="b.yaml", dir="d", strategies=[{"selection": {"method": "random"}}], budgets=[1],
                       pretraining=[True, False], scratch_budgets=[2])
    with pytest.raises(ValueError, match="needs pretraining to list false"):
        ExperimentSpec(base="b.yaml", dir="d", strategies=[{"selection": {"method": "random"}}], budgets=[1], scratch_budgets=[1])


def test_a_new_finetuning_schedule_reuses_the_shared_upstream_and_a_new_pretraining_does_not(tmp_path):
    from alseg.experiment.sweep import shared_dirs

    exp, base = load_experiment(_experiment(tmp_path, seeds=[0]))
    first = configurations(exp, base)
    nn = base.nnunet
    other = base.model_copy(update={"nnunet": nn.model_copy(update={"finetune": nn.finetune.model_copy(update={"epochs": 7})})})
    again = configurations(exp, other)
    assert shared_dirs(exp, other, 0) == shared_dirs(exp, base, 0), "upstream work does not depend on the fine-tuning"
    assert [c.shared for c in again] == [c.shared for c in first]
    assert all(a.spec.run.dir != b.spec.run.dir for a, b in zip(again, first)), "each configuration fine-tunes anew"
    repre = base.model_copy(update={"nnunet": nn.model_copy(update={"pretrain": nn.pretrain.model_copy(update={"epochs": 7})})})
    assert set(shared_dirs(exp, repre, 0).values()).isdisjoint(shared_dirs(exp, base, 0).values()), "a new pretraining"


def test_tables_compare_scratch_rows_where_both_ran(tmp_path):
    """The tables from hand-made records: means and sample std by numpy, the rows without pretraining
    as % of the pretrained full annotation when none ran without, Tab. 2 at the budget run both ways."""
    from alseg.experiment.tables import write_tables

    exp = ExperimentSpec(name="t", base="b.yaml", dir=str(tmp_path), strategies=[{"selection": {"method": "random"}}],
                         budgets=[1, 2, 4], pretraining=[True, False], scratch_budgets=[2], seeds=[0, 1])

    def rec(strategy, budget, pre, seed, f1):
        return {"key": f"{strategy}{budget}{pre}{seed}", "strategy": strategy, "budget": budget, "pretrained": pre,
                "seed": seed, "scores": {"at": {"0.5": {"f1": f1}}}, "wall_s": 1.0}

    f1s = {(1, True): (0.2, 0.3), (2, True): (0.4, 0.5), (4, True): (0.6, 0.65), (2, False): (0.1, 0.2)}
    results = [rec("random", b, pre, s, v[s]) for (b, pre), v in f1s.items() for s in (0, 1)]
    results += [rec("full", 8, True, s, f) for s, f in ((0, 0.6), (1, 0.7))]
    paths = write_tables(exp, results, {"seeds": {}}, pool=8)
    with open(paths["budgets"]) as fh:
        rows = {(r["strategy"], r["pretrained"], int(r["budget"])): r for r in csv.DictReader(fh)}
    full = np.mean([0.6, 0.7])
    for (b, pre), v in f1s.items():
        r = rows[("random", str(pre), b)]
        assert float(r["f1@0.5"]) == pytest.approx(np.mean(v)) and float(r["f1@0.5_std"]) == pytest.approx(np.std(v, ddof=1), abs=1e-6)
        assert float(r["f1@0.5_pct_full"]) == pytest.approx(100 * np.mean(v) / full, abs=1e-4)
    t2 = Path(paths["strategies"]).read_text()
    assert "at 2 patches" in t2 and "| random | 0.450 +- 0.071 (69.2 %) | 0.150 +- 0.071 (23.1 %) |" in t2
    # 90 % of full (0.585; 4 patches: 0.625) is first reached at 4 patches with pretraining, never without
    assert "| random * | yes | 4 |" in Path(paths["markdown"]).read_text()


@pytest.mark.slow
def test_stored_vnc_sweep_results_survive_added_spec_fields(vnc_dir, tmp_path, monkeypatch):
    """A field added to the spec since the VNC sweep's results were stored (``pseudolabel.link_gap``)
    leaves them valid at its neutral value: the configurations' signatures equal those the older code
    wrote into benchmarks/experiments/vnc-sweep/results (else a resumed sweep would redo them all);
    any other value is content."""
    from alseg.ingest import ingest_vnc

    ingest_vnc(vnc_dir, tmp_path / "vnc.zarr")
    monkeypatch.chdir(tmp_path)  # the spec names its input relative to where it is run, as RESULTS.md runs it
    exp, base = load_experiment(REPO / "configs" / "experiments" / "vnc.yaml")
    stored = {p.stem: json.loads(p.read_text())["signature"]
              for p in (REPO / "benchmarks" / "experiments" / "vnc-sweep" / "results").glob("*.json")}
    configs = {c.key: c for c in configurations(exp, base)}
    assert len(stored) >= 6 and set(stored) <= set(configs)
    assert {k: configs[k].signature for k in stored} == stored
    gap = base.model_copy(update={"pseudolabel": base.pseudolabel.model_copy(update={"link_gap": 1})})
    assert base.pseudolabel.link_gap == 0 and gap.job_digest() != base.job_digest()
    assert "link_gap" not in base.job_content()["pseudolabel"] and gap.job_content()["pseudolabel"]["link_gap"] == 1
    # so are the run directory's stage records and the pseudo-label volume's signature
    from alseg.pipeline.records import field_values
    from alseg.pseudolabel import signature

    assert "pseudolabel.link_gap" not in field_values(base, ("pseudolabel",))
    assert field_values(gap, ("pseudolabel",))["pseudolabel.link_gap"] == 1
    assert "link_gap" not in signature(base.pseudolabel)["params"] and signature(gap.pseudolabel)["params"]["link_gap"] == 1
