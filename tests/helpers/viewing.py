"""Render a run in neuroglancer with a headless Chromium and check what it drew (tests of `alseg view`).

The oracle is the volume itself: the screenshot's image-only rendering, cropped to the volume's
extent and resampled to the section's shape, must correlate with the x-y section at the viewer's
position (and better than with its transpose: a z-y or y-x layout fails), and the pixels the
instance layer colours must overlap that section's instances.
"""

from __future__ import annotations

import copy
import io
import tempfile

import numpy as np

from alseg.io.omezarr import open_volume
from alseg.view.cli import open_headless, stop_browser
from alseg.view.contents import RunContents
from alseg.view.session import ViewSession


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float64)


def _resample(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The screen pixels averaged over each voxel's square (the crop spans the section exactly)."""
    rows = np.linspace(0, a.shape[0], shape[0] + 1).round().astype(int)[:-1]
    cols = np.linspace(0, a.shape[1], shape[1] + 1).round().astype(int)[:-1]
    a = a.astype(np.float64)
    sums = np.add.reduceat(np.add.reduceat(a, rows, axis=0), cols, axis=1)
    counts = np.add.reduceat(np.add.reduceat(np.ones_like(a), rows, axis=0), cols, axis=1)
    return sums / counts


def _labels(contents: RunContents, name: str) -> np.ndarray:
    layer = next(l for l in contents.segmentations if l.name == name)
    return open_volume(layer.url).read()


def browser_or_skip() -> None:
    from need import require

    from alseg.errors import DependencyError
    from alseg.view.cli import browser

    try:
        browser()
    except DependencyError as err:
        require(False, str(err))


def render(contents: RunContents, size: tuple[int, int] = (800, 800), labels: str | None = None) -> dict[str, object]:
    """Screenshots of the image alone and of the image under a label layer (default: the
    instances) at the section that holds the most of its voxels, from a Chromium (started here on
    the viewer's URL, stopped by its process group); and the section's index, the URL and the state."""
    browser_or_skip()
    labels = labels or contents.instances_layer
    z = int(np.argmax((_labels(contents, labels) > 0).sum(axis=(1, 2))))
    session = ViewSession(contents).start()
    shots: dict[str, object] = {"url": session.url, "state": session.state(), "z": z, "labels": labels}
    import urllib.request

    shots["page"] = urllib.request.urlopen(session.url, timeout=30).read()
    try:
        with tempfile.TemporaryDirectory(prefix="alseg-test-browser-") as profile:
            proc = open_headless(session.url, profile)
            try:
                state = session.state()
                for name, shown in (("image", {contents.image.name}), ("overlay", {contents.image.name, labels})):
                    view = copy.deepcopy(state)
                    view.update(showAxisLines=False, showScaleBar=False)  # nothing drawn over the section
                    view["position"][2] = float(z)
                    for layer in view["layers"]:
                        layer["visible"] = layer["name"] in shown
                    session.viewer.show(view)
                    shots[name] = _pixels(session.viewer.screenshot(size=size, timeout_s=180))
            finally:
                stop_browser(proc)
        shots["documents_read"] = set(session.files.documents_read)
    finally:
        session.close()
    return shots


def check_rendering(contents: RunContents, shots: dict[str, object]) -> dict[str, float]:
    """Assert the screenshots show the x-y section and its instances; returns the agreement figures."""
    image, both = shots["image"], shots["overlay"]
    gray = image.mean(axis=2)
    background = np.median(np.concatenate([gray[:5].ravel(), gray[-5:].ravel()]))
    inside = np.abs(gray - background) > 1
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    assert rows.size and cols.size, "the image layer drew nothing"
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    z = int(shots["z"])
    section = open_volume(contents.image.url).read()[z].astype(np.float64)
    drawn = _resample(gray[box], section.shape)
    r = np.corrcoef(drawn.ravel(), section.ravel())[0, 1]
    r_t = np.corrcoef(drawn.ravel(), section.T.ravel())[0, 1] if section.shape[0] == section.shape[1] else -1.0
    assert drawn.std() > 5 and r > 0.5 and r > r_t + 0.2, f"the drawn section is not the volume's x-y section (r {r:.2f}, transposed {r_t:.2f})"
    # where the instance layer coloured the section: against the instances of that section
    labels = _labels(contents, str(shots["labels"]))[z] > 0
    coloured = _resample(np.abs(both - image).sum(axis=2)[box], labels.shape) > 30
    assert labels.any(), f"the layer {shots['labels']!r} is empty: nothing to check"
    iou = (coloured & labels).sum() / max(1, (coloured | labels).sum())
    assert iou > 0.5, f"the instance layer's pixels do not match the section's instances (IoU {iou:.2f})"
    return {"r": float(r), "r_transposed": float(r_t), "iou": float(iou)}
