"""Stores at any fsspec URL: local paths, ``s3://``, ``gs://``, read-only ``http(s)://``.

Credentials and endpoints never come from a job spec. They come from where the storage libraries
already look: the ``AWS_*`` variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...) and
profiles for S3, ``GOOGLE_APPLICATION_CREDENTIALS`` for GCS, and fsspec's own configuration
(``FSSPEC_S3_*`` variables or the JSON files under ``FSSPEC_CONFIG_DIR``). alseg adds only
connection time-outs, so an unreachable endpoint fails in seconds instead of minutes; the user's
configuration overrides them. :func:`redact` is applied to every URL that is logged or raised.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from alseg.errors import StoreError

READ_ONLY_PROTOCOLS = frozenset({"http", "https"})
# Fail fast on endpoints that do not answer; fsspec's own configuration for the protocol wins.
_TIMEOUT_DEFAULTS: dict[str, dict[str, Any]] = {
    "s3": {"config_kwargs": {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3}}},
}


def protocol_of(url: str | os.PathLike[str]) -> str:
    """``"file"`` for local paths (plain or ``file://``), else the URL scheme (``s3``, ``gs``, ...)."""
    text = os.fspath(url)
    scheme = urlsplit(text).scheme
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        return "file"
    return scheme


def is_local(url: str | os.PathLike[str]) -> bool:
    return protocol_of(url) == "file"


def local_path(url: str | os.PathLike[str]) -> Path:
    text = os.fspath(url)
    if text.startswith("file://"):
        text = text[len("file://") :]
    return Path(text).expanduser()


def redact(url: str | os.PathLike[str]) -> str:
    """The URL without user info, query string or fragment (which may carry tokens)."""
    text = os.fspath(url)
    parts = urlsplit(text)
    if not parts.scheme or is_local(text):
        return text
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def storage_options(url: str | os.PathLike[str]) -> dict[str, Any]:
    """Keyword arguments for the URL's filesystem: alseg's time-outs under fsspec's configuration."""
    protocol = protocol_of(url)
    import fsspec.config

    base = copy.deepcopy(_TIMEOUT_DEFAULTS.get(protocol, {}))
    user = fsspec.config.conf.get(protocol, {})
    return _merge(base, user)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def filesystem(url: str | os.PathLike[str]):
    """``(fsspec filesystem, path inside it)`` for ``url``."""
    import fsspec

    text = os.fspath(url)
    if is_local(text):
        return fsspec.filesystem("file"), str(local_path(text).absolute())
    try:
        return fsspec.core.url_to_fs(text, **storage_options(text))
    except (ImportError, ValueError) as err:
        raise StoreError(f"cannot open {redact(text)}: {err}") from err


def zarr_store(url: str | os.PathLike[str], *, read_only: bool):
    """A zarr v3 store for ``url`` (a ``LocalStore`` for local paths, an ``FsspecStore`` otherwise)."""
    from zarr.storage import FsspecStore, LocalStore

    text = os.fspath(url)
    if is_local(text):
        return LocalStore(local_path(text), read_only=read_only)
    if protocol_of(text) in READ_ONLY_PROTOCOLS and not read_only:
        raise StoreError(f"{redact(text)}: http(s) stores are read-only; write to a local path or object storage")
    try:
        return FsspecStore.from_url(text, storage_options=storage_options(text), read_only=read_only)
    except (ImportError, ValueError, TypeError) as err:
        raise StoreError(f"cannot open {redact(text)} as a zarr store: {err}") from err


def exists(url: str | os.PathLike[str]) -> bool:
    """Whether anything is stored at ``url`` (a file, or a folder/prefix with content)."""
    fs, path = filesystem(url)
    try:
        return bool(fs.exists(path))
    except (OSError, ValueError) as err:  # botocore's connection errors derive from these
        raise StoreError(f"cannot reach {redact(url)}: {_short(err)}") from err
    except Exception as err:  # noqa: BLE001 - object-storage clients raise their own hierarchies
        raise StoreError(f"cannot reach {redact(url)}: {_short(err)}") from err


def has_content(url: str | os.PathLike[str]) -> bool:
    """Whether ``url`` holds data: a non-empty folder/prefix, or a file."""
    fs, path = filesystem(url)
    try:
        if not fs.exists(path):
            return False
        if fs.isfile(path):
            return True
        return len(fs.ls(path, detail=False)) > 0
    except Exception as err:  # noqa: BLE001 - see exists()
        raise StoreError(f"cannot reach {redact(url)}: {_short(err)}") from err


def sha256(url: str | os.PathLike[str]) -> str:
    """sha256 of the bytes stored at ``url`` (a local file or an object), read in 1 MiB pieces."""
    import hashlib

    fs, path = filesystem(url)
    h = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def remove(url: str | os.PathLike[str]) -> None:
    """Delete everything at ``url`` (used only behind an explicit overwrite flag)."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def join(url: str | os.PathLike[str], *parts: str) -> str:
    """Join path components onto a local path or a URL."""
    text = os.fspath(url)
    if is_local(text):
        return str(local_path(text).joinpath(*parts))
    return "/".join([text.rstrip("/"), *(p.strip("/") for p in parts)])


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) < 300 else text[:297] + "..."
