"""The neuroglancer viewer state (its JSON) of a run's :class:`~alseg.view.contents.RunContents`.

Plain data, no neuroglancer import: the state names each volume by a data-source URL that the
caller chooses (the local file server's, or the volume's own where its bucket is public). The
global coordinate space is ``x, y, z`` in metres at the image's level-0 voxel size, in that order,
so the default x-y panel shows sections with x across and y down whatever the sources' axis order
(OME-Zarr's is ``z, y, x``). Boxes are inline annotations in the same space; the instances layer
carries the measurement table as segment properties (:func:`segment_properties`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alseg.view.contents import MEASURED, RunContents

SHADER = "#uicontrol invlerp normalized\nvoid main() {\n  emitGrayscale(normalized());\n}\n"


def dimensions(contents: RunContents) -> dict[str, list]:
    z, y, x = contents.voxel_size_nm
    return {"x": [x * 1e-9, "m"], "y": [y * 1e-9, "m"], "z": [z * 1e-9, "m"]}


def segment_properties(measurements: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Neuroglancer's ``neuroglancer_segment_properties`` info: per segment id a label (its volume)
    and the measurement columns as numbers."""
    ids = sorted(measurements)
    columns = [c for c in MEASURED if all(c in measurements[i] for i in ids)]
    props: list[dict[str, Any]] = [{"id": "label", "type": "label",
                                    "values": [f"{i}: {measurements[i].get('volume_um3', 0.0):.4g} um3" for i in ids]}]
    props += [{"id": c, "type": "number", "data_type": "float32", "values": [float(measurements[i][c]) for i in ids]}
              for c in columns]
    return {"@type": "neuroglancer_segment_properties", "inline": {"ids": [str(i) for i in ids], "properties": props}}


def _corner(zyx: tuple[int, ...]) -> list[float]:
    """A voxel corner as an ``x, y, z`` point: OME-Zarr sources put voxel ``k``'s centre at ``k``
    (it spans ``k - 0.5 .. k + 0.5``), so a box's edges lie half a voxel below its indices."""
    return [zyx[2] - 0.5, zyx[1] - 0.5, zyx[0] - 0.5]


def viewer_state(contents: RunContents, source: Callable[[str], str], properties_url: str | None = None) -> dict[str, Any]:
    """The state: ``source(volume URL)`` gives each layer's data source; ``properties_url`` (a
    ``precomputed://`` source of :func:`segment_properties`) is added to the instances layer."""
    dims = dimensions(contents)
    z, y, x = contents.shape
    layers: list[dict[str, Any]] = [{
        "type": "image", "name": contents.image.name, "source": source(contents.image.url), "shader": SHADER,
        "shaderControls": {"normalized": {"range": [contents.contrast[0], contents.contrast[1]]}},
    }]
    for layer in contents.segmentations:
        entry: dict[str, Any] = {"type": "segmentation", "name": layer.name, "source": source(layer.url)}
        if layer.name == contents.instances_layer and properties_url is not None:
            entry["source"] = [entry["source"], properties_url]
        if layer.name != contents.instances_layer:
            entry["visible"] = False  # one label layer at a time over the image; the others a click away
        layers.append(entry)
    for boxes in contents.box_layers:
        layers.append({
            "type": "annotation", "name": boxes.name, "annotationColor": boxes.colour,
            "source": {"url": "local://annotations", "transform": {"outputDimensions": dims}},
            "annotations": [{"type": "axis_aligned_bounding_box", "id": f"{boxes.name}-{k}".replace(" ", "-"),
                             "pointA": _corner(a.box.start), "pointB": _corner(a.box.stop), "description": a.description}
                            for k, a in enumerate(boxes.boxes)],
        })
    return {
        "dimensions": dims,
        "displayDimensions": ["x", "y", "z"],
        "showDefaultAnnotations": False,
        "position": [x / 2 - 0.5, y / 2 - 0.5, float(z // 2)],
        "crossSectionScale": max(x, y) / 700,  # the section about 700 pixels across
        "projectionScale": 2.0 * max(x, y),
        "layers": layers,
        "selectedLayer": {"layer": contents.instances_layer or contents.image.name, "visible": False},
        "layout": "xy",
    }
