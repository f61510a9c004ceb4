"""Credentials in URLs and in text: find them, refuse them, and keep them out of every message.

alseg never takes storage credentials from a spec or a command line: they come from the
environment or fsspec's configuration. A URL that carries them anyway (``s3://KEY:SECRET@b/x``,
``s3://KEY@b/x``, a secret with ``/`` in it, ``https://h/x?X-Amz-Signature=...``) is refused by
:func:`find_credentials`'s callers with a message that never repeats it. :func:`redact` strips
user info, query and fragment from one URL; :func:`scrub` does it to every URL inside a free
text (an exception message from any library) and replaces known secret values, so that one
path cleans every message, log line and report that leaves alseg.

The parsing is deliberately permissive: the standard library's ``urlsplit`` cannot see user info
when a secret holds a ``/`` (the authority then ends inside the secret), so the user-info test
here is "text between ``scheme://`` and the first ``@`` whose user part holds no ``/``, ``?`` or
``#``", which also catches a key without a secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_SECRET_PARAM = re.compile(r"(?i)(sig|token|secret|passw|credential|auth|key|session)")
_STRIP = ".,;:)]}"
# name=value pairs whose name says secret, anywhere in a text (a truncated URL's query, a log line)
_SECRET_PAIR = re.compile(r"(?i)\b([\w.-]*(?:sig|token|secret|passw|credential|session|access_?key)[\w.-]*)=([^&\s'\"<>,;]+)")
MASK = "***"


def _scheme_and_rest(text: str) -> tuple[str, str] | None:
    m = _SCHEME.match(text)
    if not m or len(m.group(1)) == 1:  # "C://..." is a Windows drive, not a scheme
        return None
    return m.group(0), text[m.end():]


def _userinfo_end(rest: str) -> int:
    """Index of the ``@`` that ends user info in ``rest`` (the URL after ``scheme://``), or -1."""
    at = rest.find("@")
    if at < 0:
        return -1
    user = rest[:at].split(":", 1)[0]
    if any(c in user for c in "/?#"):
        return -1  # an "@" inside the path or query
    return at


def find_credentials(url: str) -> str | None:
    """What in ``url`` looks like a credential (a description, never the value), or None."""
    parts = _scheme_and_rest(url.strip())
    if parts is None:
        return None
    rest = parts[1]
    if _userinfo_end(rest) >= 0:
        return "a user name, key or password before '@'"
    if "?" in rest:
        query = rest.split("?", 1)[1].split("#", 1)[0]
        names = [k for k, _ in parse_qsl(query, keep_blank_values=True) if _SECRET_PARAM.search(k)]
        if names:
            return f"query parameter(s) that carry credentials ({', '.join(sorted(set(names)))})"
    return None


def redact(url: str | os.PathLike[str]) -> str:
    """``url`` without user info, query string or fragment (which may carry tokens); local paths as they are."""
    text = os.fspath(url)
    parts = _scheme_and_rest(text)
    if parts is None or parts[0].lower() == "file://":
        return text
    scheme, rest = parts
    at = _userinfo_end(rest)
    if at >= 0:
        rest = rest[at + 1:]
    return scheme + re.split(r"[?#]", rest, maxsplit=1)[0]


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URL in it redacted, the values of ``name=value`` pairs whose name says
    secret masked, and every one of ``secrets`` (also URL-encoded) masked."""
    def one(m: re.Match[str]) -> str:
        token = m.group(0)
        tail = ""
        while token and token[-1] in _STRIP:
            token, tail = token[:-1], token[-1] + tail
        return redact(token) + tail

    out = _URL_IN_TEXT.sub(one, text)
    out = _SECRET_PAIR.sub(lambda m: f"{m.group(1)}={MASK}", out)
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            out = out.replace(form, MASK)
    return out


# Environment variables whose values are secrets wherever they appear (the storage libraries
# read them; alseg only keeps them out of its messages).
_SECRET_NAME = re.compile(r"(?i)(secret|token|passw|credential|access_key|_key$|^fsspec_.*_key)")


def secrets_from_environment(environ: dict[str, str]) -> list[str]:
    """Values of the variables in ``environ`` that hold secrets (AWS keys and tokens, fsspec keys, ...)."""
    return [v for k, v in environ.items() if _SECRET_NAME.search(k) and len(v) >= 8 and not os.path.isabs(v)]
