"""ft: the step of the self-supervised tuning, ``R's = Rs - alpha * dLsup/dRs`` (paper Eq. 11)."""

from __future__ import annotations

import math

import torch
from torch import nn


class SelfSupervisedTuning(nn.Module):
    """Holds alpha: a fixed number (the paper: 1.0), or a positive learned scalar ``exp(log_step)``."""

    def __init__(self, tune_step: float, learnable: bool) -> None:
        super().__init__()
        self.fixed_step = float(tune_step)
        self.log_step = nn.Parameter(torch.tensor(math.log(tune_step))) if learnable else None

    def step(self) -> float | torch.Tensor:
        return self.fixed_step if self.log_step is None else self.log_step.exp()

    def extra_repr(self) -> str:
        return "learnable" if self.log_step is not None else f"step={self.fixed_step}"
