"""Spec overrides for tests: set fields of a spec's mapping by dotted path."""

from __future__ import annotations

from typing import Any


def set_fields(data: dict, changes: dict[str, Any]) -> dict:
    """``data`` with each ``"section.field": value`` of ``changes`` set (missing sections made); returns ``data``."""
    for dotted, value in changes.items():
        *head, last = dotted.split(".")
        node = data
        for key in head:
            node = node.setdefault(key, {})
        node[last] = value
    return data
