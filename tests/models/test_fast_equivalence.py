"""sst_fast.SST (fused ops, closed-form tuning) against sst_fast.reference.SSTReference, the spec.

Same weights, same inputs, same random stream: every output and every parameter gradient must
agree within the rounding error of the sums the two compute (tests.tolerance; in float64 about 1e-12 of
each tensor's largest value, in float32 about 1e-3), for every switch of the model.
"""

import itertools

import pytest
import torch

import sst_fast
from sst_fast.reference import SSTReference
from tests.conftest import threshold_in_widest_gap
from tests.models.helpers import episode, model_tolerance, tiny_config

FUSIONS = ("weighted", "average", "max")
OUTPUTS = (
    "logits",
    "loss",
    "main_loss",
    "aux_loss",
    "support_logits",
    "shot_weights",
    "prototypes",
    "tuned_prototypes",
)


def assert_equivalent(actual, expected, tol, what):
    """Relative to the tensor's scale: |a - e| <= tol * (|e| + max|e|), ``tol`` from model_tolerance."""
    if expected is None:
        assert actual is None, f"{what}: the reference has none"
        return
    assert actual is not None, f"{what}: missing"
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


def unbalanced_threshold(model, query, supports, masks, query_mask=None):
    """Move the classifier's threshold into the supports' margins (into a gap between them: no argmax ties),
    so that the IoU fusion weights are unequal and depend on the self-segmentation."""
    model.eval()
    with torch.no_grad():
        out = model(query, supports, masks, query_mask)
        logits = (out.support_logits if out.support_logits is not None else out.logits[:, None]).flatten(0, 1)
        model.decoder.classifier.bias[1] -= threshold_in_widest_gap(logits[:, 1] - logits[:, 0], 0.3, 0.5)
    return model


def pair(dtype, **overrides):
    config = tiny_config(**{"tune_step": 20.0, "learnable_step": True, **overrides})
    fast = sst_fast.SST(config).to(dtype)
    reference = SSTReference(config).to(dtype)
    reference.load_state_dict(fast.state_dict())
    return fast, reference


def run(model, inputs, mode, seed=7):
    model.train(mode == "train")
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks for both models
    out = model(*inputs)
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    return out, grads


# Every switch; the step's form matters only with the tuning module (ssm) on.
CASES = [
    (dtype, shots, fusion, ssm, aux_loss, first_order, mode, form)
    for dtype, shots, fusion, ssm, aux_loss, first_order, mode in itertools.product(
        (torch.float64, torch.float32), (1, 5), FUSIONS, (True, False), (True, False), (False, True), ("train", "eval")
    )
    for form in (("paper", "relative") if ssm else ("paper",))
]


@pytest.mark.parametrize(
    "dtype,shots,fusion,ssm,aux_loss,first_order,mode,form",
    CASES,
    ids=[
        f"{str(d)[6:]}-{k}shot-{f}-ssm{int(s)}-aux{int(a)}-{'first' if o else 'second'}-{m}-{form}"
        for d, k, f, s, a, o, m, form in CASES
    ],
)
def test_fast_model_equals_reference(dtype, shots, fusion, ssm, aux_loss, first_order, mode, form):
    overrides = {"tune_form": form, "tune_step": 0.3} if form == "relative" else {}
    fast, reference = pair(
        dtype, shots=shots, fusion=fusion, ssm=ssm, aux_loss=aux_loss, first_order=first_order, dropout=0.3,
        **overrides,
    )
    inputs = episode(batch=2, shots=shots, dtype=dtype, seed=shots)
    fast = unbalanced_threshold(fast, *inputs)
    reference.load_state_dict(fast.state_dict())

    out, grads = run(fast, inputs, mode)
    expected, expected_grads = run(reference, inputs, mode)
    tol, grad_tol = (model_tolerance(reference, inputs, dtype, gradients=g) for g in (False, True))
    for name in OUTPUTS:
        assert_equivalent(getattr(out, name), getattr(expected, name), tol, name)
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        assert_equivalent(grads[name], grad, grad_tol, f"d loss / d {name}")
    if fusion == "weighted" and shots > 1:
        assert (expected.shot_weights - 1 / shots).abs().max() > 0.01, "the check needs unequal fusion weights"
    if ssm:
        moved = (expected.tuned_prototypes - expected.prototypes).abs().max()
        assert moved > 1e-2 * expected.prototypes.abs().max(), "the tuning step must matter here"
    if form == "relative":  # each prototype moved by alpha (about 0.3) of its own norm
        step = (expected.tuned_prototypes - expected.prototypes).norm(dim=-1)
        alpha = reference.tuning.step().item()
        torch.testing.assert_close(step, alpha * expected.prototypes.norm(dim=-1), rtol=tol, atol=0)


@pytest.mark.parametrize("form", ["paper", "relative"])
@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("shots", [1, 5])
def test_fast_evaluation_equals_reference(grad_mode, shots, form):
    fast, reference = pair(torch.float64, tune_form=form)
    inputs = episode(batch=3, shots=shots, dtype=torch.float64)[:3]
    fast = unbalanced_threshold(fast, *inputs)
    reference.load_state_dict(fast.state_dict())
    context = torch.no_grad if grad_mode == "no_grad" else torch.inference_mode
    with context():
        out, expected = fast.eval()(*inputs), reference.eval()(*inputs)
    tol = model_tolerance(reference, inputs, torch.float64)
    for name in OUTPUTS:
        assert_equivalent(getattr(out, name), getattr(expected, name), tol, name)
    assert not out.logits.requires_grad


@pytest.mark.parametrize("form", ["paper", "relative"])
def test_fast_tuning_never_forms_the_feature_gradient_unless_asked(form):
    fast, reference = pair(torch.float64, channels=6, tune_form=form)
    rs = torch.randn(4, 6, 8, 8, dtype=torch.float64)
    labels = (torch.rand(4, 32, 32) > 0.5).long()
    mask = sst_fast.models.functional.downsample_mask(labels, (8, 8), torch.float64)
    with torch.no_grad():
        quick = fast.tune(rs, mask, labels)
        full = fast.tune(rs, mask, labels, feature_gradient=True)
        spec = reference.tune(rs, mask, labels)
    assert quick.feature_gradient is None
    # the forward and the inner backward through the relation and the decoder at these shapes
    tol = model_tolerance(reference, episode(batch=4, shots=1, dtype=torch.float64), torch.float64, gradients=True)
    assert_equivalent(full.feature_gradient, spec.feature_gradient, tol, "dLsup/dRs")
    assert_equivalent(quick.tuned_prototypes, spec.tuned_prototypes, tol, "tuned prototypes")


def test_head_on_backbone_features_equals_forward():
    """``head`` is ``forward`` after the backbone: the same outputs and gradients on cached features."""
    fast, _ = pair(torch.float64, freeze_backbone=True)
    query, supports, masks, query_mask = episode(batch=2, shots=2, dtype=torch.float64)
    expected, expected_grads = run(fast, (query, supports, masks, query_mask), "eval")
    with torch.no_grad():
        query_features = fast.backbone(query)
        support_features = fast.backbone(supports.flatten(0, 1)).unflatten(0, (2, 2))
    fast.zero_grad(set_to_none=True)
    out = fast.head(query_features, support_features, masks, query_mask)
    out.loss.backward()
    # head() is forward() after the backbone: the same code on the same shapes, the same sums
    tol = model_tolerance(fast, (query, supports, masks, query_mask), torch.float64, gradients=True)
    for name in OUTPUTS:
        assert_equivalent(getattr(out, name), getattr(expected, name), tol, name)
    for name, p in fast.named_parameters():
        if p.requires_grad:
            assert_equivalent(p.grad, expected_grads[name], tol, f"d loss / d {name}")


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda q, s, m: (q[:, :3], s, m), "query_features must be"),
        (lambda q, s, m: (q, s[:, :, :5], m), "support_features must be"),
        (lambda q, s, m: (q[:1], s, m), "support_features must hold B = 1"),
        (lambda q, s, m: (q, s, m[:, :1]), "support_masks must be"),
        (lambda q, s, m: (q.long(), s, m), "query_features must be a floating-point"),
    ],
)
def test_head_names_the_bad_argument(change, message):
    model = sst_fast.SST(tiny_config()).eval()
    query, supports, masks, _ = episode(batch=2, shots=2)
    with torch.no_grad():
        q = model.backbone(query)
        s = model.backbone(supports.flatten(0, 1)).unflatten(0, (2, 2))
    with pytest.raises(ValueError, match=message):
        model.head(*change(q, s, masks))


@pytest.mark.parametrize("form,step", [("paper", 5.0), ("relative", 0.5)])
def test_training_runs_end_at_the_same_parameters(form, step):
    """300 SGD steps of each model from the same seed on the same episodes: the same weights at the end."""
    fast, reference = pair(torch.float64, channels=6, dropout=0.2, tune_step=step, tune_form=form)
    initial = {name: p.detach().clone() for name, p in fast.named_parameters()}
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (fast, reference)]
    episodes = [episode(batch=2, shots=1 + step % 3, size=24, dtype=torch.float64, seed=step) for step in range(300)]
    for model, optimizer in zip((fast, reference), optimizers, strict=True):
        model.train()
        torch.manual_seed(11)
        for inputs in episodes:
            optimizer.zero_grad(set_to_none=True)
            model(*inputs).loss.backward()
            optimizer.step()
    moved = 0.0
    for (name, p), q in zip(fast.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-8 * q.abs().max().item(), msg=lambda m, n=name: f"{n}: {m}")
        moved = max(moved, (p - initial[name]).abs().max().item())
    assert moved > 1e-2, "the runs must have trained"
