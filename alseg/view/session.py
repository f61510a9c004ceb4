"""A viewing session: a run's contents, the file server for its volumes, and neuroglancer's viewer.

Each volume is referenced where neuroglancer can read it: straight from its own URL where that is
public (``https://``; ``s3://`` / ``gs://`` buckets that answer anonymously on their provider's
own endpoint), else through the session's :class:`~alseg.view.files.FileServer` on 127.0.0.1,
which reads it with alseg's store and the environment's credentials: no credential ever goes into
a URL or the state. The instances' measurements travel as segment properties (``props/info``).
"""

from __future__ import annotations

import functools
import json
import os
import urllib.parse
import urllib.request
from typing import Any

from alseg.io import store as st
from alseg.rundir import contains
from alseg.view.contents import RunContents
from alseg.view.files import FileServer, served_url
from alseg.view.state import segment_properties, viewer_state
from alseg.view.viewer import Viewer

PUBLIC_VIEWER = "https://neuroglancer-demo.appspot.com/"
PROPERTIES = "/props/info"
STATE_FOLDER = "view"


@functools.lru_cache(maxsize=64)
def public_location(url: str, probe: str = "zarr.json") -> str | None:
    """Where neuroglancer reads ``url`` itself, or None (the file server serves it): a URL that
    carries no credential, whose ``probe`` file (under it) answers an anonymous request from a
    browser page with CORS allowing it. ``s3://`` and ``gs://`` are asked at their providers' own
    endpoints (a bucket behind a custom endpoint is served locally)."""
    if st.redact(url) != url:
        return None
    protocol = st.protocol_of(url)
    rest = url.split("://", 1)[-1].rstrip("/")
    if protocol in ("http", "https"):
        https = url.rstrip("/")
    elif protocol == "s3" and not (os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
                                   or st.storage_options(url).get("client_kwargs", {}).get("endpoint_url")):
        bucket, _, key = rest.partition("/")
        https = f"https://{bucket}.s3.amazonaws.com/{key}".rstrip("/")
    elif protocol in ("gs", "gcs"):
        https = f"https://storage.googleapis.com/{rest}"
    else:
        return None
    if not _answers_a_browser(f"{https}/{probe}"):
        return None
    return url.rstrip("/") if protocol in ("http", "https", "s3") else f"gs://{rest}"


def _answers_a_browser(url: str) -> bool:
    """Whether an anonymous GET of ``url`` from a page's origin succeeds with CORS allowing it."""
    req = urllib.request.Request(url, headers={"Origin": "http://127.0.0.1:8090", "Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            allowed = res.headers.get("Access-Control-Allow-Origin")
            return res.status in (200, 206) and allowed == "*"  # any viewer's page, the public one's too
    except (OSError, ValueError):
        return False


def served_roots(contents: RunContents) -> dict[str, str]:
    """What the file server serves: the run directory, the input image, and a ground truth that
    lies in neither; not those neuroglancer reads itself (public)."""
    roots = {"run": contents.rundir, "input": contents.image.url}
    for layer in contents.segmentations:
        if not any(contains(r, layer.url) for r in roots.values()):
            roots["truth"] = layer.url
    return {k: v for k, v in roots.items() if k == "run" or public_location(v) is None}


def location_of(url: str, roots: dict[str, str], base: str, probe: str = "zarr.json") -> str:
    """Where neuroglancer reads ``url``: its own location where public, else the file server's at ``base``."""
    direct = public_location(url, probe)
    if direct is not None:
        return direct
    for name, root in roots.items():
        if contains(root, url):
            return served_url(base, name, _relative(root, url))
    raise ValueError(f"{st.redact(url)} is not under any served root")


def source_of(url: str, roots: dict[str, str], base: str) -> str:
    """The data-source URL of the OME-Zarr volume at ``url`` (zarr v3, or v2 for NGFF 0.4)."""
    scheme = "zarr3" if st.exists(st.join(url, "zarr.json")) else "zarr2"
    return f"{scheme}://{location_of(url, roots, base)}/"


def _relative(root: str, url: str) -> str:
    if st.is_local(root):
        rel = os.path.relpath(st.local_path(url), st.local_path(root)).replace(os.sep, "/")
        return "" if rel == "." else rel
    return url.rstrip("/")[len(root.rstrip("/")):].strip("/")


def session_state(contents: RunContents, base: str, properties: str | None) -> dict[str, Any]:
    roots = served_roots(contents)  # once: each source is looked up in it
    return viewer_state(contents, lambda url: source_of(url, roots, base), properties)


class ViewSession:
    """Serve ``contents``: :meth:`start` starts the file server (``files_port``) and the viewer
    (``port``); :attr:`url` is what to open; :meth:`close` stops both."""

    def __init__(self, contents: RunContents, *, port: int = 0, files_port: int = 0) -> None:
        self.contents = contents
        self.port = port
        props = json.dumps(segment_properties(contents.measurements)).encode() if contents.measurements else None
        self.files = FileServer(served_roots(contents), documents={PROPERTIES: props} if props else {}, port=files_port)
        self._props = props is not None
        self.viewer: Viewer | None = None

    def state(self) -> dict[str, Any]:
        props = f"precomputed://{self.files.base}{PROPERTIES.removesuffix('/info')}" if self._props else None
        return session_state(self.contents, self.files.base, props)

    def start(self) -> "ViewSession":
        self.files.start()
        try:
            self.viewer = Viewer(self.state(), self.port)
            self.files.allow_viewer(self.viewer.url)
        except BaseException:
            self.files.stop()
            raise
        return self

    @property
    def url(self) -> str:
        assert self.viewer is not None, "start() first"
        return self.viewer.url

    def close(self) -> None:
        if self.viewer is not None:
            self.viewer.close()
        self.files.stop()


def write_state(contents: RunContents, files_port: int) -> dict[str, str]:
    """``alseg view --state-only``: the state (sources not public are named as ``alseg view RUNDIR
    --files-port files_port`` serves them) and the segment properties, into ``<run dir>/view``; a
    link to the public neuroglancer deployment when every source is public. Returns what it wrote."""
    folder = st.join(contents.rundir, STATE_FOLDER)
    base = f"http://127.0.0.1:{files_port}"
    props = None
    if contents.measurements:
        st.write_json(st.join(folder, "props", "info"), segment_properties(contents.measurements))
        props = f"precomputed://{location_of(st.join(folder, 'props'), served_roots(contents), base, probe='info')}"
    state = session_state(contents, base, props)
    out = {"state": st.join(folder, "state.json")}
    st.write_json(out["state"], state)
    if base not in json.dumps(state):  # every source public: the public deployment can show it
        out["link"] = public_link(state)
    return out


def public_link(state: dict[str, Any]) -> str:
    """The public neuroglancer deployment's URL that opens ``state`` (its JSON in the fragment)."""
    return PUBLIC_VIEWER + "#!" + urllib.parse.quote(json.dumps(state, separators=(",", ":")), safe="")
