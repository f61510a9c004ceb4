"""A read-only file server on 127.0.0.1 that serves a run's volumes the way neuroglancer reads them.

Each *root* is a name (``run``, ``input``) for a folder or object-storage prefix; the server answers
``GET``/``HEAD`` for ``/<root>/<relative path>`` of files under it, and nothing else: no directory
listing; no path whose decoded segments hold ``..``, ``.``, an empty segment, a ``%``, ``?``,
``#``, a backslash or a NUL; no symbolic link that leads out of a local root (403); no other
method (405). Object storage is read with alseg's store (fsspec) and the environment's
credentials, so a private bucket is viewed without a credential in any URL.

Only the viewer may read through a browser: cross-origin reads are allowed for the origins in
:attr:`FileServer.origins` (the viewer's, set once it runs), and a request naming another host
(DNS rebinding) is refused. ``HEAD`` reads no data; a single byte range is read as such (206).
Small documents made for the viewer (segment properties) are served from memory under fixed paths.
"""

from __future__ import annotations

import http.server
import mimetypes
import os
import re
import threading
import urllib.parse
from collections.abc import Callable

from alseg.io import store as st

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_JSON_NAMES = ("zarr.json", ".zattrs", ".zarray", ".zgroup", "/info")


class RootError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FileServer:
    """Serve ``roots`` (``{name: folder or URL}``) and ``documents`` (``{"/path": bytes}``) on
    127.0.0.1:``port`` (0: any free port) from a background thread until :meth:`stop`."""

    def __init__(self, roots: dict[str, str], documents: dict[str, bytes] | None = None, port: int = 0) -> None:
        for name in roots:
            if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
                raise ValueError(f"root name {name!r} is not a plain lowercase word")
        self.roots = {name: _Root(url) for name, url in roots.items()}
        self.documents = dict(documents or {})
        self.documents_read: set[str] = set()
        """Paths of the in-memory documents a client has read (e.g. the segment properties)."""
        self.origins: set[str] = set()
        """Browser origins that may read (the viewer's page), e.g. ``http://127.0.0.1:8090``."""
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, root: str, relative: str = "") -> str:
        """The http URL of ``relative`` (``/``-separated) under the root ``root``."""
        return served_url(self.base, root, relative)

    def allow_viewer(self, url: str) -> None:
        """Let the page at ``url`` (the viewer, on 127.0.0.1 or localhost) read through a browser."""
        parts = urllib.parse.urlsplit(url)
        for host in ("127.0.0.1", "localhost"):
            self.origins.add(f"{parts.scheme}://{host}:{parts.port}")

    def start(self) -> "FileServer":
        self._thread = threading.Thread(target=self._server.serve_forever, name="alseg-view-files", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def locate(self, path: str) -> tuple[int, Callable[[int, int], bytes]]:
        """``(size, read(start, end))`` of what the request path ``path`` names (:class:`RootError`
        for a refusal or nothing there)."""
        parts = _parts(path)
        key = "/" + "/".join(parts)
        doc = self.documents.get(key)
        if doc is not None:
            self.documents_read.add(key)
            return len(doc), lambda a, b: doc[a:b]
        if len(parts) < 2 or parts[0] not in self.roots:
            raise RootError(404, "not found")
        return self.roots[parts[0]].locate(parts[1:])

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _cors(self) -> None:
                origin = self.headers.get("Origin")
                if origin and origin in server.origins:
                    self.send_header("Access-Control-Allow-Origin", origin)
                    self.send_header("Vary", "Origin")
                    self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
                    self.send_header("Access-Control-Allow-Headers", "Range")
                    self.send_header("Access-Control-Expose-Headers", "Content-Length, Content-Range, Accept-Ranges")

            def _error(self, status: int, message: str) -> None:
                body = message.encode()
                self.send_response(status)
                self._cors()
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _host_ok(self) -> bool:
                host = (self.headers.get("Host") or "").lower()
                return host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}")

            def _answer(self) -> None:
                if not self._host_ok():
                    return self._error(403, "this server answers requests for 127.0.0.1 only")
                try:
                    size, read = server.locate(self.path)
                except RootError as err:
                    return self._error(err.status, str(err))
                except Exception as err:  # noqa: BLE001 - a store failure is the viewer's 502, not a crash
                    return self._error(502, f"cannot read: {type(err).__name__}")
                status, start, end = 200, 0, size
                m = _RANGE.match((self.headers.get("Range") or "").strip())
                if m and (m.group(1) or m.group(2)):  # one range; anything else is answered whole
                    if m.group(1):
                        start = int(m.group(1))
                        end = min(size, int(m.group(2)) + 1) if m.group(2) else size
                    else:
                        start = max(0, size - int(m.group(2)))
                    if start >= size or end <= start:
                        return self._error(416, "range not satisfiable")
                    status = 206
                try:
                    body = b"" if self.command == "HEAD" else read(start, end)
                except Exception as err:  # noqa: BLE001 - see above
                    return self._error(502, f"cannot read: {type(err).__name__}")
                self.send_response(status)
                self._cors()
                path = _path_of(self.path)
                kind = "application/json" if path.endswith(_JSON_NAMES) else mimetypes.guess_type(path)[0]
                self.send_header("Content-Type", kind or "application/octet-stream")
                self.send_header("Content-Length", str(end - start))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server's names)
                self._answer()

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer()

            def do_OPTIONS(self) -> None:  # noqa: N802
                self.send_response(204 if self._host_ok() else 403)
                self._cors()
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _refuse(self) -> None:
                self.close_connection = True  # a request body is left unread
                self._error(405, "read-only")

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def served_url(base: str, root: str, relative: str = "") -> str:
    """The URL a file server at ``base`` serves ``relative`` under the root ``root`` at."""
    rel = "/".join(urllib.parse.quote(p) for p in relative.strip("/").split("/") if p)
    return f"{base}/{root}" + (f"/{rel}" if rel else "")


def _path_of(request_path: str) -> str:
    """The request target without query string or fragment, as sent (no host part read out of ``//``)."""
    return request_path.split("?", 1)[0].split("#", 1)[0]


def _parts(path: str) -> list[str]:
    """The decoded segments of a request path; :class:`RootError` 403 for any that could leave a
    root or mean something else to a store below (an escape decoded twice, a query)."""
    raw = _path_of(path)
    if not raw.startswith("/"):
        raise RootError(403, "refused path")
    if raw == "/":
        return []
    parts = [urllib.parse.unquote(p) for p in raw[1:].split("/")]
    for p in parts:
        if p in ("", ".", "..") or any(c in p for c in "%?#\\\x00"):
            raise RootError(403, "refused path")
    return parts


class _Root:
    """One served folder (local: symbolic links out of it refused) or object-storage prefix."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.local = st.is_local(url)
        if self.local:
            self.path = os.path.realpath(st.local_path(url))
        else:
            self.fs, self.path = st.filesystem(url)

    def locate(self, parts: list[str]) -> tuple[int, Callable[[int, int], bytes]]:
        if self.local:
            target = os.path.realpath(os.path.join(self.path, *parts))
            if os.path.commonpath([target, self.path]) != self.path:
                raise RootError(403, "refused path")
            if not os.path.isfile(target):
                raise RootError(404, "not found")

            def read_local(start: int, end: int) -> bytes:
                with open(target, "rb") as fh:
                    return os.pread(fh.fileno(), end - start, start)

            return os.path.getsize(target), read_local
        key = f"{self.path.rstrip('/')}/{'/'.join(parts)}"
        try:
            info = self.fs.info(key)
        except (FileNotFoundError, IsADirectoryError):
            raise RootError(404, "not found") from None
        if info.get("type") != "file":
            raise RootError(404, "not found")
        return int(info["size"]), lambda start, end: self.fs.cat_file(key, start=start, end=end)
