"""alseg: active-learning segmentation of very large 3D electron-microscopy volumes.

The public front is small; heavy libraries (torch, nnU-Net, Ray) are imported lazily by the
modules that need them, so ``import alseg`` is cheap and has no side effects.
"""

from importlib.metadata import PackageNotFoundError, version

from alseg.errors import (
    AlsegError,
    DataError,
    DependencyError,
    NotOmeZarrError,
    OutputExistsError,
    SpecError,
    StoreError,
    WorkFailedError,
)
from alseg.geometry import Block, BlockGrid, Box, Patch, PatchGrid
from alseg.spec import JobSpec, load_spec, parse_spec

try:
    __version__ = version("alseg")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "AlsegError",
    "Block",
    "BlockGrid",
    "Box",
    "DataError",
    "DependencyError",
    "JobSpec",
    "NotOmeZarrError",
    "OutputExistsError",
    "Patch",
    "PatchGrid",
    "SpecError",
    "StoreError",
    "WorkFailedError",
    "__version__",
    "load_spec",
    "parse_spec",
]
