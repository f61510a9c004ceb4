"""The serial backend: every item in this process, one after the other (tests, small data, GPUs without Ray)."""

from __future__ import annotations

from alseg.errors import SpecError, WorkFailedError
from alseg.runtime.base import ProgressCallback, Resources, Runner, WorkItem


class SerialRunner(Runner):
    name = "serial"

    def _attempt(self, call, item: WorkItem, desc: str):
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return call(item.payload)
            except Exception as err:  # noqa: BLE001 - any failure of user work is retried, then reported
                cause = f"{type(err).__name__}: {err}"
                if attempt == attempts:
                    raise WorkFailedError(item.key, attempts, cause) from err
                self._retrying(item, attempt, cause.splitlines()[0] if cause.strip() else cause, desc)
        raise AssertionError("unreachable")

    def _run_fn(self, fn, todo: list[WorkItem], resources: Resources, done: ProgressCallback, desc: str) -> None:
        for item in todo:
            done(item, self._attempt(fn, item, desc))

    def _run_workers(self, worker_cls, init_args, todo, workers, resources, done, desc, gang=False) -> None:
        if not todo:
            return
        if gang and len(todo) > 1:
            raise SpecError(f"{desc}: {len(todo)} items that run together need the ray backend (resources.backend: ray)")
        worker = worker_cls(*init_args)  # one in-process worker, whatever `workers` says
        for item in todo:
            done(item, self._attempt(worker, item, desc))
