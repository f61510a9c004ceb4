"""Work functions for the runtime tests; importable by Ray workers (on their PYTHONPATH)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def square(x: int) -> int:
    return x * x


def record_call(arg: tuple[str, int]) -> int:
    """Appends one line per call to a log file (counts calls across processes), returns x + 1."""
    log, x = arg
    with open(log, "a") as fh:
        fh.write(f"{x}\n")
    return x + 1


def fail_first_times(arg: tuple[str, int, int]) -> int:
    """Fails the first ``n_fail`` calls for ``x`` (state in files), then succeeds."""
    state, x, n_fail = arg
    f = Path(state) / f"attempts-{x}"
    n = int(f.read_text()) if f.exists() else 0
    f.write_text(str(n + 1))
    if n < n_fail:
        raise RuntimeError(f"transient failure {n + 1} of item {x}")
    return x


def kill_first_time(arg: tuple[str, int]) -> int:
    """SIGKILLs its own worker process the first time it sees ``x`` (a crashed worker), then succeeds."""
    state, x = arg
    f = Path(state) / f"killed-{x}"
    if not f.exists():
        f.write_text("1")
        os.kill(os.getpid(), signal.SIGKILL)
    return 10 * x


def always_fail(x: int) -> int:
    raise ValueError(f"bad item {x}")


def timed(arg: tuple[str, int, float]) -> int:
    """Records start and end times of the call (to check how many run at once)."""
    log, x, seconds = arg
    t0 = time.time()
    time.sleep(seconds)
    with open(log, "a") as fh:
        fh.write(f"{x} {t0} {time.time()} {os.getpid()}\n")
    return x


class CountingModel:
    """A stateful worker: records each construction (a model load) and its process."""

    def __init__(self, log: str, factor: int) -> None:
        with open(log, "a") as fh:
            fh.write(f"init {os.getpid()}\n")
        self.factor = factor

    def __call__(self, x: int) -> tuple[int, int]:
        return x * self.factor, os.getpid()


class KillingModel:
    """A stateful worker that SIGKILLs its own process the first time it sees an item (a crashed
    actor), then computes ``10 * x``."""

    def __init__(self, state: str) -> None:
        self.state = state

    def __call__(self, x: int) -> int:
        return kill_first_time((self.state, x))


class FailOneSleepOthers:
    """A worker for which item 0 always raises and every other item sleeps ``seconds``: one item
    fails for good while others are still running."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, x: int) -> int:
        if x == 0:
            raise ValueError("item 0 is bad")
        time.sleep(self.seconds)
        return x
