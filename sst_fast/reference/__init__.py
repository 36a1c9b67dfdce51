"""The plain-PyTorch spec of SST: :class:`SSTReference` (the model) and the reference ops."""

from .model import SSTReference, TuningResult

__all__ = ["SSTReference", "TuningResult"]
