"""Seeded synthetic EM volumes with ground-truth mitochondria instances, generated block by block.

What is drawn (physical units, nm, so anisotropic voxels look right):

* **mitochondria**: curved tubes (quadratic Bezier centre lines, radius varying along the
  length) with a dark double membrane and cristae (dark lamellae across the long axis);
  some branch (a second tube from a point of the first, same instance), some touch a
  neighbour (separate instances in contact);
* **distractors**: cell membranes (faces of a 3D Voronoi partition), vesicles (small dark rings)
  and dense bodies (dark round blobs that are not mitochondria);
* **imaging**: anisotropic Gaussian blur, slice-to-slice intensity drift, Gaussian noise.

Every element is a pure function of global coordinates and the seed: objects come from a spatial
hash of cells, each seeded by ``(seed, cell)``; noise comes from fixed global tiles, each seeded
by its tile index; drift from the global slice index; blur is computed with a halo wide enough to
be exact. So the volume does not depend on the block shape used to write it, and any size (up to
MitoEM's 1000 x 4096 x 4096) is written with memory bounded by the block.

Instance ids are unique but not consecutive (``cell * 64 + k + 1``); background is 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np
from scipy import ndimage

from alseg.errors import SpecError
from alseg.geometry import Box, BlockGrid

_MAX_PER_CELL = 64  # instance-id stride per hash cell
_NOISE_TILE = (8, 64, 64)
Difficulty = Literal["easy", "medium", "hard"]


@dataclass(frozen=True)
class SynthParams:
    """Knobs of the generator. Lengths in nm; intensities in [0, 1] before conversion to uint8."""

    shape: tuple[int, int, int] = (64, 512, 512)
    voxel_size_nm: tuple[float, float, float] = (30.0, 8.0, 8.0)
    seed: int = 0
    # mitochondria
    mito_per_um3: float = 1.2
    radius_nm: tuple[float, float] = (90.0, 170.0)
    length_nm: tuple[float, float] = (400.0, 2200.0)
    curvature: float = 0.35
    branch_fraction: float = 0.12
    touch_fraction: float = 0.15
    cristae_period_nm: float = 70.0
    # distractors
    cell_size_nm: float = 2500.0
    vesicles_per_um3: float = 20.0
    dense_bodies_per_um3: float = 0.3
    # imaging
    blur_sigma_nm: tuple[float, float, float] = (15.0, 10.0, 10.0)
    noise_std: float = 0.06
    drift: float = 0.04
    contrast: float = 1.0

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(s) <= 0 for s in self.shape):
            raise SpecError(f"synthetic volume shape: expected 3 positive sizes (z, y, x), got {self.shape}")
        if len(self.voxel_size_nm) != 3 or any(v <= 0 for v in self.voxel_size_nm):
            raise SpecError(f"voxel size: expected 3 positive sizes in nm, got {self.voxel_size_nm}")
        if not (0 < self.radius_nm[0] <= self.radius_nm[1]) or not (0 < self.length_nm[0] <= self.length_nm[1]):
            raise SpecError("radius_nm and length_nm must be increasing positive ranges")
        for name in ("mito_per_um3", "vesicles_per_um3", "dense_bodies_per_um3", "noise_std", "drift"):
            if getattr(self, name) < 0:
                raise SpecError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("branch_fraction", "touch_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise SpecError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.seed < 0:
            raise SpecError(f"seed must be >= 0, got {self.seed}")

    @classmethod
    def preset(cls, difficulty: Difficulty = "medium", **overrides) -> "SynthParams":
        """Parameters for a difficulty level; ``overrides`` replace single knobs."""
        table = {
            "easy": dict(noise_std=0.03, drift=0.0, touch_fraction=0.0, branch_fraction=0.0, dense_bodies_per_um3=0.0, vesicles_per_um3=5.0, contrast=1.3),
            "medium": {},
            "hard": dict(noise_std=0.12, drift=0.1, touch_fraction=0.35, branch_fraction=0.25, dense_bodies_per_um3=1.0, vesicles_per_um3=40.0, contrast=0.7, blur_sigma_nm=(25.0, 14.0, 14.0)),
        }
        if difficulty not in table:
            raise SpecError(f"difficulty: expected one of {sorted(table)}, got {difficulty!r}")
        return cls(**{**table[difficulty], **overrides})

    @property
    def extent_nm(self) -> np.ndarray:
        return np.asarray(self.shape, float) * np.asarray(self.voxel_size_nm, float)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------- #
# objects from a spatial hash
# --------------------------------------------------------------------------------------------- #
@dataclass(frozen=True)
class _Tube:
    """A mitochondrion: one or more polylines (the main centre line and branches), one id."""

    id: int
    lines: tuple[np.ndarray, ...]  # each (n, 3) points in nm
    radius: float
    wobble_phase: float
    cristae_phase: float
    lo: np.ndarray = field(compare=False)  # bounding box (nm), radius included
    hi: np.ndarray = field(compare=False)


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 12) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _make_tube(rng: np.random.Generator, p: SynthParams, centre: np.ndarray, obj_id: int, radius: float | None = None,
               direction: np.ndarray | None = None) -> _Tube:
    r = radius if radius is not None else rng.uniform(*p.radius_nm)
    length = rng.uniform(*p.length_nm)
    d = direction if direction is not None else _unit(rng)
    half = d * length / 2
    bend = _unit(rng) * p.curvature * length / 2
    lines = [_bezier(centre - half, centre + bend, centre + half)]
    if rng.random() < p.branch_fraction:
        start = lines[0][rng.integers(3, 9)]
        bd = _unit(rng)
        blen = rng.uniform(0.3, 0.6) * length
        lines.append(_bezier(start, start + bd * blen / 2 + _unit(rng) * p.curvature * blen / 2, start + bd * blen))
    pts = np.concatenate(lines)
    rmax = r * 1.15
    return _Tube(obj_id, tuple(lines), r, rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi), pts.min(0) - rmax, pts.max(0) + rmax)


class _Scene:
    """Objects of the whole volume, generated on demand per hash cell and cached."""

    def __init__(self, p: SynthParams) -> None:
        self.p = p
        self.cell_nm = max(1500.0, p.length_nm[1])
        self.grid = np.maximum(1, np.ceil(p.extent_nm / self.cell_nm).astype(int))
        self._tubes: dict[tuple[int, int, int], list[_Tube]] = {}
        self._spheres: dict[tuple[int, int, int], np.ndarray] = {}
        self.reach_nm = p.length_nm[1] * (1 + p.curvature) + 2 * p.radius_nm[1] * 1.15 + 2 * p.radius_nm[1]

    def _rng(self, kind: int, cell: tuple[int, int, int]) -> np.random.Generator:
        return np.random.default_rng([self.p.seed, kind, *cell])

    def _cells_near(self, lo_nm: np.ndarray, hi_nm: np.ndarray, reach: float, cell_nm: float, grid: np.ndarray) -> Iterator[tuple[int, int, int]]:
        a = np.clip(np.floor((lo_nm - reach) / cell_nm).astype(int), 0, grid - 1)
        b = np.clip(np.floor((hi_nm + reach) / cell_nm).astype(int), 0, grid - 1)
        for i in range(a[0], b[0] + 1):
            for j in range(a[1], b[1] + 1):
                for k in range(a[2], b[2] + 1):
                    yield (i, j, k)

    def tubes(self, cell: tuple[int, int, int]) -> list[_Tube]:
        if cell not in self._tubes:
            p = self.p
            rng = self._rng(1, cell)
            vol_um3 = (self.cell_nm / 1000) ** 3
            n = min(int(rng.poisson(p.mito_per_um3 * vol_um3)), _MAX_PER_CELL // 2)
            linear = (cell[0] * self.grid[1] + cell[1]) * self.grid[2] + cell[2]
            out: list[_Tube] = []
            for k in range(n):
                centre = (np.asarray(cell) + rng.random(3)) * self.cell_nm
                tube = _make_tube(rng, p, centre, linear * _MAX_PER_CELL + 2 * k + 1)
                out.append(tube)
                if rng.random() < p.touch_fraction:  # a neighbour in contact, nearly parallel
                    main = tube.lines[0]
                    axis = main[-1] - main[0]
                    axis /= np.linalg.norm(axis) + 1e-9
                    side = np.cross(axis, _unit(rng))
                    side /= np.linalg.norm(side) + 1e-9
                    r2 = rng.uniform(*p.radius_nm)
                    mid = main[len(main) // 2] + side * (tube.radius + r2) * 0.97
                    out.append(_make_tube(rng, replace(p, branch_fraction=0.0), mid, linear * _MAX_PER_CELL + 2 * k + 2, r2, axis + 0.2 * _unit(rng)))
            self._tubes[cell] = out
        return self._tubes[cell]

    def tubes_near(self, lo_nm: np.ndarray, hi_nm: np.ndarray) -> list[_Tube]:
        out = []
        for cell in self._cells_near(lo_nm, hi_nm, self.reach_nm, self.cell_nm, self.grid):
            out.extend(t for t in self.tubes(cell) if np.all(t.hi >= lo_nm) and np.all(t.lo <= hi_nm))
        return sorted(out, key=lambda t: t.id)

    def spheres_near(self, lo_nm: np.ndarray, hi_nm: np.ndarray) -> np.ndarray:
        """Rows (z, y, x, radius, kind) with kind 0 = vesicle, 1 = dense body."""
        rows = []
        for cell in self._cells_near(lo_nm, hi_nm, 400.0, self.cell_nm, self.grid):
            if cell not in self._spheres:
                rng = self._rng(2, cell)
                vol_um3 = (self.cell_nm / 1000) ** 3
                nv = rng.poisson(self.p.vesicles_per_um3 * vol_um3)
                nd = rng.poisson(self.p.dense_bodies_per_um3 * vol_um3)
                ves = np.column_stack([(np.asarray(cell) + rng.random((nv, 3))) * self.cell_nm, rng.uniform(18, 30, nv), np.zeros(nv)])
                den = np.column_stack([(np.asarray(cell) + rng.random((nd, 3))) * self.cell_nm, rng.uniform(60, 140, nd), np.ones(nd)])
                self._spheres[cell] = np.concatenate([ves, den]).reshape(-1, 5)
            rows.append(self._spheres[cell])
        spheres = np.concatenate(rows) if rows else np.zeros((0, 5))
        # a canonical order, so every block sums overlapping contributions in the same order
        return spheres[np.lexsort(spheres.T[::-1])]

    def voronoi_seeds(self, lo_nm: np.ndarray, hi_nm: np.ndarray) -> np.ndarray:
        size = self.p.cell_size_nm
        grid = np.maximum(1, np.ceil(self.p.extent_nm / size).astype(int)) + 2
        out = []
        a = np.floor(lo_nm / size).astype(int) - 2
        b = np.floor(hi_nm / size).astype(int) + 2
        for i in range(a[0], b[0] + 1):
            for j in range(a[1], b[1] + 1):
                for k in range(a[2], b[2] + 1):
                    rng = np.random.default_rng([self.p.seed, 3, i + grid[0], j + grid[1], k + grid[2]])
                    out.append((np.array([i, j, k]) + rng.random(3)) * size)
        return np.asarray(out)


# --------------------------------------------------------------------------------------------- #
# rendering
# --------------------------------------------------------------------------------------------- #
def _coords(box: Box, vox: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates (nm) of ``box`` as broadcastable (Z,1,1), (1,Y,1), (1,1,X) arrays."""
    z = ((np.arange(box.start[0], box.stop[0]) + 0.5) * vox[0]).astype(np.float32)[:, None, None]
    y = ((np.arange(box.start[1], box.stop[1]) + 0.5) * vox[1]).astype(np.float32)[None, :, None]
    x = ((np.arange(box.start[2], box.stop[2]) + 0.5) * vox[2]).astype(np.float32)[None, None, :]
    return z, y, x


def _nm_box_to_vox(lo: np.ndarray, hi: np.ndarray, vox: np.ndarray, within: Box) -> Box:
    a = np.floor(lo / vox).astype(int)
    b = np.ceil(hi / vox).astype(int) + 1
    return Box(tuple(int(v) for v in a), tuple(int(max(u, v)) for u, v in zip(b, a))).intersect(within)


def _render_tube(t: _Tube, p: SynthParams, region: Box, vox: np.ndarray, image: np.ndarray, labels: np.ndarray) -> None:
    box = _nm_box_to_vox(t.lo, t.hi, vox, region)
    if box.empty:
        return
    dist = np.full(box.shape, np.inf, np.float32)
    arc = np.zeros(box.shape, np.float32)
    s_offset = 0.0
    for line in t.lines:
        for a, b in zip(line[:-1], line[1:]):
            seg = b - a
            seg_len = float(np.linalg.norm(seg))
            rr = t.radius * 1.15
            sbox = _nm_box_to_vox(np.minimum(a, b) - rr, np.maximum(a, b) + rr, vox, box)
            if sbox.empty:
                s_offset += seg_len
                continue
            z, y, x = _coords(sbox, vox)
            dz, dy, dx = z - a[0], y - a[1], x - a[2]
            tt = np.clip((dz * seg[0] + dy * seg[1] + dx * seg[2]) / max(seg_len**2, 1e-9), 0.0, 1.0)
            d = np.sqrt((dz - tt * seg[0]) ** 2 + (dy - tt * seg[1]) ** 2 + (dx - tt * seg[2]) ** 2)
            sl = sbox.relative_to(box).slices
            better = d < dist[sl]
            dist[sl] = np.where(better, d, dist[sl])
            arc[sl] = np.where(better, s_offset + tt * seg_len, arc[sl])
            s_offset += seg_len
    radius = t.radius * (1.0 + 0.12 * np.sin(arc / 300.0 + t.wobble_phase))
    inside = dist <= radius
    if not inside.any():
        return
    depth = radius - dist  # distance from the outer surface, inwards
    c = p.contrast
    val = np.full(box.shape, 0.58, np.float32)
    # double membrane: two dark sheets 4 nm and 16 nm under the surface
    val -= c * 0.35 * (np.exp(-((depth - 5.0) / 6.0) ** 2) + np.exp(-((depth - 20.0) / 6.0) ** 2))
    # cristae: lamellae across the long axis, only in the matrix
    cristae = np.cos(np.pi * arc / p.cristae_period_nm + t.cristae_phase) ** 4
    val -= c * 0.30 * cristae * (depth > 30.0)
    sl = box.slices
    image[sl] = np.where(inside, val, image[sl])
    labels[sl] = np.where(inside, np.uint32(t.id), labels[sl])


def _render_clean(p: SynthParams, scene: _Scene, region: Box) -> tuple[np.ndarray, np.ndarray]:
    vox = np.asarray(p.voxel_size_nm, float)
    lo_nm = np.asarray(region.start) * vox
    hi_nm = np.asarray(region.stop) * vox
    z, y, x = _coords(region, vox)
    c = p.contrast
    # cytoplasm with a faint low-frequency texture (a few global sinusoids)
    trng = np.random.default_rng([p.seed, 4])
    image = np.full(region.shape, 0.70, np.float32)
    for _ in range(4):
        k = trng.normal(size=3) * 2 * np.pi / trng.uniform(300, 1500)
        image += np.float32(0.012 * c) * np.sin(z * k[0] + y * k[1] + x * k[2] + trng.uniform(0, 2 * np.pi)).astype(np.float32)
    # cell membranes: where the two nearest Voronoi seeds are about equally far
    seeds = scene.voronoi_seeds(lo_nm, hi_nm)
    d1 = np.full(region.shape, np.inf, np.float32)
    d2 = np.full(region.shape, np.inf, np.float32)
    for s in seeds:
        d = np.sqrt((z - s[0]) ** 2 + (y - s[1]) ** 2 + (x - s[2]) ** 2)
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    gap = (d2 - d1) / 2
    image -= np.float32(0.30 * c) * np.exp(-((gap / 9.0) ** 2))
    # vesicles (rings) and dense bodies (filled dark blobs)
    for sz, sy, sx, r, kind in scene.spheres_near(lo_nm, hi_nm):
        box = _nm_box_to_vox(np.array([sz, sy, sx]) - r - 10, np.array([sz, sy, sx]) + r + 10, vox, region)
        if box.empty:
            continue
        bz, by, bx = _coords(box, vox)
        d = np.sqrt((bz - sz) ** 2 + (by - sy) ** 2 + (bx - sx) ** 2)
        sl = box.relative_to(region).slices
        if kind == 0:
            image[sl] -= np.float32(0.25 * c) * np.exp(-(((d - r) / 5.0) ** 2))
        else:
            image[sl] = np.where(d <= r, np.float32(0.30), image[sl])
    labels = np.zeros(region.shape, np.uint32)
    for t in scene.tubes_near(lo_nm, hi_nm):  # ascending ids: where tubes overlap, the higher id wins
        _render_tube(t, p, region, vox, _Offset(image, region), _Offset(labels, region))
    return image, labels


class _Offset:
    """Index a region-shaped array with boxes in global voxel coordinates."""

    def __init__(self, arr: np.ndarray, region: Box) -> None:
        self.arr = arr
        self.region = region

    def _local(self, sl: tuple[slice, ...]) -> tuple[slice, ...]:
        return tuple(slice(s.start - o, s.stop - o) for s, o in zip(sl, self.region.start))

    def __getitem__(self, sl):
        return self.arr[self._local(sl)]

    def __setitem__(self, sl, value):
        self.arr[self._local(sl)] = value


def _blur_sigma_vox(p: SynthParams) -> np.ndarray:
    return np.asarray(p.blur_sigma_nm, float) / np.asarray(p.voxel_size_nm, float)


def _halo(p: SynthParams) -> tuple[int, int, int]:
    # gaussian_filter's kernel radius is int(truncate * sigma + 0.5) with truncate = 4
    return tuple(int(4.0 * s + 0.5) for s in _blur_sigma_vox(p))  # type: ignore[return-value]


def _drift(p: SynthParams, z0: int, z1: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice gain and offset for global slices ``z0..z1``: smooth waves plus a per-slice jitter."""
    zs = np.arange(z0, z1)
    rng = np.random.default_rng([p.seed, 5])
    periods = rng.uniform(20, 200, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    wave = sum(np.sin(2 * np.pi * zs / per + ph) for per, ph in zip(periods, phases)) / 3
    jitter = np.array([np.random.default_rng([p.seed, 6, int(z)]).normal() for z in zs])
    gain = 1.0 + p.drift * (0.8 * wave + 0.4 * jitter)
    offset = p.drift * 0.5 * sum(np.cos(2 * np.pi * zs / (1.7 * per) + ph) for per, ph in zip(periods, phases)) / 3
    return gain.astype(np.float32), offset.astype(np.float32)


def _noise(p: SynthParams, box: Box) -> np.ndarray:
    """Gaussian noise from fixed global tiles, so it does not depend on the block layout."""
    out = np.empty(box.shape, np.float32)
    t0 = [s // t for s, t in zip(box.start, _NOISE_TILE)]
    t1 = [-(-e // t) for e, t in zip(box.stop, _NOISE_TILE)]
    for i in range(t0[0], t1[0]):
        for j in range(t0[1], t1[1]):
            for k in range(t0[2], t1[2]):
                tile = Box.from_shape(_NOISE_TILE, (i * _NOISE_TILE[0], j * _NOISE_TILE[1], k * _NOISE_TILE[2]))
                part = tile.intersect(box)
                rng = np.random.default_rng([p.seed, 7, i, j, k])
                values = rng.standard_normal(_NOISE_TILE, dtype=np.float32)
                out[part.relative_to(box).slices] = values[part.relative_to(tile).slices]
    return out


class SyntheticVolume:
    """A synthetic EM volume; :meth:`block` renders any box of it (image uint8, labels uint32)."""

    def __init__(self, params: SynthParams) -> None:
        self.params = params
        self._scene = _Scene(params)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.params.shape)  # type: ignore[return-value]

    def block(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        bounds = Box.from_shape(self.shape)
        if not bounds.contains(box) or box.empty:
            raise SpecError(f"block {box} is not a non-empty box inside the volume {self.shape}")
        region = box.grow(_halo(p)).intersect(bounds)
        image, labels = _render_clean(p, self._scene, region)
        sigma = _blur_sigma_vox(p)
        if np.any(sigma > 0):
            image = ndimage.gaussian_filter(image, sigma=sigma, mode="reflect", truncate=4.0)
        inner = box.relative_to(region).slices
        image = image[inner]
        labels = np.ascontiguousarray(labels[inner])
        gain, offset = _drift(p, box.start[0], box.stop[0])
        image = image * gain[:, None, None] + offset[:, None, None]
        if p.noise_std > 0:
            image = image + np.float32(p.noise_std) * _noise(p, box)
        return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), labels


def write_synthetic(
    url: str | os.PathLike[str],
    params: SynthParams,
    *,
    chunks: tuple[int, int, int] = (32, 256, 256),
    labels_name: str = "mitochondria",
    overwrite: bool = False,
    progress: bool = False,
    runner=None,
) -> dict:
    """Write a synthetic volume as OME-Zarr: the image, its ground-truth labels, both pyramids.

    Blocks are the output chunks (so parallel writers never share a chunk); ``runner`` (a
    :class:`alseg.runtime.Runner`) spreads them over workers, serially by default.
    Returns a small summary (shape, voxel size, instance count, foreground fraction).
    """
    from alseg.io.omezarr import create_image, create_labels
    from alseg.pyramid import build_pyramid
    from alseg.runtime import SerialRunner, WorkItem

    url = os.fspath(url)
    image = create_image(url, shape=params.shape, dtype="uint8", chunks=chunks, voxel_size_nm=params.voxel_size_nm, overwrite=overwrite,
                         name="synthetic-em", kind="synthetic")
    labels = create_labels(url, labels_name, dtype="uint32", overwrite=overwrite)
    grid = BlockGrid(params.shape, image.chunks)
    items = [WorkItem(b.key, (url, labels_name, params, b.write)) for b in grid]
    runner = runner or SerialRunner(progress=progress)
    results = runner.map(_write_block, items, desc="synthesising blocks")
    from alseg.io import store as st

    build_pyramid(url, kind="mean", runner=runner, progress=progress)
    build_pyramid(st.join(url, "labels", labels_name), kind="mode", runner=runner, progress=progress)
    ids: set[int] = set()
    fg = 0
    for r in results.values():
        ids.update(r["ids"])
        fg += r["foreground"]
    summary = {
        "url": url,
        "shape": list(params.shape),
        "voxel_size_nm": list(params.voxel_size_nm),
        "instances": len(ids),
        "foreground_fraction": fg / math.prod(params.shape),
        "labels": labels_name,
    }
    # provenance, written last: its presence means the volume is complete
    labels.set_provenance({"generator": "alseg.synth", "complete": True})
    image.set_provenance({"generator": "alseg.synth", "params": _jsonable(params), "summary": summary, "complete": True})
    return summary


def _jsonable(params: SynthParams) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.to_dict().items()}


def ensure_synthetic(url: str | os.PathLike[str], params: SynthParams, *, overwrite: bool = False, **kwargs) -> tuple[dict, bool]:
    """Write the synthetic volume unless the same one (same parameters, complete) is already there.

    Returns ``(summary, reused)``. A different or incomplete volume at ``url`` is an
    :class:`~alseg.errors.OutputExistsError` unless ``overwrite``.
    """
    from alseg.errors import AlsegError
    from alseg.io import store as st
    from alseg.io.omezarr import open_volume

    url = os.fspath(url)
    if st.has_content(url) and not overwrite:
        try:
            prov = open_volume(url).provenance()
        except AlsegError:
            prov = {}
        if prov.get("generator") == "alseg.synth" and prov.get("complete", True) and prov.get("params") == _jsonable(params):
            return prov["summary"], True
    return write_synthetic(url, params, overwrite=overwrite, **kwargs), False


def _write_block(payload) -> dict:
    from alseg.io import store as st
    from alseg.io.omezarr import open_volume

    url, labels_name, params, box = payload
    image, labels = SyntheticVolume(params).block(box)
    open_volume(url, mode="r+").write(box, image)
    open_volume(st.join(url, "labels", labels_name), mode="r+").write(box, labels)
    ids = np.unique(labels)
    return {"ids": [int(i) for i in ids[ids > 0]], "foreground": int(np.count_nonzero(labels))}
