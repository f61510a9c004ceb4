"""Process functions for the blockwise-engine tests; importable by Ray workers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
from scipy import ndimage


def smooth(block: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of the padded block (the engine crops the write region)."""
    return ndimage.gaussian_filter(block.astype(np.float32), sigma, mode="nearest")


def smooth_killing_once(block: np.ndarray, sigma: float, state: str) -> np.ndarray:
    """Like :func:`smooth`, but SIGKILLs its worker process the first time it runs on a worker
    whose state folder has no flag yet: a worker lost mid-block."""
    flag = Path(state) / "killed"
    if not flag.exists():
        flag.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return smooth(block, sigma)


def smooth_logged(block: np.ndarray, sigma: float, log: str, delay: float = 0.0) -> np.ndarray:
    """Like :func:`smooth`, appending one line per call (to count computed blocks), optionally slow."""
    time.sleep(delay)
    with open(log, "a") as fh:
        fh.write("x\n")
    return smooth(block, sigma)


def wrong_shape(block: np.ndarray) -> np.ndarray:
    """Returns a slab of the wrong shape: the engine must refuse to write it."""
    return block[:1]
