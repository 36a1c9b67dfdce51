"""The plain-PyTorch spec of SST, by its public name: :class:`SSTReference` (defined in
:mod:`sst_fast.models.reference`, beside the fused :class:`sst_fast.SST` that overrides its stages)."""

from ..models.reference import SSTReference, TuningResult

__all__ = ["SSTReference", "TuningResult"]
