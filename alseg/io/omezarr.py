"""OME-Zarr (NGFF) volumes: open lazily from any URL, create images and label images, pyramids.

Reading parses the NGFF metadata (0.5 ``ome`` attributes, or 0.4 top-level attributes) and opens
one multiscale level as a lazy :class:`Volume`: nothing is read until a box is asked for.

Writing creates every array of the pyramid up front with zarr (chunked, zstd) and writes the NGFF
0.5 metadata through ome-zarr's own writer functions, then callers fill level 0 block by block
and :func:`build_pyramid` computes the lower levels block by block from the level above, so no
step holds a whole level in memory. Downsampling halves y and x per level, and z only once the
in-plane voxel size has caught up with it (anisotropic EM stays sensible in viewers).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from alseg.errors import DataError, NotOmeZarrError, OutputExistsError, StoreError
from alseg.geometry import Box, BlockGrid
from alseg.io import store as st

SPATIAL_AXES = ("z", "y", "x")
_UNIT_TO_NM = {
    "nanometer": 1.0,
    "nm": 1.0,
    "micrometer": 1e3,
    "micron": 1e3,
    "um": 1e3,
    "millimeter": 1e6,
    "angstrom": 0.1,
    "picometer": 1e-3,
    "meter": 1e9,
}
LABEL_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("uint32"), np.dtype("uint64"))


@dataclass
class Volume:
    """One multiscale level of an OME-Zarr image (or label image), opened lazily.

    ``voxel_size_nm`` is the physical size of this level's voxels along ``zyx`` in nanometres.
    Non-spatial axes (``c``, ``t``) are allowed only with length 1 and are hidden: a volume is
    always addressed as ``zyx``.
    """

    url: str
    array: Any  # zarr.Array
    axes: tuple[str, ...]
    voxel_size_nm: tuple[float, float, float]
    level: int
    level_paths: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for a, s in zip(self.axes, self.array.shape) if a in SPATIAL_AXES)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def chunks(self) -> tuple[int, int, int]:
        return tuple(int(c) for a, c in zip(self.axes, self.array.chunks) if a in SPATIAL_AXES)  # type: ignore[return-value]

    @property
    def bounds(self) -> Box:
        return Box.from_shape(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def _selection(self, box: Box) -> tuple[Any, ...]:
        it = iter(box.slices)
        return tuple(next(it) if a in SPATIAL_AXES else 0 for a in self.axes)

    def read(self, box: Box | None = None) -> np.ndarray:
        """The voxels of ``box`` (default: all; only sensible for small volumes) as a numpy array."""
        box = self.bounds if box is None else box
        if box.ndim != 3 or not self.bounds.contains(box):
            raise DataError(f"cannot read {box} from {st.redact(self.url)}: volume bounds are {self.bounds}")
        return np.asarray(self.array[self._selection(box)])

    def write(self, box: Box, data: np.ndarray) -> None:
        """Write ``data`` into ``box`` (align boxes with chunks when several workers write)."""
        if tuple(data.shape) != box.shape:
            raise DataError(f"data of shape {data.shape} does not fit box {box} of shape {box.shape}")
        if not self.bounds.contains(box):
            raise DataError(f"box {box} lies outside the volume {self.shape}")
        self.array[self._selection(box)] = data

    def provenance(self) -> dict[str, Any]:
        """What alseg recorded about how this image was made (``{}`` if nothing)."""
        return dict(self.attrs.get("alseg", {}))

    def set_provenance(self, record: dict[str, Any]) -> None:
        """Record how the image was made in its group attributes (beside, not inside, ``ome``)."""
        import zarr

        group = zarr.open_group(st.zarr_store(self.url, read_only=False), mode="r+")
        group.attrs["alseg"] = record
        self.attrs["alseg"] = record

    def to_dask(self):
        import dask.array as da

        arr = da.from_zarr(self.array)
        return arr[self._selection(self.bounds)] if len(self.axes) != 3 else arr

    def summary(self) -> str:
        size_um = tuple(s * v / 1000 for s, v in zip(self.shape, self.voxel_size_nm))
        return (
            f"{st.redact(self.url)} (level {self.level} of {len(self.level_paths)})\n"
            f"  shape (z, y, x)  : {self.shape}   dtype {self.dtype}\n"
            f"  chunks           : {self.chunks}\n"
            f"  voxel size (nm)  : {tuple(round(v, 4) for v in self.voxel_size_nm)}\n"
            f"  extent (um)      : {tuple(round(s, 3) for s in size_um)}\n"
            f"  size             : {self.nbytes / 2**20:.1f} MiB uncompressed"
        )


# --------------------------------------------------------------------------------------------- #
# reading
# --------------------------------------------------------------------------------------------- #
def _open_group(url: str, *, mode: Literal["r", "r+"]):
    import zarr

    try:
        store = st.zarr_store(url, read_only=(mode == "r"))
        return zarr.open_group(store, mode=mode)
    except FileNotFoundError as err:
        raise StoreError(f"{st.redact(url)} does not exist (expected an OME-Zarr image folder)") from err
    except StoreError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as err:
        if not st.exists(url):
            raise StoreError(f"{st.redact(url)} does not exist (expected an OME-Zarr image folder)") from err
        raise NotOmeZarrError(f"{st.redact(url)} is not a readable zarr group: {err}") from err
    except Exception as err:  # noqa: BLE001 - object-storage clients raise their own hierarchies
        raise StoreError(f"cannot open {st.redact(url)}: {type(err).__name__}: {err}") from err


def _ngff_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The NGFF attributes: 0.5 nests them under ``ome``, 0.4 puts them at the top level."""
    return dict(attrs["ome"]) if isinstance(attrs.get("ome"), dict) else dict(attrs)


def _scale_of(transforms: Sequence[dict[str, Any]] | None, ndim: int) -> list[float]:
    scale = [1.0] * ndim
    for t in transforms or ():
        if t.get("type") == "scale":
            scale = [a * float(b) for a, b in zip(scale, t["scale"])]
    return scale


def open_volume(url: str | os.PathLike[str], *, level: int = 0, mode: Literal["r", "r+"] = "r") -> Volume:
    """Open level ``level`` of the OME-Zarr image at ``url`` lazily.

    Raises :class:`StoreError` if nothing is there or it cannot be reached, :class:`NotOmeZarrError`
    if it holds no NGFF multiscales, :class:`DataError` for axes alseg cannot work on.
    """
    url = os.fspath(url)
    group = _open_group(url, mode=mode)
    attrs = dict(group.attrs)
    ngff = _ngff_attrs(attrs)
    multiscales = ngff.get("multiscales")
    if not multiscales:
        found = sorted(set(attrs) | set(ngff)) or ["nothing"]
        raise NotOmeZarrError(
            f"{st.redact(url)} is a zarr group but not an OME-Zarr image: expected NGFF 'multiscales' "
            f"metadata, found attributes {found}"
        )
    ms = multiscales[0]
    axes = tuple(a["name"] if isinstance(a, dict) else str(a) for a in ms.get("axes", ("z", "y", "x")))
    spatial = tuple(a for a in axes if a in SPATIAL_AXES)
    extra = [a for a in axes if a not in SPATIAL_AXES]
    if spatial != SPATIAL_AXES or any(a not in ("c", "t") for a in extra):
        raise DataError(f"{st.redact(url)}: expected axes zyx (optionally with singleton t/c), got {''.join(axes)}")
    datasets = ms.get("datasets") or []
    if not 0 <= level < len(datasets):
        raise DataError(f"{st.redact(url)}: level {level} requested, the image has {len(datasets)} level(s)")
    path = datasets[level]["path"]
    try:
        array = group[path]
    except KeyError as err:
        raise NotOmeZarrError(f"{st.redact(url)}: metadata names level '{path}', which is missing") from err
    if len(array.shape) != len(axes):
        raise DataError(f"{st.redact(url)}/{path}: {len(array.shape)}-D array but {len(axes)} axes ({''.join(axes)})")
    for a, n in zip(axes, array.shape):
        if a not in SPATIAL_AXES and n != 1:
            raise DataError(f"{st.redact(url)}: axis '{a}' has length {n}; alseg works on one channel (length 1)")
    scale = _scale_of(datasets[level].get("coordinateTransformations"), len(axes))
    top = _scale_of(ms.get("coordinateTransformations"), len(axes))
    units = {
        (a.get("name")): a.get("unit") for a in ms.get("axes", ()) if isinstance(a, dict)
    }
    voxel = []
    for a, s, t in zip(axes, scale, top):
        if a in SPATIAL_AXES:
            unit = units.get(a)
            factor = _UNIT_TO_NM.get(unit, 1.0) if unit else 1.0
            voxel.append(s * t * factor)
    return Volume(
        url=url,
        array=array,
        axes=axes,
        voxel_size_nm=tuple(voxel),  # type: ignore[arg-type]
        level=level,
        level_paths=tuple(d["path"] for d in datasets),
        attrs=attrs,
    )


def list_labels(url: str | os.PathLike[str]) -> list[str]:
    """Names of the label images of the image at ``url`` (empty if it has none)."""
    import zarr

    group = _open_group(os.fspath(url), mode="r")
    try:
        labels = group["labels"]
    except KeyError:
        return []
    if not isinstance(labels, zarr.Group):
        return []
    return list(_ngff_attrs(dict(labels.attrs)).get("labels", []))


def open_labels(image_url: str | os.PathLike[str], name: str, *, level: int = 0, mode: Literal["r", "r+"] = "r") -> Volume:
    """Open the label image ``name`` of the image at ``image_url``."""
    names = list_labels(image_url)
    if name not in names:
        raise DataError(f"{st.redact(image_url)} has no label image {name!r} (it has: {names or 'none'})")
    return open_volume(st.join(image_url, "labels", name), level=level, mode=mode)


# --------------------------------------------------------------------------------------------- #
# writing
# --------------------------------------------------------------------------------------------- #
def pyramid_factors(
    shape: Sequence[int], voxel_size_nm: Sequence[float], *, levels: int | None = None, min_size: int = 256
) -> list[tuple[int, int, int]]:
    """Per-level downsampling factors relative to the level above (level 0 excluded).

    y and x halve at every level; z halves only when that keeps it no coarser than y. With
    ``levels=None``, levels are added until y and x both fit within ``min_size``.
    """
    shape_c = [int(s) for s in shape]
    vox = [float(v) for v in voxel_size_nm]
    out: list[tuple[int, int, int]] = []
    while (levels is None and max(shape_c[1:]) > min_size) or (levels is not None and len(out) < levels - 1):
        fz = 2 if vox[0] * 2 <= vox[1] * 2 and shape_c[0] >= 2 else 1
        f = (fz, 2, 2)
        shape_c = [max(1, -(-s // k)) for s, k in zip(shape_c, f)]
        vox = [v * k for v, k in zip(vox, f)]
        out.append(f)
        if levels is None and len(out) >= 16:
            break
    return out


def _axes_meta(unit: str = "nanometer") -> list[dict[str, str]]:
    return [{"name": a, "type": "space", "unit": unit} for a in SPATIAL_AXES]


def _prepare_output(url: str, overwrite: bool) -> None:
    if st.has_content(url):
        if not overwrite:
            raise OutputExistsError(
                f"{st.redact(url)} already holds data; choose another output or pass overwrite=True "
                "(--overwrite on the command line) to replace it"
            )
        st.remove(url)


def _check_create_args(shape: Sequence[int], chunks: Sequence[int], voxel_size_nm: Sequence[float]) -> tuple:
    shape_t = tuple(int(s) for s in shape)
    if len(shape_t) != 3:
        raise DataError(f"expected 3 axes zyx, got shape {shape_t}")
    if any(s <= 0 for s in shape_t):
        raise DataError(f"expected a non-empty volume, got shape {shape_t}")
    chunks_t = tuple(min(int(c), s) for c, s in zip(chunks, shape_t))
    if len(tuple(chunks)) != 3 or any(c <= 0 for c in chunks):
        raise DataError(f"expected 3 positive chunk sizes, got {tuple(chunks)}")
    vox = tuple(float(v) for v in voxel_size_nm)
    if len(vox) != 3 or any(not math.isfinite(v) or v <= 0 for v in vox):
        raise DataError(f"expected 3 positive voxel sizes in nm, got {vox}")
    return shape_t, chunks_t, vox


def _create_multiscale(
    group,
    *,
    shape: tuple[int, int, int],
    dtype: np.dtype,
    chunks: tuple[int, int, int],
    voxel_size_nm: tuple[float, float, float],
    factors: Sequence[tuple[int, int, int]],
    name: str,
    fill_value: int | float = 0,
) -> None:
    """Create level arrays ``s0..sN`` in ``group`` and write NGFF 0.5 multiscales metadata."""
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    level_shape = list(shape)
    vox = list(voxel_size_nm)
    total = [1, 1, 1]
    datasets = []
    for i in range(len(factors) + 1):
        if i:
            f = factors[i - 1]
            level_shape = [max(1, -(-s // k)) for s, k in zip(level_shape, f)]
            total = [t * k for t, k in zip(total, f)]
        level_chunks = tuple(min(c, s) for c, s in zip(chunks, level_shape))
        group.create_array(
            name=f"s{i}",
            shape=tuple(level_shape),
            chunks=level_chunks,
            dtype=dtype,
            fill_value=fill_value,
            dimension_names=SPATIAL_AXES,
        )
        scale = [v * t for v, t in zip(vox, total)]
        translation = [(t - 1) * v / 2 for v, t in zip(vox, total)]
        datasets.append(
            {
                "path": f"s{i}",
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": translation},
                ],
            }
        )
    write_multiscales_metadata(group, datasets, fmt=FormatV05(), axes=_axes_meta(), name=name)


def create_image(
    url: str | os.PathLike[str],
    *,
    shape: Sequence[int],
    dtype: np.dtype | str,
    chunks: Sequence[int],
    voxel_size_nm: Sequence[float],
    levels: int | None = None,
    name: str = "image",
    overwrite: bool = False,
) -> Volume:
    """Create an empty OME-Zarr image (all pyramid levels) and return level 0 open for writing."""
    import zarr

    url = os.fspath(url)
    shape_t, chunks_t, vox = _check_create_args(shape, chunks, voxel_size_nm)
    dtype = np.dtype(dtype)
    if dtype.kind not in "uif":
        raise DataError(f"expected an integer or float image dtype, got {dtype}")
    _prepare_output(url, overwrite)
    group = zarr.open_group(st.zarr_store(url, read_only=False), mode="w", zarr_format=3)
    factors = pyramid_factors(shape_t, vox, levels=levels)
    _create_multiscale(group, shape=shape_t, dtype=dtype, chunks=chunks_t, voxel_size_nm=vox, factors=factors, name=name)
    return open_volume(url, mode="r+")


def create_labels(
    image_url: str | os.PathLike[str],
    name: str,
    *,
    dtype: np.dtype | str = "uint32",
    chunks: Sequence[int] | None = None,
    overwrite: bool = False,
    properties: list[dict[str, Any]] | None = None,
) -> Volume:
    """Create an empty NGFF label image ``labels/<name>`` matching the image's grid and pyramid."""
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_label_metadata

    image_url = os.fspath(image_url)
    dtype = np.dtype(dtype)
    if dtype not in LABEL_DTYPES:
        raise DataError(f"label images need an unsigned integer dtype (uint32 or uint64 advised), got {dtype}")
    if not name or "/" in name or name.startswith("."):
        raise DataError(f"invalid label name {name!r}")
    image = open_volume(image_url)
    # The label pyramid mirrors the image's: per-level factors from its level shapes.
    level_shapes = [open_volume(image_url, level=i).shape for i in range(len(image.level_paths))]
    factors = [tuple(max(1, round(p / c)) for p, c in zip(prev, cur)) for prev, cur in zip(level_shapes, level_shapes[1:])]
    label_url = st.join(image_url, "labels", name)
    _prepare_output(label_url, overwrite)
    root = zarr.open_group(st.zarr_store(image_url, read_only=False), mode="r+")
    labels_group = root.require_group("labels")
    group = zarr.open_group(st.zarr_store(label_url, read_only=False), mode="w", zarr_format=3)
    _create_multiscale(
        group,
        shape=image.shape,
        dtype=dtype,
        chunks=tuple(chunks) if chunks is not None else image.chunks,
        voxel_size_nm=image.voxel_size_nm,
        factors=factors,
        name=name,
    )
    write_label_metadata(labels_group, name, properties=properties, fmt=FormatV05())
    # the "labels" group lists each label image once (ome-zarr appends without checking) and, as
    # NGFF 0.5 requires (ome-zarr-models checks it), carries its version
    ngff = _ngff_attrs(dict(labels_group.attrs))
    names = list(dict.fromkeys([*ngff.get("labels", []), name]))
    labels_group.attrs["ome"] = {**ngff, "version": "0.5", "labels": names}
    return open_volume(label_url, mode="r+")


def create_label_image(
    url: str | os.PathLike[str],
    *,
    like: Volume,
    chunks: Sequence[int] | None = None,
    dtype: np.dtype | str = "uint32",
    name: str = "labels",
    overwrite: bool = False,
) -> Volume:
    """A standalone NGFF label image (a multiscale group with ``image-label`` metadata) on the grid
    of the image ``like``, for labels that live apart from their image (a run directory's
    pseudo-labels or predictions when the image is read-only, e.g. on object storage)."""
    import zarr

    dtype = np.dtype(dtype)
    if dtype not in LABEL_DTYPES:
        raise DataError(f"label images need an unsigned integer dtype (uint32 or uint64 advised), got {dtype}")
    vol = create_image(url, shape=like.shape, dtype=dtype, chunks=tuple(chunks) if chunks is not None else like.chunks,
                       voxel_size_nm=like.voxel_size_nm, levels=len(like.level_paths), name=name, overwrite=overwrite)
    group = zarr.open_group(st.zarr_store(os.fspath(url), read_only=False), mode="r+")
    ngff = _ngff_attrs(dict(group.attrs))
    group.attrs["ome"] = {**ngff, "image-label": {}}
    return open_volume(url, mode="r+")


# --------------------------------------------------------------------------------------------- #
# pyramids
# --------------------------------------------------------------------------------------------- #
Downsampling = Literal["mean", "nearest", "mode"]


def downsample(data: np.ndarray, factors: Sequence[int], *, kind: Downsampling) -> np.ndarray:
    """Downsample by integer ``factors``.

    * ``mean``: block mean (images); integers are rounded back to their dtype;
    * ``nearest``: the first voxel of each block (labels; fast, but thin objects can vanish);
    * ``mode``: the most frequent value of each block, the smallest on ties (labels: objects are
      kept in proportion to their share of each block, and no value is ever invented).

    Edge blocks that are only partly covered use only the voxels that are there.
    """
    f = tuple(int(k) for k in factors)
    if kind == "nearest":
        return np.ascontiguousarray(data[tuple(slice(None, None, k) for k in f)])
    if kind == "mode":
        return _mode_pool(data, f)
    if kind != "mean":
        raise DataError(f"unknown downsampling {kind!r}: expected mean, nearest or mode")
    out_shape = tuple(-(-s // k) for s, k in zip(data.shape, f))
    padded_shape = tuple(o * k for o, k in zip(out_shape, f))
    acc = np.zeros(padded_shape, dtype=np.float64)
    cnt = np.zeros(padded_shape, dtype=np.float64)
    acc[tuple(slice(0, s) for s in data.shape)] = data
    cnt[tuple(slice(0, s) for s in data.shape)] = 1.0
    shape6 = tuple(x for o, k in zip(out_shape, f) for x in (o, k))
    total = acc.reshape(shape6).sum(axis=(1, 3, 5))
    count = cnt.reshape(shape6).sum(axis=(1, 3, 5))
    mean = total / count
    if np.dtype(data.dtype).kind in "ui":
        info = np.iinfo(data.dtype)
        return np.clip(np.rint(mean), info.min, info.max).astype(data.dtype)
    return mean.astype(data.dtype)


def _windows(data: np.ndarray, f: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(values, present)`` of shape ``out_shape + (prod(f),)``: each output voxel's source block."""
    out_shape = tuple(-(-s // k) for s, k in zip(data.shape, f))
    padded = np.zeros(tuple(o * k for o, k in zip(out_shape, f)), dtype=data.dtype)
    present = np.zeros(padded.shape, dtype=bool)
    inner = tuple(slice(0, s) for s in data.shape)
    padded[inner] = data
    present[inner] = True
    shape6 = tuple(x for o, k in zip(out_shape, f) for x in (o, k))
    order = (0, 2, 4, 1, 3, 5)
    flat = (*out_shape, int(np.prod(f)))
    return (padded.reshape(shape6).transpose(order).reshape(flat),
            present.reshape(shape6).transpose(order).reshape(flat))


def _mode_pool(data: np.ndarray, f: tuple[int, ...]) -> np.ndarray:
    values, present = _windows(data, f)
    n = values.shape[-1]
    if n == 1:
        return np.ascontiguousarray(values[..., 0])
    counts = np.zeros(values.shape, dtype=np.int16)
    for i in range(n):
        counts += (values == values[..., i:i + 1]) & present[..., i:i + 1]
    counts[~present] = -1
    best = counts == counts.max(axis=-1, keepdims=True)
    top = np.iinfo(data.dtype).max if data.dtype.kind in "ui" else np.inf
    return np.where(best, values, top).min(axis=-1).astype(data.dtype)


@dataclass(frozen=True)
class _PyramidJob:
    url: str
    level: int
    factors: tuple[int, int, int]
    block: Any  # geometry.Block of the destination level
    kind: str


def _pyramid_block(job: _PyramidJob) -> dict[str, int]:
    src = open_volume(job.url, level=job.level - 1)
    dst = open_volume(job.url, level=job.level, mode="r+")
    out = job.block.write
    src_box = Box(
        tuple(a * f for a, f in zip(out.start, job.factors)),
        tuple(min(b * f, s) for b, f, s in zip(out.stop, job.factors, src.shape)),
    )
    dst.write(out, downsample(src.read(src_box), job.factors, kind=job.kind))  # type: ignore[arg-type]
    return {"voxels": int(out.size)}


def pyramid_block_shape(shape: Sequence[int], chunks: Sequence[int], *, target_voxels: int = 2**24) -> tuple[int, ...]:
    """Whole multiples of ``chunks``, grown (x, then y, then z) up to about ``target_voxels`` per block."""
    block = [min(int(c), int(s)) for c, s in zip(chunks, shape)]
    grown = True
    while grown and int(np.prod(block)) * 2 <= target_voxels:
        grown = False
        for axis in (2, 1, 0):
            if block[axis] < shape[axis] and int(np.prod(block)) * 2 <= target_voxels:
                block[axis] = min(block[axis] * 2, int(shape[axis]))
                grown = True
    return tuple(block)


def build_pyramid(
    url: str | os.PathLike[str],
    *,
    kind: Downsampling,
    runner: Any = None,
    work_dir: str | os.PathLike[str] | None = None,
    block_shape: Sequence[int] | None = None,
    progress: bool = False,
) -> None:
    """Fill levels 1..N of the image or label image at ``url`` from level 0, level after level.

    Each level runs through the blockwise engine (:func:`alseg.blockwise.run_blocks`): blocks of
    whole output chunks (``block_shape``, default: chunks grown to about 16 M voxels), on any
    runner, resumable with ``work_dir`` (records under ``work_dir/pyramid-s<level>``). Memory
    holds one block and its source region, whatever the volume's size.
    """
    from alseg.blockwise import check_aligned, run_blocks
    from alseg.runtime import SerialRunner

    if kind not in ("mean", "nearest", "mode"):
        raise DataError(f"unknown downsampling {kind!r}: expected mean, nearest or mode")
    url = os.fspath(url)
    runner = runner or SerialRunner(progress=progress)
    top = open_volume(url)
    for level in range(1, len(top.level_paths)):
        src = open_volume(url, level=level - 1)
        dst = open_volume(url, level=level)
        factors = tuple(max(1, round(a / b)) for a, b in zip(src.shape, dst.shape))
        shape = tuple(block_shape) if block_shape is not None else pyramid_block_shape(dst.shape, dst.chunks)
        grid = BlockGrid(dst.shape, shape)
        check_aligned(grid.block_shape, dst.chunks, dst.shape, what=f"level {level}")
        run_blocks(
            _pyramid_block, grid,
            payload=lambda b, level=level, factors=factors: _PyramidJob(url, level, factors, b, kind),  # type: ignore[misc]
            runner=runner, work_dir=work_dir, name=f"pyramid-s{level}", desc=f"pyramid level {level}",
        )
