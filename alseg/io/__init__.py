"""OME-Zarr volumes at any fsspec URL (:mod:`alseg.io.omezarr`) and the stores beneath them (:mod:`alseg.io.store`)."""

from alseg.io.omezarr import (
    Volume,
    create_image,
    create_labels,
    list_labels,
    open_labels,
    open_volume,
)

__all__ = ["Volume", "create_image", "create_labels", "list_labels", "open_labels", "open_volume"]
