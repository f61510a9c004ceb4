"""OME-Zarr (NGFF) volumes: open lazily from any URL, create images and label images.

Reading parses the NGFF metadata (0.5 ``ome`` attributes, or 0.4 top-level attributes) and opens
one multiscale level as a lazy :class:`Volume`: nothing is read until a box is asked for.

Writing creates every array of the pyramid up front with zarr (chunked, zstd) and writes the NGFF
0.5 metadata through ome-zarr's own writer functions, then callers fill level 0 block by block
and :func:`alseg.pyramid.build_pyramid` (above the storage layer: it runs on the blockwise engine)
computes the lower levels block by block from the level above, so no step holds a whole level in memory. Downsampling halves y and x per level, and z only once the
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
from alseg.geometry import Box
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
MissingChunks = Literal["error", "empty"]
OWNER_KEY = "alseg"  # group attribute holding alseg's record of an output it wrote
LABEL_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("uint32"), np.dtype("uint64"))


@dataclass
class Volume:
    """One multiscale level of an OME-Zarr image (or label image), opened lazily.

    ``voxel_size_nm`` is the physical size of this level's voxels along ``zyx`` in nanometres.
    Non-spatial axes (``c``, ``t``) are allowed only with length 1 and are hidden: a volume is
    always addressed as ``zyx``. ``missing_chunks`` says what an absent chunk means on reads:
    ``"error"`` (images: the volume is incomplete) or ``"empty"`` (label images: background).
    """

    url: str
    array: Any  # zarr.Array
    axes: tuple[str, ...]
    voxel_size_nm: tuple[float, float, float]
    level: int
    level_paths: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    missing_chunks: MissingChunks = "empty"

    @property
    def is_label_image(self) -> bool:
        return "image-label" in _ngff_attrs(self.attrs)

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
        from alseg.io.chunks import MissingChunkError, failing_chunk

        box = self.bounds if box is None else box
        if box.ndim != 3 or not self.bounds.contains(box):
            raise DataError(f"cannot read {box} from {st.redact(self.url)}: volume bounds are {self.bounds}")
        selection = self._selection(box)
        try:
            return np.asarray(self.array[selection])
        except MissingChunkError as err:
            raise DataError(
                f"{st.redact(self.url)}: chunk {err.key!r} is missing (reading {box}): the volume is incomplete. "
                "If absent chunks mean empty in this volume (written without its empty chunks), set "
                "input.missing_chunks: empty") from err
        except Exception as err:  # noqa: BLE001 - codecs and stores raise anything; name the chunk
            found = failing_chunk(self.array, selection)
            where = f"chunk {found[0]!r}" if found else f"region {box}"
            cause = found[1] if found else err
            raise DataError(f"{st.redact(self.url)}: cannot read {where}: {st._short(cause)}") from err

    def write(self, box: Box, data: np.ndarray) -> None:
        """Write ``data`` into ``box`` (align boxes with chunks when several workers write)."""
        if tuple(data.shape) != box.shape:
            raise DataError(f"data of shape {data.shape} does not fit box {box} of shape {box.shape}")
        if not self.bounds.contains(box):
            raise DataError(f"box {box} lies outside the volume {self.shape}")
        self.array[self._selection(box)] = data

    def provenance(self) -> dict[str, Any]:
        """What alseg recorded about how this image was made (``{}`` if nothing)."""
        return dict(self.attrs.get(OWNER_KEY, {}))

    def set_provenance(self, record: dict[str, Any]) -> None:
        """Record how the image was made in its group attributes (beside, not inside, ``ome``).

        The output ``kind`` that its creation recorded is kept; write ``"complete": True`` last,
        once the output is whole (:func:`prepare_output` replaces an incomplete one of its kind).
        """
        import zarr

        kind = self.provenance().get("kind")
        record = {"kind": kind, **record} if kind is not None else dict(record)
        group = zarr.open_group(st.zarr_store(self.url, read_only=False), mode="r+")
        group.attrs[OWNER_KEY] = record
        self.attrs[OWNER_KEY] = record

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

    from alseg.io.chunks import StrictChunkStore

    try:
        store = st.zarr_store(url, read_only=(mode == "r"))
        if mode == "r":
            store = StrictChunkStore(store)  # strict only once open_volume knows it reads an image
        return zarr.open_group(store, mode=mode)
    except FileNotFoundError as err:
        raise StoreError(f"{st.redact(url)} does not exist (expected an OME-Zarr image folder)") from err
    except StoreError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as err:
        if _is_timeout(err):
            raise StoreError(f"cannot open {st.redact(url)}: the store did not answer ({st._short(err)})") from err
        if not st.exists(url):
            raise StoreError(f"{st.redact(url)} does not exist (expected an OME-Zarr image folder)") from err
        raise NotOmeZarrError(f"{st.redact(url)} is not a readable zarr group: {err}") from err
    except Exception as err:  # noqa: BLE001 - object-storage clients raise their own hierarchies
        raise StoreError(f"cannot open {st.redact(url)}: {type(err).__name__}: {err}") from err


def _is_timeout(err: BaseException) -> bool:
    """A time-out or refused connection (asking again whether the store exists would wait as long again)."""
    import asyncio

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (TimeoutError, asyncio.TimeoutError, ConnectionError)) or "Timeout" in type(seen).__name__:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _ngff_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The NGFF attributes: 0.5 nests them under ``ome``, 0.4 puts them at the top level."""
    return dict(attrs["ome"]) if isinstance(attrs.get("ome"), dict) else dict(attrs)


def _scale_of(transforms: Sequence[dict[str, Any]] | None, ndim: int) -> list[float]:
    scale = [1.0] * ndim
    for t in transforms or ():
        if t.get("type") == "scale":
            scale = [a * float(b) for a, b in zip(scale, t["scale"])]
    return scale


def open_volume(url: str | os.PathLike[str], *, level: int = 0, mode: Literal["r", "r+"] = "r",
                missing_chunks: MissingChunks | None = None) -> Volume:
    """Open level ``level`` of the OME-Zarr image at ``url`` lazily.

    ``missing_chunks`` (reads): ``"error"`` makes an absent chunk an error naming it, ``"empty"``
    reads it as the fill value; by default images are read strictly and label images (NGFF
    ``image-label``, whose writers leave out empty chunks) as empty. Volumes opened ``r+``
    (alseg's outputs) write every chunk of an image, empty ones included, so that they read back
    strictly.

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
    is_label = "image-label" in ngff
    missing = missing_chunks or ("empty" if is_label else "error")
    if missing not in ("error", "empty"):
        raise DataError(f"missing_chunks must be 'error' or 'empty', got {missing!r}")
    if mode == "r":
        group.store.strict = missing == "error"
    elif not is_label:
        array = array.with_config({"write_empty_chunks": True})
    return Volume(
        url=url,
        array=array,
        axes=axes,
        voxel_size_nm=tuple(voxel),  # type: ignore[arg-type]
        level=level,
        level_paths=tuple(d["path"] for d in datasets),
        attrs=attrs,
        missing_chunks=missing,
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


def output_record(url: str | os.PathLike[str]) -> dict[str, Any] | None:
    """alseg's record on the zarr group at ``url`` (its ``kind`` and whether it is ``complete``), or
    None when ``url`` is not a zarr group or carries no such record: data alseg did not write."""
    import zarr

    try:
        group = zarr.open_group(st.zarr_store(os.fspath(url), read_only=True), mode="r")
        record = dict(group.attrs).get(OWNER_KEY)
    except Exception:  # noqa: BLE001 - anything that is not a readable zarr group is not alseg's
        return None
    if not isinstance(record, dict):
        return None
    record = dict(record)
    if "kind" not in record and record.get("generator") == "alseg.synth":  # written before kinds were recorded
        record.update(kind="synthetic", complete=True)
    return record


def check_output(url: str | os.PathLike[str], *, overwrite: bool, kind: str) -> bool:
    """Whether ``url`` holds an output that a new output of ``kind`` may replace (True) or nothing
    (False); refuses (:class:`OutputExistsError`) anything else. Reads only metadata.

    alseg replaces only what it can prove it wrote itself: a zarr group whose record names the
    same ``kind`` (and, for an image, whose label images are all alseg's too). Such an output that
    is incomplete (a failed or interrupted write) may be replaced; a complete one only with
    ``overwrite``. Anything else, whatever ``overwrite`` says, is refused.
    """
    url = os.fspath(url)
    if not st.has_content(url):
        return False
    record = output_record(url)
    where = st.redact(url)
    if record is None:
        raise OutputExistsError(f"{where} holds data that alseg did not write (it carries no alseg record): alseg never "
                                "replaces or removes it, whatever overwrite says; move it away or choose another output")
    if record.get("kind") != kind:
        raise OutputExistsError(f"{where} holds alseg's {record.get('kind') or 'unknown'} output, not a {kind}: it is "
                                "not replaced; choose another output")
    foreign = [n for n in _label_names(url) if output_record(st.join(url, "labels", n)) is None]
    if foreign:
        raise OutputExistsError(f"{where} holds label images that alseg did not write ({', '.join(foreign)}): the image "
                                "is not replaced; move them away or choose another output")
    if record.get("complete") and not overwrite:
        raise OutputExistsError(f"{where} already holds data; choose another output or pass overwrite=True "
                                "(--overwrite on the command line) to replace it")
    return True


def prepare_output(url: str | os.PathLike[str], *, overwrite: bool, kind: str) -> None:
    """Make room for a new output of ``kind`` at ``url`` (the rules of :func:`check_output`), or refuse."""
    if check_output(url, overwrite=overwrite, kind=kind):
        st.remove(os.fspath(url))


def _label_names(url: str) -> list[str]:
    try:
        return list_labels(url)
    except (StoreError, DataError):
        return []


def _own(group, kind: str) -> None:
    """Mark a newly created group as alseg's (incomplete) output of ``kind``."""
    group.attrs[OWNER_KEY] = {"kind": kind, "complete": False}


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
    kind: str = "image",
) -> Volume:
    """Create an empty OME-Zarr image (all pyramid levels) and return level 0 open for writing.

    The group is marked as alseg's incomplete output of ``kind`` (see :func:`prepare_output`).
    """
    import zarr

    url = os.fspath(url)
    shape_t, chunks_t, vox = _check_create_args(shape, chunks, voxel_size_nm)
    dtype = np.dtype(dtype)
    if dtype.kind not in "uif":
        raise DataError(f"expected an integer or float image dtype, got {dtype}")
    prepare_output(url, overwrite=overwrite, kind=kind)
    group = zarr.open_group(st.zarr_store(url, read_only=False), mode="w", zarr_format=3)
    _own(group, kind)
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
    kind: str = "labels",
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
    prepare_output(label_url, overwrite=overwrite, kind=kind)
    root = zarr.open_group(st.zarr_store(image_url, read_only=False), mode="r+")
    labels_group = root.require_group("labels")
    group = zarr.open_group(st.zarr_store(label_url, read_only=False), mode="w", zarr_format=3)
    _own(group, kind)
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
    kind: str = "labels",
) -> Volume:
    """A standalone NGFF label image (a multiscale group with ``image-label`` metadata) on the grid
    of the image ``like``, for labels that live apart from their image (a run directory's
    pseudo-labels or predictions when the image is read-only, e.g. on object storage)."""
    import zarr

    dtype = np.dtype(dtype)
    if dtype not in LABEL_DTYPES:
        raise DataError(f"label images need an unsigned integer dtype (uint32 or uint64 advised), got {dtype}")
    create_image(url, shape=like.shape, dtype=dtype, chunks=tuple(chunks) if chunks is not None else like.chunks,
                       voxel_size_nm=like.voxel_size_nm, levels=len(like.level_paths), name=name, overwrite=overwrite,
                       kind=kind)
    group = zarr.open_group(st.zarr_store(os.fspath(url), read_only=False), mode="r+")
    ngff = _ngff_attrs(dict(group.attrs))
    group.attrs["ome"] = {**ngff, "image-label": {}}
    return open_volume(url, mode="r+")
