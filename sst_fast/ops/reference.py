"""The reference implementations of the fused ops: plain PyTorch, the spec (docs/design.md §3).

Every fast backend is held against these functions. They take already-validated
arguments (see :mod:`sst_fast.ops`), work on any device and dtype, and are differentiable
in every floating-point input through ordinary autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_avg_pool(features: torch.Tensor, mask: torch.Tensor, eps: float = 5e-4) -> torch.Tensor:
    """``(features * mask).sum((2, 3)) / (mask.sum((2, 3)) + eps)``: [B,C,H,W], [B,1,H,W] -> [B,C]."""
    return (features * mask).sum((2, 3)) / (mask.sum((2, 3)) + eps)


def tile(proto: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Broadcast a prototype [B,C] to a feature map [B,C,H,W] (paper Eq. 12, ``tile``)."""
    return proto[:, :, None, None].expand(-1, -1, size[0], size[1])


def prototype_conv2d(
    query: torch.Tensor,
    proto: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    dilation: int = 1,
) -> torch.Tensor:
    """``conv2d(cat([query, tile(proto)], 1), weight, bias)``, 'same' padding, the given dilation."""
    tiled = tile(proto, query.shape[-2:])
    padding = dilation * (weight.shape[-1] // 2)
    return F.conv2d(torch.cat([query, tiled], 1), weight, bias, padding=padding, dilation=dilation)


def tuned_prototype(
    delta: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    proto: torch.Tensor,
    step: float | torch.Tensor = 1.0,
    eps: float = 5e-4,
    dilation: int = 1,
) -> torch.Tensor:
    """``masked_avg_pool(F - step * dL/dF, mask)`` from ``delta = dL/dy`` alone (docs/design.md §3, op 3)."""
    return proto - step * prototype_update(delta, mask, weight, eps, dilation)


def prototype_update(
    delta: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, eps: float = 5e-4, dilation: int = 1
) -> torch.Tensor:
    """``masked_avg_pool(dL/dF, mask)``: the pooled feature gradient, [B, C]; the schema op behind the public
    :func:`sst_fast.ops.tuned_prototype` (which returns ``proto - step *`` it).

    ``y = prototype_conv2d(F, masked_avg_pool(F, mask), weight)``, so ``dL/dF`` has a direct
    part, ``conv_transpose(delta, Wq)``, and a part through the prototype,
    ``mask / (sum(mask) + eps) * dp``. Pooling both needs only k*k shifted masked sums of
    ``delta`` (``S``) and k*k in-image sums of ``delta`` (``dQ``); neither the gradient map
    nor the tuned feature map is ever formed.

    float16 and bfloat16 inputs are computed in float32 and the result rounded once: the mask's mass M
    and M^2 overflow float16 from M = 256 on (a 41x41 map holds up to 1681), and the step is a small
    difference of large sums.
    """
    dtype = delta.dtype
    if dtype in (torch.float16, torch.bfloat16):
        widened = (x.float() for x in (delta, mask, weight))
        return prototype_update(*widened, eps=eps, dilation=dilation).to(dtype)
    channels = weight.shape[1] // 2
    kernel = weight.shape[-1]
    w_query = weight[:, :channels].flatten(2)  # [Co, C, k*k]
    w_proto = weight[:, channels:].flatten(2)  # [Co, C, k*k]

    def taps(x: torch.Tensor) -> torch.Tensor:
        # [N, 1, H, W] -> [N, k*k, H*W]: x at (h + (i - r) d, w + (j - r) d), zero outside.
        return F.unfold(x, kernel, dilation=dilation, padding=dilation * (kernel // 2))

    delta_flat = delta.flatten(2)  # [B, Co, H*W]
    shifted_masked_sums = torch.einsum("bol,btl->bot", delta_flat, taps(mask))  # S   [B, Co, k*k]
    in_image = taps(torch.ones_like(mask[:1]))[0]  # [k*k, H*W]: 1 where the tap reads inside
    tap_sums = torch.einsum("bol,tl->bot", delta_flat, in_image)  # dQ  [B, Co, k*k]

    mass = mask.sum((1, 2, 3)) + eps  # [B]
    pooled_direct = torch.einsum("oct,bot->bc", w_query, shifted_masked_sums) / mass[:, None]
    d_proto = torch.einsum("oct,bot->bc", w_proto, tap_sums)  # dp  [B, C]
    return pooled_direct + d_proto * (mask.square().sum((1, 2, 3)) / mass.square())[:, None]
