"""The errors alseg raises for anything a user can get wrong.

One small hierarchy, as zarr does: every user-facing failure is an :class:`AlsegError`, and each
kind also derives from the matching built-in so callers may catch either (``except ValueError``
still works for a bad spec). Messages say what was expected and what came.
"""

from __future__ import annotations


class AlsegError(Exception):
    """Base class of every error alseg raises on purpose."""


class SpecError(AlsegError, ValueError):
    """A job spec (or a parameter given on the command line) is invalid.

    ``problems`` holds one ``(field_path, message)`` pair per problem, so a CLI can print them all.
    """

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems: list[tuple[str, str]] = list(problems or [])


class DataError(AlsegError, OSError):
    """Input data is missing, unreadable, of the wrong shape, dtype or format."""


class StoreError(DataError):
    """A store (local folder or object-storage URL) cannot be reached, or is not what was expected."""


class NotOmeZarrError(StoreError):
    """A store exists but holds no OME-Zarr (NGFF) multiscale image."""


class OutputExistsError(AlsegError, FileExistsError):
    """An output location already holds data and overwriting was not asked for."""


class WorkFailedError(AlsegError, RuntimeError):
    """A work item (block, patch, slice) kept failing after its retries.

    ``key`` names the item so the job's failure points at the data that caused it.
    """

    def __init__(self, key: str, attempts: int, cause: BaseException | str) -> None:
        super().__init__(f"work item {key!r} failed after {attempts} attempt(s): {cause}")
        self.key = key
        self.attempts = attempts
        self.cause = cause


class DependencyError(AlsegError, ImportError):
    """An optional dependency (CellSAM, segment-anything, a GPU build) is missing."""
