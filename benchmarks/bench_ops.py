"""The fused ops per backend, forward and forward+backward, at the paper's shape and a large one.

One group per op, shape and pass; every implementation of the op available for the device sits
in the group, so the table compares them in one run (on a GPU when there is one, else the CPU).
Run: ``make bench`` (or ``pytest benchmarks/bench_ops.py -o python_files='bench_*.py'``).
"""

import pytest
import torch

from sst_fast import ops
from sst_fast.ops import reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = {
    "paper": dict(batch=8, channels=256, out_channels=256, size=41, kernel=3, dilation=2),
    "large": dict(batch=16, channels=256, out_channels=256, size=81, kernel=3, dilation=2),
}
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


def synchronized(function):
    if DEVICE != "cuda":
        return function

    def run():
        out = function()
        torch.cuda.synchronize()
        return out

    return run


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
    backends = [name for name in ops.backends() if name != "triton" or DEVICE == "cuda"]
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
    function, args = op_call(op, make_inputs(**config), config["dilation"])
    with ops.use_backend(backend), torch.no_grad():
        machine(synchronized(lambda: function(*args)))


@pytest.mark.parametrize("op, shape, backend", cases())
def test_forward_backward(machine, op, shape, backend):
    machine.group = f"{op} {shape} fwd+bwd"
    config = SHAPES[shape]
    function, args = op_call(op, make_inputs(**config), config["dilation"])
    args = tuple(arg.requires_grad_() for arg in args)

    def step():
        out = function(*args)
        return torch.autograd.grad(out, args, torch.ones_like(out))

    with ops.use_backend(backend):
        machine(synchronized(step))


@pytest.mark.parametrize("shape", SHAPES)
def test_tuned_prototype_by_autograd(machine, shape):
    """What tuned_prototype replaces: dL/dF by autograd through the relation convolution, then pooling."""
    machine.group = f"tuned_prototype {shape} fwd"
    config = SHAPES[shape]
    inputs = make_inputs(**config)
    features = inputs["features"].requires_grad_()
    proto = reference.masked_avg_pool(features, inputs["mask"])
    y = reference.prototype_conv2d(features, proto, inputs["weight"], inputs["bias"], config["dilation"])

    def step():
        (grad,) = torch.autograd.grad(y, features, grad_outputs=inputs["delta"], retain_graph=True)
        return reference.masked_avg_pool(features.detach() - grad, inputs["mask"])

    machine(synchronized(step))
