"""Connected components of one block's foreground: the one adapter around connected-components-3d.

``label_foreground`` numbers the components of a boolean array ``1..n`` in raster order (the order
in which a C-order scan first meets each component), as ``uint32``. Two labellers give the same
array, id for id (tests/postprocess/test_components.py checks it on random masks):

- ``"cc3d"`` (the default): connected-components-3d, the maintained C++ library that nnU-Net's own
  utilities use; several times faster than scipy on a block (``benchmarks/stitch.py`` measures it);
- ``"scipy"``: ``scipy.ndimage.label`` with the 6- or 26-neighbourhood, the reference.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

from alseg.errors import SpecError

Labeller = Literal["cc3d", "scipy"]
LABELLERS: tuple[Labeller, ...] = ("cc3d", "scipy")


def structure(connectivity: int) -> np.ndarray:
    """scipy's 3D neighbourhood for 6- (faces) or 26-connectivity (faces, edges and corners)."""
    if connectivity not in (6, 26):
        raise SpecError(f"connectivity must be 6 or 26, got {connectivity}")
    return ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)


def label_foreground(fg: np.ndarray, connectivity: int, labeller: Labeller = "cc3d") -> np.ndarray:
    """Components of the 3D boolean ``fg`` numbered ``1..n`` in raster order, as ``uint32``.

    Blocks are at most ``2**31 - 1`` voxels (``Layout.create`` refuses larger), so ids fit.
    """
    if fg.ndim != 3 or fg.dtype != np.bool_:
        raise ValueError(f"expected a 3D boolean array, got {fg.ndim}D {fg.dtype}")
    if labeller == "scipy":
        out = np.empty(fg.shape, dtype=np.int32)
        ndimage.label(fg, structure=structure(connectivity), output=out)
        return out.view(np.uint32)
    if labeller != "cc3d":
        raise SpecError(f"labeller must be one of {', '.join(LABELLERS)}, got {labeller!r}")
    structure(connectivity)  # the same check and message as scipy's path
    import cc3d

    return cc3d.connected_components(np.ascontiguousarray(fg), connectivity=connectivity, out_dtype=np.uint32,
                                     binary_image=True)
