"""The reference ops against independent float64 computations, and their argument checks."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from sst_fast import ops
from sst_fast.ops import reference
from tests.conftest import assert_close
from tests.tolerance import between

f64 = torch.float64


def assert_within_sums(actual, expected, mixed=(), same=(), scale=None):
    """``actual`` within tests.tolerance.between(float64, mixed, same) of ``expected``, relative to ``scale``
    (default: the result's largest magnitude): two computations of the same sums in other orders."""
    tol = between(f64, mixed, same)
    scale = expected.abs().max().item() if scale is None else scale
    assert_close(actual, expected, rtol=tol, atol=tol * scale)


def random_mask(batch, height, width, kind, dtype=f64):
    if kind == "binary":
        return (torch.rand(batch, 1, height, width) > 0.5).to(dtype)
    if kind == "soft":
        return torch.rand(batch, 1, height, width, dtype=dtype)
    if kind == "empty":
        return torch.zeros(batch, 1, height, width, dtype=dtype)
    raise ValueError(kind)


# --- masked_avg_pool ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 4, 13, 1)])
@pytest.mark.parametrize("kind", ["binary", "soft", "empty"])
def test_masked_avg_pool_matches_loops(shape, kind):
    batch, channels, height, width = shape
    features = torch.randn(shape, dtype=f64)
    mask = random_mask(batch, height, width, kind)
    expected = torch.zeros(batch, channels, dtype=f64)
    for b, c in itertools.product(range(batch), range(channels)):
        total = sum(features[b, c, h, w] * mask[b, 0, h, w] for h in range(height) for w in range(width))
        expected[b, c] = total / (mask[b].sum() + 5e-4)
    assert_within_sums(ops.masked_avg_pool(features, mask), expected, mixed=[height * width], same=[height * width])


def test_masked_avg_pool_empty_mask_is_zero_not_nan():
    features = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = ops.masked_avg_pool(features, torch.zeros(2, 1, 3, 3))
    assert torch.equal(out, torch.zeros(2, 4))
    out.sum().backward()
    assert torch.isfinite(features.grad).all()


def test_masked_avg_pool_gradcheck():
    features = torch.randn(2, 3, 4, 5, dtype=f64, requires_grad=True)
    mask = torch.rand(2, 1, 4, 5, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.masked_avg_pool, (features, mask))
    assert torch.autograd.gradgradcheck(ops.masked_avg_pool, (features, mask))


def test_masked_avg_pool_converts_bool_mask():
    features = torch.randn(2, 3, 4, 4)
    mask = torch.rand(2, 1, 4, 4) > 0.5
    assert_close(ops.masked_avg_pool(features, mask), ops.masked_avg_pool(features, mask.float()), 0, 0)


# --- prototype_conv2d -----------------------------------------------------------------------


def explicit_relation_conv(query, proto, weight, bias, dilation):
    """Build the concatenated, tiled input by hand and convolve it."""
    batch, channels, height, width = query.shape
    tiled = torch.empty(batch, channels, height, width, dtype=query.dtype)
    for h, w in itertools.product(range(height), range(width)):
        tiled[:, :, h, w] = proto
    pair = torch.cat([query, tiled], 1)
    padding = dilation * (weight.shape[-1] // 2)
    return F.conv2d(pair, weight, bias, padding=padding, dilation=dilation)


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (9, 4)])
@pytest.mark.parametrize("kernel,dilation", [(1, 1), (3, 1), (3, 2), (5, 2)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_prototype_conv2d_matches_explicit(size, kernel, dilation, with_bias):
    query = torch.randn(2, 3, *size, dtype=f64)
    proto = torch.randn(2, 3, dtype=f64)
    weight = torch.randn(4, 6, kernel, kernel, dtype=f64)
    bias = torch.randn(4, dtype=f64) if with_bias else None
    expected = explicit_relation_conv(query, proto, weight, bias, dilation)
    actual = ops.prototype_conv2d(query, proto, weight, bias, dilation)
    assert_within_sums(actual, expected, mixed=[2 * 3 * kernel * kernel + 1])  # both halves' taps and the bias


def test_prototype_conv2d_gradcheck():
    args = (
        torch.randn(2, 2, 5, 4, dtype=f64, requires_grad=True),
        torch.randn(2, 2, dtype=f64, requires_grad=True),
        torch.randn(3, 4, 3, 3, dtype=f64, requires_grad=True),
        torch.randn(3, dtype=f64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(lambda *a: ops.prototype_conv2d(*a, dilation=2), args)
    assert torch.autograd.gradgradcheck(lambda *a: ops.prototype_conv2d(*a, dilation=2), args)


# --- tuned_prototype ------------------------------------------------------------------------


def tuned_prototype_by_autograd(features, mask, weight, bias, step, eps, dilation, seed=0):
    """masked_avg_pool(F - step * dL/dF, m) with dL/dF from autograd, for a non-linear loss L(y)."""
    features = features.detach().requires_grad_()
    proto = reference.masked_avg_pool(features, mask, eps)
    y = reference.prototype_conv2d(features, proto, weight, bias, dilation)
    generator = torch.Generator().manual_seed(seed)
    scale = torch.randn(y.shape, dtype=y.dtype, generator=generator)
    loss = (torch.sin(y) * scale).sum() + 0.5 * y.square().mean()
    delta, grad_features = torch.autograd.grad(loss, (y, features))
    expected = reference.masked_avg_pool(features - step * grad_features, mask, eps)
    return delta, proto.detach(), expected


def assert_tuned_within_sums(actual, expected, proto, size, taps):
    """The closed form against autograd: dL/dF's transposed convolution (2 Co k^2 terms: both halves of the
    weight), its pool and the mask's mass (h w each), the prototype's pool (h w); relative to the two parts'
    magnitudes, p and the step (p' = p - step * pooled gradient may cancel)."""
    pixels = size[0] * size[1]
    scale = proto.abs().max().item() + (expected - proto).abs().max().item()
    assert_within_sums(actual, expected, mixed=[2 * taps, pixels, pixels], same=[pixels, pixels], scale=scale)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 5), (11, 11)])
@pytest.mark.parametrize("kernel,dilation", [(1, 1), (3, 1), (3, 2), (5, 1), (5, 2)])
@pytest.mark.parametrize("kind", ["binary", "soft", "empty"])
def test_tuned_prototype_equals_pooled_gradient_step(size, kernel, dilation, kind):
    batch, channels, out_channels = 3, 4, 5
    features = torch.randn(batch, channels, *size, dtype=f64)
    mask = random_mask(batch, *size, kind)
    weight = torch.randn(out_channels, 2 * channels, kernel, kernel, dtype=f64)
    bias = torch.randn(out_channels, dtype=f64)
    delta, proto, expected = tuned_prototype_by_autograd(features, mask, weight, bias, 0.7, 5e-4, dilation)
    actual = ops.tuned_prototype(delta, mask, weight, proto, step=0.7, eps=5e-4, dilation=dilation)
    assert_tuned_within_sums(actual, expected, proto, size, out_channels * kernel * kernel)
    if kind == "empty":
        assert torch.equal(actual, torch.zeros_like(actual))


def test_tuned_prototype_other_eps_and_tensor_step():
    features = torch.randn(2, 3, 6, 6, dtype=f64)
    mask = random_mask(2, 6, 6, "soft")
    weight = torch.randn(3, 6, 3, 3, dtype=f64)
    delta, proto, expected = tuned_prototype_by_autograd(features, mask, weight, None, 2.5, 1e-2, 2)
    step = torch.tensor(2.5, dtype=f64)
    actual = ops.tuned_prototype(delta, mask, weight, proto, step, 1e-2, 2)
    assert_tuned_within_sums(actual, expected, proto, (6, 6), 3 * 3 * 3)


def test_tuned_prototype_gradcheck():
    delta = torch.randn(2, 3, 5, 4, dtype=f64, requires_grad=True)
    mask = random_mask(2, 5, 4, "soft")
    weight = torch.randn(3, 4, 3, 3, dtype=f64, requires_grad=True)
    proto = torch.randn(2, 2, dtype=f64, requires_grad=True)
    step = torch.tensor(0.3, dtype=f64, requires_grad=True)

    def fn(delta, weight, proto, step):
        return ops.tuned_prototype(delta, mask, weight, proto, step, dilation=2)

    assert torch.autograd.gradcheck(fn, (delta, weight, proto, step))
    assert torch.autograd.gradgradcheck(fn, (delta, weight, proto, step))


# --- argument checks ------------------------------------------------------------------------


def _good_args():
    return dict(
        query=torch.randn(2, 3, 5, 5),
        proto=torch.randn(2, 3),
        weight=torch.randn(4, 6, 3, 3),
        bias=torch.randn(4),
        delta=torch.randn(2, 4, 5, 5),
        mask=torch.rand(2, 1, 5, 5),
    )


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda a: ops.masked_avg_pool(a["query"][0], a["mask"]), ValueError, "features must have 4 dimensions"),
        (lambda a: ops.masked_avg_pool(a["query"], a["mask"][:1]), ValueError, r"mask must be \[B, 1, H, W\]"),
        (lambda a: ops.masked_avg_pool(a["query"], a["mask"].double()), ValueError, "mask has dtype"),
        (lambda a: ops.masked_avg_pool(a["query"].long(), a["mask"]), ValueError, "features must be a floating"),
        (lambda a: ops.masked_avg_pool(a["query"], a["mask"], eps=0.0), ValueError, "eps must be"),
        (lambda a: ops.masked_avg_pool(a["query"].numpy(), a["mask"]), TypeError, "features must be a torch.Tensor"),
        (lambda a: ops.prototype_conv2d(a["query"], a["proto"][:, :2], a["weight"]), ValueError, "proto must be"),
        (lambda a: ops.prototype_conv2d(a["query"], a["proto"], a["weight"][:, :5]), ValueError, "2C = 6"),
        (lambda a: ops.prototype_conv2d(a["query"], a["proto"], torch.randn(4, 6, 2, 2)), ValueError, "odd size"),
        (lambda a: ops.prototype_conv2d(a["query"], a["proto"], torch.randn(4, 6, 3, 1)), ValueError, "square"),
        (lambda a: ops.prototype_conv2d(a["query"], a["proto"], a["weight"], a["bias"][:3]), ValueError, "bias must"),
        (lambda a: ops.prototype_conv2d(a["query"], a["proto"], a["weight"], dilation=0), ValueError, "dilation"),
        (lambda a: ops.prototype_conv2d(a["query"], a["proto"], a["weight"], dilation=1.5), ValueError, "dilation"),
        (lambda a: ops.prototype_conv2d(a["query"], a["proto"].double(), a["weight"]), ValueError, "proto has dtype"),
        (lambda a: ops.tuned_prototype(a["delta"][:, :3], a["mask"], a["weight"], a["proto"]), ValueError, "Co = "),
        (lambda a: ops.tuned_prototype(a["delta"], a["mask"], a["weight"], a["proto"][:1]), ValueError, "proto must"),
        (lambda a: ops.tuned_prototype(a["delta"], a["mask"], a["weight"], a["proto"], step=float("nan")),
         ValueError, "step must"),
        (lambda a: ops.tuned_prototype(a["delta"], a["mask"], a["weight"], a["proto"], step=torch.ones(2)),
         ValueError, "step must"),
        (lambda a: ops.tuned_prototype(a["delta"], a["mask"][:, :, :4], a["weight"], a["proto"]), ValueError, "mask"),
        (lambda a: ops.tuned_prototype(a["delta"], a["mask"], a["weight"], a["proto"], step=True), ValueError, "step"),
    ],
)
def test_bad_arguments_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call(_good_args())


# --- backend choice -------------------------------------------------------------------------


def test_reference_backend_is_always_available():
    assert "reference" in ops.backends()
    assert set(ops.backends()) <= set(ops.KNOWN_BACKENDS)


def test_use_backend_nests_and_restores(monkeypatch):
    monkeypatch.delenv("SST_FAST_BACKEND", raising=False)
    assert ops.current_backend() == "auto"
    with ops.use_backend("reference"):
        assert ops.current_backend() == "reference"
        with ops.use_backend("auto"):
            assert ops.current_backend() == "auto"
        assert ops.current_backend() == "reference"
    assert ops.current_backend() == "auto"


def test_unknown_and_unbuilt_backends_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        with ops.use_backend("nope"):
            pass
    unbuilt = [name for name in ops.KNOWN_BACKENDS if name not in ops.backends()]
    for name in unbuilt:
        with pytest.raises(RuntimeError, match="not built"):
            with ops.use_backend(name):
                pass
    monkeypatch.setenv("SST_FAST_BACKEND", "nope")
    with pytest.raises(ValueError, match="SST_FAST_BACKEND"):
        ops.masked_avg_pool(torch.randn(1, 1, 2, 2), torch.ones(1, 1, 2, 2))


def test_dispatch_follows_env_context_and_device(monkeypatch):
    from sst_fast.ops import _backend

    calls = []

    def recording_pool(features, mask, eps):
        calls.append("cpp")
        return reference.masked_avg_pool(features, mask, eps)

    monkeypatch.setattr(_backend, "_registry", dict(_backend._registry))
    _backend.register_backend("cpp", {"masked_avg_pool": recording_pool}, device_types=("cpu",))
    features, mask = torch.randn(1, 2, 3, 3), torch.ones(1, 1, 3, 3)

    monkeypatch.delenv("SST_FAST_BACKEND", raising=False)
    ops.masked_avg_pool(features, mask)  # auto prefers cpp on CPU
    assert calls == ["cpp"]
    monkeypatch.setenv("SST_FAST_BACKEND", "reference")
    ops.masked_avg_pool(features, mask)
    assert calls == ["cpp"]
    with ops.use_backend("cpp"):  # the context wins over the environment
        ops.masked_avg_pool(features, mask)
    assert calls == ["cpp", "cpp"]
    monkeypatch.setenv("SST_FAST_BACKEND", " CPP ")  # case and spaces do not matter
    ops.masked_avg_pool(features, mask)
    assert calls == ["cpp", "cpp", "cpp"]
    with pytest.raises(RuntimeError, match="does not implement"):
        ops.prototype_conv2d(features, torch.randn(1, 2), torch.randn(2, 4, 3, 3))
    monkeypatch.delenv("SST_FAST_BACKEND")
    _backend.register_backend("cuda", {"masked_avg_pool": recording_pool}, device_types=("cuda",))
    with ops.use_backend("cuda"), pytest.raises(RuntimeError, match="runs on"):
        ops.masked_avg_pool(features, mask)
    with pytest.raises(ValueError, match="unknown backend"):
        _backend.register_backend("mine", {})


def test_auto_sends_a_kernel_a_backend_cannot_take_to_the_next(monkeypatch):
    """The CUDA kernels take relation kernels up to 7x7; ``auto`` sends a larger one on to Triton, else the
    reference, and a backend asked for by name says what it cannot take."""
    from sst_fast.ops import _backend

    def named(name):
        return {op: name for op in ("masked_avg_pool", "prototype_conv2d", "tuned_prototype")}

    monkeypatch.setattr(_backend, "_registry", dict(_backend._registry))
    monkeypatch.delenv("SST_FAST_BACKEND", raising=False)
    _backend.register_backend("cuda", named("cuda"), device_types=("cuda",), max_kernel_size=7)
    _backend.register_backend("triton", named("triton"), device_types=("cuda",))
    assert _backend.backends("cuda") == ["reference", "cuda", "triton"] and "cuda" not in _backend.backends("cpu")
    assert _backend.resolve("prototype_conv2d", "cuda", 7) == "cuda"
    assert _backend.resolve("tuned_prototype", "cuda", 9) == "triton"
    assert _backend.resolve("masked_avg_pool", "cuda") == "cuda"  # no relation kernel
    with ops.use_backend("cuda"), pytest.raises(RuntimeError, match="kernels of size up to 7, got 9"):
        _backend.resolve("prototype_conv2d", "cuda", 9)
    del _backend._registry["triton"]
    assert _backend.resolve("prototype_conv2d", "cuda", 9) is reference.prototype_conv2d


def test_the_public_ops_dispatch_on_the_relation_kernel_size(monkeypatch):
    from sst_fast.ops import _backend

    calls = []

    def recording(op):
        def run(*args):
            calls.append(op)
            return getattr(reference, op)(*args)

        return run

    monkeypatch.setattr(_backend, "_registry", dict(_backend._registry))
    monkeypatch.delenv("SST_FAST_BACKEND", raising=False)
    small = {op: recording(op) for op in ("prototype_conv2d", "tuned_prototype")}
    _backend.register_backend("cpp", small, device_types=("cpu",), max_kernel_size=3)
    query, mask, proto = torch.randn(1, 2, 6, 6), torch.ones(1, 1, 6, 6), torch.randn(1, 2)
    for kernel in (3, 5):
        weight, delta = torch.randn(2, 4, kernel, kernel), torch.randn(1, 2, 6, 6)
        ops.prototype_conv2d(query, proto, weight)
        ops.tuned_prototype(delta, mask, weight, proto)
    assert calls == ["prototype_conv2d", "tuned_prototype"]  # k = 5 went to the reference


def test_the_cuda_kernel_size_limit_is_the_kernels_own():
    from pathlib import Path

    from sst_fast.ops import _compiled

    source = (Path(__file__).resolve().parents[2] / "csrc" / "cuda" / "windows.cuh").read_text()
    assert f"constexpr int kMaxKernelSize = {_compiled.CUDA_MAX_KERNEL_SIZE};" in source


def test_the_status_line_says_why_triton_runs_nowhere(monkeypatch):
    import importlib.util

    monkeypatch.setattr(ops, "_triton_device_types", lambda: ())
    if importlib.util.find_spec("triton") is not None:
        assert ops.triton_status() == (
            "not available (no CUDA device; TRITON_INTERPRET=1 runs its kernels on the CPU, slowly)"
        )
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "triton" else found(name))
    assert ops.triton_status() == "not available (triton is not installed)"
    monkeypatch.setattr(ops, "_triton_device_types", lambda: ("cuda",))
    assert ops.triton_status() == "cuda"
