"""The compiled backends (``cpp`` on CPU, ``cuda`` on a GPU) against the reference, op by op.

Forward and every gradient in float32 and float64, gradcheck and double backward, opcheck,
torch.compile(fullgraph=True), shapes from 1x1 to 65x65, k in {1, 3, 5}, dilation in {1, 2},
B up to 16, non-contiguous and channels_last inputs, empty masks, autocast, hypothesis
properties. The Triton backend has its own file (it runs in the interpreter on CPU).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sst_fast import ops
from sst_fast.ops import _compiled, reference
from tests.conftest import assert_close
from tests.ops.helpers import (
    assert_half_tuning_step_rounds_once,
    assert_within_rounding,
    deterministic_convolutions,
    pool_mask_gradient_scale,
    random_inputs,
)
from tests.tolerance import between, low_precision

COMPILED = [
    pytest.param(
        "cpp",
        "cpu",
        marks=pytest.mark.skipif("cpp" not in ops.backends(), reason="sst_fast.ops._C (CPU) is not built"),
        id="cpp",
    ),
    pytest.param(
        "cuda",
        "cuda",
        marks=pytest.mark.skipif(
            "cuda" not in ops.backends() or not torch.cuda.is_available(), reason="no CUDA kernels or no GPU"
        ),
        id="cuda",
    ),
]
# (batch, channels, out_channels, height, width, kernel, dilation): the edges of the ranges
SHAPES = [
    (1, 1, 1, 1, 1, 1, 1),
    (1, 2, 3, 1, 1, 3, 2),
    (2, 3, 4, 5, 7, 3, 1),
    (3, 4, 2, 6, 1, 5, 2),
    (16, 3, 5, 4, 9, 3, 2),
    (2, 5, 3, 13, 11, 5, 1),
    (1, 3, 2, 65, 65, 3, 2),
    (2, 6, 4, 8, 8, 5, 2),
]
SHAPE_IDS = ["x".join(map(str, shape)) for shape in SHAPES]


def make(shape, dtype, device, mask_kind="binary", seed=0):
    return random_inputs(shape, dtype, device, mask_kind=mask_kind, seed=seed)


# The compiled tuning step takes its mask as a label, without a gradient: ops.tuned_prototype sends a mask that
# needs one to the reference. The tests that compare the compiled kernels give it a constant mask (this position
# among run_op's and _gradcheck_args' inputs); the reference's gradient by the mask is checked on its own
# (test_reference_ops.py's gradcheck).
LABELS = {"tuned_prototype": 1}


def leaves(name, args):
    """``args`` of op ``name`` as fresh leaves, each needing a gradient except a mask the op takes as a label."""
    return tuple(arg.detach().clone().requires_grad_(index != LABELS.get(name)) for index, arg in enumerate(args))


def grads_of(out, args, cotangent):
    """d<out, cotangent>/d arg for each of ``args`` (None where an argument needs no gradient or is unused)."""
    wanted = [arg for arg in args if arg.requires_grad]
    found = iter(torch.autograd.grad(out, wanted, cotangent, allow_unused=True))
    return tuple(next(found) if arg.requires_grad else None for arg in args)


def run_op(name, backend, inputs, dilation, step=0.7, cotangent=None):
    """One public op on ``backend``, plus its gradients for a fixed random cotangent."""
    with ops.use_backend(backend):
        if name == "masked_avg_pool":
            args = (inputs["features"], inputs["mask"])
            out = ops.masked_avg_pool(*args)
        elif name == "prototype_conv2d":
            args = (inputs["features"], inputs["proto"], inputs["weight"], inputs["bias"])
            out = ops.prototype_conv2d(*args, dilation)
        else:
            args = (inputs["delta"], inputs["mask"].detach(), inputs["weight"], inputs["proto"])  # LABELS
            out = ops.tuned_prototype(*args, step, 5e-4, dilation)
    if cotangent is None:
        cotangent = default_cotangent(out)
    cotangent = torch.as_tensor(cotangent, dtype=out.dtype).expand(out.shape).to(out.device)
    return out, grads_of(out, args, cotangent)


def default_cotangent(out):
    """run_op's fixed random cotangent for ``out``."""
    return torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)


def assert_matches_reference(name, shape, inputs, actual, actual_grads, expected, expected_grads, what=""):
    """run_op's results within the rounding of ``shape``'s sums (tests.ops.helpers.op_tolerance), forward and
    every gradient; the masked pool's mask gradient at the scale of its cancelling terms."""
    assert_within_rounding(actual, expected, shape, what=f"{what}{name} forward")
    scales = [None] * len(expected_grads)
    if name == "masked_avg_pool":
        cotangent = default_cotangent(expected.cpu())
        scales[1] = pool_mask_gradient_scale(inputs["features"].cpu(), inputs["mask"].cpu(), cotangent)
    for index, (got, want, scale) in enumerate(zip(actual_grads, expected_grads, scales, strict=True)):
        if want is None:  # a label (the tuning step's mask): no gradient on either side
            assert got is None, f"{what}{name} gradient of input {index}"
            continue
        assert_within_rounding(got, want, shape, what=f"{what}{name} gradient of input {index}", scale=scale)


def op_sums(name, shape):
    """(forward, gradients): the (mixed, same) term counts for tests.tolerance.between of op ``name``'s result and of
    its longest gradient on ``shape``, counted on the reference (sst_fast/ops/reference.py; its gradients by autograd).

    Random-sign sums: the features, weights, deltas and cotangents are randn; one-signed: the mask's mass
    M = sum(m) + eps and the tuning step's sum(m^2). The masked pool: sum_p f m / M forward; its mask gradient
    (dot = sum_c g f, then (dot - sum_p m dot / M) / M). The relation convolution: 2 C k^2 terms and the bias
    forward; its gradients: the query's (Co k^2), the prototype's (the sums of the cotangent over each tap's
    pixels, then over Co k^2 taps) and the weight's and bias's (over B H W, or over the pixels, then the batch).
    The tuning step: the window sums over the pixels, contracted with the weight (2 Co k^2) and the prototype
    added forward; its gradients by the mask and the step run the forward's sums, then a sum over the channels
    (and the batch, for the step).
    """
    batch, channels, out_channels, height, width, kernel, _ = shape
    pixels, taps = height * width, kernel * kernel
    mass = [pixels]
    if name == "masked_avg_pool":
        return ([pixels], mass), ([channels, pixels], mass)
    if name == "prototype_conv2d":
        weight = [max(batch * pixels, pixels + batch)]
        return ([2 * channels * taps + 1], []), (
            max([out_channels * taps], [pixels, out_channels * taps], weight, key=sum),
            [],
        )
    update = [pixels, 2 * out_channels * taps + 1]
    return (update, mass * 2), (update + [batch * channels], mass * 2)


def within(actual, expected, tol, scale=None, what=""):
    """``actual`` within ``tol`` of ``expected`` relative to ``scale``: the magnitude of the terms summed, by default
    the result's largest value (pool_mask_gradient_scale where they cancel)."""
    scale = expected.abs().max().item() if scale is None else scale
    assert_close(actual, expected, rtol=tol, atol=tol * scale, what=what)


def leaf_inputs(inputs, requires_grad=True):
    return {key: value.detach().clone().requires_grad_(requires_grad) for key, value in inputs.items()}


OPS = ["masked_avg_pool", "prototype_conv2d", "tuned_prototype"]


# --- forward and every gradient against the reference -------------------------------------------


@pytest.mark.parametrize("backend, device", COMPILED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", OPS)
def test_forward_and_gradients_match_reference(name, shape, dtype, backend, device):
    inputs = make(shape, dtype, device, mask_kind="soft")
    dilation = shape[-1]
    expected, expected_grads = run_op(name, "reference", leaf_inputs(inputs), dilation)
    actual, actual_grads = run_op(name, backend, leaf_inputs(inputs), dilation)
    assert_matches_reference(name, shape, inputs, actual, actual_grads, expected, expected_grads)


@pytest.mark.parametrize("backend, device", COMPILED)
@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("mask_kind", ["empty", "binary"])
def test_empty_and_binary_masks(name, mask_kind, backend, device):
    shape = (3, 4, 3, 6, 5, 3, 2)
    inputs = make(shape, torch.float64, device, mask_kind=mask_kind)
    inputs["mask"][1] = 0  # one episode with an empty mask in every case
    expected, expected_grads = run_op(name, "reference", leaf_inputs(inputs), 2)
    actual, actual_grads = run_op(name, backend, leaf_inputs(inputs), 2)
    assert torch.isfinite(actual).all()
    assert_matches_reference(name, shape, inputs, actual, actual_grads, expected, expected_grads)
    if name == "masked_avg_pool":
        assert torch.equal(actual[1], torch.zeros_like(actual[1]))


@pytest.mark.parametrize("backend, device", COMPILED)
@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("layout", ["channels_last", "non_contiguous"])
def test_layouts(name, layout, backend, device):
    shape = (2, 4, 3, 7, 6, 3, 2)
    inputs = make(shape, torch.float64, device, mask_kind="soft")
    expected, expected_grads = run_op(name, "reference", leaf_inputs(inputs), 2)
    strided = {}
    for key, value in inputs.items():
        if value.dim() == 4 and layout == "channels_last":
            value = value.contiguous(memory_format=torch.channels_last)
        elif layout == "non_contiguous":  # the same values, every other element of a bigger buffer
            value = torch.stack([value, torch.full_like(value, float("nan"))], -1)[..., 0]
        strided[key] = value.detach().requires_grad_()
    assert not strided["features"].is_contiguous()
    actual, actual_grads = run_op(name, backend, strided, 2)
    assert_matches_reference(name, shape, inputs, actual, actual_grads, expected, expected_grads, f"{layout} ")


# --- gradcheck, double backward, opcheck ------------------------------------------------------------


def _functions(backend, dilation):
    """The public ops as functions of their differentiable inputs; ``backend=None`` leaves the choice to the caller."""

    def chosen():
        return ops.use_backend(backend) if backend is not None else contextlib.nullcontext()

    def pool(features, mask):
        with chosen():
            return ops.masked_avg_pool(features, mask)

    def conv(query, proto, weight, bias):
        with chosen():
            return ops.prototype_conv2d(query, proto, weight, bias, dilation)

    def tuned(delta, mask, weight, proto, step):
        with chosen():
            return ops.tuned_prototype(delta, mask, weight, proto, step, 5e-4, dilation)

    return {"masked_avg_pool": pool, "prototype_conv2d": conv, "tuned_prototype": tuned}


def _gradcheck_args(name, inputs):
    step = torch.tensor(0.7, dtype=torch.float64, device=inputs["mask"].device)
    return {
        "masked_avg_pool": (inputs["features"], inputs["mask"]),
        "prototype_conv2d": (inputs["features"], inputs["proto"], inputs["weight"], inputs["bias"]),
        "tuned_prototype": (inputs["delta"], inputs["mask"], inputs["weight"], inputs["proto"], step),
    }[name]


@pytest.mark.parametrize("backend, device", COMPILED)
@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("shape", [(2, 2, 3, 5, 4, 3, 2), (1, 3, 2, 3, 3, 1, 1), (2, 2, 2, 2, 3, 5, 1)])
def test_gradcheck_and_gradgradcheck(name, shape, backend, device):
    inputs = make(shape, torch.float64, device, mask_kind="soft")
    args = leaves(name, _gradcheck_args(name, inputs))
    function = _functions(backend, shape[-1])[name]
    with deterministic_convolutions():
        assert torch.autograd.gradcheck(function, args)
        assert torch.autograd.gradgradcheck(function, args)


@pytest.mark.parametrize("backend, device", COMPILED)
def test_second_order_path_of_the_reference_model(backend, device):
    """SSTReference's path: proto = pool(F), y = conv(F, proto), dL/dF with create_graph, pooled, outer loss.

    The prototype depends on the query it is compared with, so double backward must take partial
    derivatives; every parameter's second-order gradient equals the reference's.
    """
    shape = (3, 3, 4, 6, 5, 3, 2)

    def outer_gradients(name):
        inputs = leaf_inputs(make(shape, torch.float64, device, mask_kind="soft"))
        features, mask, weight, bias = (inputs[k] for k in ("features", "mask", "weight", "bias"))
        with ops.use_backend(name):
            proto = ops.masked_avg_pool(features, mask)
            inner = ops.prototype_conv2d(features, proto, weight, bias, 2).sigmoid().square().mean()
            (grad,) = torch.autograd.grad(inner, features, create_graph=True)
            tuned = ops.masked_avg_pool(features - 0.7 * grad, mask)
            outer = ops.prototype_conv2d(features, tuned, weight, bias, 2).tanh().sum()
        return torch.autograd.grad(outer, (features, mask, weight, bias))

    # Along any path: the pool and the convolution forward, their gradients, the tuned forward, and the outer backward
    # through both, which runs the first backward's transposes: three times each op's forward and longest gradient.
    mixed, same = [], [shape[0] * shape[2] * shape[3] * shape[4]]  # the inner mean over B Co H W, one-signed
    for name in ("masked_avg_pool", "prototype_conv2d"):
        for sums_mixed, sums_same in op_sums(name, shape):
            mixed += 3 * sums_mixed
            same += 3 * sums_same
    tol = between(torch.float64, mixed, same)
    for key, got, want in zip(
        ("features", "mask", "weight", "bias"), outer_gradients(backend), outer_gradients("reference"), strict=True
    ):
        within(got, want, tol, what=key)


def _op_samples(device):
    inputs = make((2, 3, 4, 5, 6, 3, 2), torch.float32, device, mask_kind="soft")
    f, m, p, w, b, d = (inputs[k] for k in ("features", "mask", "proto", "weight", "bias", "delta"))
    grad_pool, grad_update = torch.randn(2, 3, device=device), torch.randn(2, 3, device=device)
    return [
        ("masked_avg_pool", (f, m, 5e-4)),
        ("masked_avg_pool_backward", (grad_pool, f, m, 5e-4, [True, True])),
        ("masked_avg_pool_backward", (grad_pool, f, m, 5e-4, [True, False])),
        ("prototype_conv2d", (f, p, w, b, 2)),
        ("prototype_conv2d", (f, p, w, None, 1)),
        ("prototype_conv2d_backward", (d, f, p, w, 2, [True, True, True, True])),
        ("prototype_conv2d_backward", (d, f, p, w, 1, [False, True, False, True])),
        ("prototype_update", (d, m, w, 5e-4, 2)),
        ("prototype_update_backward", (grad_update, d, m, w, 5e-4, 2, [True, True])),
        ("prototype_update_backward", (grad_update, d, m, w, 5e-4, 1, [False, True])),
        *_channels_last_samples(device),
    ]


def _channels_last_samples(device):
    """The relation convolution with channels-last queries and weights (the trainer's run.channels_last): its
    results take the layout the device's convolution picks, and the fake kernels must say the same."""
    samples = []
    for dtype in (torch.float32, torch.float64):
        inputs = make((2, 3, 4, 5, 6, 3, 2), dtype, device, mask_kind="soft")
        f, p, w, b, d = (inputs[k] for k in ("features", "proto", "weight", "bias", "delta"))
        last = {name: x.contiguous(memory_format=torch.channels_last) for name, x in (("f", f), ("w", w), ("d", d))}
        for query, weight, grad in ((last["f"], w, d), (f, last["w"], d), (last["f"], last["w"], last["d"])):
            samples += [
                ("prototype_conv2d", (query, p, weight, b, 2)),
                ("prototype_conv2d_backward", (grad, query, p, weight, 2, [True, True, True, True])),
            ]
    return samples


@pytest.mark.parametrize("backend, device", COMPILED)
def test_opcheck(backend, device):
    for name, args in _op_samples(device):
        # forward ops get inputs that require grad (prototype_update's mask is a label); backward ops get plain ones
        wants_grad = [name in _compiled.FORWARD_OPS and not (name == "prototype_update" and i == 1) for i in range(9)]
        args = tuple(
            a.detach().requires_grad_(wants_grad[i]) if isinstance(a, torch.Tensor) else a for i, a in enumerate(args)
        )
        torch.library.opcheck(getattr(torch.ops.sst_fast, name).default, args)


@pytest.mark.parametrize("backend, device", COMPILED)
@pytest.mark.parametrize("name", OPS)
def test_torch_compile_fullgraph(name, backend, device):
    torch._dynamo.reset()
    shape = (2, 3, 4, 6, 5, 3, 2)
    inputs = make(shape, torch.float32, device, mask_kind="soft")
    function = _functions(None, 2)[name]
    args = leaves(name, [a.float() for a in _gradcheck_args(name, inputs)])
    compiled = torch.compile(function, fullgraph=True, backend="aot_eager")
    with ops.use_backend(backend):
        expected = function(*args)
        actual = compiled(*args)
    forward, gradients = op_sums(name, shape)
    within(actual, expected, between(torch.float32, *forward), what=f"{name} forward")
    cotangent = torch.randn_like(expected)
    scales = [None] * len(args)
    if name == "masked_avg_pool":  # the mask gradient at the scale of its cancelling terms
        scales[1] = pool_mask_gradient_scale(args[0].detach().cpu(), args[1].detach().cpu(), cotangent.cpu())
    for index, (got, want, scale) in enumerate(
        zip(
            grads_of(actual, args, cotangent),
            grads_of(expected, args, cotangent),
            scales,
            strict=True,
        )
    ):
        if want is None:  # a label: no gradient on either side
            assert got is None, f"{name} gradient of input {index}"
            continue
        within(got, want, between(torch.float32, *gradients), scale, what=f"{name} gradient of input {index}")


@pytest.mark.parametrize("backend, device", COMPILED)
def test_torch_compile_inductor(backend, device):
    """The whole stack (dynamo + AOT + inductor) around the ops, forward and backward."""
    torch._dynamo.reset()
    shape = (2, 3, 4, 6, 5, 3, 2)
    inputs = leaf_inputs(make(shape, torch.float32, device, mask_kind="soft"))

    def head(features, mask, weight, bias, delta):
        proto = ops.masked_avg_pool(features, mask)
        y = ops.prototype_conv2d(features, proto, weight, bias, 2).relu()
        tuned = ops.tuned_prototype(delta, mask.detach(), weight, proto, 0.5, 5e-4, 2)  # the mask: a label
        return y.mean() + tuned.square().sum()

    args = tuple(inputs[k] for k in ("features", "mask", "weight", "bias", "delta"))
    with ops.use_backend(backend):
        expected = head(*args)
        actual = torch.compile(head, fullgraph=True)(*args)
    # Every sum on the path: the three ops' forward, the mean over B Co H W and the sum over B C (one-signed); the
    # gradients add each op's longest gradient.
    batch, channels, out_channels, height, width = shape[:5]
    sums = [op_sums(name, shape) for name in OPS]
    mixed = [n for forward, _ in sums for n in forward[0]]
    same = [n for forward, _ in sums for n in forward[1]] + [batch * out_channels * height * width, batch * channels]
    within(actual, expected, between(torch.float32, mixed, same), what="head")
    mixed += [n for _, gradients in sums for n in gradients[0]]
    same += [n for _, gradients in sums for n in gradients[1]]
    tol = between(torch.float32, mixed, same)
    for key, got, want in zip(
        ("features", "mask", "weight", "bias", "delta"),
        torch.autograd.grad(actual, args),
        torch.autograd.grad(expected, args),
        strict=True,
    ):
        within(got, want, tol, what=key)


# --- backend choice, autocast, errors ----------------------------------------------------------------


@pytest.mark.parametrize("backend, device", COMPILED)
def test_backward_runs_on_the_forward_backend_in_any_thread(backend, device):
    """The backend is picked in forward: a backward outside the use_backend block, in another thread, keeps it."""
    shape = (2, 3, 4, 5, 5, 3, 1)
    inputs = leaf_inputs(make(shape, torch.float32, device))
    with ops.use_backend(backend):
        out = ops.prototype_conv2d(inputs["features"], inputs["proto"], inputs["weight"], inputs["bias"], 1)
    assert "sst_fast" in out.grad_fn.name()
    errors = []

    def backward():
        try:
            with ops.use_backend("reference"):
                out.sum().backward()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=backward)
    thread.start()
    thread.join()
    assert not errors
    _, expected_grads = run_op("prototype_conv2d", "reference", leaf_inputs(inputs), 1, cotangent=1.0)
    _, gradients = op_sums("prototype_conv2d", shape)
    for key, want in zip(("features", "proto", "weight", "bias"), expected_grads, strict=True):
        within(inputs[key].grad, want, between(torch.float32, *gradients), what=key)


@pytest.mark.parametrize("backend, device", COMPILED)
def test_autocast(backend, device):
    dtype = torch.bfloat16
    shape = (2, 8, 4, 9, 9, 3, 2)
    inputs = make(shape, torch.float32, device, mask_kind="soft")
    with ops.use_backend(backend), torch.autocast(device, dtype=dtype):
        conv = ops.prototype_conv2d(inputs["features"], inputs["proto"], inputs["weight"], inputs["bias"], 2)
        tuned = ops.tuned_prototype(inputs["delta"].to(dtype), inputs["mask"], inputs["weight"], inputs["proto"])
        pooled = ops.masked_avg_pool(inputs["features"].to(dtype), inputs["mask"])
    assert conv.dtype == dtype and tuned.dtype == torch.float32 and pooled.dtype == dtype
    # Each against float32 on the inputs autocast rounds (every floating input of the relation, the pool's features
    # and mask; the tuning step takes float32, so only the delta rounded here): float32 sums, then the roundings to
    # bfloat16. The relation's: the query's convolution written in bfloat16, the prototype's k^2 taps too (one rounded
    # factor of each term of their sum), and the result again after adding them; the pool's result, once.
    rounded = {key: value.to(dtype).float() for key, value in inputs.items()}
    with ops.use_backend("reference"):
        expected_conv = ops.prototype_conv2d(
            rounded["features"], rounded["proto"], rounded["weight"], rounded["bias"], 2
        )
        expected_tuned = ops.tuned_prototype(rounded["delta"], inputs["mask"], inputs["weight"], inputs["proto"])
        expected_pool = ops.masked_avg_pool(rounded["features"], rounded["mask"])
    sums = {name: op_sums(name, shape)[0] for name in OPS}
    tol = low_precision(dtype, mixed=[shape[5] ** 2], results=2) + between(torch.float32, *sums["prototype_conv2d"])
    within(conv.float(), expected_conv, tol, what="prototype_conv2d")
    within(tuned, expected_tuned, between(torch.float32, *sums["tuned_prototype"]), what="tuned_prototype")
    tol = low_precision(dtype, results=1) + between(torch.float32, *sums["masked_avg_pool"])
    within(pooled.float(), expected_pool, tol, what="masked_avg_pool")


@pytest.mark.parametrize("backend, device", COMPILED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_accumulates_in_float32(dtype, backend, device):
    inputs = make((2, 16, 4, 21, 21, 3, 2), torch.float32, device, mask_kind="soft")
    low = {k: v.to(dtype) for k, v in inputs.items()}
    for name in OPS:
        expected, _ = run_op(name, "reference", leaf_inputs(low), 2)
        actual, _ = run_op(name, backend, leaf_inputs(low), 2)
        exact, _ = run_op(name, "reference", leaf_inputs({k: v.double() for k, v in low.items()}), 2)
        assert actual.dtype == dtype
        # No further from the float64 result than twice the reference in the same dtype plus one rounding to it (the
        # rule of tests/README.md for low precision).
        error, reference_error = (actual.double() - exact).abs().max(), (expected.double() - exact).abs().max()
        bound = 2 * reference_error + low_precision(dtype, results=1) * exact.abs().max()
        assert error <= bound, (name, error, reference_error)


@pytest.mark.parametrize("backend, device", [pytest.param("reference", "cpu", id="reference"), *COMPILED])
def test_float16_tuning_step_with_a_large_mask_rounds_once(backend, device):
    assert_half_tuning_step_rounds_once(backend, device)


@pytest.mark.parametrize("backend, device", COMPILED)
@pytest.mark.parametrize(
    "name, args, message",
    [
        ("masked_avg_pool", lambda t: (t["features"], t["mask"][:, :, :2], 5e-4), "mask must be"),
        ("masked_avg_pool", lambda t: (t["features"], t["mask"].double(), 5e-4), "mask has dtype"),
        ("masked_avg_pool", lambda t: (t["features"], t["mask"], -1.0), "eps must be"),
        ("masked_avg_pool", lambda t: (t["features"][0], t["mask"], 5e-4), "features must have 4 dimensions"),
        ("prototype_conv2d", lambda t: (t["features"], t["proto"][:1], t["weight"], None, 1), "proto must be"),
        ("prototype_conv2d", lambda t: (t["features"], t["proto"], t["weight"][:, :3], None, 1), "weight must be"),
        ("prototype_conv2d", lambda t: (t["features"], t["proto"], t["weight"][..., :2], None, 1), "odd size"),
        ("prototype_conv2d", lambda t: (t["features"], t["proto"], t["weight"], t["bias"][:1], 1), "bias must be"),
        ("prototype_conv2d", lambda t: (t["features"], t["proto"], t["weight"], None, 0), "dilation must be"),
        ("prototype_update", lambda t: (t["delta"][:, :1], t["mask"], t["weight"], 5e-4, 1), "delta must have"),
        ("prototype_update", lambda t: (t["delta"], t["mask"], t["weight"].int(), 5e-4, 1), "floating-point"),
    ],
)
def test_direct_op_calls_check_their_arguments(name, args, message, backend, device):
    inputs = make((2, 3, 4, 5, 5, 3, 1), torch.float32, device)
    with pytest.raises(RuntimeError, match=message):
        getattr(torch.ops.sst_fast, name)(*args(inputs))


def test_package_falls_back_to_the_reference_without_the_library(tmp_path):
    """With sst_fast.ops._C unimportable the package works on the reference ops and says so."""
    script = (
        "import sys; sys.modules['sst_fast.ops._C'] = None\n"
        "import torch, sst_fast\n"
        "from sst_fast import ops\n"
        "assert ops.backends() == ['reference'], ops.backends()\n"
        "print(ops.library_status())\n"
        "x = torch.randn(1, 2, 3, 3)\n"
        "print(ops.masked_avg_pool(x, torch.ones(1, 1, 3, 3)).shape)\n"
        "from sst_fast.cli import main\n"
        "main(['info'])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert "not loaded" in result.stdout and "reference implementation" in result.stdout


def test_info_names_the_compiled_kernels():
    result = subprocess.run(
        [sys.executable, "-m", "sst_fast", "info"], capture_output=True, text=True, check=True, env=os.environ
    )
    assert ops.library_status() in result.stdout
    assert f"Triton: {ops.triton_status()}" in result.stdout  # where it runs, or why nowhere


# --- hypothesis: random shapes, masks and layouts ------------------------------------------------------

# Examples per op: a quick sweep in every run, the thorough one (``-m slow``) with 500.
BUDGETS = [pytest.param(100, id="100"), pytest.param(500, id="500", marks=pytest.mark.slow)]


@st.composite
def cases(draw):
    kernel = draw(st.sampled_from([1, 3, 5]))
    shape = (
        draw(st.integers(1, 4)),
        draw(st.integers(1, 5)),
        draw(st.integers(1, 4)),
        draw(st.integers(1, 12)),
        draw(st.integers(1, 12)),
        kernel,
        draw(st.sampled_from([1, 2])),
    )
    return shape, draw(st.sampled_from(["binary", "soft", "empty"])), draw(st.booleans()), draw(st.integers(0, 2**16))


def _property(name, case):
    shape, mask_kind, channels_last, seed = case
    inputs = make(shape, torch.float64, "cpu", mask_kind=mask_kind, seed=seed)
    if channels_last:
        inputs = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in inputs.items()}
    expected, expected_grads = run_op(name, "reference", leaf_inputs(inputs), shape[-1])
    actual, actual_grads = run_op(name, "cpp", leaf_inputs(inputs), shape[-1])
    assert_matches_reference(name, shape, inputs, actual, actual_grads, expected, expected_grads)


needs_cpp = pytest.mark.skipif("cpp" not in ops.backends(), reason="sst_fast.ops._C (CPU) is not built")


@needs_cpp
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", ["masked_avg_pool", "prototype_conv2d", "tuned_prototype"])
def test_property_compiled_op_equals_the_reference(name, budget):
    """Forward and every gradient over random shapes, kernels, dilations, mask kinds and layouts (float64)."""

    @settings(max_examples=budget, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
    @given(cases())
    def check(case):
        _property(name, case)

    check()


def test_reference_prototype_update_is_the_pooled_feature_gradient():
    """prototype_update = masked_avg_pool(dL/dF) by autograd through the relation conv (docs/design.md §3)."""
    shape = (2, 3, 4, 6, 7, 3, 2)
    inputs = make(shape, torch.float64, "cpu", mask_kind="soft")
    features = inputs["features"].requires_grad_()
    proto = reference.masked_avg_pool(features, inputs["mask"])
    y = reference.prototype_conv2d(features, proto, inputs["weight"], inputs["bias"], 2)
    (grad,) = torch.autograd.grad(y, features, inputs["delta"])
    expected = reference.masked_avg_pool(grad, inputs["mask"])
    actual = reference.prototype_update(inputs["delta"], inputs["mask"], inputs["weight"], 5e-4, 2)
    # By autograd: the feature gradient (Co k^2 terms through the query; the prototype's, sums over the pixels then
    # over Co k^2, spread by the pool's gradient), then pooled over the pixels; directly: the window sums over the
    # pixels, contracted over 2 Co k^2. Both within these sums of the exact value.
    pixels, taps = shape[3] * shape[4], shape[5] ** 2
    tol = between(torch.float64, mixed=[pixels, pixels, 2 * shape[2] * taps], same=[pixels, pixels])
    within(actual, expected, tol)
