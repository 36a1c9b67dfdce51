"""The Triton backend (``torch.ops.sst_fast_triton``) against the reference, op by op.

Runs on CUDA tensors when a GPU is present, else on CPU tensors in the Triton interpreter. The
interpreter is slow, so the cases are few and small: shapes 1x1 to 33x33, k in {1, 3, 5, 7},
dilation in {1, 2}, B in {1, 3}; float64 (exact comparisons, gradcheck) and float32; every
gradient; double backward (the reference composite of ``register_family``); empty masks;
non-contiguous and channels_last inputs; the kernels' block loops and split sums with tiny tiles.

``TRITON_INTERPRET=1`` must be set before triton defines any kernel, its own included
(``triton.language`` is imported with ``torch._dynamo``, i.e. with ``sst_fast``), and while the
kernels run. Without a GPU this module sets it before its imports and for each of its tests, and
unsets it in between so that it does not leak into other tests (their subprocesses, backend
registration). When triton was imported earlier without it (another test module imported sst_fast
first), the tests run in a fresh pytest process that has it from the start.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_SET_HERE = DEVICE == "cpu" and "TRITON_INTERPRET" not in os.environ
_CHILD = "SST_FAST_TRITON_TEST_CHILD"
if _SET_HERE:
    os.environ["TRITON_INTERPRET"] = "1"
try:
    pytest.importorskip("triton")
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    from sst_fast import ops
    from sst_fast.ops import _triton, reference
    from tests.conftest import assert_close
    from tests.ops.helpers import (
        assert_half_tuning_step_rounds_once,
        deterministic_convolutions,
        pool_mask_gradient_scale,
        random_inputs,
    )
    from tests.tolerance import between, low_precision
finally:
    if _SET_HERE:
        del os.environ["TRITON_INTERPRET"]

# Whether this process can run the kernels: on a GPU, or in an interpreter set up in time.
IN_PROCESS = DEVICE == "cuda" or (_triton._INTERPRETED and isinstance(tl.standard.sum, InterpretedFunction))


@pytest.fixture(autouse=True)
def _interpreter(request, monkeypatch):
    if not IN_PROCESS and request.node.originalname != "test_in_a_fresh_interpreter_process":
        pytest.skip("triton was imported without TRITON_INTERPRET=1; test_in_a_fresh_interpreter_process runs this")
    if _SET_HERE:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def test_in_a_fresh_interpreter_process():
    """This module in a pytest process started with TRITON_INTERPRET=1, when this one cannot interpret."""
    if IN_PROCESS:
        pytest.skip("the kernels run in this process")
    assert _CHILD not in os.environ, "TRITON_INTERPRET=1 was set from the start, yet the kernels are not interpreted"
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).relative_to(root))],
        cwd=root,
        env={**os.environ, "TRITON_INTERPRET": "1", _CHILD: "1"},
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, f"{result.stdout[-8000:]}\n{result.stderr[-3000:]}"


OPS = _triton.OPS
f32, f64 = torch.float32, torch.float64
EPS = 5e-4

# (batch, channels, out_channels, height, width, kernel, dilation)
SHAPES = [
    (1, 2, 3, 1, 1, 1, 1),
    (3, 2, 3, 1, 1, 3, 2),  # every tap but the centre outside
    (3, 3, 2, 5, 7, 3, 2),
    (1, 2, 3, 5, 7, 5, 1),
    (3, 2, 2, 3, 4, 5, 2),  # the kernel wider than the image
    (1, 3, 2, 13, 13, 5, 1),
    (3, 2, 2, 13, 13, 3, 1),
    (1, 2, 2, 33, 33, 3, 2),
    (3, 2, 2, 6, 5, 7, 1),
]
SHAPE_IDS = ["x".join(map(str, shape)) for shape in SHAPES]


def make(shape, dtype=f64, mask_kind="binary", seed=0):
    """Random inputs for every op: features/query, mask, proto, weight, bias, delta, grads."""
    return random_inputs(
        shape, dtype, DEVICE, mask_kind=mask_kind, seed=seed, foreground=0.6, weight_scale=1 / shape[5], cotangents=True
    )


def sums(shape):
    """The sums behind each result of the three ops and their gradients on ``shape``, as (mixed, same) term counts
    for tests.tolerance.between: random-sign sums (the features, weights, deltas and cotangents are randn) and
    one-signed ones (the mask's mass M = sum(m) + eps and the tuning step's sum(m^2)). Counted on the reference
    (sst_fast/ops/reference.py, its gradients by autograd); a kernel adds the same terms in another order, or in
    stages of no more terms each (the Triton window sums over the pixels, then the contraction with the weight)."""
    batch, channels, out_channels, height, width, kernel, _ = shape
    pixels, taps = height * width, kernel * kernel
    mass = [pixels]
    window = [pixels, 2 * out_channels * taps]  # S and dQ over the pixels, then both contracted with the weight
    batch_sums = [max(batch * pixels, pixels + batch)]  # grad * q over (b, p) in one sum, or dQ (over p) over b
    return {
        "pool": ([pixels], mass),  # sum_p f m / M
        "pool d_features": ([], mass),  # g m / M
        "pool d_mask": ([channels, pixels], mass),  # dot = sum_c g f; (dot - sum_p m dot / M) / M
        "conv": ([2 * channels * taps + 1], []),  # conv2d over [query, tile(proto)], plus the bias
        "conv d_query": ([out_channels * taps], []),  # conv_transpose(grad, Wq)
        "conv d_proto": ([pixels, out_channels * taps], []),  # dQ = sum of grad over each tap's pixels; sum Wp dQ
        "conv d_weight": (batch_sums, []),
        "conv d_bias": (batch_sums, []),
        "update": (window, mass * 2),  # sum Wq S / M + sum Wp dQ * sum(m^2) / M^2
        "update d_delta": ([channels, 2 * taps], mass * 2),  # sum_c W g (scaled), expanded over 2 k^2 windows
        "update d_weight": ([pixels, batch], mass * 2),  # sum_b S g / M and sum_b dQ g sum(m^2) / M^2
        "tuned": ([pixels, 2 * out_channels * taps + 1], mass * 2),  # proto - step * update
        "tuned d_proto": ([], []),  # the cotangent itself
    }


def within(actual, expected, tol, scale=None, what=""):
    """``actual`` within ``tol`` of ``expected`` relative to ``scale``: the magnitude of the terms summed, by default
    the result's largest value (see tests.ops.helpers.pool_mask_gradient_scale where they cancel)."""
    scale = expected.abs().max().item() if scale is None else scale
    assert_close(actual, expected, rtol=tol, atol=tol * scale, what=what)


def assert_ops_agree(shape, results, dtype, inputs, what=""):
    """Each (name, actual, expected) of ``results`` within the rounding of ``sums(shape)[name]``; ``inputs`` (make's)
    give the pool's mask gradient its scale."""
    table = sums(shape)
    for name, actual, expected in results:
        scale = None
        if name == "pool d_mask":
            scale = pool_mask_gradient_scale(inputs["features"], inputs["mask"], inputs["grad_proto"], EPS)
        within(actual, expected, between(dtype, *table[name]), scale, what=f"{what}{name}")


def grads(fn, inputs, grad):
    """d<fn(*inputs), grad> / d inputs (for the inputs that require grad)."""
    inputs = [x.detach().requires_grad_(True) if x is not None else None for x in inputs]
    out = fn(*inputs)
    wanted = [x for x in inputs if x is not None]
    return out, torch.autograd.grad(out, wanted, grad)


# --- forward and first-order gradients against the reference ---------------------------------


@pytest.mark.parametrize("dtype", [f64, f32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_ops_match_reference(shape, dtype):
    t = make(shape, dtype, mask_kind="soft" if shape[0] == 1 else "binary")
    dilation = shape[-1]

    pool = (t["features"], t["mask"])
    out, got = grads(lambda f, m: OPS.masked_avg_pool(f, m, EPS), pool, t["grad_proto"])
    ref, expected = grads(lambda f, m: reference.masked_avg_pool(f, m, EPS), pool, t["grad_proto"])
    names = ("pool", "pool d_features", "pool d_mask")
    assert_ops_agree(shape, zip(names, (out, *got), (ref, *expected), strict=True), dtype, t)

    for bias in (t["bias"], None):
        conv = (t["features"], t["proto"], t["weight"], bias)
        out, got = grads(lambda q, p, w, b: OPS.prototype_conv2d(q, p, w, b, dilation), conv, t["grad_map"])
        ref, expected = grads(lambda q, p, w, b: reference.prototype_conv2d(q, p, w, b, dilation), conv, t["grad_map"])
        names = ("conv", "conv d_query", "conv d_proto", "conv d_weight", "conv d_bias")[: 1 + len(got)]
        assert_ops_agree(shape, zip(names, (out, *got), (ref, *expected), strict=True), dtype, t)

    # (register_family gives prototype_update no gradient for the mask)
    mask = t["mask"]
    update = (t["delta"], t["weight"])
    out, got = grads(lambda d, w: OPS.prototype_update(d, mask, w, EPS, dilation), update, t["grad_proto"])
    ref, expected = grads(lambda d, w: reference.prototype_update(d, mask, w, EPS, dilation), update, t["grad_proto"])
    names = ("update", "update d_delta", "update d_weight")
    assert_ops_agree(shape, zip(names, (out, *got), (ref, *expected), strict=True), dtype, t)


@pytest.mark.parametrize("step", [0.7, "tensor"])
def test_tuned_prototype_matches_reference(step):
    shape = (3, 3, 2, 5, 7, 3, 2)
    t = make(shape)
    step = torch.tensor(0.7, dtype=f64, device=DEVICE, requires_grad=True) if step == "tensor" else step
    args = (t["delta"], t["mask"], t["weight"], t["proto"])
    inputs = [x.detach().requires_grad_(True) for x in (t["delta"], t["weight"], t["proto"])]
    out = _triton.BACKEND["tuned_prototype"](inputs[0], t["mask"], inputs[1], inputs[2], step, EPS, 2)
    ref = reference.tuned_prototype(*args, step=step, eps=EPS, dilation=2)
    assert_ops_agree(shape, [("tuned", out, ref)], f64, t)
    got = torch.autograd.grad(out, inputs, t["grad_proto"])
    ref_inputs = [x.detach().requires_grad_(True) for x in (t["delta"], t["weight"], t["proto"])]
    ref = reference.tuned_prototype(ref_inputs[0], t["mask"], ref_inputs[1], ref_inputs[2], step, EPS, 2)
    expected = torch.autograd.grad(ref, ref_inputs, t["grad_proto"])
    names = ("update d_delta", "update d_weight", "tuned d_proto")  # d_delta, d_weight: -step times the update's
    assert_ops_agree(shape, zip(names, got, expected, strict=True), f64, t, what="tuned_prototype ")


def test_public_ops_use_the_triton_backend():
    if "triton" not in ops.backends():
        pytest.skip("the triton backend was not registered for this device when sst_fast.ops was imported")
    shape = (3, 2, 3, 5, 7, 3, 1)
    t = make(shape, f32)
    with ops.use_backend("triton"):
        pooled = ops.masked_avg_pool(t["features"], t["mask"] > 0)  # a binary mask: the same as a bool one
        relation = ops.prototype_conv2d(t["features"], t["proto"], t["weight"], t["bias"])
        tuned = ops.tuned_prototype(t["delta"], t["mask"], t["weight"], t["proto"], step=0.5)
    results = [
        ("pool", pooled, reference.masked_avg_pool(t["features"], t["mask"])),
        ("conv", relation, reference.prototype_conv2d(t["features"], t["proto"], t["weight"], t["bias"])),
        ("tuned", tuned, reference.tuned_prototype(t["delta"], t["mask"], t["weight"], t["proto"], step=0.5)),
    ]
    assert_ops_agree(shape, results, f32, t)


def _every_op(t):
    """Each of the six ops once on ``t`` (make's inputs), every output asked for."""
    return [
        OPS.masked_avg_pool(t["features"], t["mask"], EPS),
        OPS.masked_avg_pool_backward(t["grad_proto"], t["features"], t["mask"], EPS, [True, True]),
        OPS.prototype_conv2d(t["features"], t["proto"], t["weight"], t["bias"], 2),
        OPS.prototype_conv2d_backward(t["grad_map"], t["features"], t["proto"], t["weight"], 2, [True] * 4),
        OPS.prototype_update(t["delta"], t["mask"], t["weight"], EPS, 2),
        OPS.prototype_update_backward(t["grad_proto"], t["delta"], t["mask"], t["weight"], EPS, 2, [True, True]),
    ]


# The names (in sums) of _every_op's results.
EVERY_OP_RESULTS = [
    ("pool",),
    ("pool d_features", "pool d_mask"),
    ("conv",),
    ("conv d_query", "conv d_proto", "conv d_weight", "conv d_bias"),
    ("update",),
    ("update d_delta", "update d_weight"),
]


def test_every_op_runs_on_its_inputs_device(monkeypatch):
    """Triton launches on the current CUDA device, so each op body makes its inputs' device current first
    (test_ops_on_a_second_gpu shows the effect where there are two GPUs)."""
    entered = []

    def recording(device):
        entered.append(device)
        return guard(device)

    guard = _triton._device_guard
    monkeypatch.setattr(_triton, "_device_guard", recording)
    t = make((2, 3, 4, 5, 7, 3, 2), f32)
    _every_op(t)
    assert entered == [t["features"].device] * 6


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_ops_on_a_second_gpu():
    shape = (2, 3, 4, 5, 7, 3, 2)
    t = {name: x.to("cuda:1") for name, x in make(shape, f32).items()}
    on_second = _every_op(t)
    assert torch.cuda.current_device() == 0
    on_first = _every_op({name: x.to("cuda:0") for name, x in t.items()})
    # Not bit for bit: two GPUs of other models split the window sums and pick cuDNN algorithms differently.
    results = []
    for names, got, want in zip(EVERY_OP_RESULTS, on_second, on_first, strict=True):
        for name, a, b in zip(names, *((x,) if isinstance(x, torch.Tensor) else x for x in (got, want)), strict=True):
            assert a.device == torch.device("cuda:1")
            results.append((name, a.to("cuda:0"), b))
    assert_ops_agree(shape, results, f32, {name: x.to("cuda:0") for name, x in t.items()})


# --- the backward ops: output_mask --------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 1])
def test_pool_and_update_backward_output_mask(index):
    t = make((3, 3, 2, 5, 7, 3, 2))
    full = OPS.masked_avg_pool_backward(t["grad_proto"], t["features"], t["mask"], EPS, [True, True])
    only = OPS.masked_avg_pool_backward(t["grad_proto"], t["features"], t["mask"], EPS, [i == index for i in range(2)])
    assert_close(only[index], full[index], 0, 0)
    assert only[1 - index].numel() == 0
    update_args = (t["grad_proto"], t["delta"], t["mask"], t["weight"], EPS, 2)
    full = OPS.prototype_update_backward(*update_args, [True, True])
    only = OPS.prototype_update_backward(*update_args, [i == index for i in range(2)])
    assert_close(only[index], full[index], 0, 0)
    assert only[1 - index].numel() == 0


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_conv_backward_output_mask(index):
    t = make((3, 3, 2, 5, 7, 3, 2))
    args = (t["grad_map"], t["features"], t["proto"], t["weight"], 2)
    full = OPS.prototype_conv2d_backward(*args, [True] * 4)
    only = OPS.prototype_conv2d_backward(*args, [i == index for i in range(4)])
    assert_close(only[index], full[index], 0, 0)
    assert all(only[i].numel() == 0 for i in range(4) if i != index)


# --- gradcheck and double backward ----------------------------------------------------------------


def test_gradcheck_and_gradgradcheck():
    """Fast-mode gradcheck of the fused backward ops; gradgradcheck of the double-backward composite
    (for prototype_conv2d see test_second_derivatives_match_reference)."""
    t = make((2, 2, 2, 3, 4, 3, 2), mask_kind="soft")

    def leaf(name):
        return t[name].detach().requires_grad_(True)

    check = dict(fast_mode=True)
    pool = (leaf("features"), leaf("mask"))
    conv = (leaf("features"), leaf("proto"), leaf("weight"), leaf("bias"))
    update = (leaf("delta"), leaf("weight"))
    with deterministic_convolutions():
        assert torch.autograd.gradcheck(lambda f, m: OPS.masked_avg_pool(f, m, EPS), pool, **check)
        assert torch.autograd.gradgradcheck(lambda f, m: OPS.masked_avg_pool(f, m, EPS), pool, **check)
        assert torch.autograd.gradcheck(lambda *x: OPS.prototype_conv2d(*x, 2), conv, **check)
        function = lambda d, w: OPS.prototype_update(d, t["mask"], w, EPS, 2)  # noqa: E731
        assert torch.autograd.gradcheck(function, update, **check)
        assert torch.autograd.gradgradcheck(function, update, **check)


def second_derivatives(t, pool, conv, update, inputs):
    """d/d inputs of <d loss / d inputs, directions>, the first derivatives taken with create_graph."""
    leaves = {name: t[name].detach().requires_grad_(True) for name in inputs}
    x = {**t, **leaves}
    if "features" in leaves and "proto" not in leaves:
        x["proto"] = pool(x["features"], x["mask"], EPS)  # proto depends on the query: the SST self-segmentation
    pooled = pool(x["features"], x["mask"], EPS)
    relation = conv(x["features"], x["proto"], x["weight"], x["bias"], 2)
    tuned = x["proto"] - 0.5 * update(x["delta"], t["mask"], x["weight"], EPS, 2)  # no mask gradient
    loss = sum((value * t[grad]).square().sum() for value, grad in ((pooled, "grad_proto"), (relation, "grad_map")))
    loss = loss + (tuned * t["grad_proto"]).square().sum()
    firsts = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
    directions = make((3, 2, 2, 5, 6, 3, 2), seed=1)
    projected = sum((first * directions[name]).sum() for first, name in zip(firsts, leaves, strict=True))
    return dict(zip(leaves, torch.autograd.grad(projected, list(leaves.values())), strict=True))


@pytest.mark.parametrize(
    "inputs",
    [
        ("features", "mask", "proto", "weight", "bias", "delta"),  # independent inputs
        ("features", "weight", "delta"),  # proto = pool(features): a path between two inputs
    ],
    ids=["independent", "proto-from-query"],
)
def test_second_derivatives_match_reference(inputs):
    """Double backward (the reference composite of register_family) through all three ops."""
    shape = (3, 2, 2, 5, 6, 3, 2)
    t = make(shape, mask_kind="soft")
    got = second_derivatives(t, OPS.masked_avg_pool, OPS.prototype_conv2d, OPS.prototype_update, inputs)
    expected = second_derivatives(
        t, reference.masked_avg_pool, reference.prototype_conv2d, reference.prototype_update, inputs
    )
    # Along any path a second derivative runs an op's forward, one of its gradients (the first derivatives), and
    # the transposes of both (their derivatives): twice each op's forward and longest gradient.
    table = sums(shape)
    mixed, same = [], []
    for forward, *gradients in (
        ("pool", "pool d_features", "pool d_mask"),
        ("conv", "conv d_query", "conv d_proto", "conv d_weight", "conv d_bias"),
        ("update", "update d_delta", "update d_weight"),
    ):
        longest = max((table[name] for name in gradients), key=lambda sums: sum(sums[0]) + len(sums[1]))
        for sums_mixed, sums_same in (table[forward], longest):
            mixed += 2 * sums_mixed
            same += 2 * sums_same
    tol = between(f64, mixed, same)
    for name in inputs:
        within(got[name], expected[name], tol, what=f"second-order d_{name}")


# --- degenerate and awkward inputs --------------------------------------------------------------


def test_empty_mask_gives_zero_prototype_and_finite_gradients():
    t = make((3, 3, 2, 5, 7, 3, 2), f32, mask_kind="empty")
    features = t["features"].requires_grad_(True)
    out = OPS.masked_avg_pool(features, t["mask"], EPS)
    assert torch.equal(out, torch.zeros_like(out))
    (d_features,) = torch.autograd.grad(out, features, t["grad_proto"])
    assert torch.equal(d_features, torch.zeros_like(d_features))
    d_features, d_mask = OPS.masked_avg_pool_backward(t["grad_proto"], features, t["mask"], EPS, [True, True])
    assert torch.isfinite(d_mask).all() and torch.equal(d_features, torch.zeros_like(d_features))
    update = OPS.prototype_update(t["delta"], t["mask"], t["weight"], EPS, 2)
    # Exactly zero on both sides, in any order: the masked sums of a zero mask and sum(m^2) are sums of zeros.
    assert_close(update, reference.prototype_update(t["delta"], t["mask"], t["weight"], EPS, 2), 0, 0)
    assert torch.isfinite(update).all()


def test_non_contiguous_and_channels_last_inputs():
    shape = (3, 3, 2, 5, 7, 3, 2)
    t = make(shape)
    cl = torch.channels_last
    odd = dict(
        features=t["features"].contiguous(memory_format=cl),
        mask=t["mask"].mT.contiguous().mT,
        proto=torch.stack([t["proto"], t["proto"]], 2)[..., 0],
        weight=t["weight"].contiguous(memory_format=cl),
        delta=t["delta"].transpose(0, 1).contiguous().transpose(0, 1),
        grad_proto=t["grad_proto"].t().contiguous().t(),
        grad_map=t["grad_map"].contiguous(memory_format=cl),
        bias=t["bias"],
    )
    assert not odd["mask"].is_contiguous() and not odd["delta"].is_contiguous() and not odd["proto"].is_contiguous()
    assert not odd["features"].is_contiguous() and not odd["grad_map"].is_contiguous()
    for name in t:
        assert torch.equal(odd[name], t[name])
    results = [
        (
            "pool",
            OPS.masked_avg_pool(odd["features"], odd["mask"], EPS),
            reference.masked_avg_pool(t["features"], t["mask"]),
        ),
        (
            "conv",
            OPS.prototype_conv2d(odd["features"], odd["proto"], odd["weight"], odd["bias"], 2),
            reference.prototype_conv2d(t["features"], t["proto"], t["weight"], t["bias"], 2),
        ),
        (
            "update",
            OPS.prototype_update(odd["delta"], odd["mask"], odd["weight"], EPS, 2),
            reference.prototype_update(t["delta"], t["mask"], t["weight"], EPS, 2),
        ),
    ]
    backward = [
        (OPS.masked_avg_pool_backward, ("grad_proto", "features", "mask", EPS), EVERY_OP_RESULTS[1]),
        (OPS.prototype_conv2d_backward, ("grad_map", "features", "proto", "weight", 2), EVERY_OP_RESULTS[3]),
        (OPS.prototype_update_backward, ("grad_proto", "delta", "mask", "weight", EPS, 2), EVERY_OP_RESULTS[5]),
    ]
    # the same ops on contiguous inputs: channels-last ones take other convolution algorithms (the query's gradients)
    for op, args, names in backward:
        got = op(*(odd[n] if isinstance(n, str) else n for n in args), [True] * len(names))
        expected = op(*(t[n] if isinstance(n, str) else n for n in args), [True] * len(names))
        results += zip(names, got, expected, strict=True)
    assert_ops_agree(shape, results, f64, t)


def test_small_tiles_exercise_block_loops_and_split_sums(monkeypatch):
    """Tiles of 2 channels x 16 pixels: every kernel loops over several blocks, with ragged edges."""
    monkeypatch.setattr(_triton, "_blocks", lambda device, channels, pixels, *_: (2, 16))
    shape = (3, 5, 3, 5, 7, 3, 2)
    t = make(shape, mask_kind="soft")
    pool = (t["features"], t["mask"])
    out, got = grads(lambda f, m: OPS.masked_avg_pool(f, m, EPS), pool, t["grad_proto"])
    ref, expected = grads(lambda f, m: reference.masked_avg_pool(f, m, EPS), pool, t["grad_proto"])
    results = list(zip(("pool", "pool d_features", "pool d_mask"), (out, *got), (ref, *expected), strict=True))
    conv = (t["features"], t["proto"], t["weight"], t["bias"])
    out, got = grads(lambda *x: OPS.prototype_conv2d(*x, 2), conv, t["grad_map"])
    ref, expected = grads(lambda *x: reference.prototype_conv2d(*x, 2), conv, t["grad_map"])
    results += zip(("conv", *EVERY_OP_RESULTS[3]), (out, *got), (ref, *expected), strict=True)
    update = (t["delta"], t["weight"])
    out, got = grads(lambda d, w: OPS.prototype_update(d, t["mask"], w, EPS, 2), update, t["grad_proto"])
    ref, expected = grads(lambda d, w: reference.prototype_update(d, t["mask"], w, EPS, 2), update, t["grad_proto"])
    results += zip(("update", *EVERY_OP_RESULTS[5]), (out, *got), (ref, *expected), strict=True)
    assert_ops_agree(shape, results, f64, t)
    whole = _triton._window_sums(t["delta"], t["mask"], 3, 2, split=1)
    for split in (2, 3):  # partial sums over the pixel blocks, added: the H W terms of each window sum regrouped
        within(_triton._window_sums(t["delta"], t["mask"], 3, 2, split=split), whole, between(f64, [5 * 7]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_reduced_precision_forward(dtype):
    shape = (3, 3, 2, 5, 7, 3, 2)
    table = sums(shape)
    t = make(shape, f32)
    low = {name: x.to(dtype) for name, x in t.items()}
    pooled = OPS.masked_avg_pool(low["features"], low["mask"], EPS)
    assert pooled.dtype == dtype
    # each against float32 on the same rounded inputs: float32 sums, the result rounded once
    expected = reference.masked_avg_pool(low["features"].float(), low["mask"].float())
    within(pooled.float(), expected, low_precision(dtype, results=1) + between(f32, *table["pool"]), what="pool")
    relation = OPS.prototype_conv2d(low["features"], low["proto"], low["weight"], low["bias"], 2)
    expected = reference.prototype_conv2d(*(low[n].float() for n in ("features", "proto", "weight", "bias")), 2)
    # the query's convolution written in dtype, then again with the prototype's taps added
    within(relation.float(), expected, low_precision(dtype, results=2) + between(f32, *table["conv"]), what="conv")
    update = OPS.prototype_update(low["delta"], low["mask"], low["weight"], EPS, 2)
    expected = reference.prototype_update(*(low[n].float() for n in ("delta", "mask", "weight")), EPS, 2)
    # float32 throughout, the result rounded once
    within(update.float(), expected, low_precision(dtype, results=1) + between(f32, *table["update"]), what="update")


def test_float16_tuning_step_with_a_large_mask_rounds_once():
    if "triton" not in ops.backends():
        pytest.skip("the triton backend was not registered for this device when sst_fast.ops was imported")
    assert_half_tuning_step_rounds_once("triton", DEVICE)


def test_empty_batch_and_zero_channels():
    empty = make((3, 2, 2, 5, 7, 3, 1))
    zero = {name: x[:0] for name, x in empty.items() if name not in ("weight", "bias")}
    assert OPS.masked_avg_pool(zero["features"], zero["mask"], EPS).shape == (0, 2)
    assert OPS.prototype_conv2d(zero["features"], zero["proto"], empty["weight"], None, 1).shape == (0, 2, 5, 7)
    assert OPS.prototype_update(zero["delta"], zero["mask"], empty["weight"], EPS, 1).shape == (0, 2)
    no_channels = torch.zeros(3, 0, 5, 7, dtype=f64, device=DEVICE)
    assert OPS.masked_avg_pool(no_channels, empty["mask"], EPS).shape == (3, 0)
    d_features, d_mask = OPS.masked_avg_pool_backward(
        torch.zeros(3, 0, dtype=f64, device=DEVICE), no_channels, empty["mask"], EPS, [True, True]
    )
    assert d_features.shape == no_channels.shape and torch.equal(d_mask, torch.zeros_like(d_mask))


def test_opcheck():
    t = make((3, 2, 2, 5, 4, 3, 2), f32)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if DEVICE == "cuda":
        utils += ("test_aot_dispatch_dynamic",)
    cases = [
        (OPS.masked_avg_pool, (t["features"].requires_grad_(True), t["mask"], EPS)),
        (OPS.prototype_conv2d, (t["features"], t["proto"], t["weight"], t["bias"], 2)),
        (OPS.prototype_update, (t["delta"], t["mask"], t["weight"], EPS, 2)),
        (OPS.masked_avg_pool_backward, (t["grad_proto"], t["features"].detach(), t["mask"], EPS, [True, True])),
        (
            OPS.prototype_conv2d_backward,
            (t["grad_map"], t["features"].detach(), t["proto"], t["weight"], 2, [True, True, True, True]),
        ),
        (OPS.prototype_update_backward, (t["grad_proto"], t["delta"], t["mask"], t["weight"], EPS, 2, [True, True])),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=utils)
