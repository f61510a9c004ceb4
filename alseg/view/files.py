"""A read-only file server on 127.0.0.1 that serves a run's volumes the way neuroglancer reads them.

Each *root* is a name (``run``, ``input``) for a folder or object-storage prefix; the server answers
``GET``/``HEAD`` for ``/<root>/<relative path>`` of files under it, and nothing else: no directory
listing, no path with ``..``, ``.``, an empty segment, a backslash or a NUL, no symbolic link that
leads out of a local root (403), no other method (405). Object storage is read with alseg's store
(fsspec) and the environment's credentials, so a private bucket is viewed without a credential in
any URL. Every answer carries the CORS header neuroglancer's client needs (it runs on another
port); single byte ranges are answered (206) for readers that ask for them. Small documents made
for the viewer (its state, segment properties) are served from memory under fixed paths.
"""

from __future__ import annotations

import http.server
import mimetypes
import os
import re
import threading
import urllib.parse

from alseg.io import store as st

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


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
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, root: str, relative: str = "") -> str:
        """The http URL of ``relative`` (``/``-separated) under the root ``root``."""
        return served_url(self.base, root, relative)

    def start(self) -> "FileServer":
        self._thread = threading.Thread(target=self._server.serve_forever, name="alseg-view-files", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def read(self, path: str) -> bytes:
        """The bytes the server answers for the request path ``path`` (:class:`RootError` for a refusal)."""
        parts = _parts(path)
        doc = self.documents.get("/" + "/".join(parts))
        if doc is not None:
            return doc
        if not parts or parts[0] not in self.roots or len(parts) < 2:
            raise RootError(404, "not found")
        return self.roots[parts[0]].read(parts[1:])

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _cors(self) -> None:
                self.send_header("Access-Control-Allow-Origin", "*")
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

            def _answer(self) -> None:
                try:
                    data = server.read(self.path)
                except RootError as err:
                    return self._error(err.status, str(err))
                except Exception as err:  # noqa: BLE001 - a store failure is the viewer's 502, not a crash
                    return self._error(502, f"cannot read: {type(err).__name__}")
                status, start, end = 200, 0, len(data)
                ranged = self.headers.get("Range")
                if ranged:
                    m = _RANGE.match(ranged.strip())
                    if not m or not (m.group(1) or m.group(2)):
                        return self._error(416, "only one byte range is served")
                    if m.group(1):
                        start = int(m.group(1))
                        end = min(len(data), int(m.group(2)) + 1) if m.group(2) else len(data)
                    else:
                        start = max(0, len(data) - int(m.group(2)))
                    if start >= len(data) or end <= start:
                        return self._error(416, "range not satisfiable")
                    status = 206
                body = data[start:end]
                self.send_response(status)
                self._cors()
                kind = mimetypes.guess_type(urllib.parse.urlsplit(self.path).path)[0]
                self.send_header("Content-Type", "application/json" if self.path.endswith(("zarr.json", ".zattrs", ".zarray", ".zgroup", "/info"))
                                 else kind or "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):  # noqa: N802 (http.server's names)
                self._answer()

            def do_HEAD(self):  # noqa: N802
                self._answer()

            def do_OPTIONS(self):  # noqa: N802
                self.send_response(204)
                self._cors()
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _refuse(self) -> None:
                self._error(405, "read-only")

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        return Handler


def served_url(base: str, root: str, relative: str = "") -> str:
    """The URL a file server at ``base`` serves ``relative`` under the root ``root`` at."""
    rel = "/".join(urllib.parse.quote(p) for p in relative.strip("/").split("/") if p)
    return f"{base}/{root}" + (f"/{rel}" if rel else "")


def _parts(path: str) -> list[str]:
    """The segments of a request path; :class:`RootError` 403 for any that could leave a root."""
    raw = urllib.parse.urlsplit(path).path
    text = urllib.parse.unquote(raw)
    if "\x00" in text or "\\" in text or not text.startswith("/"):
        raise RootError(403, "refused path")
    parts = text[1:].split("/")
    if any(p in ("", ".", "..") for p in parts):
        if parts == [""]:
            return []
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

    def read(self, parts: list[str]) -> bytes:
        if self.local:
            target = os.path.realpath(os.path.join(self.path, *parts))
            if os.path.commonpath([target, self.path]) != self.path:
                raise RootError(403, "refused path")
            if not os.path.isfile(target):
                raise RootError(404, "not found")
            with open(target, "rb") as fh:
                return fh.read()
        key = f"{self.path.rstrip('/')}/{'/'.join(parts)}"
        try:
            return self.fs.cat_file(key)
        except (FileNotFoundError, IsADirectoryError):
            raise RootError(404, "not found") from None
