"""SST: the model users instantiate, the reference's algebra on the fused ops (docs/design.md §3)."""

from __future__ import annotations

import math

import torch

from .. import ops
from .functional import per_image_cross_entropy
from .reference import SSTReference, TuningResult


class SST(SSTReference):
    """Self-Supervised Tuning for few-shot segmentation, on the fused ops.

    Same modules, parameter names, inputs and outputs as :class:`sst_fast.reference.SSTReference`
    (``state_dict()`` moves freely between the two) and the same numbers to floating-point
    tolerance. What differs is how the two stages that carry SST's cost are computed:

    * every relation call (Eq. 12-13) is ``ops.prototype_conv2d``: the prototype's half of the
      first relation convolution acts on a constant map, so it is a k x k table of GEMVs added
      to the query half's convolution; the tile and the concatenation are never formed;
    * the tuning step (Eq. 11-12) stops the inner gradient at the relation convolution's output,
      ``delta = dLsup/dy``, and ``ops.tuned_prototype`` pools ``Rs - alpha dLsup/dRs`` from
      ``delta`` in closed form: neither the transposed convolution that would give ``dLsup/dRs``
      nor the tuned feature map ``R's`` is ever computed. Second order, ``delta`` keeps its graph
      and the outer loss differentiates through it.
    """

    def pool(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return ops.masked_avg_pool(features, mask, self.config.eps)

    def relation_map(self, features: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        return self.relation.refine(self._score(features, protos))

    def _score(self, features: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        """The relation's first convolution on ``cat(features, tile(protos))``, fused."""
        conv = self.relation.conv
        return ops.prototype_conv2d(features, protos, conv.weight, conv.bias, conv.dilation[0])

    def _tune(self, rs, mask, labels, outer_grad: bool, feature_gradient: bool) -> TuningResult:
        if feature_gradient:  # the full map is wanted (paper Fig. 3): the reference forms it
            return super()._tune(rs, mask, labels, outer_grad, feature_gradient)
        cfg = self.config
        proto = self.pool(rs, mask)  # Eq. 12, pool(Rs * Ts): [N, C]
        y = self._score(rs, proto)  # the relation's first convolution, Eq. 13
        support_logits = self.decoder(self.relation.refine(y), labels.shape[-2:])  # Eq. 8-9
        support_loss = per_image_cross_entropy(support_logits, labels)  # Eq. 10: [N]
        if not cfg.ssm:
            return TuningResult(support_logits, support_loss, proto, None, None)
        second_order = outer_grad and not cfg.first_order
        # Under float16 autocast dLsup/dy (~1/pixels per pixel) would underflow: scale the loss by a power
        # of two near the pixel count, so that the gradient is O(1) in float16, and unscale it exactly.
        scale = _inner_loss_scale(y, labels)
        (delta,) = torch.autograd.grad(
            support_loss.sum() * scale if scale != 1 else support_loss.sum(),
            y,
            create_graph=second_order,
            retain_graph=outer_grad,
        )
        if scale != 1:
            delta = delta.float() / scale
        # First order the inner gradient is a constant: no path back through delta or the weight.
        weight = self.relation.conv.weight if second_order else self.relation.conv.weight.detach()
        dilation = self.relation.conv.dilation[0]
        if cfg.tune_form == "paper":
            tuned_proto = ops.tuned_prototype(  # Eq. 11 then Eq. 12, pool(Rs - alpha dLsup/dRs)
                delta, mask, weight, proto, self.tuning.step(), cfg.eps, dilation
            )
        else:  # the pooled gradient g = pool(dLsup/dRs) from the same op (p = 0, step 1 gives -g), then the step
            gradient = -ops.tuned_prototype(delta, mask, weight, torch.zeros_like(proto), 1.0, cfg.eps, dilation)
            tuned_proto = proto - self.tuning.feature_steps(proto, gradient) * gradient
        return TuningResult(support_logits, support_loss, proto, tuned_proto, None)


def _inner_loss_scale(y: torch.Tensor, labels: torch.Tensor) -> float:
    """1, or under float16 autocast the power of two nearest the support label's pixel count."""
    if y.dtype != torch.float16:
        return 1.0
    return float(2 ** round(math.log2(labels.shape[-2] * labels.shape[-1])))
