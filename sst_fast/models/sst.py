"""SST: the model users instantiate."""

from __future__ import annotations

from ..reference.model import SSTReference


class SST(SSTReference):
    """Self-Supervised Tuning for few-shot segmentation.

    Same modules, parameter names and outputs as :class:`sst_fast.reference.SSTReference`, so
    ``state_dict()`` moves freely between the two. It currently runs the reference stages; the
    fused-op path replaces :meth:`tune` and the relation calls behind the same interface.
    """
