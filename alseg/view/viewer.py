"""The one adapter around the ``neuroglancer`` package (the ``view`` extra): its Python server,
bound to 127.0.0.1, serving its bundled client (nothing downloaded at run time), with a state."""

from __future__ import annotations

import threading
from typing import Any

from alseg.errors import AlsegError, DependencyError


class ViewerError(AlsegError):
    """The viewer could not start or answer (a port in use, no browser connected)."""


def _neuroglancer():
    try:
        import neuroglancer
    except ImportError as err:
        raise DependencyError("alseg view needs neuroglancer: pip install 'alseg[view]' (the test command installs it)") from err
    return neuroglancer


class Viewer:
    """neuroglancer's server in this process (a background thread) on 127.0.0.1:``port`` (0: any)."""

    def __init__(self, state: dict[str, Any], port: int = 0) -> None:
        ng = _neuroglancer()
        ng.set_server_bind_address("127.0.0.1", port)
        try:
            self._viewer = ng.Viewer()
            self._viewer.set_state(state)
            self.url = self._viewer.get_viewer_url()
        except OSError as err:
            ng.stop()
            raise ViewerError(f"cannot serve the viewer on 127.0.0.1:{port}: {err.strerror or err}"
                              + (" (choose another with --port)" if port else "")) from None

    def show(self, state: dict[str, Any]) -> None:
        """Replace the viewer's state (connected browsers follow)."""
        self._viewer.set_state(state)

    def screenshot(self, size: tuple[int, int] = (800, 600), timeout_s: float = 120.0) -> bytes:
        """A PNG of the viewer's panels, rendered by a browser connected to :attr:`url` once every
        visible chunk has loaded (:class:`ViewerError` after ``timeout_s`` without one)."""
        out: dict[str, Any] = {}

        def take() -> None:
            try:
                out["reply"] = self._viewer.screenshot(size=list(size))
            except Exception as err:  # noqa: BLE001 - reported below, in the caller's thread
                out["error"] = err

        worker = threading.Thread(target=take, name="alseg-view-screenshot", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if "reply" not in out:
            why = f"{type(out['error']).__name__}: {out['error']}" if "error" in out else "no browser answered"
            raise ViewerError(f"no screenshot within {timeout_s:g} s ({why})")
        return bytes(out["reply"].screenshot.image)

    def close(self) -> None:
        _neuroglancer().stop()
