"""Ingest image stacks into OME-Zarr, slab by slab with bounded memory.

Sources: a multi-page TIFF, a folder of TIFF slices, a folder of PNG (or JPEG) slices, an HDF5
dataset and a ``.npy`` file (memory-mapped). Each is read one slab of slices at a time (the
output chunk's depth, so writes are chunk-aligned) and written into a new OME-Zarr image with
the requested chunks and voxel size, then the pyramid is built block by block.

:func:`ingest_vnc` turns the Drosophila VNC ssTEM stack (``../shared/data/vnc``) into an OME-Zarr
image with ground-truth mitochondria instances (3D connected components of ``labels == 191``).
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alseg.errors import DataError

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


class SliceSource(ABC):
    """A 3D stack readable slab by slab along z."""

    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype

    @abstractmethod
    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices ``z0..z1`` as a ``(z1 - z0, Y, X)`` array."""

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
    """One multi-page (or one 3D) TIFF file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import tifffile

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
        except (tifffile.TiffFileError, OSError) as err:
            raise DataError(f"{self.path}: not a readable TIFF file: {err}") from err
        series = self._tif.series[0]
        shape = tuple(int(s) for s in series.shape)
        if len(shape) == 2:
            raise DataError(f"{self.path}: expected 3 axes zyx (a multi-page stack), got one 2D image {shape}")
        if len(shape) == 4 and shape[-1] in (3, 4):
            raise DataError(f"{self.path}: expected grey-scale slices, got colour samples (shape {shape})")
        self.shape = shape  # type: ignore[assignment]
        self.dtype = np.dtype(series.dtype)
        self._paged = len(self._tif.pages) == shape[0] if len(shape) == 3 else False
        self._validate()

    def read(self, z0: int, z1: int) -> np.ndarray:
        if self._paged:
            data = self._tif.asarray(key=range(z0, z1))
            return data.reshape((z1 - z0, *self.shape[1:]))
        return np.asarray(self._tif.series[0].asarray())[z0:z1]  # one 3D page: no partial reads

    def close(self) -> None:
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

                arr = tifffile.imread(f)
            else:
                import imageio.v3 as iio

                arr = iio.imread(f)
        except Exception as err:  # noqa: BLE001 - image libraries raise many types
            raise DataError(f"{f}: cannot read image: {err}") from err
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            raise DataError(f"{f}: expected a grey-scale slice, got colour samples (shape {arr.shape})")
        if arr.ndim != 2:
            raise DataError(f"{f}: expected a 2D slice, got shape {arr.shape}")
        return arr

    def read(self, z0: int, z1: int) -> np.ndarray:
        out = np.empty((z1 - z0, *self.shape[1:]), self.dtype)
        for i, f in enumerate(self.files[z0:z1]):
            arr = self._load(f)
            if arr.shape != self.shape[1:]:
                raise DataError(f"{f}: slice of shape {arr.shape} differs from the first slice {self.shape[1:]}")
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


def ingest(
    source: SliceSource,
    url: str | os.PathLike[str],
    *,
    voxel_size_nm: Sequence[float],
    chunks: Sequence[int] = (32, 256, 256),
    overwrite: bool = False,
    progress: bool = False,
    name: str = "image",
):
    """Write ``source`` as a new OME-Zarr image at ``url``; returns the opened :class:`Volume`."""
    from alseg.io.omezarr import build_pyramid, create_image, open_volume

    url = os.fspath(url)
    volume = create_image(url, shape=source.shape, dtype=source.dtype, chunks=chunks, voxel_size_nm=voxel_size_nm, overwrite=overwrite, name=name)
    _write_slabs(source, volume, progress, desc=f"ingest {source.path.name}")
    build_pyramid(url, kind="mean", progress=progress)
    return open_volume(url)


def ingest_labels(
    source: SliceSource,
    image_url: str | os.PathLike[str],
    name: str,
    *,
    overwrite: bool = False,
    progress: bool = False,
):
    """Write ``source`` as the label image ``name`` of the image at ``image_url`` (same grid)."""
    from alseg.io import store as st
    from alseg.io.omezarr import build_pyramid, create_labels, open_volume

    image = open_volume(image_url)
    if source.shape != image.shape:
        raise DataError(f"labels of shape {source.shape} do not match the image's shape {image.shape}")
    if source.dtype.kind not in "ui" or (source.dtype.kind == "i" and _has_negative(source)):
        raise DataError(f"{source.path}: labels need non-negative integers, got dtype {source.dtype}")
    dtype = np.uint64 if source.dtype.itemsize == 8 else np.uint32
    labels = create_labels(image_url, name, dtype=dtype, overwrite=overwrite)
    _write_slabs(source, labels, progress, desc=f"ingest labels {source.path.name}")
    build_pyramid(st.join(os.fspath(image_url), "labels", name), kind="mode", progress=progress)
    return open_volume(st.join(os.fspath(image_url), "labels", name))


def _has_negative(source: SliceSource) -> bool:
    step = max(1, source.shape[0] // 8)
    return any(source.read(z, min(z + 1, source.shape[0])).min() < 0 for z in range(0, source.shape[0], step))


def _write_slabs(source: SliceSource, volume, progress: bool, desc: str) -> None:
    from tqdm.auto import tqdm

    from alseg.geometry import Box

    depth = volume.chunks[0]
    total = source.shape[0]
    with tqdm(total=total, desc=desc, unit="slice", disable=not progress, leave=False) as bar:
        for z0 in range(0, total, depth):
            z1 = min(z0 + depth, total)
            slab = source.read(z0, z1)
            volume.write(Box((z0, 0, 0), (z1, *source.shape[1:])), slab.astype(volume.dtype, copy=False))
            bar.update(z1 - z0)


# --------------------------------------------------------------------------------------------- #
# the VNC stack
# --------------------------------------------------------------------------------------------- #
VNC_VOXEL_SIZE_NM = (50.0, 4.6, 4.6)
VNC_MITO_VALUE = 191


def ingest_vnc(
    vnc_dir: str | os.PathLike[str],
    url: str | os.PathLike[str],
    *,
    chunks: Sequence[int] = (10, 512, 512),
    labels_name: str = "mitochondria",
    connectivity: int = 26,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """The Drosophila VNC ssTEM stack as OME-Zarr: raw image + mitochondria instances.

    Mitochondria are ``labels == 191`` (the folder's README); instances are their 3D connected
    components (``connectivity`` 6 or 26). The stack is 20 x 1024 x 1024, so the mask is labelled
    in memory (21 MB); larger volumes go through the blockwise engine.
    """
    from scipy import ndimage

    from alseg.io import store as st
    from alseg.io.omezarr import build_pyramid, create_labels

    root = Path(vnc_dir)
    raw = SliceFolder(root / "raw", suffixes=TIFF_SUFFIXES) if (root / "raw").is_dir() else None
    if raw is None or not (root / "labels").is_dir():
        raise DataError(f"{root}: expected the VNC layout with raw/ (TIFF slices) and labels/ (PNG label maps)")
    gt = SliceFolder(root / "labels", suffixes=IMAGE_SUFFIXES)
    if gt.shape != raw.shape:
        raise DataError(f"{root}: labels {gt.shape} and raw {raw.shape} differ in shape")
    if connectivity not in (6, 26):
        raise DataError(f"connectivity must be 6 or 26, got {connectivity}")
    image = ingest(raw, url, voxel_size_nm=VNC_VOXEL_SIZE_NM, chunks=chunks, overwrite=overwrite, progress=progress, name="vnc")
    mask = gt.read(0, gt.shape[0]) == VNC_MITO_VALUE
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    instances, count = ndimage.label(mask, structure=structure, output=np.uint32)
    labels = create_labels(url, labels_name, dtype="uint32", chunks=chunks, overwrite=overwrite)
    labels.write(labels.bounds, instances)
    build_pyramid(st.join(os.fspath(url), "labels", labels_name), kind="mode", progress=progress)
    return {
        "url": os.fspath(url),
        "shape": image.shape,
        "voxel_size_nm": image.voxel_size_nm,
        "instances": int(count),
        "foreground_fraction": float(mask.mean()),
        "labels": labels_name,
    }
