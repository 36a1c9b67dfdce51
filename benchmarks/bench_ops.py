"""The fused ops at the paper's shape (B=8, C=Co=256, 41x41, k=3, dilation 2), per backend.

One group per op and pass; every implementation of the op sits in the group, so the table
compares them in one run. Run: ``make bench`` (or ``pytest benchmarks -o python_files='bench_*.py'``).
"""

import pytest
import torch

from sst_fast import ops
from sst_fast.ops import reference

PAPER = dict(batch=8, channels=256, out_channels=256, size=41, kernel=3, dilation=2)


def make_inputs(batch, channels, out_channels, size, kernel, dilation, requires_grad=False):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(batch, channels, size, size, generator=generator)
    mask = (torch.rand(batch, 1, size, size, generator=generator) > 0.7).float()
    weight = torch.randn(out_channels, 2 * channels, kernel, kernel, generator=generator) * 0.02
    bias = torch.randn(out_channels, generator=generator) * 0.02
    delta = torch.randn(batch, out_channels, size, size, generator=generator) * 1e-4
    for tensor in (features, weight, bias):
        tensor.requires_grad_(requires_grad)
    return features, mask, weight, bias, delta


def backend_cases():
    return [pytest.param(name, id=name) for name in ops.backends()]


@pytest.mark.benchmark(group="masked_avg_pool paper fwd")
@pytest.mark.parametrize("backend", backend_cases())
def test_masked_avg_pool_forward(machine, backend):
    features, mask, *_ = make_inputs(**PAPER)
    with ops.use_backend(backend):
        machine(ops.masked_avg_pool, features, mask)


@pytest.mark.benchmark(group="masked_avg_pool paper fwd+bwd")
@pytest.mark.parametrize("backend", backend_cases())
def test_masked_avg_pool_forward_backward(machine, backend):
    features, mask, *_ = make_inputs(**PAPER, requires_grad=True)

    def step():
        (grad,) = torch.autograd.grad(ops.masked_avg_pool(features, mask).sum(), features)
        return grad

    with ops.use_backend(backend):
        machine(step)


@pytest.mark.benchmark(group="prototype_conv2d paper fwd")
@pytest.mark.parametrize("backend", backend_cases())
def test_prototype_conv2d_forward(machine, backend):
    features, mask, weight, bias, _ = make_inputs(**PAPER)
    proto = reference.masked_avg_pool(features, mask)
    with ops.use_backend(backend), torch.no_grad():
        machine(ops.prototype_conv2d, features, proto, weight, bias, PAPER["dilation"])


@pytest.mark.benchmark(group="prototype_conv2d paper fwd+bwd")
@pytest.mark.parametrize("backend", backend_cases())
def test_prototype_conv2d_forward_backward(machine, backend):
    features, mask, weight, bias, _ = make_inputs(**PAPER, requires_grad=True)
    proto = reference.masked_avg_pool(features, mask).detach().requires_grad_()

    def step():
        y = ops.prototype_conv2d(features, proto, weight, bias, PAPER["dilation"])
        return torch.autograd.grad(y.sum(), (features, proto, weight, bias))

    with ops.use_backend(backend):
        machine(step)


@pytest.mark.benchmark(group="tuned_prototype paper fwd")
def test_tuned_prototype_by_autograd(machine):
    """What the op replaces: dL/dF by autograd through the relation convolution, then pooling."""
    features, mask, weight, bias, delta = make_inputs(**PAPER)
    features.requires_grad_()
    proto = reference.masked_avg_pool(features, mask)
    y = reference.prototype_conv2d(features, proto, weight, bias, PAPER["dilation"])

    def step():
        (grad,) = torch.autograd.grad(y, features, grad_outputs=delta, retain_graph=True)
        return reference.masked_avg_pool(features.detach() - grad, mask)

    machine(step)


@pytest.mark.benchmark(group="tuned_prototype paper fwd")
@pytest.mark.parametrize("backend", backend_cases())
def test_tuned_prototype_forward(machine, backend):
    features, mask, weight, _, delta = make_inputs(**PAPER)
    proto = reference.masked_avg_pool(features, mask)
    with ops.use_backend(backend), torch.no_grad():
        machine(ops.tuned_prototype, delta, mask, weight, proto, 1.0, 5e-4, PAPER["dilation"])
