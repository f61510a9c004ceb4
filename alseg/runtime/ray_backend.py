"""The Ray backend (with :mod:`alseg.runtime.jobs`, the only modules of alseg that import Ray).

Functions run as Ray tasks with per-item resources; stateful workers (a model loaded once) run as
Ray actors, one per GPU where the resources ask for GPUs. Work in flight is bounded with
``ray.wait``; the function itself is put in the object store once. Failures (exceptions, a worker
process killed) are retried here, uniformly with the serial backend, so Ray's own task retries are
off (``max_retries=0``). A dead actor's item goes back to the queue; the actor is replaced only
when it was the stage's last one (after checking that the cluster still fits one): the workers of
a lost node are not waited for while others remain (the stage goes on with fewer).

Without an address a local Ray is started bound to 127.0.0.1 with the dashboard off, unless
``RAY_ADDRESS`` is set (Ray sets it for a job's driver: ``alseg submit``); with one (``"auto"``,
``"host:port"``, ``"ray://host:10001"``) the runner joins that cluster. The runner
shuts Ray down on :meth:`close` only if it started it.

Before work is submitted, its per-worker request is checked against the cluster's live nodes: a
request no node can hold would wait in Ray's queue forever. A local cluster fails at once; on an
existing cluster the runner asks Ray's autoscaler for such a node and waits up to
``node_wait_s`` for one (the time an autoscaling cluster takes to add it), then fails with the
request, the stage it comes from and what each node has.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from typing import Any

from alseg.errors import DependencyError, SpecError, WorkFailedError
from alseg.runtime.base import ProgressCallback, Resources, Runner, WorkItem


def _import_ray(*, local: bool = False):
    # A local cluster must listen on 127.0.0.1 only. ray.init() turns "127.0.0.1" into the node's
    # reachable address unless Ray's cluster switch is off. Ray reads it from the environment when
    # ray_constants is first imported (and its children read the environment), so set both: the
    # variable, and the constant where something in this process imported Ray first (a test, a
    # library), which would otherwise leave the switch on and the cluster on every interface.
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        from ray._private import ray_constants
    except ImportError as err:  # pragma: no cover - ray is a hard dependency
        raise DependencyError("the Ray backend needs ray: pip install 'ray[default]'") from err
    if local:
        ray_constants.ENABLE_RAY_CLUSTER = False
    return ray


def _call(fn, payload):
    return fn(payload)


class RayRunner(Runner):
    name = "ray"

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        runtime_env: dict[str, Any] | None = None,
        retries: int = 2,
        max_in_flight: int | None = None,
        progress: bool = True,
        node_wait_s: float = 0.0,
    ) -> None:
        super().__init__(retries=retries, max_in_flight=max_in_flight, progress=progress)
        if address is None and os.environ.get("RAY_ADDRESS"):
            address = os.environ["RAY_ADDRESS"]  # set by Ray for a job's driver (alseg submit): join that cluster
        self.address = address
        self.node_wait_s = node_wait_s
        """None: a local cluster on 127.0.0.1 started by this runner (or one already running here)."""
        ray = _import_ray(local=address is None)
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"runtime_env": runtime_env, "log_to_driver": True}
            if address is None:
                kwargs.update(
                    num_cpus=num_cpus,
                    num_gpus=num_gpus,
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                )
            else:
                kwargs["address"] = address
            ray.init(**kwargs)
            self._started = True

    # -- helpers ------------------------------------------------------------------------------ #
    def _options(self, res: Resources) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": res.cpus, "num_gpus": res.gpus}
        if res.memory_bytes is not None:
            opts["memory"] = res.memory_bytes
        return opts

    def _default_in_flight(self, res: Resources) -> int:
        if self.max_in_flight is not None:
            return self.max_in_flight
        cluster = self._ray.cluster_resources()
        fits = [cluster.get("CPU", 1.0) / res.cpus] if res.cpus > 0 else []
        if res.gpus > 0:
            fits.append(cluster.get("GPU", 0.0) / res.gpus)
        slots = max(1, int(min(fits))) if fits else int(cluster.get("CPU", 1.0))
        return 2 * slots

    def put(self, obj: Any) -> Any:
        return self._ray.put(obj)

    def _nodes(self) -> list[dict[str, float]]:
        return [dict(n.get("Resources", {})) for n in self._ray.nodes() if n.get("Alive")]

    def check_fits(self, res: Resources, desc: str) -> None:
        """Fail (a :class:`SpecError` naming the request) unless some live node can hold one worker of ``res``."""
        deadline = time.monotonic() + (self.node_wait_s if self.address is not None else 0.0)
        asked = False
        while True:
            nodes = self._nodes()
            if any(res.fits(n) for n in nodes):
                return
            if time.monotonic() >= deadline:
                break
            if not asked:
                try:
                    from ray.autoscaler.sdk import request_resources

                    bundle = {"CPU": res.cpus, "GPU": res.gpus, **({"memory": res.memory_bytes} if res.memory_bytes else {})}
                    request_resources(bundles=[{k: v for k, v in bundle.items() if v}])
                except Exception:  # noqa: BLE001 - no autoscaler on this cluster: just wait
                    pass
                asked = True
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
        have = "; ".join(f"node {i}: {n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU, "
                         f"{n.get('memory', 0) / 2**30:.1f} GiB" for i, n in enumerate(nodes)) or "no live node"
        waited = f" (waited {self.node_wait_s:g} s for the autoscaler)" if self.address is not None and self.node_wait_s else ""
        raise SpecError(f"{res.label or desc}: each worker asks for {res.describe()}, which no node of the Ray cluster "
                        f"can hold{waited} ({have}); lower the request or add a node that fits")

    def capacity(self, resources: Resources | None = None) -> int:
        """How many workers of ``resources`` the cluster can start now: its *available* resources,
        so what is already held is not counted. alseg asks when a stage starts, with nothing of
        its own running, so that is what the job's driver holds (a Ray job's entrypoint GPU and
        CPUs, cluster/kuberay/rayjob.yaml) and other jobs: counting them would start a worker that
        can never be placed, and the item given to it (or the MAE's data-parallel group) would
        wait for ever."""
        res = resources or Resources()
        free = self._settled_free()
        fits = [free.get("CPU", 0.0) / res.cpus] if res.cpus > 0 else []
        if res.gpus > 0:
            fits.append(free.get("GPU", 0.0) / res.gpus)
        return max(1, int(min(fits))) if fits else max(1, int(free.get("CPU", 1.0)))

    def _settled_free(self, settle_s: float = 1.0) -> dict[str, float]:
        """Ray's available resources; while some are held, the most seen over ``settle_s`` (the
        workers of a stage that just ended give theirs back a moment after they are killed)."""
        free = dict(self._ray.available_resources())
        total = self._ray.cluster_resources()
        deadline = time.monotonic() + settle_s
        while any(free.get(k, 0.0) < total.get(k, 0.0) for k in ("CPU", "GPU")) and time.monotonic() < deadline:
            time.sleep(0.2)
            for k, v in self._ray.available_resources().items():
                free[k] = max(free.get(k, 0.0), v)
        return free

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False

    def _fail(self, item: WorkItem, attempts: int, err: BaseException, pending) -> None:
        for ref in list(pending):
            self._ray.cancel(ref, force=True)
        raise WorkFailedError(item.key, attempts, _cause(err)) from err

    # -- functions as tasks ----------------------------------------------------------------- #
    def _run_fn(self, fn, todo: list[WorkItem], resources: Resources, done: ProgressCallback, desc: str) -> None:
        if not todo:
            return
        for res in {item.resources or resources for item in todo}:
            self.check_fits(res, desc)
        ray = self._ray
        remote = ray.remote(max_retries=0, retry_exceptions=False)(_call)
        fn_ref = ray.put(fn)
        limit = self._default_in_flight(resources)
        queue = deque((item, 1) for item in todo)
        pending: dict[Any, tuple[WorkItem, int]] = {}
        while queue or pending:
            while queue and len(pending) < limit:
                item, attempt = queue.popleft()
                opts = self._options(item.resources or resources)
                pending[remote.options(**opts).remote(fn_ref, item.payload)] = (item, attempt)
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                item, attempt = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as err:
                    if attempt <= self.retries:
                        self._retrying(item, attempt, _cause(err), desc)
                        queue.appendleft((item, attempt + 1))
                        continue
                    self._fail(item, attempt, err, pending)
                done(item, result)

    # -- stateful workers as actors --------------------------------------------------------- #
    def _run_workers(self, worker_cls, init_args, todo, workers, resources, done, desc, gang=False) -> None:
        if not todo:
            return
        self.check_fits(resources, desc)
        if gang and (fit := min(workers, self.capacity(resources))) < len(todo):
            raise SpecError(f"{desc}: {len(todo)} items must run at once, but {fit} workers of these resources fit")
        ray = self._ray

        class _Worker:  # a thin actor shell around the user's plain class
            def __init__(self, cls, args):
                self.obj = cls(*args)

            def run(self, payload):
                return self.obj(payload)

        actor_cls = ray.remote(max_restarts=0, max_task_retries=0)(_Worker).options(**self._options(resources))
        args_ref = ray.put(init_args)
        n = min(workers, len(todo))
        idle = deque(actor_cls.remote(worker_cls, args_ref) for _ in range(n))
        queue = deque((item, 1) for item in todo)
        pending: dict[Any, tuple[WorkItem, int, Any]] = {}
        try:
            while queue or pending:
                while queue and idle:
                    item, attempt = queue.popleft()
                    actor = idle.popleft()
                    pending[actor.run.remote(item.payload)] = (item, attempt, actor)
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    item, attempt, actor = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as err:
                        if gang:  # the others wait on this one: stop them all now (finally kills them, and this one)
                            idle.append(actor)
                            raise WorkFailedError(item.key, attempt, f"{_cause(err)}; its group's {len(pending)} other "
                                                  "worker(s) stopped") from err
                        if not isinstance(err, ray.exceptions.RayActorError):
                            idle.append(actor)
                        elif not idle and not pending:
                            # the last worker died: start another (a lost node's workers are not
                            # replaced while others remain: the cluster may no longer fit them)
                            self.check_fits(resources, desc)
                            idle.append(actor_cls.remote(worker_cls, args_ref))
                        if attempt <= self.retries:
                            self._retrying(item, attempt, _cause(err), desc)
                            queue.appendleft((item, attempt + 1))
                            continue
                        self._fail(item, attempt, err, {})  # actor tasks cannot be force-cancelled: finally kills their actors
                    idle.append(actor)
                    done(item, result)
        finally:
            for actor in list(idle) + [a for _, _, a in pending.values()]:
                ray.kill(actor)


def _cause(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err
    first = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first}"


def cluster_summary() -> dict[str, float]:
    """Resources of the connected cluster (CPU, GPU, memory in GiB)."""
    ray = _import_ray()
    res = ray.cluster_resources()
    return {
        "CPU": res.get("CPU", 0.0),
        "GPU": res.get("GPU", 0.0),
        "memory_gib": math.floor(res.get("memory", 0.0) / 2**30 * 10) / 10,
    }
