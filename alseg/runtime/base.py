"""The runtime interface: map work over items with resources, retries, progress and resume.

A :class:`Runner` maps a plain function (or a stateful worker class, loaded once per worker, for
models) over :class:`WorkItem` s (blocks, patches, slices). Every backend gives the same
guarantees:

* at most ``max_in_flight`` items are submitted at once (bounded memory in the driver and the
  object store);
* an item that raises is retried ``retries`` times, then the map fails with a
  :class:`~alseg.errors.WorkFailedError` naming the item;
* with :class:`CompletionMarkers`, every finished item leaves a small JSON record (its result),
  written only after the function returned, i.e. after the function made its output durable;
  a rerun returns the recorded results and computes only the rest;
* results come back as ``{key: result}`` in the order of the items.

The serial backend (:mod:`alseg.runtime.serial`) runs everything in-process for tests, small data
and GPU machines without Ray; the Ray backend (:mod:`alseg.runtime.ray_backend`) is the only module
of alseg that imports Ray.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from alseg.errors import SpecError
from alseg.io import store as st
from alseg.io.urls import scrub
from alseg.progress import progress_bar

log = logging.getLogger("alseg")


@dataclass(frozen=True)
class Resources:
    """What one work item (or one stateful worker) reserves while it runs."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_bytes: int | None = None
    label: str | None = field(default=None, compare=False)
    """Where the request comes from (``resources.pseudolabel``), for messages."""

    def __post_init__(self) -> None:
        if self.cpus < 0 or self.gpus < 0 or (self.memory_bytes is not None and self.memory_bytes <= 0):
            raise SpecError(f"resources must be non-negative, got {self}")

    @classmethod
    def from_spec(cls, stage: Any, *, label: str | None = None) -> "Resources":
        """From a :class:`alseg.spec.StageResources` (``label``: its field path)."""
        mem = None if stage.memory_gb is None else int(stage.memory_gb * 2**30)
        return cls(cpus=stage.cpus, gpus=stage.gpus, memory_bytes=mem, label=label)

    def describe(self) -> str:
        mem = "" if self.memory_bytes is None else f", {self.memory_bytes / 2**30:g} GiB memory"
        return f"{self.cpus:g} CPU, {self.gpus:g} GPU{mem}"

    def fits(self, node: dict[str, float]) -> bool:
        """Whether one worker of these resources fits a node with ``node`` (Ray's CPU/GPU/memory keys)."""
        return (node.get("CPU", 0.0) >= self.cpus and node.get("GPU", 0.0) >= self.gpus
                and (self.memory_bytes is None or node.get("memory", 0.0) >= self.memory_bytes))


@dataclass(frozen=True)
class WorkItem:
    """One unit of work: a unique ``key`` (markers, errors), its ``payload``, optional own resources."""

    key: str
    payload: Any
    resources: Resources | None = None


class CompletionMarkers:
    """Completion records of one task under ``root`` (a local folder or an object-storage URL).

    One ``<key>.json`` per finished item holding its JSON-serialisable result. Local records are
    written to a temporary name and renamed (atomic); object stores put whole objects (atomic).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        self._fs, self._path = st.filesystem(self.root)

    def _file(self, key: str) -> str:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"invalid work item key {key!r}")
        return f"{self._path.rstrip('/')}/{key}.json"

    def load(self) -> dict[str, Any]:
        """``{key: result}`` of every completed item."""
        try:
            files = self._fs.glob(f"{self._path.rstrip('/')}/*.json")
        except FileNotFoundError:
            return {}
        out = {}
        for f in files:
            with self._fs.open(f, "r") as fh:
                record = json.load(fh)
            out[record["key"]] = record["result"]
        return out

    def mark(self, key: str, result: Any) -> None:
        payload = json.dumps({"key": key, "result": result})
        target = self._file(key)
        if st.is_local(self.root):
            os.makedirs(self._path, exist_ok=True)
            tmp = f"{target}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "w") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        else:
            self._fs.pipe_file(target, payload.encode())

    def clear(self) -> None:
        st.remove(self.root)


ProgressCallback = Callable[[WorkItem, Any], None]


class Runner(ABC):
    """Maps work over items; see the module docstring for the guarantees."""

    name: str = "runner"

    def __init__(self, *, retries: int = 2, max_in_flight: int | None = None, progress: bool = True) -> None:
        if retries < 0:
            raise SpecError(f"retries must be >= 0, got {retries}")
        if max_in_flight is not None and max_in_flight <= 0:
            raise SpecError(f"max_in_flight must be positive, got {max_in_flight}")
        self.retries = retries
        self.max_in_flight = max_in_flight
        self.progress = progress

    # -- the public API --------------------------------------------------------------------- #
    def map(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[WorkItem],
        *,
        resources: Resources | None = None,
        markers: CompletionMarkers | None = None,
        desc: str = "work",
        weight: Callable[[WorkItem], int] | None = None,
        unit: str = "item",
    ) -> dict[str, Any]:
        """Apply ``fn(item.payload)`` to every item; ``{key: result}`` in item order.

        ``weight(item)`` (e.g. voxels of a block) with ``unit`` makes the progress bar count
        work in that unit (rate and ETA) instead of items.
        """
        return self._map(
            items, markers, desc, lambda todo, done: self._run_fn(fn, todo, resources or Resources(), done, desc), weight, unit
        )

    def map_workers(
        self,
        worker_cls: type,
        init_args: Sequence[Any],
        items: Iterable[WorkItem],
        *,
        workers: int = 1,
        resources: Resources | None = None,
        markers: CompletionMarkers | None = None,
        desc: str = "work",
        weight: Callable[[WorkItem], int] | None = None,
        unit: str = "item",
        gang: bool = False,
    ) -> dict[str, Any]:
        """Create ``workers`` instances of ``worker_cls(*init_args)`` (a model loaded once per worker,
        one per GPU) and feed them items: ``instance(item.payload)``.

        ``gang``: the items run together and wait on each other (the ranks of one data-parallel
        training): one worker per item, all at once, and the first failure fails the map at once,
        stopping the others, instead of a retry that would join a group the others have left."""
        if workers <= 0:
            raise SpecError(f"workers must be positive, got {workers}")
        return self._map(
            items,
            markers,
            desc,
            lambda todo, done: self._run_workers(worker_cls, tuple(init_args), todo, workers, resources or Resources(), done, desc,
                                                 gang),
            weight,
            unit,
        )

    def capacity(self, resources: Resources | None = None) -> int:
        """How many workers of ``resources`` can run at once (the serial runner: one)."""
        return 1

    def put(self, obj: Any) -> Any:
        """Share a large read-only input with every item once (Ray: the object store)."""
        return obj

    def close(self) -> None:
        """Release what the runner started."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shared machinery ------------------------------------------------------------------- #
    def _map(
        self,
        items: Iterable[WorkItem],
        markers: CompletionMarkers | None,
        desc: str,
        run,
        weight: Callable[[WorkItem], int] | None = None,
        unit: str = "item",
    ) -> dict[str, Any]:

        items = list(items)
        keys = [i.key for i in items]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
            raise ValueError(f"work item keys must be unique; repeated: {dup}")
        results: dict[str, Any] = {}
        if markers is not None:
            wanted = set(keys)
            results.update({k: v for k, v in markers.load().items() if k in wanted})
            if results:  # a resumed map says how much it did not redo
                log.info("%s: %d of %d done before, reused", desc, len(results), len(items))
        todo = [i for i in items if i.key not in results]
        w = weight or (lambda _: 1)
        total = sum(w(i) for i in items)
        bar = progress_bar(
            total=total,
            initial=total - sum(w(i) for i in todo),
            desc=desc,
            unit=unit,
            unit_scale=weight is not None,
            disable=not self.progress,
            leave=False,
        )
        n_done = [len(items) - len(todo)]

        def done(item: WorkItem, result: Any) -> None:
            if markers is not None:
                markers.mark(item.key, result)
            results[item.key] = result
            n_done[0] += 1
            if weight is not None:
                bar.set_postfix_str(f"{n_done[0]}/{len(items)} blocks", refresh=False)
            bar.update(w(item))

        try:
            run(todo, done)
        finally:
            bar.close()
        return {k: results[k] for k in keys}

    def _retrying(self, item: WorkItem, attempt: int, cause: str, desc: str) -> None:
        """One log line for an item that failed and runs again (``attempt`` is the one that failed)."""
        log.warning("%s: %s failed (%s); retry %d of %d", desc, item.key, scrub(cause), attempt, self.retries)

    @abstractmethod
    def _run_fn(self, fn, todo: list[WorkItem], resources: Resources, done: ProgressCallback, desc: str) -> None: ...

    @abstractmethod
    def _run_workers(
        self, worker_cls: type, init_args: tuple, todo: list[WorkItem], workers: int, resources: Resources, done: ProgressCallback, desc: str,
        gang: bool = False,
    ) -> None: ...
