"""The compiled ops: loading ``sst_fast.ops._C``, fake kernels, autograd, and the ``cpp``/``cuda`` backends.

``csrc/sst_fast.cpp`` defines six ops in the ``sst_fast`` namespace: three forward ops and
their backward ops (docs/design.md §3). This module gives them what torch needs beyond the kernels:

* fake (meta) kernels, so ``torch.compile`` and ``torch.export`` can trace them;
* autograd, with the backward served by the backward op;
* double backward as a documented composite: when a backward runs with ``create_graph`` (grad
  mode on), the gradient is recomputed from the reference implementation by autograd, so every
  higher-order derivative equals the reference's (eager mode; ``torch.compile`` itself does not
  support double backward). The fused backward kernels serve every first-order backward.
* ``prototype_update`` has no mask gradient (the mask is a label in SST);
  :func:`sst_fast.ops.tuned_prototype` sends a mask that requires grad to the reference.

:func:`register_family` wires any namespace holding the same six ops the same way; the Triton
backend (:mod:`sst_fast.ops._triton`) reuses it.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence

import torch

from . import reference

FORWARD_OPS = ("masked_avg_pool", "prototype_conv2d", "prototype_update")
# The largest relation kernel (k x k) the CUDA kernels are instantiated for: kMaxKernelSize in csrc/cuda/windows.cuh.
CUDA_MAX_KERNEL_SIZE = 7
PUBLIC_OPS = ("masked_avg_pool", "prototype_conv2d", "tuned_prototype")

try:
    from . import _C  # noqa: F401  (loading the library registers torch.ops.sst_fast)

    LOAD_ERROR: str | None = None
except ImportError as exc:  # no compiled library: the package runs on the reference ops
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def _has_kernel(op: str, dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"sst_fast::{op}", dispatch_key)


def built_device_types() -> tuple[str, ...]:
    """Device types the compiled library has kernels for: ``()``, ``('cpu',)`` or ``('cpu', 'cuda')``."""
    if LOAD_ERROR is not None:
        return ()
    return tuple(
        device for device, key in (("cpu", "CPU"), ("cuda", "CUDA")) if all(_has_kernel(op, key) for op in FORWARD_OPS)
    )


# --- the composite that serves double backward ---------------------------------------------------


def _reference_vjp(
    function: Callable, inputs: Sequence[torch.Tensor | None], needs: Sequence[bool], grad: torch.Tensor, *args
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of ``function(*inputs, *args)`` for ``grad``, differentiable themselves (create_graph).

    The function runs on aliases of the inputs, and the gradients are taken with respect to the
    aliases: partial derivatives, even when one input is computed from another (a prototype pooled
    from the query it is compared with).
    """
    with torch.enable_grad():
        aliases = [x.view_as(x) if need and x is not None else x for x, need in zip(inputs, needs, strict=True)]
        out = function(*aliases, *args)
    wanted = [alias for alias, x, need in zip(aliases, inputs, needs, strict=True) if need and x is not None]
    found = iter(torch.autograd.grad(out, wanted, grad, create_graph=True, allow_unused=True))
    return tuple(next(found) if need and x is not None else None for x, need in zip(inputs, needs, strict=True))


# --- autograd for a family of six ops ------------------------------------------------------------


def register_family(namespace: str) -> types.SimpleNamespace:
    """Register autograd for ``{namespace}::{masked_avg_pool, prototype_conv2d, prototype_update}``.

    Returns the namespace's op handles (``torch.ops.<namespace>``).
    """
    ops = getattr(torch.ops, namespace)

    # masked_avg_pool(features, mask, eps)
    def pool_setup(ctx, inputs, output):
        features, mask, ctx.eps = inputs
        ctx.save_for_backward(features, mask)

    def pool_backward(ctx, grad):
        features, mask = ctx.saved_tensors
        needs = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():
            grads = _reference_vjp(reference.masked_avg_pool, (features, mask), needs, grad, ctx.eps)
        else:
            grads = ops.masked_avg_pool_backward(grad, features, mask, ctx.eps, list(needs))
        return grads[0] if needs[0] else None, grads[1] if needs[1] else None, None

    # prototype_conv2d(query, proto, weight, bias, dilation)
    def conv_setup(ctx, inputs, output):
        query, proto, weight, bias, ctx.dilation = inputs
        ctx.has_bias = bias is not None
        ctx.save_for_backward(query, proto, weight, bias)

    def conv_backward(ctx, grad):
        query, proto, weight, bias = ctx.saved_tensors
        needs = list(ctx.needs_input_grad[:4])
        needs[3] = needs[3] and ctx.has_bias
        if torch.is_grad_enabled():
            inputs = (query, proto, weight, bias)
            grads = _reference_vjp(reference.prototype_conv2d, inputs, needs, grad, ctx.dilation)
        else:
            grads = ops.prototype_conv2d_backward(grad, query, proto, weight, ctx.dilation, needs)
        return (*(g if need else None for g, need in zip(grads, needs, strict=True)), None)

    # prototype_update(delta, mask, weight, eps, dilation)
    def update_setup(ctx, inputs, output):
        delta, mask, weight, ctx.eps, ctx.dilation = inputs
        ctx.save_for_backward(delta, mask, weight)

    def update_backward(ctx, grad):
        delta, mask, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if needs[1]:
            raise RuntimeError(
                f"{namespace}::prototype_update has no gradient for mask; sst_fast.ops.tuned_prototype serves a "
                "mask that requires grad from the reference implementation"
            )
        if torch.is_grad_enabled():
            inputs = (delta, mask, weight)
            grads = _reference_vjp(reference.prototype_update, inputs, needs, grad, ctx.eps, ctx.dilation)
        else:
            grads = ops.prototype_update_backward(
                grad, delta, mask, weight, ctx.eps, ctx.dilation, [needs[0], needs[2]]
            )
            grads = (grads[0], None, grads[1])
        return (*(g if need else None for g, need in zip(grads, needs, strict=True)), None, None)

    for name, backward, setup in (
        ("masked_avg_pool", pool_backward, pool_setup),
        ("prototype_conv2d", conv_backward, conv_setup),
        ("prototype_update", update_backward, update_setup),
    ):
        torch.library.register_autograd(f"{namespace}::{name}", backward, setup_context=setup)
    return ops


def backend_ops(ops) -> dict[str, Callable]:
    """The public op signatures (see :mod:`sst_fast.ops`) served by a family's ops."""

    def tuned_prototype(delta, mask, weight, proto, step, eps, dilation):
        update = ops.prototype_update(delta, mask, weight, eps, dilation)
        if isinstance(step, torch.Tensor):
            return proto - step * update
        return torch.sub(proto, update, alpha=step)

    return {
        "masked_avg_pool": ops.masked_avg_pool,
        "prototype_conv2d": ops.prototype_conv2d,
        "tuned_prototype": tuned_prototype,
    }


# --- fake kernels of the sst_fast ops ------------------------------------------------------------


def _register_fakes() -> None:
    def fake(name):
        return torch.library.register_fake(f"sst_fast::{name}")

    @fake("masked_avg_pool")
    def _(features, mask, eps):
        return features.new_empty(features.shape[:2])

    @fake("masked_avg_pool_backward")
    def _(grad, features, mask, eps, output_mask):
        return (
            torch.empty_like(features, memory_format=torch.contiguous_format) if output_mask[0] else None,
            torch.empty_like(mask, memory_format=torch.contiguous_format) if output_mask[1] else None,
        )

    # The convolution's own meta kernels give prototype_conv2d's layouts (csrc/ops.cpp updates the convolution's
    # output in place, and its backward returns the convolution's gradients): channels-last where the device's
    # convolution picks it for the query's and the weight's layouts, dtype and device, as the real kernels do.
    def query_convolution(query, weight, dilation):
        channels, kernel = query.shape[1], weight.shape[-1]
        return weight.narrow(1, 0, channels), [dilation * (kernel // 2)] * 2, [dilation, dilation]

    @fake("prototype_conv2d")
    def _(query, proto, weight, bias, dilation):
        query_weight, padding, dilations = query_convolution(query, weight, dilation)
        return torch.ops.aten.convolution(query, query_weight, bias, [1, 1], padding, dilations, False, [0, 0], 1)

    @fake("prototype_conv2d_backward")
    def _(grad, query, proto, weight, dilation, output_mask):
        need_query, need_proto, need_weight, need_bias = output_mask
        d_query = d_weight = None
        if need_query or need_weight:
            query_weight, padding, dilations = query_convolution(query, weight, dilation)
            d_query, d_weight_query, _ = torch.ops.aten.convolution_backward(
                grad, query, query_weight, None, [1, 1], padding, dilations, False, [0, 0], 1,
                [need_query, need_weight, False],
            )
            if need_weight:  # the prototype's half as csrc/ops.cpp lays it out: [Co, k*k, C] seen as [Co, C, k, k]
                out_channels, channels, kernel, _ = d_weight_query.shape
                by_tap = d_weight_query.new_empty((out_channels, kernel * kernel, channels))
                d_weight_proto = by_tap.permute(0, 2, 1).reshape(out_channels, channels, kernel, kernel)
                d_weight = torch.cat([d_weight_query, d_weight_proto], 1)
        return (
            d_query if need_query else None,
            torch.empty_like(proto, memory_format=torch.contiguous_format) if need_proto else None,
            d_weight,
            weight.new_empty(weight.shape[:1]) if need_bias else None,
        )

    @fake("prototype_update")
    def _(delta, mask, weight, eps, dilation):
        return delta.new_empty((delta.shape[0], weight.shape[1] // 2))

    @fake("prototype_update_backward")
    def _(grad, delta, mask, weight, eps, dilation, output_mask):
        return (
            torch.empty_like(delta, memory_format=torch.contiguous_format) if output_mask[0] else None,
            torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else None,
        )


OPS = None
if LOAD_ERROR is None:
    _register_fakes()
    OPS = register_family("sst_fast")
