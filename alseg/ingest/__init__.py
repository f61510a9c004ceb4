"""Ingest image stacks into OME-Zarr: readable sources (:mod:`.sources`) and the staged, checked
writer (:mod:`.write`), with the VNC ssTEM stack as a worked example (:func:`ingest_vnc`)."""

from alseg.ingest.sources import (
    ArraySource,
    HDF5Source,
    NpySource,
    SliceFolder,
    SliceSource,
    TiffStack,
    open_source,
)
from alseg.ingest.write import ingest, ingest_labels, ingest_vnc

__all__ = ["ArraySource", "HDF5Source", "NpySource", "SliceFolder", "SliceSource", "TiffStack", "ingest",
           "ingest_labels", "ingest_vnc", "open_source"]
