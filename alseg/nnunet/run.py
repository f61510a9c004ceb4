"""Driving nnU-Net: plan and preprocess, carry plans to another dataset, train, from one run directory.

Every step runs nnU-Net's own code in a subprocess (``alseg.nnunet._worker``) whose environment
holds the run directory's nnU-Net folders and the training schedule; nothing is set process-wide.
Output goes to a log file under ``<nnunet>/logs`` and, line by line, to the caller's ``echo``.
With a run directory on object storage the step's log files and a trained model folder are
published there when the step ends (:mod:`alseg.nnunet.models`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from alseg.errors import AlsegError
from alseg.io import store as st
from alseg.nnunet.models import publish_model
from alseg.nnunet.paths import PLANS, TRAINER, NnUNetDirs, dataset_name


class NnUNetError(AlsegError):
    """An nnU-Net step failed; the message holds the end of its log."""


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def run_step(dirs: NnUNetDirs, job: dict[str, Any], *, log_name: str, extra_env: dict[str, str] | None = None,
             echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    dirs.make()
    job_file = os.path.join(dirs.logs, f"{log_name}.job.json")
    log_file = os.path.join(dirs.logs, f"{log_name}.log")
    job = {**job, "result": os.path.join(dirs.logs, f"{log_name}.result.json")}
    with open(job_file, "w") as fh:
        json.dump(job, fh, indent=1)
    tail: list[str] = []
    try:
        with open(log_file, "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "alseg.nnunet._worker", job_file], env=dirs.env(**(extra_env or {})),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                tail = (tail + [line.rstrip()])[-40:]
                if echo is not None and line.strip():
                    echo(line.rstrip())
            rc = proc.wait()
    finally:
        if dirs.url is not None:  # the logs of a step on a scratch folder go to the run directory, failed or not
            _publish_logs(dirs, (job_file, log_file, job["result"]))
    if rc != 0:
        raise NnUNetError(f"nnU-Net step {job['step']} failed (exit {rc}); log: {st.redact(dirs.published(log_file))}\n"
                          + "\n".join(tail[-15:]))
    with open(job["result"]) as fh:
        return json.load(fh)


def _publish_logs(dirs: NnUNetDirs, paths: tuple[str, ...]) -> None:
    """Copy a step's log files to the run directory; a failure to do so is a warning (the step's
    own outcome stands: a finished training is not lost to a log upload)."""
    import logging

    for path in paths:
        if os.path.isfile(path):
            try:
                st.put_file(path, dirs.published(path))
            except AlsegError as err:
                logging.getLogger("alseg").warning("nnU-Net log %s stays on this node only: %s", path, err)


def plan_and_preprocess(dirs: NnUNetDirs, dataset_id: int, *, configuration: str = "3d_fullres",
                        overrides: dict[str, Any] | None = None, echo=None) -> dict[str, Any]:
    """nnU-Net's fingerprint, plans (with alseg's overrides, recorded in the plans file) and preprocessing."""
    res = run_step(dirs, {"step": "plan", "dataset_id": dataset_id, "configuration": configuration, "plans": PLANS,
                          "overrides": {k: v for k, v in (overrides or {}).items() if v is not None}},
                   log_name=f"plan-{dataset_id:03d}", echo=echo)
    with open(res["plans_file"]) as fh:
        return json.load(fh)


def transfer_plans(dirs: NnUNetDirs, source_id: int, dataset_id: int, *, configuration: str = "3d_fullres", echo=None) -> None:
    """Preprocess ``dataset_id`` with the plans of ``source_id`` (so pretrained weights fit)."""
    run_step(dirs, {"step": "transfer", "source_id": source_id, "dataset_id": dataset_id, "configuration": configuration,
                    "plans": PLANS}, log_name=f"transfer-{source_id:03d}-{dataset_id:03d}", echo=echo)


def model_folder(dirs: NnUNetDirs, dataset_id: int, name: str, configuration: str = "3d_fullres") -> str:
    return os.path.join(dirs.results, dataset_name(dataset_id, name), f"{TRAINER}__{PLANS}__{configuration}")


def train(dirs: NnUNetDirs, dataset_id: int, name: str, schedule: Any, *, configuration: str = "3d_fullres",
          device: str = "auto", pretrained: str | None = None, echo=None) -> str:
    """Train on all cases of the dataset (fold ``all``); returns the model folder as the run
    directory names it (published there when the run directory is on object storage).

    ``schedule`` is a :class:`alseg.spec.TrainingSpec` (epochs, iterations, learning rate,
    validation); ``pretrained`` a checkpoint whose weights (all but the segmentation heads)
    initialise the network (nnU-Net's pretrained-weights route).
    """
    sched = schedule.model_dump() if hasattr(schedule, "model_dump") else dict(schedule)
    if pretrained is not None and not os.path.isfile(pretrained):
        raise NnUNetError(f"pretrained checkpoint {pretrained} does not exist")
    run_step(dirs, {"step": "train", "dataset_id": dataset_id, "configuration": configuration, "plans": PLANS,
                    "trainer": TRAINER, "device": resolve_device(device), "pretrained": pretrained},
             log_name=f"train-{dataset_id:03d}", echo=echo,
             # augmentation in the training process (no worker pool) unless the user asks for workers
             extra_env={"ALSEG_NNUNET_SCHEDULE": json.dumps(sched), "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0")})
    folder = model_folder(dirs, dataset_id, name, configuration)
    if not os.path.isfile(os.path.join(folder, "fold_all", "checkpoint_final.pth")):
        raise NnUNetError(f"training finished without {folder}/fold_all/checkpoint_final.pth")
    return publish_model(dirs, folder)


def preprocess_seconds(dirs: NnUNetDirs, dataset_id: int, name: str, *, configuration: str = "3d_fullres") -> tuple[float, int]:
    """Seconds nnU-Net's own preprocessor (the plan's class) takes for the first case of a planned
    dataset, in this process: read, crop, normalise, resample and save, as its preprocessing
    step does per case; and that case's voxels. For ``alseg calibrate``: the per-case part of
    planning and preprocessing, without the fixed cost of a subprocess."""
    import contextlib
    import io
    import tempfile
    import time

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    ds = dataset_name(dataset_id, name)
    raw = os.path.join(dirs.raw, ds)
    with open(os.path.join(raw, "dataset.json")) as fh:
        dataset_json = json.load(fh)
    case = dataset_json["alseg"]["cases"][0]["case"]
    ending = dataset_json["file_ending"]
    plans = PlansManager(os.path.join(dirs.preprocessed, ds, PLANS + ".json"))
    conf = plans.get_configuration(configuration)
    with dirs.scoped(), contextlib.redirect_stdout(io.StringIO()), tempfile.TemporaryDirectory(prefix="alseg-prep-") as out:
        preprocessor = conf.preprocessor_class(verbose=False)
        started = time.perf_counter()
        preprocessor.run_case_save(os.path.join(out, case), [os.path.join(raw, "imagesTr", f"{case}_0000{ending}")],
                                   os.path.join(raw, "labelsTr", f"{case}{ending}"), plans, conf, dataset_json)
        seconds = time.perf_counter() - started
    box = dataset_json["alseg"]["cases"][0]["box"]
    voxels = 1
    for a, b in zip(*box):
        voxels *= int(b) - int(a)
    return seconds, voxels
