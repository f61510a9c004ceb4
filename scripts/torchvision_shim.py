"""Start-up hook for CPU virtual environments where torchvision's C extension cannot load.

Installed by ``scripts/install.sh`` (as ``_alseg_torchvision_shim`` plus a ``.pth`` line that
imports it) only when ``import torchvision`` fails beside a CPU build of torch. torchvision
registers fake (meta) kernels for ``torchvision::nms`` and ``torchvision::qnms`` at import time;
without its C extension those operators have no schema and the import raises
``RuntimeError: operator torchvision::nms does not exist``. This finder waits until torchvision is
first imported, defines the two schemas, then removes itself, so Python start-up pays nothing and
only torchvision's C++ operators (nms, roi_align, image decoding, unused by alseg) stay unavailable.

Not part of the alseg package: it is an installation workaround for one machine kind.
"""

from __future__ import annotations

import importlib.abc
import sys

_LIBRARY = None  # keeps the torch.library.Library alive for the life of the process


class _TorchvisionSchemaFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # noqa: D102 - importlib protocol
        if fullname != "torchvision":
            return None
        global _LIBRARY
        sys.meta_path.remove(self)
        import torch

        _LIBRARY = torch.library.Library("torchvision", "DEF")
        _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        return None  # let the normal finders import torchvision itself


if not any(isinstance(f, _TorchvisionSchemaFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _TorchvisionSchemaFinder())
