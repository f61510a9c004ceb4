"""nnU-Net's folders, scoped to one run directory.

nnU-Net finds its data through the environment variables ``nnUNet_raw``, ``nnUNet_preprocessed``
and ``nnUNet_results``. alseg never sets them process-wide: subprocesses get them in their own
environment (:meth:`NnUNetDirs.env`), and in-process use (loading a model for prediction) goes
through :meth:`NnUNetDirs.scoped`, which restores the previous values on exit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TRAINER = "nnUNetTrainerAlseg"
TRAINERS_DIR = str(Path(__file__).resolve().parent / "trainers")
PLANS = "nnUNetPlans"


@dataclass(frozen=True)
class NnUNetDirs:
    root: str  # a local folder (nnU-Net works on local files)

    @property
    def raw(self) -> str:
        return os.path.join(self.root, "raw")

    @property
    def preprocessed(self) -> str:
        return os.path.join(self.root, "preprocessed")

    @property
    def results(self) -> str:
        return os.path.join(self.root, "results")

    @property
    def logs(self) -> str:
        return os.path.join(self.root, "logs")

    def make(self) -> "NnUNetDirs":
        for d in (self.raw, self.preprocessed, self.results, self.logs):
            os.makedirs(d, exist_ok=True)
        return self

    def variables(self) -> dict[str, str]:
        return {"nnUNet_raw": self.raw, "nnUNet_preprocessed": self.preprocessed, "nnUNet_results": self.results,
                "nnUNet_extTrainer": TRAINERS_DIR}

    def env(self, **extra: str) -> dict[str, str]:
        """A full environment for an nnU-Net subprocess (the caller's, plus these folders)."""
        env = dict(os.environ)
        env.update(self.variables())
        env.update(extra)
        return env

    @contextlib.contextmanager
    def scoped(self) -> Iterator[None]:
        saved = {k: os.environ.get(k) for k in self.variables()}
        os.environ.update(self.variables())
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def dataset_name(dataset_id: int, name: str) -> str:
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"nnU-Net dataset ids lie in 1..999, got {dataset_id}")
    return f"Dataset{dataset_id:03d}_{name}"
