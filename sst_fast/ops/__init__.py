"""The fused ops of SST (DESIGN §3), one public function each, dispatched to a backend.

``masked_avg_pool``, ``prototype_conv2d`` and ``tuned_prototype`` check their arguments
here, once for every backend, then call the implementation chosen by
:func:`use_backend` / ``SST_FAST_BACKEND`` / ``auto``. ``backends()`` lists what is built.
"""

from __future__ import annotations

import math
from numbers import Real

import torch

from . import reference
from ._backend import KNOWN_BACKENDS, backends, current_backend, register_backend, resolve, use_backend

__all__ = [
    "KNOWN_BACKENDS",
    "backends",
    "current_backend",
    "masked_avg_pool",
    "prototype_conv2d",
    "register_backend",
    "tuned_prototype",
    "use_backend",
]

register_backend(
    "reference",
    {
        "masked_avg_pool": reference.masked_avg_pool,
        "prototype_conv2d": reference.prototype_conv2d,
        "tuned_prototype": reference.tuned_prototype,
    },
)


def masked_avg_pool(features: torch.Tensor, mask: torch.Tensor, eps: float = 5e-4) -> torch.Tensor:
    """Masked average pooling: ``(features * mask).sum((2,3)) / (mask.sum((2,3)) + eps)``.

    Args:
        features: [B, C, H, W] floating point.
        mask: [B, 1, H, W], soft or binary; bool/integer masks are converted to ``features.dtype``.
        eps: > 0; an all-zero mask gives a zero prototype.

    Returns:
        [B, C] prototypes, differentiable in ``features`` and (floating) ``mask``.
    """
    op = "masked_avg_pool"
    _check_float_tensor(op, "features", features, ndim=4)
    mask = _as_mask(op, mask, features)
    _check_positive(op, "eps", eps)
    return resolve(op, features.device.type)(features, mask, float(eps))


def prototype_conv2d(
    query: torch.Tensor,
    proto: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    dilation: int = 1,
) -> torch.Tensor:
    """Relation scoring of a query against a prototype, without materialising the tile.

    Equals ``conv2d(cat([query, tile(proto)], 1), weight, bias, padding=dilation*(k//2),
    dilation=dilation)``.

    Args:
        query: [B, C, H, W].
        proto: [B, C].
        weight: [Co, 2C, k, k], k odd; input channels ``[:C]`` see the query, ``[C:]`` the prototype.
        bias: [Co] or None.
        dilation: integer >= 1.

    Returns:
        [B, Co, H, W].
    """
    op = "prototype_conv2d"
    _check_float_tensor(op, "query", query, ndim=4)
    batch, channels = query.shape[:2]
    _check_float_tensor(op, "proto", proto, ndim=2, like=query)
    _check_shape(op, "proto", proto, (batch, channels), "[B, C] matching query [B, C, H, W]")
    _check_weight(op, weight, channels, like=query)
    if bias is not None:
        _check_float_tensor(op, "bias", bias, ndim=1, like=query)
        _check_shape(op, "bias", bias, (weight.shape[0],), "[Co] matching weight [Co, 2C, k, k]")
    _check_dilation(op, dilation)
    return resolve(op, query.device.type)(query, proto, weight, bias, int(dilation))


def tuned_prototype(
    delta: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    proto: torch.Tensor,
    step: float | torch.Tensor = 1.0,
    eps: float = 5e-4,
    dilation: int = 1,
) -> torch.Tensor:
    """The analytic feature-gradient tuning step (paper Eq. 11, pooled as in Eq. 12).

    With ``p = masked_avg_pool(F, mask, eps)``, ``y = prototype_conv2d(F, p, weight, ., dilation)``
    and ``delta = dL/dy``, returns ``masked_avg_pool(F - step * dL/dF, mask, eps)`` without
    forming ``dL/dF`` (DESIGN §3, op 3).

    Args:
        delta: [B, Co, H, W], the loss gradient at the relation convolution's output.
        mask: [B, 1, H, W], the mask ``p`` was pooled with.
        weight: [Co, 2C, k, k], the relation convolution's weight.
        proto: [B, C], ``p``.
        step: alpha, a number or a 0-dim tensor (a learnable step).
        eps: the pooling epsilon, > 0.
        dilation: the relation convolution's dilation.

    Returns:
        [B, C], the tuned prototype; differentiable in ``delta``, ``weight``, ``proto`` and ``step``.
    """
    op = "tuned_prototype"
    _check_float_tensor(op, "delta", delta, ndim=4)
    batch = delta.shape[0]
    mask = _as_mask(op, mask, delta)
    _check_float_tensor(op, "proto", proto, ndim=2, like=delta)
    if proto.shape[0] != batch:
        raise ValueError(f"{op}: proto must be [B, C] with B = {batch} as in delta, got {list(proto.shape)}")
    _check_weight(op, weight, proto.shape[1], like=delta)
    if weight.shape[0] != delta.shape[1]:
        raise ValueError(
            f"{op}: delta must have Co = weight.shape[0] = {weight.shape[0]} channels, got {list(delta.shape)}"
        )
    if isinstance(step, torch.Tensor):
        if step.dim() != 0 or not step.is_floating_point():
            raise ValueError(f"{op}: step must be a number or a 0-dim floating tensor, got {step!r}")
    elif isinstance(step, bool) or not (isinstance(step, Real) and math.isfinite(step)):
        raise ValueError(f"{op}: step must be a finite number, got {step!r}")
    _check_positive(op, "eps", eps)
    _check_dilation(op, dilation)
    return resolve(op, delta.device.type)(delta, mask, weight, proto, step, float(eps), int(dilation))


# --- argument checks shared by every backend ------------------------------------------------


def _check_float_tensor(op: str, name: str, value, ndim: int, like: torch.Tensor | None = None) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions, got shape {list(value.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"{op}: {name} must be a floating-point tensor, got {value.dtype}")
    if like is not None:
        if value.dtype != like.dtype:
            raise ValueError(f"{op}: {name} has dtype {value.dtype}, expected {like.dtype} like the other inputs")
        if value.device != like.device:
            raise ValueError(f"{op}: {name} is on {value.device}, expected {like.device} like the other inputs")


def _check_shape(op: str, name: str, value: torch.Tensor, shape: tuple[int, ...], meaning: str) -> None:
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must be {meaning} = {list(shape)}, got {list(value.shape)}")


def _as_mask(op: str, mask, features: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{op}: mask must be a torch.Tensor, got {type(mask).__name__}")
    batch, _, height, width = features.shape
    _check_shape(op, "mask", mask, (batch, 1, height, width), "[B, 1, H, W] matching the feature map")
    if not mask.is_floating_point():
        mask = mask.to(features.dtype)
    _check_float_tensor(op, "mask", mask, ndim=4, like=features)
    return mask


def _check_weight(op: str, weight, channels: int, like: torch.Tensor) -> None:
    _check_float_tensor(op, "weight", weight, ndim=4, like=like)
    _, in_channels, kh, kw = weight.shape
    if in_channels != 2 * channels:
        raise ValueError(f"{op}: weight must be [Co, 2C, k, k] with 2C = {2 * channels}, got {list(weight.shape)}")
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"{op}: weight must have a square kernel of odd size k, got {kh}x{kw}")


def _check_dilation(op: str, dilation) -> None:
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"{op}: dilation must be an integer >= 1, got {dilation!r}")


def _check_positive(op: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{op}: {name} must be a finite number > 0, got {value!r}")
