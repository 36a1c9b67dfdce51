"""The plain-PyTorch spec of SST, by its public name: :class:`SSTReference` (defined in
:mod:`sst_fast.models.sst`, above the fused :class:`sst_fast.SST` that overrides its stages)."""

from ..models.sst import SSTReference, TuningResult

__all__ = ["SSTReference", "TuningResult"]
