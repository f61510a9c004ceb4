"""One block's connected components: connected-components-3d against scipy.ndimage.label, id for id."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from alseg.errors import SpecError
from alseg.io.omezarr import create_image, create_labels, open_volume
from alseg.postprocess.components import label_foreground
from alseg.postprocess.stitch import label_components


def _masks():
    rng = np.random.default_rng(7)
    yield "empty", np.zeros((4, 5, 6), bool)
    yield "full", np.ones((4, 5, 6), bool)
    yield "one voxel", np.pad(np.ones((1, 1, 1), bool), 1)
    yield "salt", rng.random((9, 17, 13)) < 0.3  # many diagonal-only contacts: 6 and 26 differ
    yield "dense", rng.random((9, 17, 13)) < 0.7
    yield "thin", rng.random((1, 40, 33)) < 0.5  # one section
    yield "column", rng.random((37, 1, 3)) < 0.5
    for level in (0.48, 0.5, 0.52):  # blobs that span the block, through the percolation range
        yield f"blobs {level}", ndimage.gaussian_filter(rng.random((16, 48, 40)), (1, 2, 2)) > level


@pytest.mark.parametrize("connectivity", [6, 26])
def test_cc3d_gives_scipys_labels_id_for_id(connectivity):
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    differ = 0
    for name, fg in _masks():
        ref, n = ndimage.label(fg, structure=structure)
        for labeller in ("cc3d", "scipy"):
            got = label_foreground(fg, connectivity, labeller)
            assert got.dtype == np.uint32 and got.shape == fg.shape, (name, labeller)
            assert np.array_equal(got, ref), (name, labeller, connectivity)
            assert int(got.max()) == n
        # strided, Fortran-ordered and transposed arrays are labelled in C raster order, as their C copy
        # (cc3d scans a Fortran array in its own memory order: other ids)
        for view in (fg[:, ::2], np.asfortranarray(fg), fg.transpose(2, 1, 0)):
            assert np.array_equal(label_foreground(view, connectivity), ndimage.label(view, structure=structure)[0]), name
        other = ndimage.label(fg, structure=ndimage.generate_binary_structure(3, 3 if connectivity == 6 else 1))[1]
        differ += other != n
    assert differ >= 2, "the masks tell 6- from 26-connectivity apart (else this test checks one of them)"


def test_bad_input_is_refused():
    fg = np.zeros((2, 3, 4), bool)
    with pytest.raises(SpecError, match="connectivity must be 6 or 26"):
        label_foreground(fg, 18)
    with pytest.raises(SpecError, match="labeller must be one of cc3d, scipy"):
        label_foreground(fg, 26, "skimage")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="3D boolean"):
        label_foreground(fg.astype(np.uint8), 26)
    with pytest.raises(ValueError, match="3D boolean"):
        label_foreground(fg[0], 26)


@pytest.mark.parametrize("connectivity", [6, 26])
def test_stitching_writes_the_same_bytes_with_either_labeller(tmp_path, connectivity):
    rng = np.random.default_rng(3)
    mask = ndimage.gaussian_filter(rng.random((20, 36, 44)), 2) > 0.5
    url = str(tmp_path / "mask.zarr")
    vol = create_image(url, shape=mask.shape, dtype="uint8", chunks=(8, 16, 16), voxel_size_nm=(1, 1, 1), levels=1)
    vol.write(vol.bounds, mask.astype(np.uint8))
    outs = {}
    for labeller in ("cc3d", "scipy"):
        out = create_labels(url, labeller, chunks=(8, 16, 16))
        res = label_components(url, out.url, block_shape=(8, 16, 16), work_dir=tmp_path / f"w-{labeller}",
                               connectivity=connectivity, min_size_vox=4, labeller=labeller)
        outs[labeller] = (open_volume(out.url).read(), res)
    assert np.array_equal(outs["cc3d"][0], outs["scipy"][0]) and outs["cc3d"][1] == outs["scipy"][1]
    assert outs["cc3d"][1]["merges"] > 0, "objects cross block borders (else the stitching passes are not exercised)"
    with pytest.raises(SpecError, match="labeller"):
        label_components(url, out.url, block_shape=(8, 16, 16), work_dir=tmp_path / "w-bad", labeller="skimage")  # type: ignore[arg-type]
