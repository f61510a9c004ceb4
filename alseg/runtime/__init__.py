"""Mapping work over blocks, patches and slices: a serial backend and a Ray backend, one interface.

Only :mod:`alseg.runtime.ray_backend` imports Ray, and only when a Ray runner is made.
"""

from __future__ import annotations

import sys
from typing import Any

from alseg.runtime.base import CompletionMarkers, Resources, Runner, WorkItem
from alseg.runtime.serial import SerialRunner

__all__ = ["CompletionMarkers", "Resources", "Runner", "SerialRunner", "WorkItem", "get_shared", "make_runner"]


def get_shared(handle: Any) -> Any:
    """The object behind a :meth:`Runner.put` handle, inside a work function.

    Ray resolves object references only when they are direct arguments of a task; handles
    nested in a payload come here. Serial handles are the objects themselves.
    """
    ray = sys.modules.get("ray")
    if ray is not None and isinstance(handle, ray.ObjectRef):
        return ray.get(handle)
    return handle


def make_runner(
    backend: str = "serial",
    *,
    address: str | None = None,
    retries: int = 2,
    max_in_flight: int | None = None,
    progress: bool = True,
    **ray_kwargs: Any,
) -> Runner:
    """A runner for ``backend`` (``"serial"`` or ``"ray"``), e.g. from a spec's ``resources`` section."""
    if backend == "serial":
        return SerialRunner(retries=retries, max_in_flight=max_in_flight, progress=progress)
    if backend == "ray":
        from alseg.runtime.ray_backend import RayRunner

        return RayRunner(address=address, retries=retries, max_in_flight=max_in_flight, progress=progress, **ray_kwargs)
    from alseg.errors import SpecError

    raise SpecError(f"unknown runtime backend {backend!r}: expected 'serial' or 'ray'")


def runner_from_spec(resources_spec: Any, *, progress: bool = True, **ray_kwargs: Any) -> Runner:
    """A runner configured by a :class:`alseg.spec.ResourcesSpec`."""
    return make_runner(
        resources_spec.backend,
        address=resources_spec.ray_address,
        retries=resources_spec.retries,
        max_in_flight=resources_spec.max_in_flight,
        progress=progress,
        **({"node_wait_s": resources_spec.node_wait_s} if resources_spec.backend == "ray" else {}),
        **ray_kwargs,
    )
