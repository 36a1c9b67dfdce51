"""The fused ops of SST (docs/design.md §3), one public function each, dispatched to a backend.

``masked_avg_pool``, ``prototype_conv2d`` and ``tuned_prototype`` check their arguments
here, once for every backend, then call the implementation chosen by
:func:`use_backend` / ``SST_FAST_BACKEND`` / ``auto``. ``backends()`` lists what is built:

* ``reference``: plain PyTorch (:mod:`sst_fast.ops.reference`), the spec; every device.
* ``cpp`` / ``cuda``: the compiled library ``sst_fast.ops._C`` (``torch.ops.sst_fast``).
* ``triton``: Triton kernels (``torch.ops.sst_fast_triton``) for CUDA tensors; with
  ``TRITON_INTERPRET=1`` also for CPU tensors (slow; for testing). Imported on first use.

The backend is chosen when an op runs forward; its backward always runs on the same
backend, whichever thread autograd uses.

Autocast: ``prototype_conv2d`` runs in the autocast dtype (like ``conv2d``);
``tuned_prototype`` runs in float32 (the tuning step is a small difference of large
sums); ``masked_avg_pool`` runs in its inputs' dtype. Every kernel accumulates in float32.
"""

from __future__ import annotations

import importlib.util
import math
import os
from numbers import Real

import torch

from . import _compiled, reference
from ._backend import KNOWN_BACKENDS, backends, current_backend, register_backend, resolve, use_backend

__all__ = [
    "KNOWN_BACKENDS",
    "backends",
    "current_backend",
    "masked_avg_pool",
    "prototype_conv2d",
    "library_status",
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
if _compiled.OPS is not None:
    _compiled_ops = _compiled.backend_ops(_compiled.OPS)
    _built = _compiled.built_device_types()
    if "cpu" in _built:
        register_backend("cpp", _compiled_ops, device_types=("cpu",))
    if "cuda" in _built:
        register_backend("cuda", _compiled_ops, device_types=("cuda",), max_kernel_size=_compiled.CUDA_MAX_KERNEL_SIZE)


def _triton_device_types() -> tuple[str, ...]:
    """Where the Triton backend can run: CUDA with a GPU, CPU under ``TRITON_INTERPRET=1``."""
    if importlib.util.find_spec("triton") is None:
        return ()
    devices = ("cuda",) if torch.cuda.is_available() else ()
    if os.environ.get("TRITON_INTERPRET") == "1":
        devices += ("cpu",)
    return devices


def _lazy_triton(op: str):
    def call(*args):
        from . import _triton  # the first call compiles nothing: kernels compile on launch

        return _triton.BACKEND[op](*args)

    return call


_triton_devices = _triton_device_types()
if _triton_devices:
    register_backend("triton", {op: _lazy_triton(op) for op in _compiled.PUBLIC_OPS}, device_types=_triton_devices)


def library_status() -> str:
    """One line on the compiled kernels: what is built, or why the reference serves every op."""
    if _compiled.LOAD_ERROR is not None:
        return f"sst_fast.ops._C not loaded ({_compiled.LOAD_ERROR}); every op runs the reference implementation"
    devices = ", ".join(_compiled.built_device_types()) or "no device"
    return f"sst_fast.ops._C loaded (kernels for: {devices}); Triton: {triton_status()}"


def triton_status() -> str:
    """Where the Triton backend runs, or why it runs nowhere here."""
    devices = _triton_device_types()
    if devices:
        return ", ".join(devices)
    if importlib.util.find_spec("triton") is None:
        return "not available (triton is not installed)"
    return "not available (no CUDA device; TRITON_INTERPRET=1 runs its kernels on the CPU, slowly)"


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
    if _autocast_dtype(features) is not None and isinstance(mask, torch.Tensor):
        mask = mask.to(features.dtype)  # the features' dtype, whichever autocast produced
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
    cast = _autocast_dtype(query)
    if cast is not None:  # the autocast dtype, like conv2d
        query, proto, weight, bias = _cast_floating((query, proto, weight, bias), cast)
        with torch.autocast(query.device.type, enabled=False):
            return prototype_conv2d(query, proto, weight, bias, dilation)
    batch, channels = query.shape[:2]
    _check_float_tensor(op, "proto", proto, ndim=2, like=query)
    _check_shape(op, "proto", proto, (batch, channels), "[B, C] matching query [B, C, H, W]")
    _check_weight(op, weight, channels, like=query)
    if bias is not None:
        _check_float_tensor(op, "bias", bias, ndim=1, like=query)
        _check_shape(op, "bias", bias, (weight.shape[0],), "[Co] matching weight [Co, 2C, k, k]")
    _check_dilation(op, dilation)
    return resolve(op, query.device.type, weight.shape[-1])(query, proto, weight, bias, int(dilation))


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
    forming ``dL/dF`` (docs/design.md §3, op 3). Every backend computes the bracket, the pooled feature
    gradient ``masked_avg_pool(dL/dF, mask, eps)``, as the schema op ``torch.ops.sst_fast.prototype_update``
    (:func:`sst_fast.ops.reference.prototype_update`); this function returns ``proto - step *`` it.

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
    if _autocast_dtype(delta) is not None:  # float32: a small step off a mean of large sums
        delta, mask, weight, proto, step = _cast_floating((delta, mask, weight, proto, step), torch.float32)
        with torch.autocast(delta.device.type, enabled=False):
            return tuned_prototype(delta, mask, weight, proto, step, eps, dilation)
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
    # The compiled kernels treat the mask as a label; a mask that needs a gradient takes the reference.
    if mask.requires_grad:
        implementation = reference.tuned_prototype
    else:
        implementation = resolve(op, delta.device.type, weight.shape[-1])
    return implementation(delta, mask, weight, proto, step, float(eps), int(dilation))


# --- autocast ------------------------------------------------------------------------------------


def _autocast_dtype(tensor: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype active for ``tensor``'s device, or None when autocast is off there."""
    device_type = tensor.device.type
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _cast_floating(values: tuple, dtype: torch.dtype) -> tuple:
    return tuple(
        value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value for value in values
    )


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
