"""The speed switches of sst_fast.SST, each against the float32 reference within its own tolerance:
channels-last (float32, within the rounding of every sum: its convolutions are other kernels) and autocast
bf16/fp16 (no less accurate than the reference under the same autocast; the tuning step stays float32)."""

import pytest
import torch

from sst_fast.engine.speed import autocast, set_memory_format
from tests.models.helpers import episode, model_tolerance
from tests.tolerance import unit_roundoff
from tests.models.test_fast_equivalence import OUTPUTS, assert_equivalent, pair, run


def channels_last_inputs(query, supports, masks, query_mask):
    supports = supports.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, supports.shape[:2])
    return query.contiguous(memory_format=torch.channels_last), supports, masks, query_mask


@pytest.mark.parametrize("shots", [1, 5])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_channels_last_equals_reference(shots, first_order, mode):
    fast, reference = pair(torch.float32, shots=shots, first_order=first_order, dropout=0.3)
    inputs = episode(batch=2, shots=shots)
    expected, expected_grads = run(reference, inputs, mode)
    fast = set_memory_format(fast, channels_last=True)
    assert fast.relation.conv.weight.is_contiguous(memory_format=torch.channels_last)
    out, grads = run(fast, channels_last_inputs(*inputs), mode)
    # channels-last convolutions are other kernels, the backbone's included: every sum counts
    tol, grad_tol = (model_tolerance(reference, inputs, torch.float32, gradients=g, backbone=True) for g in (0, 1))
    for name in OUTPUTS:
        assert_equivalent(getattr(out, name), getattr(expected, name), tol, name)
    for name, grad in expected_grads.items():
        assert_equivalent(grads[name], grad, grad_tol, f"d loss / d {name}")


def relative_error(actual, expected):
    return ((actual.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("form,step", [("paper", 5.0), ("relative", 0.3)])
@pytest.mark.parametrize("amp,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
@pytest.mark.parametrize("shots", [1, 5])
def test_autocast_is_as_accurate_as_the_reference_under_autocast(amp, dtype, shots, form, step):
    """Under autocast both models round to the low precision at every layer, at other places and through
    other kernels (a CPU with native bf16/fp16 kernels rounds differently from one that emulates them), so
    their outputs differ by about as much as each differs from float32. What they must share is where they
    accumulate: a fused op that summed its n terms in the low precision, where the reference's convolutions
    accumulate in float32, would be about sqrt(n) times further from float32 (12 times for the relation's
    144-term window, more for the pools). So, on the mean over three models (one draw of rounding noise is
    no measure), every output and the parameter gradients are no further from float32's than twice the
    reference's own distance under the same autocast, plus one rounding of the result to the low precision
    (its unit roundoff u). The tuning step itself runs in float32. The relative step only needs dLsup/dy's
    direction, so fp16's inner loss scale (a power of two) cancels in it; it still keeps delta from underflowing."""
    names = ("logits", "loss", "support_logits", "prototypes", "tuned_prototypes", "gradients")
    errors = {name: {"fast": [], "reference": []} for name in names}
    for seed in range(3):
        torch.manual_seed(seed)
        fast, reference = pair(torch.float32, shots=shots, channels=16, tune_step=step, tune_form=form)
        inputs = episode(batch=2, shots=shots, seed=seed)
        expected, expected_grads = run(reference, inputs, "train")
        with autocast(torch.device("cpu"), amp):
            out, grads = run(fast, inputs, "train")
            reference_out, reference_grads = run(reference, inputs, "train")
        assert out.logits.dtype == dtype
        assert out.tuned_prototypes.dtype == torch.float32, "the tuning step runs in float32 under autocast"
        assert all(grad.dtype == torch.float32 for grad in grads.values())
        for name in names[:-1]:
            errors[name]["fast"].append(relative_error(getattr(out, name), getattr(expected, name)))
            errors[name]["reference"].append(relative_error(getattr(reference_out, name), getattr(expected, name)))
        for name, grad in expected_grads.items():
            errors["gradients"]["fast"].append(relative_error(grads[name], grad))
            errors["gradients"]["reference"].append(relative_error(reference_grads[name], grad))
    u = unit_roundoff(dtype)
    for name, by_model in errors.items():
        fast_error, reference_error = (sum(e) / len(e) for e in by_model.values())
        assert fast_error <= 2 * reference_error + u, (
            f"{name}: mean relative error {fast_error:.2e} under {amp}, the reference's {reference_error:.2e}"
        )
