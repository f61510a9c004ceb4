"""nnU-Net's folders, scoped to one run directory.

nnU-Net finds its data through the environment variables ``nnUNet_raw``, ``nnUNet_preprocessed``
and ``nnUNet_results``. alseg never sets them process-wide: subprocesses get them in their own
environment (:meth:`NnUNetDirs.env`), and in-process use (loading a model for prediction) goes
through :meth:`NnUNetDirs.scoped`, which restores the previous values on exit.

nnU-Net reads and writes local files only. With a local run directory its folders live in it;
with a run directory on object storage nnU-Net works in a node-local scratch folder
(:func:`scratch_root`) and what other nodes or later steps need (model folders, logs, the
pretraining record) is published to the run directory's URL (:attr:`NnUNetDirs.url`,
:mod:`alseg.nnunet.models`).
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


def scratch_root() -> str:
    """This node's scratch folder for alseg (``ALSEG_SCRATCH``, else ``alseg-scratch-<uid>`` in the
    system's temporary folder): nnU-Net's working folders and fetched models of run directories
    on object storage. Nothing in it is needed after a step has published its results."""
    import tempfile

    import stat

    from alseg.errors import SpecError

    root = os.environ.get("ALSEG_SCRATCH") or os.path.join(tempfile.gettempdir(), f"alseg-scratch-{os.getuid()}")
    os.makedirs(root, mode=0o700, exist_ok=True)
    info = os.lstat(root)
    # models are unpickled from here: a folder another user owns or may write to is refused
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise SpecError(f"scratch folder {root} must be a directory of this user that nobody else may write to "
                        "(it holds the models alseg loads); fix its owner and mode, or set ALSEG_SCRATCH")
    return root


@dataclass(frozen=True)
class NnUNetDirs:
    root: str  # a local folder (nnU-Net works on local files)
    url: str | None = None  # the run directory's nnunet folder on object storage; None: root is that folder

    def published(self, local: str) -> str:
        """Where a file or folder under :attr:`root` lives in the run directory (itself when local)."""
        if self.url is None:
            return local
        from alseg.io import store as st

        rel = os.path.relpath(local, self.root)
        if rel.startswith(".."):
            raise ValueError(f"{local} is not under {self.root}")
        return st.join(self.url, *rel.split(os.sep))

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
