"""``torch.compile(model)`` of sst_fast.SST and of the reference, against the same model run eagerly.

Under torch.compile the tuning step (SSTReference.tune, which takes the inner gradient of the supports'
self-segmentation loss) runs eagerly between the compiled stages (sst_fast.models.sst._tune_eagerly says
why). Evaluation compiles under ``torch.no_grad()`` and ``torch.inference_mode()``, training (second and
first order) compiles with the same parameter gradients. The compiled graphs and the eager model run other
kernels on the same shapes (AOTAutograd's decompositions, inductor's fusions), so results are compared
within the rounding error of every sum the model computes (tests.models.helpers.model_tolerance, the
backbone's included), never bit for bit. Most tests use the ``aot_eager`` backend (dynamo and AOTAutograd,
no code generation: seconds to compile); one runs inductor, the default.
"""

import copy
import itertools

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import sst_fast
from sst_fast.reference import SSTReference
from tests.models.helpers import episode, model_tolerance, tiny_config
from tests.models.test_fast_equivalence import OUTPUTS, assert_equivalent, unbalanced_threshold

MODELS = {"SST": sst_fast.SST, "SSTReference": SSTReference}
GRAD_MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def make(name, shots, **overrides):
    """A tiny model in float32 whose supports' IoU fusion weights differ (so the support logits count)."""
    model = MODELS[name](tiny_config(tune_step=0.3, tune_form="relative", **overrides))
    inputs = episode(batch=2, shots=shots, seed=shots)
    return unbalanced_threshold(model, *inputs), inputs


def slow_unless(case, *fast):
    """``case`` as a pytest.param, marked slow unless it is one of ``fast`` (each compile takes 5-30 s here)."""
    return pytest.param(*case, marks=() if case in fast else pytest.mark.slow, id="-".join(case))


@pytest.mark.parametrize(
    "name,grad_mode",
    [
        slow_unless(case, ("SST", "no_grad"), ("SST", "inference_mode"), ("SSTReference", "inference_mode"))
        for case in itertools.product(MODELS, GRAD_MODES)
    ],
)
def test_compiled_evaluation_equals_eager(name, grad_mode):
    model, inputs = make(name, shots=2)
    inputs = inputs[:3]
    model.eval()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter)
    with GRAD_MODES[grad_mode]():
        expected = model(*inputs)
        out = compiled(*inputs)
    assert counter.frame_count > 0, "nothing was compiled"
    tol = model_tolerance(model, inputs, torch.float32, backbone=True)
    for output in OUTPUTS:
        assert_equivalent(getattr(out, output), getattr(expected, output), tol, output)
    assert (expected.tuned_prototypes - expected.prototypes).abs().max() > 1e-2 * expected.prototypes.abs().max()
    assert (expected.shot_weights - 0.5).abs().max() > 0.01, "the check needs unequal fusion weights"
    assert not out.logits.requires_grad and not out.tuned_prototypes.requires_grad


def test_compile_runs_the_step_eagerly_where_dynamo_says_it_is_exporting(monkeypatch):
    """Traced by dynamo, torch before 2.12 answers True to ``torch.compiler.is_exporting()`` under every
    ``torch.compile`` (torch 2.11, the GPU image's, does). The step must still run eagerly there, not be traced
    into the graph (where its inner gradient finds no path: "appears to not have been used in the graph"):
    that answer is given here as 2.11 gives it: True while dynamo traces, False when run."""
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: torch.compiler.is_dynamo_compiling())
    model, inputs = make("SST", shots=1)
    inputs = inputs[:3]
    model.eval()
    counter = CompileCounterWithBackend("aot_eager")
    with torch.no_grad():
        expected = model(*inputs)
        out = torch.compile(model, backend=counter)(*inputs)
    assert counter.frame_count > 0, "nothing was compiled"
    tol = model_tolerance(model, inputs, torch.float32, backbone=True)
    assert_equivalent(out.logits, expected.logits, tol, "logits")


def train_step(model, runner, inputs):
    model.train()
    model.zero_grad(set_to_none=True)
    out = runner(*inputs)
    out.loss.backward()
    return out, {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize(
    "name,order",
    [slow_unless(case, ("SST", "second_order")) for case in itertools.product(MODELS, ("second_order", "first_order"))],
)
def test_compiled_training_gradients_equal_eager(name, order):
    first_order = order == "first_order"
    model, inputs = make(name, shots=2, first_order=first_order, learnable_step=True)
    twin, other = copy.deepcopy(model), copy.deepcopy(model)  # a training forward moves BatchNorm's statistics
    expected, expected_grads = train_step(model, model, inputs)
    out, grads = train_step(twin, torch.compile(twin, backend="aot_eager"), inputs)
    tol, grad_tol = (model_tolerance(model, inputs, torch.float32, gradients=g, backbone=True) for g in (0, 1))
    for output in OUTPUTS:
        assert_equivalent(getattr(out, output), getattr(expected, output), tol, output)
    for parameter, grad in expected_grads.items():
        assert grad is not None, parameter
        assert_equivalent(grads[parameter], grad, grad_tol, f"d loss / d {parameter}")
    if not first_order:  # the check can tell the second-order gradient from the first-order one
        other.config.first_order = True
        _, first_order_grads = train_step(other, other, inputs)
        gap = max(((first_order_grads[n] - g).abs().max() / g.abs().max()).item() for n, g in expected_grads.items())
        assert gap > 2 * grad_tol, "first- and second-order gradients must differ beyond the tolerance"


def test_compiled_explain_returns_the_feature_gradient():
    """``explain=True`` (the figures' forward) forms dLsup/dRs and decodes the query twice, compiled too."""
    model, inputs = make("SST", shots=1)
    model.eval()
    with torch.no_grad():
        expected = model(*inputs[:3], explain=True)
        out = torch.compile(model, backend="aot_eager")(*inputs[:3], explain=True)
    tol = model_tolerance(model, inputs[:3], torch.float32, backbone=True)
    for output in (*OUTPUTS, "untuned_logits", "feature_gradient"):
        assert_equivalent(getattr(out, output), getattr(expected, output), tol, output)


@pytest.mark.parametrize("grad_mode", [slow_unless((mode,), ("no_grad",)) for mode in GRAD_MODES])
def test_compiled_inductor_evaluation_equals_eager(grad_mode):
    """The default backend (dynamo + AOTAutograd + inductor's C++ kernels), the way users call it. Compiled,
    the inner gradient would come back zero here (inductor's CPU backward of the decoder and the loss)."""
    model, inputs = make("SST", shots=2)
    inputs = inputs[:3]
    model.eval()
    with GRAD_MODES[grad_mode]():
        expected = model(*inputs)
        out = torch.compile(model)(*inputs)
    tol = model_tolerance(model, inputs, torch.float32, backbone=True)
    for output in OUTPUTS:
        assert_equivalent(getattr(out, output), getattr(expected, output), tol, output)
