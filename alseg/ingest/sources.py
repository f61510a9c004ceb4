"""Image stacks readable slab by slab: multi-page TIFF, folders of TIFF/PNG/JPEG slices, HDF5, ``.npy``.

Each source knows its shape and dtype from metadata alone, reads any slab of slices, and checks
every slab it hands out (:meth:`SliceSource.slab`): each page or slice decodes and has the
stack's shape and dtype, or one :class:`~alseg.errors.DataError` names the file and the page or
slices, never a library's own exception. Opening a TIFF checks its page table against the
stack's shape, so a file cut short is refused before anything is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from alseg.errors import AlsegError, DataError

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _check_dtype(dtype: np.dtype, what: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if dtype.kind not in "uif":
        raise DataError(f"{what}: expected integer or float voxels, got dtype {dtype}")
    return dtype


def why(err: BaseException) -> str:
    """One line about a library's exception."""
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text if len(text) < 300 else text[:297] + "..."


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence a library's warnings while it parses a damaged file: the DataError says it all."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


class SliceSource(ABC):
    """A 3D stack readable slab by slab along z."""

    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype

    @abstractmethod
    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices ``z0..z1`` as a ``(z1 - z0, Y, X)`` array."""

    def slab(self, z0: int, z1: int) -> np.ndarray:
        """Slices ``z0..z1``, checked: the stack's shape and dtype, or a :class:`DataError` naming the
        file and the slices (whatever the reading library raised)."""
        try:
            data = np.asarray(self.read(z0, z1))
        except AlsegError:
            raise
        except Exception as err:  # noqa: BLE001 - h5py, numpy and image codecs raise many types
            raise DataError(f"{self.path}: cannot read slices {z0}..{z1 - 1}: {why(err)}") from err
        if data.dtype == np.bool_ and self.dtype == np.uint8:
            data = data.view(np.uint8)
        expected = (z1 - z0, *self.shape[1:])
        if data.shape != expected:
            raise DataError(f"{self.path}: slices {z0}..{z1 - 1} read as shape {data.shape}, expected {expected}")
        if data.dtype != self.dtype:
            raise DataError(f"{self.path}: slices {z0}..{z1 - 1} read as dtype {data.dtype}, the stack is {self.dtype}")
        return data

    def _validate(self) -> None:
        if len(self.shape) != 3:
            raise DataError(f"{self.path}: expected 3 axes zyx, got shape {self.shape}")
        if any(s == 0 for s in self.shape):
            raise DataError(f"{self.path}: the stack is empty (shape {self.shape})")
        self.dtype = _check_dtype(self.dtype, str(self.path))

    def close(self) -> None:
        """Release open files."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path}, shape={self.shape}, dtype={self.dtype})"


class TiffStack(SliceSource):
    """One multi-page (or one 3D) TIFF file.

    Opening it checks the page table against the stack's shape, so a file cut short is refused
    before anything is written: every page must be there (one page per slice), or, for
    ImageJ-style contiguous data behind a single page table entry, the file must be long enough
    to hold every slice. Pages are then decoded one by one, each checked for shape and dtype.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import tifffile

        self.path = Path(path)
        try:
            with _quiet("tifffile"):
                self._tif = tifffile.TiffFile(self.path)
                series = list(self._tif.series)
        except Exception as err:  # noqa: BLE001 - tifffile raises many types on damaged files
            raise DataError(f"{self.path}: not a readable TIFF file: {why(err)}") from err
        try:
            self._open(series)
        except BaseException:
            self._tif.close()
            raise

    def _open(self, series: list) -> None:
        if not series:
            raise DataError(f"{self.path}: not a readable TIFF file: no image found in it (damaged, or not a TIFF)")
        if len(series) > 1:
            shapes = ", ".join(f"{tuple(s.shape)} {s.dtype}" for s in series[:4])
            raise DataError(f"{self.path}: expected one stack of equal pages, found {len(series)} series of different "
                            f"shapes or dtypes ({shapes}{', ...' if len(series) > 4 else ''})")
        s = series[0]
        shape = tuple(int(n) for n in s.shape)
        if len(shape) == 2:
            raise DataError(f"{self.path}: expected 3 axes zyx (a multi-page stack), got one 2D image {shape}")
        if len(shape) == 4 and shape[-1] in (3, 4):
            raise DataError(f"{self.path}: expected grey-scale slices, got colour samples (shape {shape})")
        self.shape = shape  # type: ignore[assignment]
        self.dtype = np.dtype(s.dtype)
        self._validate()
        self._pages: list | None = None
        self._mm: np.ndarray | None = None
        self._whole: np.ndarray | None = None
        try:
            with _quiet("tifffile"):
                pages = list(s.pages)
                page_ndim = len(s.keyframe.shape)
        except Exception as err:  # noqa: BLE001 - a damaged page table
            raise DataError(f"{self.path}: cannot read the page table (damaged or truncated file): {why(err)}") from err
        if page_ndim != 2:
            return  # one 3D page holding the whole stack: decoded once, on the first read
        if len(pages) == shape[0] and all(p is not None for p in pages):
            self._pages = pages
            return
        if s.dataoffset is None:
            raise DataError(f"{self.path}: the stack has {shape[0]} slices but only {len(pages)} page(s) could be read: "
                            "the file is truncated or damaged")
        # contiguous data behind one page table entry (ImageJ writes large stacks so): memory-mapped
        needed = int(s.dataoffset) + int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
        size = self.path.stat().st_size
        if size < needed:
            whole = max(0, (size - int(s.dataoffset)) // (self.dtype.itemsize * shape[1] * shape[2]))
            raise DataError(f"{self.path}: truncated: its {shape[0]} slices need {needed} bytes, the file has {size} "
                            f"(slices {whole}..{shape[0] - 1} are missing)")
        self._mm = np.memmap(self.path, dtype=self.dtype.newbyteorder(self._tif.byteorder), mode="r",
                             offset=int(s.dataoffset), shape=shape)

    def read(self, z0: int, z1: int) -> np.ndarray:
        if self._mm is not None:
            return np.asarray(self._mm[z0:z1], dtype=self.dtype)
        if self._pages is None:  # one 3D page: no partial reads
            if self._whole is None:
                self._whole = self._decode(lambda: self._tif.series[0].asarray(), "the 3D page")
            return self._whole[z0:z1]
        out = np.empty((z1 - z0, *self.shape[1:]), self.dtype)
        for z in range(z0, z1):
            page = self._decode(self._pages[z].asarray, f"page {z}")
            if page.dtype == np.bool_ and self.dtype == np.uint8:
                page = page.view(np.uint8)
            if page.shape != self.shape[1:] or page.dtype != self.dtype:
                raise DataError(f"{self.path}: page {z} is {page.shape} {page.dtype}, the stack's pages are "
                                f"{self.shape[1:]} {self.dtype}")
            out[z - z0] = page
        return out

    def _decode(self, fn: Callable[[], np.ndarray], what: str) -> np.ndarray:
        try:
            with _quiet("tifffile"):
                return np.asarray(fn())
        except Exception as err:  # noqa: BLE001 - tifffile and its codecs raise many types
            raise DataError(f"{self.path}: cannot decode {what}: {why(err)}") from err

    def close(self) -> None:
        self._mm = None
        self._tif.close()


class SliceFolder(SliceSource):
    """A folder of 2D slices (TIFF, PNG, JPEG), in natural order of their names."""

    def __init__(self, path: str | os.PathLike[str], suffixes: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        files = [f for f in self.path.iterdir() if f.is_file() and not f.name.startswith(".")]
        if suffixes is None:
            kinds = {f.suffix.lower() for f in files} & set(TIFF_SUFFIXES + IMAGE_SUFFIXES)
            if not kinds:
                raise DataError(f"{self.path}: expected a folder of image slices (.tif, .png, ...), found none")
            suffixes = TIFF_SUFFIXES if kinds & set(TIFF_SUFFIXES) else IMAGE_SUFFIXES
        self.files = sorted((f for f in files if f.suffix.lower() in suffixes), key=_natural_key)
        if not self.files:
            raise DataError(f"{self.path}: no slices with suffix {tuple(suffixes)}")
        first = self._load(self.files[0])
        self.shape = (len(self.files), *first.shape)  # type: ignore[assignment]
        self.dtype = first.dtype
        self._validate()

    def _load(self, f: Path) -> np.ndarray:
        try:
            if f.suffix.lower() in TIFF_SUFFIXES:
                import tifffile

                with _quiet("tifffile"):
                    arr = tifffile.imread(f)
            else:
                import imageio.v3 as iio

                arr = iio.imread(f)
        except Exception as err:  # noqa: BLE001 - image libraries raise many types
            raise DataError(f"{f}: cannot read image: {why(err)}") from err
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            raise DataError(f"{f}: expected a grey-scale slice, got colour samples (shape {arr.shape})")
        if arr.ndim != 2:
            raise DataError(f"{f}: expected a 2D slice, got shape {arr.shape}")
        return arr

    def read(self, z0: int, z1: int) -> np.ndarray:
        out = np.empty((z1 - z0, *self.shape[1:]), self.dtype)
        for i, f in enumerate(self.files[z0:z1]):
            arr = self._load(f)
            if arr.dtype == np.bool_ and self.dtype == np.uint8:
                arr = arr.view(np.uint8)
            if arr.shape != self.shape[1:]:
                raise DataError(f"{f}: slice of shape {arr.shape} differs from the first slice {self.shape[1:]}")
            if arr.dtype != self.dtype:  # never cast silently: 16-bit values would wrap in an 8-bit stack
                raise DataError(f"{f}: slice of dtype {arr.dtype} differs from the first slice's {self.dtype}")
            out[i] = arr
        return out


class HDF5Source(SliceSource):
    def __init__(self, path: str | os.PathLike[str], dataset: str | None) -> None:
        import h5py

        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise DataError(f"{self.path}: not a readable HDF5 file: {err}") from err
        if dataset is None:
            names: list[str] = []
            self._file.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            if len(names) != 1:
                self._file.close()
                raise DataError(f"{self.path}: name the dataset to ingest (it holds {names or 'no datasets'})")
            dataset = names[0]
        if dataset not in self._file or not isinstance(self._file[dataset], h5py.Dataset):
            self._file.close()
            raise DataError(f"{self.path}: no dataset {dataset!r}")
        self._ds = self._file[dataset]
        self.shape = tuple(int(s) for s in self._ds.shape)  # type: ignore[assignment]
        self.dtype = np.dtype(self._ds.dtype)
        self._validate()

    def read(self, z0: int, z1: int) -> np.ndarray:
        return np.asarray(self._ds[z0:z1])

    def close(self) -> None:
        self._file.close()


class NpySource(SliceSource):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as err:
            raise DataError(f"{self.path}: not a readable .npy array: {err}") from err
        self.shape = tuple(int(s) for s in self._arr.shape)  # type: ignore[assignment]
        self.dtype = np.dtype(self._arr.dtype)
        self._validate()

    def read(self, z0: int, z1: int) -> np.ndarray:
        return np.asarray(self._arr[z0:z1])


class ArraySource(SliceSource):
    """A stack already in memory (labels computed from another source); ``path`` names it in messages."""

    def __init__(self, data: np.ndarray, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._data = data
        self.shape = tuple(int(s) for s in data.shape)  # type: ignore[assignment]
        self.dtype = np.dtype(data.dtype)
        self._validate()

    def read(self, z0: int, z1: int) -> np.ndarray:
        return self._data[z0:z1]


def open_source(path: str | os.PathLike[str], *, dataset: str | None = None) -> SliceSource:
    """The right :class:`SliceSource` for ``path`` (a file by its suffix, or a folder of slices).

    HDF5 paths may name their dataset after a colon: ``volume.h5:/raw``.
    """
    text = os.fspath(path)
    if dataset is None and re.search(r"\.(h5|hdf5|hdf):", text):
        text, dataset = text.rsplit(":", 1)
    p = Path(text)
    if not p.exists():
        raise DataError(f"{p} does not exist")
    if p.is_dir():
        return SliceFolder(p)
    suffix = p.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return TiffStack(p)
    if suffix in (".h5", ".hdf5", ".hdf"):
        return HDF5Source(p, dataset)
    if suffix == ".npy":
        return NpySource(p)
    raise DataError(f"{p}: unsupported input (expected .tif/.tiff, .h5/.hdf5, .npy, or a folder of slices)")


