"""The fused ops per backend, forward and forward+backward, at the paper's shape and a large one.

One group per op, shape and pass; every implementation of the op available for the device sits
in the group, so the table compares them in one run (on a GPU when there is one, else the CPU).
A ``copy`` group per shape times a device-to-device copy of the features, the bandwidth the
memory-bound ops are measured against.

Every case records in ``extra_info``: ``calls`` (op calls per timed round: on a GPU a round is
``CUDA_CALLS`` calls back to back and one synchronisation, so that launch and synchronisation
latency do not hide the kernels' time; divide the round's time by it), ``bytes`` (the least the
call must read and write: every input once, every output once) and ``flops`` (multiply-adds x 2 of
the convolution the op stands for). ``benchmarks/gpu_report.py`` turns them into GB/s, the fraction
of the copy's bandwidth and TFLOP/s.

Run: ``make bench`` (or ``pytest benchmarks/bench_ops.py -o python_files='bench_*.py'``).
"""

import pytest
import torch

from sst_fast import ops
from sst_fast.ops import reference

from selection import selected

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CUDA_CALLS = 20
ALL_SHAPES = {
    "paper": dict(batch=8, channels=256, out_channels=256, size=41, kernel=3, dilation=2),
    "large": dict(batch=16, channels=256, out_channels=256, size=81, kernel=3, dilation=2),
    "tiny": dict(batch=2, channels=8, out_channels=8, size=9, kernel=3, dilation=2),  # the suite's own test
}
SHAPES = selected(ALL_SHAPES, default=("paper", "large"))
OPS = ("masked_avg_pool", "prototype_conv2d", "tuned_prototype")


def make_inputs(batch, channels, out_channels, size, kernel, dilation):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(batch, channels, size, size, generator=generator)
    mask = (torch.rand(batch, 1, size, size, generator=generator) > 0.7).float()
    weight = torch.randn(out_channels, 2 * channels, kernel, kernel, generator=generator) * 0.02
    bias = torch.randn(out_channels, generator=generator) * 0.02
    delta = torch.randn(batch, out_channels, size, size, generator=generator) * 1e-4
    proto = reference.masked_avg_pool(features, mask)
    inputs = dict(features=features, mask=mask, weight=weight, bias=bias, delta=delta, proto=proto)
    return {key: value.to(DEVICE) for key, value in inputs.items()}


def synchronized(function, machine):
    """``function`` as one timed round: on a GPU, CUDA_CALLS calls and one synchronisation."""
    calls = CUDA_CALLS if DEVICE == "cuda" else 1
    machine.extra_info["calls"] = calls
    if DEVICE != "cuda":
        return function

    def run():
        for _ in range(calls):
            out = function()
        torch.cuda.synchronize()
        return out

    return run


def traffic(op: str, passes: str, batch, channels, out_channels, size, kernel, dilation) -> dict:
    """The least bytes a call moves (float32) and the FLOPs of the convolution it stands for."""
    pixels, element = size * size, 4
    features, mask, proto = batch * channels * pixels, batch * pixels, batch * channels
    delta, weight = batch * out_channels * pixels, out_channels * 2 * channels * kernel * kernel
    # The query half of the relation convolution, [B, C, H, W] -> [B, Co, H, W]
    conv_flops = 2 * batch * out_channels * channels * kernel * kernel * pixels
    if op == "masked_avg_pool":
        moved = features + mask + proto
        if passes == "fwd+bwd":
            moved += proto + mask + features  # read dL/dp and the mask, write dL/dF
        return dict(bytes=moved * element, flops=2 * features)
    if op == "prototype_conv2d":
        moved = features + proto + weight + out_channels + delta
        if passes == "fwd+bwd":
            # read dL/dy, F, p, W; write the four gradients
            moved += delta + features + proto + weight + out_channels + features + weight
        return dict(bytes=moved * element, flops=conv_flops * (3 if passes == "fwd+bwd" else 1))
    moved = delta + mask + weight + 2 * proto  # tuned_prototype: read delta, mask, W, p; write p'
    if passes == "fwd+bwd":
        moved += proto + delta + mask + weight + delta + weight + proto  # read dL/dp', delta, mask, W; write grads
    return dict(bytes=moved * element, flops=2 * batch * out_channels * 2 * kernel * kernel * pixels)


def op_call(name, inputs, dilation):
    """(the op as a function of its differentiable inputs, those inputs)."""
    if name == "masked_avg_pool":
        return (lambda f: ops.masked_avg_pool(f, inputs["mask"])), (inputs["features"],)
    if name == "prototype_conv2d":
        return (lambda q, p, w, b: ops.prototype_conv2d(q, p, w, b, dilation)), tuple(
            inputs[k] for k in ("features", "proto", "weight", "bias")
        )
    return (lambda d, w, p: ops.tuned_prototype(d, inputs["mask"], w, p, 1.0, 5e-4, dilation)), tuple(
        inputs[k] for k in ("delta", "weight", "proto")
    )


def cases():
    backends = ops.backends(DEVICE)
    return [
        pytest.param(op, shape, backend, id=f"{op}-{shape}-{backend}")
        for op in OPS
        for shape in SHAPES
        for backend in backends
    ]


@pytest.mark.parametrize("op, shape, backend", cases())
def test_forward(machine, op, shape, backend):
    machine.group = f"{op} {shape} fwd"
    config = SHAPES[shape]
    machine.extra_info.update(traffic(op, "fwd", **config))
    function, args = op_call(op, make_inputs(**config), config["dilation"])
    with ops.use_backend(backend), torch.no_grad():
        machine(synchronized(lambda: function(*args), machine))


@pytest.mark.parametrize("op, shape, backend", cases())
def test_forward_backward(machine, op, shape, backend):
    machine.group = f"{op} {shape} fwd+bwd"
    config = SHAPES[shape]
    machine.extra_info.update(traffic(op, "fwd+bwd", **config))
    function, args = op_call(op, make_inputs(**config), config["dilation"])
    args = tuple(arg.requires_grad_() for arg in args)

    def step():
        out = function(*args)
        return torch.autograd.grad(out, args, torch.ones_like(out))

    with ops.use_backend(backend):
        machine(synchronized(step, machine))


@pytest.mark.parametrize("shape", SHAPES)
def test_tuned_prototype_by_autograd(machine, shape):
    """What tuned_prototype replaces: dL/dF by autograd through the relation convolution, then pooling."""
    machine.group = f"tuned_prototype {shape} fwd"
    config = SHAPES[shape]
    machine.extra_info.update(traffic("tuned_prototype", "fwd", **config))
    inputs = make_inputs(**config)
    features = inputs["features"].requires_grad_()
    proto = reference.masked_avg_pool(features, inputs["mask"])
    y = reference.prototype_conv2d(features, proto, inputs["weight"], inputs["bias"], config["dilation"])

    def step():
        (grad,) = torch.autograd.grad(y, features, grad_outputs=inputs["delta"], retain_graph=True)
        return reference.masked_avg_pool(features.detach() - grad, inputs["mask"])

    machine(synchronized(step, machine))


@pytest.mark.parametrize("shape", SHAPES)
def test_device_copy(machine, shape):
    """A copy of the features into another buffer: the bandwidth the memory-bound ops are held against."""
    machine.group = f"copy {shape}"
    features = make_inputs(**SHAPES[shape])["features"]
    target = torch.empty_like(features)
    machine.extra_info.update(bytes=2 * features.numel() * features.element_size(), flops=0)
    machine(synchronized(lambda: target.copy_(features), machine))
