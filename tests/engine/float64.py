"""Training in float64 for the tests that compare two runs: where float32's rounding, carried over several
steps, leaves a bound too loose to say much, the same comparison in float64 is sharp."""

from pathlib import Path

import torch

from sst_fast import SST
from sst_fast.reference import SSTReference
from tests.models.helpers import episode, tuning_tolerance
from tests.tolerance import between


class Float64SST(SST):
    """SST in float64, the float32 images cast on the way in (into the backbone too, for a feature cache it
    builds): a run whose rounding is 2^-29 times float32's, for comparisons that float32's would blur. The
    trainer takes it as the module ``sst_fast.engine.train``'s ``SST`` (:data:`FLOAT64_DRIVER`, or monkeypatch)."""

    def __init__(self, config):
        super().__init__(config)
        self.double()
        self.backbone.register_forward_pre_hook(lambda module, args: tuple(a.double() for a in args))

    def forward(self, query, support_images, *args, **kwargs):
        return super().forward(query.double(), support_images.double(), *args, **kwargs)


# ``sst-fast`` with Float64SST: python FLOAT64_DRIVER ARGS (a script, for torchrun).
FLOAT64_DRIVER = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
import importlib
from sst_fast.cli import main
from tests.engine.float64 import Float64SST
importlib.import_module("sst_fast.engine.train").SST = Float64SST
sys.exit(main(sys.argv[1:]))
"""


def training_tolerance(dtype: torch.dtype, config) -> tuple[float, float]:
    """How far two runs of ``config`` (a RunConfig) may be apart, relative to the compared tensor's largest
    magnitude: (a forward, a training step), tests.tolerance.between for the sums each adds, counted on the
    reference at the run's shapes (another split of the batch gives every kernel, the backbone's too, other
    shapes). A step: the forward with its inner tuning step, and the backward (its weight gradients sum the
    global batch's N * H * W terms: the ranks' partial sums and their all-reduce add them in another order) twice,
    second order going back through the inner step; then the optimizer: the clip's norm over every trainable
    parameter (one sign), the weight decay, the momentum and the update (two terms each)."""
    reference = SSTReference(config.model)
    inputs = episode(batch=config.optim.batch_size, shots=config.model.shots, size=config.model.image_size[0])
    forward = tuning_tolerance(reference, inputs, dtype, backbone=True)
    trainable = sum(p.numel() for p in reference.parameters() if p.requires_grad)
    step = 2 * tuning_tolerance(reference, inputs, dtype, gradients=True, backbone=True)
    return forward, step + between(dtype, mixed=[2, 2, 2], same=[trainable])
