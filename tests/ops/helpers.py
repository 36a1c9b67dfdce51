"""Random inputs shared by the op tests: every tensor the three ops and their backward ops take."""

from __future__ import annotations

import torch


def random_inputs(
    shape,
    dtype,
    device,
    mask_kind="binary",
    seed=0,
    foreground=0.5,
    weight_scale=0.3,
    cotangents=False,
):
    """features/query, mask, proto, weight, bias, delta for ``shape`` = (B, C, Co, H, W, k, dilation).

    ``mask_kind``: "binary" (foreground with probability ``foreground``), "soft" or "empty".
    ``cotangents`` adds grad_proto [B, C] and grad_map [B, Co, H, W].
    """
    batch, channels, out_channels, height, width, kernel, _ = shape
    gen = torch.Generator().manual_seed(seed)

    def randn(*size, scale=1.0):
        return (torch.randn(*size, generator=gen, dtype=dtype) * scale).to(device)

    if mask_kind == "binary":
        mask = (torch.rand(batch, 1, height, width, generator=gen) > 1 - foreground).to(dtype)
    elif mask_kind == "soft":
        mask = torch.rand(batch, 1, height, width, generator=gen, dtype=dtype)
    else:
        mask = torch.zeros(batch, 1, height, width, dtype=dtype)
    inputs = dict(
        features=randn(batch, channels, height, width),
        mask=mask.to(device),
        proto=randn(batch, channels),
        weight=randn(out_channels, 2 * channels, kernel, kernel, scale=weight_scale),
        bias=randn(out_channels),
        delta=randn(batch, out_channels, height, width),
    )
    if cotangents:
        inputs.update(grad_proto=randn(batch, channels), grad_map=randn(batch, out_channels, height, width))
    return inputs


def op_tolerance(shape, dtype):
    """tests.tolerance.between for the three ops and their gradients on ``shape`` (B, C, Co, H, W, k, dilation).

    Their longest sums: the relation convolution's 2C k^2 terms, its weight gradient's B H W, the window sums
    of the prototype's gradient and of the tuning step (Co k^2 taps over H W positions), all of random sign;
    the masked pool's H W (the mask's mass is one-signed).
    """
    from tests.tolerance import between

    batch, channels, out_channels, height, width, kernel, _ = shape
    mixed = [2 * channels * kernel * kernel, batch * height * width, out_channels * kernel * kernel * height * width]
    return between(dtype, mixed=mixed, same=[height * width])


def assert_within_rounding(actual, expected, shape, what="", scale=None):
    """``actual`` within op_tolerance of ``expected``, relative to ``scale``: the magnitude of the terms
    summed, by default the result's largest value (see pool_mask_gradient_scale where they cancel)."""
    from tests.conftest import assert_close

    tol = op_tolerance(shape, expected.dtype)
    scale = expected.abs().max().item() if scale is None else scale
    assert_close(actual, expected, rtol=tol, atol=tol * scale, what=what)


def pool_mask_gradient_scale(features, mask, cotangent, eps=5e-4):
    """The terms' magnitude in the masked pool's gradient by the mask, sum_c g_c (x_c - p_c) / (M + eps):
    x_c and p_c nearly cancel where the mask is nearly one pixel (p = x m / (m + eps)), so the result
    is much smaller than what rounding acts on, sum_c |g_c| (|x_c| + |p_c|) / (M + eps)."""
    mass = mask.sum((2, 3), keepdim=True) + eps
    pooled = (features * mask).sum((2, 3), keepdim=True) / mass
    terms = cotangent.abs()[:, :, None, None] * (features.abs() + pooled.abs()) / mass
    return terms.sum(1).max().item()


def assert_half_tuning_step_rounds_once(backend, device):
    """float16 ``tuned_prototype`` with a mask of realistic mass (a 41x41 map, M ~ 840 pixels): the step, its
    delta and weight gradients are the float32 computation rounded once to float16. M^2 exceeds float16's range
    (65504) from M = 256 on, so scales formed in float16 lose the prototype's term of the step entirely."""
    from sst_fast import ops
    from tests.tolerance import between, unit_roundoff

    shape = (2, 8, 4, 41, 41, 3, 2)
    batch, channels, out_channels, height, width, kernel, dilation = shape
    inputs = random_inputs(shape, torch.float16, device)
    assert inputs["mask"].sum((1, 2, 3)).min() > 256
    inputs["proto"] = torch.zeros_like(inputs["proto"])  # the result is the step alone
    names = ("delta", "mask", "weight", "proto")
    cotangent = torch.randn(batch, channels, generator=torch.Generator().manual_seed(3)).to(device)

    def step_and_gradients(values, run):
        delta, mask, weight, proto = (values[name].detach().requires_grad_(name != "mask") for name in names)
        with run:
            out = ops.tuned_prototype(delta, mask, weight, proto, 1.0, 5e-4, dilation)
        return (out, *torch.autograd.grad(out, (delta, weight), cotangent.to(out.dtype)))

    actual = step_and_gradients(inputs, ops.use_backend(backend))
    exact = step_and_gradients({k: v.double() for k, v in inputs.items()}, ops.use_backend("reference"))
    # float32 sums: the window sums (H W terms), the contraction with the weight (2 Co k^2), the coefficients of
    # the delta gradient (C) and their expansion (2 k^2), the weight gradient's batch (B); then one rounding.
    sums = [height * width, 2 * out_channels * kernel**2, channels, 2 * kernel**2, batch]
    float32 = between(torch.float32, mixed=sums)
    for what, got, want in zip(("step", "d_delta", "d_weight"), actual, exact, strict=True):
        assert got.dtype == torch.float16, what
        scale = want.abs().max().item()
        error = (got.double() - want).abs().max().item()
        assert error <= (unit_roundoff(torch.float16) + float32) * scale, (backend, what, error / scale)


def deterministic_convolutions():
    """A context for gradcheck on a GPU: gradcheck requires the analytic Jacobian to be reproducible (nondet_tol=0),
    and cuDNN's backward may pick algorithms that add with atomics; these are its deterministic ones (no TF32).
    On the CPU it changes nothing."""
    return torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False)
