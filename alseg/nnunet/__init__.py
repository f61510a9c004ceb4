"""nnU-Net v2 inside alseg: datasets from OME-Zarr patches, plans, training, blockwise prediction."""

from alseg.nnunet.dataset import IntensityNorm, export_dataset
from alseg.nnunet.paths import NnUNetDirs
from alseg.nnunet.run import NnUNetError, plan_and_preprocess, train, transfer_plans

__all__ = ["IntensityNorm", "NnUNetDirs", "NnUNetError", "export_dataset", "plan_and_preprocess", "train", "transfer_plans"]
