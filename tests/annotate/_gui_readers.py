"""Open an annotation package with the annotators' own code, in a process of its own (Qt, OpenGL
and these libraries' import-time warnings stay out of pytest's process).

    python _gui_readers.py napari PACKAGE PATCH_ID EDITS.npy OUT.npz
        napari.Viewer(show=False) opens zarr/patch-<id>.ome.zarr with napari-ome-zarr; the image and
        labels layers' data go to OUT.npz; EDITS.npy replaces the labels layer's data, which is then
        saved with napari's own writer as edited/patch-<id>.tif (the README's napari route).

    python _gui_readers.py microsam PACKAGE EDITS.npz OUT.npz
        the README's micro_sam.image_series_annotator command line is parsed by micro-SAM's own
        main(), its folders go through micro-SAM's image_folder_annotator (which pairs images with
        initial segmentations) up to the annotator itself, each pair is loaded with micro-SAM's
        loader (OUT.npz), and EDITS.npz (one array per image file name) is saved to the output
        folder under the name and with the call micro-SAM's "Next Image" uses.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

import numpy as np


def napari_route(package: str, patch_id: int, edits_path: str, out: str) -> None:
    import napari

    stem = f"patch-{patch_id:06d}"
    viewer = napari.Viewer(show=False)
    try:
        viewer.open(os.path.join(package, "zarr", f"{stem}.ome.zarr"), plugin="napari-ome-zarr")
        found = {}
        for layer in viewer.layers:
            data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
            kind = type(layer).__name__.lower()
            found[kind] = np.asarray(data)
            if kind == "labels":
                labels_layer = layer
        np.savez(out, **found, layer_names=np.array(json.dumps([[type(x).__name__, x.name] for x in viewer.layers])))
        labels_layer.data = np.load(edits_path)
        labels_layer.save(os.path.join(package, "edited", f"{stem}.tif"))
    finally:
        viewer.close()


def microsam_route(package: str, edits_path: str, out: str) -> None:
    import importlib

    import imageio.v3 as imageio
    from micro_sam import util

    isa = importlib.import_module("micro_sam.sam_annotator.image_series_annotator")  # the module, not its function

    line = next(x.strip() for x in open(os.path.join(package, "README.txt")) if x.strip().startswith("micro_sam."))
    argv = shlex.split(line)
    called: dict = {}

    def folder_annotator(*args, **kwargs):  # stands in for the annotator: captures micro-SAM's parsed CLI
        called["folder"] = (args, kwargs)

    real_folder_annotator = isa.image_folder_annotator
    isa.image_folder_annotator = folder_annotator
    sys.argv = ["micro_sam.image_series_annotator", *argv[1:]]
    isa.main()
    isa.image_folder_annotator = real_folder_annotator

    def series_annotator(images, output_folder, **kwargs):  # where the GUI would start
        called["series"] = (list(images), output_folder, kwargs)

    isa.image_series_annotator = series_annotator
    args, kwargs = called["folder"]
    real_folder_annotator(*args, **kwargs)
    images, output_folder, kw = called["series"]
    initial = list(kw["initial_segmentations"])
    loaded = {}
    for i, (img, seg) in enumerate(zip(images, initial, strict=True)):
        loaded[f"image_{i}"] = util.load_image_data(img)
        loaded[f"initial_{i}"] = util.load_image_data(seg)
    edits = np.load(edits_path)
    for img in images:
        # micro-SAM's _get_save_path and _save_segmentation for image files
        save_path = os.path.join(output_folder, os.path.splitext(os.path.basename(img))[0] + ".tif")
        imageio.imwrite(save_path, edits[os.path.basename(img)], compression="zlib")
    info = {"images": images, "initial": initial, "output_folder": output_folder,
            "is_volumetric": kw.get("is_volumetric"), "embedding_path": kw.get("embedding_path")}
    np.savez(out, **loaded, info=np.array(json.dumps(info)))


if __name__ == "__main__":
    if sys.argv[1] == "napari":
        napari_route(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        microsam_route(sys.argv[2], sys.argv[3], sys.argv[4])
