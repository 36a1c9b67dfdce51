"""sst_fast: SST (Self-Supervised Tuning for Few-Shot Segmentation, IJCAI 2020) in PyTorch."""

from . import data, engine, metrics, models, ops, reference
from ._version import __version__
from .config import SSTConfig
from .models import SST, SSTOutput
from .predict import predict, read_photo
from .protocol import ProtocolCard
from .segmenter import Segmenter

__all__ = [
    "SST",
    "ProtocolCard",
    "SSTConfig",
    "SSTOutput",
    "Segmenter",
    "__version__",
    "data",
    "engine",
    "metrics",
    "models",
    "ops",
    "predict",
    "read_photo",
    "reference",
]
