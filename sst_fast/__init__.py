"""sst_fast: SST (Self-Supervised Tuning for Few-Shot Segmentation, IJCAI 2020) in PyTorch."""

from . import data, models, ops, reference
from .config import SSTConfig
from .models import SST, SSTOutput
from .predict import predict

__version__ = "0.1.0"

__all__ = ["SST", "SSTConfig", "SSTOutput", "data", "models", "ops", "predict", "reference", "__version__"]
