"""ft: the step of the self-supervised tuning, ``R's = Rs - alpha * dLsup/dRs`` (paper Eq. 11).

Two forms of the step size (``SSTConfig.tune_form``):

* ``"paper"``: alpha as written, a fixed feature-gradient step. With the per-image mean
  cross-entropy the pooled gradient ``g = pool(dLsup/dRs)`` is ~1/pixels, so how far the prototype
  moves depends on the image size, the feature scale and the loss's reduction (at alpha = 1 it
  barely moves: 0.2-1% of its norm).
* ``"relative"``: the same Eq. 11 step with a per-shot step ``alpha_i = alpha * |p_i| / |g_i|``:
  the prototype moves by the fraction alpha of its own norm along ``-g``, whatever the pixel count,
  the feature scale or a loss scale. ``p' = p - alpha |p| g / |g|``; a shot with ``g = 0`` or
  ``p = 0`` (an empty mask) does not move.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SelfSupervisedTuning(nn.Module):
    """Holds alpha: a fixed number (the paper: 1.0), or a positive learned scalar ``exp(log_step)``."""

    def __init__(self, tune_step: float, learnable: bool, form: str = "paper") -> None:
        super().__init__()
        self.fixed_step = float(tune_step)
        self.form = form
        self.log_step = nn.Parameter(torch.tensor(math.log(tune_step))) if learnable else None

    def step(self) -> float | torch.Tensor:
        return self.fixed_step if self.log_step is None else self.log_step.exp()

    def feature_steps(self, proto: torch.Tensor, pooled_gradient: torch.Tensor) -> float | torch.Tensor:
        """Each shot's step on the feature map: alpha (``paper``), or [N, 1] ``alpha |p| / |g|`` (``relative``).

        ``proto`` [N, C] is ``p``, ``pooled_gradient`` [N, C] is ``g = pool(dLsup/dRs)``; then
        ``p' = p - steps * g`` and ``R's = Rs - steps * dLsup/dRs``.
        """
        alpha = self.step()
        if self.form == "paper":
            return alpha
        norm = torch.linalg.vector_norm(pooled_gradient, dim=1, keepdim=True)
        # Where g = 0 the step is 0, not 0/0 (and both branches stay finite, so do their gradients).
        moving = norm > 0
        ratio = torch.linalg.vector_norm(proto, dim=1, keepdim=True) / torch.where(moving, norm, torch.ones_like(norm))
        return alpha * torch.where(moving, ratio, torch.zeros_like(ratio))

    def extra_repr(self) -> str:
        step = "learnable" if self.log_step is not None else f"step={self.fixed_step}"
        return f"{step}, form={self.form}"
