"""nnU-Net steps, run in a subprocess whose environment alseg built (``python -m alseg.nnunet._worker JOB.json``).

Steps: ``plan`` (fingerprint, plans, alseg's plan overrides, preprocessing), ``transfer`` (the
plans of one dataset applied to another, then preprocessing), ``train`` (nnU-Net's own training
entry with alseg's configurable trainer, optionally from pretrained weights).
"""

from __future__ import annotations

import json
import sys


def apply_overrides(plans: dict, configuration: str, overrides: dict) -> dict:
    """alseg's plan overrides (patch, batch, stages, features, dropout) on nnU-Net's plans, checked."""
    conf = plans["configurations"][configuration]
    arch = conf["architecture"]["arch_kwargs"]
    n_planned = int(arch["n_stages"])
    n = int(overrides.get("n_stages") or n_planned)
    if n > n_planned:
        raise ValueError(f"plan_overrides.n_stages={n}: nnU-Net planned {n_planned} stages for this patch; at most that many")
    if n != n_planned:
        arch["n_stages"] = n
        for key in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage"):
            arch[key] = arch[key][:n]
        arch["n_conv_per_stage_decoder"] = arch["n_conv_per_stage_decoder"][: n - 1]
    if overrides.get("features_per_stage"):
        feats = list(overrides["features_per_stage"])
        if len(feats) != n:
            raise ValueError(f"plan_overrides.features_per_stage has {len(feats)} entries for {n} stages")
        arch["features_per_stage"] = feats
    if overrides.get("patch_size_vox"):
        patch = [int(p) for p in overrides["patch_size_vox"]]
        if len(patch) != len(conf["patch_size"]):
            raise ValueError(f"plan_overrides.patch_size_vox {patch} does not match the configuration's {len(conf['patch_size'])} axes")
        conf["patch_size"] = patch
    if overrides.get("batch_size"):
        conf["batch_size"] = int(overrides["batch_size"])
    if overrides.get("dropout_p"):
        op = "torch.nn.Dropout3d" if len(conf["patch_size"]) == 3 else "torch.nn.Dropout2d"
        arch["dropout_op"] = op
        arch["dropout_op_kwargs"] = {"p": float(overrides["dropout_p"]), "inplace": True}
        needs = list(conf["architecture"].get("_kw_requires_import", []))
        if "dropout_op" not in needs:  # nnU-Net resolves these names to classes
            conf["architecture"]["_kw_requires_import"] = needs + ["dropout_op"]
    # every axis of the patch must be divisible by the network's total downsampling
    total = [1] * len(conf["patch_size"])
    for stride in arch["strides"]:
        s = stride if isinstance(stride, (list, tuple)) else [stride] * len(total)
        total = [t * int(x) for t, x in zip(total, s)]
    bad = [(p, t) for p, t in zip(conf["patch_size"], total) if p % t]
    if bad:
        raise ValueError(f"patch size {conf['patch_size']} is not divisible by the network's downsampling {total}: "
                         "choose a patch that is, or fewer stages")
    return plans


def processes(dataset_id: int) -> int:
    """Worker processes for nnU-Net's integrity check, fingerprint and preprocessing pools: one per
    case, at most the CPUs this process may use and nnU-Net's default (8, or ``nnUNet_def_n_proc``). Each costs a process (nnU-Net spawns one that imports torch and
    nnU-Net before it does any work; alseg's worker forks instead), so eight of them for a handful of patches on a 2-core node
    cost more than the cases (measured: a tiny plan step took 33 s with 8, 18 s with 2, on cpu-2c)."""
    import os

    from nnunetv2.configuration import default_num_processes
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    with open(os.path.join(str(nnUNet_raw), convert_id_to_dataset_name(dataset_id), "dataset.json")) as fh:
        cases = int(json.load(fh).get("numTraining") or 1)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(int(default_num_processes), cpus, cases))


# Foreground voxels the fingerprint samples for its intensity statistics, over all cases (nnU-Net: 10^8).
# Those statistics feed only CT normalisation; alseg's channel is ``noNorm`` (alseg.nnunet.dataset),
# so nnU-Net never reads them. Sampling and sorting 10^8 values took 15 of a tiny plan step's
# 20 s on cpu-2c; 10^6 leaves the percentiles it records within a hundredth of a percentile rank.
FOREGROUND_SAMPLES = 10**6


def _fingerprint_extractor() -> type:
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    class Fingerprint(DatasetFingerprintExtractor):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.num_foreground_voxels_for_intensitystats = FOREGROUND_SAMPLES

    return Fingerprint


def plan(job: dict) -> dict:
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, plan_experiments, preprocess
    from nnunetv2.paths import nnUNet_preprocessed

    import os

    ds, conf = int(job["dataset_id"]), job["configuration"]
    n = processes(ds)
    extract_fingerprint_dataset(ds, _fingerprint_extractor(), num_processes=n, check_dataset_integrity=True, clean=True,
                                verbose=False)
    plan_experiments([ds])
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    plans_file = os.path.join(str(nnUNet_preprocessed), convert_id_to_dataset_name(ds), job["plans"] + ".json")
    plans = apply_overrides(load_json(plans_file), conf, job.get("overrides") or {})
    save_json(plans, plans_file, sort_keys=False)
    preprocess([ds], job["plans"], configurations=[conf], num_processes=[n], verbose=False)
    return {"plans_file": plans_file}


def transfer(job: dict) -> dict:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess
    from nnunetv2.experiment_planning.plans_for_pretraining.move_plans_between_datasets import move_plans_between_datasets

    import os
    import shutil

    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name, maybe_convert_to_dataset_name

    src, dst, conf = int(job["source_id"]), int(job["dataset_id"]), job["configuration"]
    name = convert_id_to_dataset_name(dst)
    # the moved plans carry every statistic preprocessing and training use (spacing, intensity
    # properties), so the target's own fingerprint is never read, only copied beside the model by
    # the trainer: the source's stands for it. (nnU-Net's fingerprint extractor fails on a dataset
    # without foreground, e.g. a first round whose annotated patch holds no mitochondrion.)
    target = os.path.join(str(nnUNet_preprocessed), name)
    os.makedirs(target, exist_ok=True)
    source = os.path.join(str(nnUNet_preprocessed), maybe_convert_to_dataset_name(src), "dataset_fingerprint.json")
    shutil.copy(source, os.path.join(target, "dataset_fingerprint.json"))
    move_plans_between_datasets(src, dst, job["plans"], job["plans"])
    # the planner normally copies dataset.json beside the plans; moved plans need it too
    shutil.copy(os.path.join(str(nnUNet_raw), name, "dataset.json"), os.path.join(target, "dataset.json"))
    preprocess([dst], job["plans"], configurations=[conf], num_processes=[processes(dst)], verbose=False)
    return {}


def train(job: dict) -> dict:
    import torch
    from nnunetv2.run.run_training import run_training

    torch.set_num_threads(max(1, int(job.get("threads") or torch.get_num_threads())))
    run_training(str(job["dataset_id"]), job["configuration"], "all", trainer_class_name=job["trainer"],
                 plans_identifier=job["plans"], pretrained_weights=job.get("pretrained"),
                 device=torch.device(job["device"]))
    return {}


def _fork_pools() -> None:
    """nnU-Net's integrity check, fingerprint and preprocessing pools ask for ``spawn`` processes:
    each imports torch and nnU-Net before its first case (3-4 s on cpu-2c, three pools per plan
    step). The plan and transfer steps touch no GPU and their pool work (reading TIFFs,
    resampling, compressing) uses no torch, so their pools fork this process instead; torch runs
    on one thread here (nnU-Net's planner builds networks to estimate their memory)."""
    import multiprocessing

    import torch

    torch.set_num_threads(1)
    get_context = multiprocessing.get_context

    def forking(method: str | None = None):
        return get_context("fork" if method == "spawn" else method)

    multiprocessing.get_context = forking


def main() -> None:
    with open(sys.argv[1]) as fh:
        job = json.load(fh)
    if job["step"] in ("plan", "transfer") and sys.platform.startswith("linux"):
        _fork_pools()
    result = {"plan": plan, "transfer": transfer, "train": train}[job["step"]](job)
    with open(job["result"], "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
