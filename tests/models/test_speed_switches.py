"""The speed switches of sst_fast.SST, each against the float32 reference within its own tolerance:
channels-last (float32: as tight as the layout-free model) and autocast bf16/fp16 (the low precision's
own accuracy; the tuning step itself stays float32)."""

import pytest
import torch

from sst_fast.engine.speed import autocast, set_memory_format
from tests.models.helpers import episode
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
    for name in OUTPUTS:
        assert_equivalent(getattr(out, name), getattr(expected, name), torch.float32, name)
    for name, grad in expected_grads.items():
        assert_equivalent(grads[name], grad, torch.float32, f"d loss / d {name}")


def relative_error(actual, expected):
    return ((actual.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("form,step", [("paper", 5.0), ("relative", 0.3)])
@pytest.mark.parametrize("amp,dtype,tolerance", [("bf16", torch.bfloat16, 0.05), ("fp16", torch.float16, 0.02)])
@pytest.mark.parametrize("shots", [1, 5])
def test_autocast_is_as_accurate_as_the_reference_under_autocast(amp, dtype, tolerance, shots, form, step):
    """Outputs within the low precision of float32's, or (where the CPU has native bf16/fp16 kernels, as AMX
    and AVX512-FP16 do, which round differently) no further from it than the reference's own outputs under
    the same autocast; gradients, which pile up the rounding of every
    layer (and the inner gradient's sensitivity to it), on average over a few models no further from
    float32's than the reference's own under the same autocast. The relative step only needs dLsup/dy's
    direction, so fp16's inner loss scale (a power of two) cancels in it; it still keeps delta from underflowing."""
    errors = {"fast": [], "reference": []}
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
        for name in ("logits", "loss", "support_logits", "prototypes", "tuned_prototypes"):
            error = relative_error(getattr(out, name), getattr(expected, name))
            own = relative_error(getattr(reference_out, name), getattr(expected, name))
            assert error < tolerance or error < 1.5 * own + tolerance / 10, (
                f"{name}: relative error {error:.2e} under {amp}, the reference's {own:.2e}"
            )
        for name, grad in expected_grads.items():
            assert grads[name].dtype == torch.float32
            errors["fast"].append(relative_error(grads[name], grad))
            errors["reference"].append(relative_error(reference_grads[name], grad))
    fast_error, reference_error = (sum(e) / len(e) for e in errors.values())
    assert fast_error < 1.5 * reference_error + tolerance / 10, (
        f"mean relative gradient error {fast_error:.2e} under {amp}, the reference's {reference_error:.2e}"
    )
