"""Tests that need a system tool (Chromium, Qt's offscreen platform): skip with the reason on a
developer's machine that lacks it, fail in CI (``ALSEG_CI=1``, which `.ci/run` sets), where `.ci/run` installs it."""

from __future__ import annotations

import os

import pytest


def require(ok: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) when ``ok`` is false, saying why."""
    if ok:
        return
    if os.environ.get("ALSEG_CI") == "1":
        pytest.fail(f"CI must run this test, but: {reason} (.ci/run installs it)")
    pytest.skip(reason)
