"""Post-processing: 3D instances from masks, stitched across blocks (:mod:`alseg.postprocess.stitch`)."""
