"""Stores at any fsspec URL: local paths, ``s3://``, ``gs://``, read-only ``http(s)://``.

Credentials and endpoints never come from a job spec or a URL. They come from where the storage
libraries already look: the ``AWS_*`` variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...)
and profiles for S3, ``GOOGLE_APPLICATION_CREDENTIALS`` for GCS, and fsspec's own configuration
(``FSSPEC_S3_*`` variables or the JSON files under ``FSSPEC_CONFIG_DIR``). A URL that carries
credentials is refused here, for every store alseg opens. :func:`redact` (from
:mod:`alseg.io.urls`) is applied to every URL that is logged or raised.

**Time-outs.** Object-storage clients stack their own retries (botocore's attempts inside s3fs's
retries inside each zarr request), which left a silent endpoint hanging for many minutes. alseg
sets a bound that adds up: for S3, 5 s to connect and 5 s without a byte on a read, 2 attempts in
botocore's ``standard`` retry mode and 2 passes of s3fs's own retry loop, so an endpoint that
accepts connections and never answers fails in about 20 s; for HTTP(S), aiohttp's socket
connect and read time-outs of 5 s each (its default overall limit is 5 minutes). fsspec's
configuration for the protocol wins over every one of these (``config_kwargs`` for botocore,
``retries`` for s3fs's loop, ``client_kwargs`` for aiohttp).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from urllib.parse import urlsplit

from alseg.errors import DataError, StoreError
from alseg.io.urls import find_credentials, redact, scrub

__all__ = ["READ_ONLY_PROTOCOLS", "check_no_credentials", "exists", "filesystem", "has_content", "is_local", "join",
           "local_path", "protocol_of", "redact", "remove", "scrub", "sha256", "storage_options", "zarr_store"]

READ_ONLY_PROTOCOLS = frozenset({"http", "https"})
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 5
# botocore's attempts per request, and the passes of s3fs's own retry loop around them
_S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {"connect_timeout": CONNECT_TIMEOUT_S, "read_timeout": READ_TIMEOUT_S,
                      "retries": {"mode": "standard", "total_max_attempts": 2}},
    "retries": 2,
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


def check_no_credentials(url: str | os.PathLike[str], what: str = "URL") -> None:
    """Refuse a URL that carries credentials, without repeating them."""
    found = find_credentials(os.fspath(url))
    if found:
        raise StoreError(
            f"{what} {redact(url)} carries {found}: credentials are never taken from URLs; remove them and "
            "provide them through the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...) or fsspec's configuration"
        )


def storage_options(url: str | os.PathLike[str]) -> dict[str, Any]:
    """Keyword arguments for the URL's filesystem: alseg's time-outs under fsspec's configuration."""
    protocol = protocol_of(url)
    import fsspec.config

    if protocol == "s3":
        base = copy.deepcopy(_S3_DEFAULTS)
    elif protocol in READ_ONLY_PROTOCOLS:
        import aiohttp

        base = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S,
                                                                     sock_read=READ_TIMEOUT_S)}}
    else:
        base = {}
    user = fsspec.config.conf.get(protocol, {})
    return _merge(base, user)


def _with_retries(opts: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """s3fs takes its retry count as an attribute, not a constructor argument: split it off."""
    opts = dict(opts)
    return opts, opts.pop("retries", None)


def _open_fs(text: str, **extra: Any):
    import fsspec

    opts, retries = _with_retries(storage_options(text))
    fs, path = fsspec.core.url_to_fs(text, **opts, **extra)
    if retries is not None and hasattr(type(fs), "retries"):
        fs.retries = int(retries)
    return fs, path


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
    check_no_credentials(text)
    try:
        return _open_fs(text)
    except (ImportError, ValueError) as err:
        raise StoreError(f"cannot open {redact(text)}: {_short(err)}") from err


def zarr_store(url: str | os.PathLike[str], *, read_only: bool):
    """A zarr v3 store for ``url`` (a ``LocalStore`` for local paths, an ``FsspecStore`` otherwise)."""
    from zarr.storage import FsspecStore, LocalStore

    text = os.fspath(url)
    if is_local(text):
        return LocalStore(local_path(text), read_only=read_only)
    check_no_credentials(text)
    if protocol_of(text) in READ_ONLY_PROTOCOLS and not read_only:
        raise StoreError(f"{redact(text)}: http(s) stores are read-only; write to a local path or object storage")
    try:
        fs, path = _open_fs(text, asynchronous=True)
        if not fs.async_impl:
            from zarr.storage._fsspec import _make_async

            fs = _make_async(fs)
        return FsspecStore(fs=fs, path=path, read_only=read_only)
    except (ImportError, ValueError, TypeError) as err:
        raise StoreError(f"cannot open {redact(text)} as a zarr store: {_short(err)}") from err


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
    """One line about a third-party error, with every URL in it redacted."""
    text = scrub(f"{type(err).__name__}: {err}").replace("\n", " ")
    return text if len(text) < 300 else text[:297] + "..."


def write_bytes(url: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``url`` (a temporary name, then moved), making parent folders."""
    fs, path = filesystem(url)
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp"
    with fs.open(tmp, "wb") as fh:
        fh.write(data)
    fs.mv(tmp, path)


def read_bytes(url: str | os.PathLike[str]) -> bytes:
    """The bytes stored at ``url``; :class:`DataError` naming it when nothing is there."""
    fs, path = filesystem(url)
    try:
        with fs.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError as err:
        raise DataError(f"{redact(str(url))}: does not exist") from err


def put_file(local: str | os.PathLike[str], url: str | os.PathLike[str]) -> None:
    """Copy a local file to ``url`` in pieces (a temporary name, then moved), making parent folders."""
    fs, path = filesystem(url)
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        fs.makedirs(parent, exist_ok=True)
    try:
        fs.put_file(os.fspath(local), f"{path}.tmp")
        fs.mv(f"{path}.tmp", path)
    except Exception as err:  # noqa: BLE001 - object-storage clients raise their own hierarchies
        raise StoreError(f"cannot write {redact(str(url))}: {_short(err)}") from err


def get_file(url: str | os.PathLike[str], local: str | os.PathLike[str]) -> None:
    """Copy the file at ``url`` to a local path in pieces; :class:`DataError` naming it when nothing is there."""
    fs, path = filesystem(url)
    try:
        fs.get_file(path, os.fspath(local))
    except FileNotFoundError as err:
        raise DataError(f"{redact(str(url))}: does not exist") from err
    except Exception as err:  # noqa: BLE001 - see put_file()
        raise StoreError(f"cannot read {redact(str(url))}: {_short(err)}") from err


def read_json(url: str | os.PathLike[str]) -> Any:
    """A JSON file at a path or URL; :class:`DataError` naming it when it is missing or not JSON."""
    import json

    fs, path = filesystem(url)
    try:
        with fs.open(path, "r") as fh:
            return json.load(fh)
    except FileNotFoundError as err:
        raise DataError(f"{redact(str(url))}: does not exist") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{redact(str(url))}: not valid JSON ({err})") from err


def write_json(url: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically (a temporary file beside it, then a move)."""
    import json

    fs, path = filesystem(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(f"{path}.tmp", "w") as fh:
        json.dump(obj, fh, indent=1)
    fs.mv(f"{path}.tmp", path)
