"""The SST model (reference stages): shapes, modes, switches, fusion, the tuning step, bad input."""

import itertools
import math

import pytest
import torch

import sst_fast
from sst_fast.models.functional import (
    downsample_mask,
    foreground_iou,
    fuse,
    fusion_weights,
    per_image_cross_entropy,
)
from sst_fast.ops import reference as ref_ops
from sst_fast.reference import SSTReference
from tests.conftest import assert_close, balance_classifier
from tests.models.helpers import episode, input_gradient_terms, model_tolerance, tiny_config, tuning_tolerance
from tests.tolerance import between, unit_roundoff

FUSIONS = ("weighted", "average", "max")


# --- how far two computations here may differ (the method of tests/tolerance.py) -----------------------


def conv_terms(model, run):
    """``run()``'s result and the terms of each convolution of ``model`` it calls: C_in / groups * k * k (random
    signs) each, counted with forward hooks."""
    terms = []

    def count(module, args, output):
        terms.append(module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1])

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        return run(), terms
    finally:
        for hook in hooks:
            hook.remove()


STEP = 1e-6  # the float64 central differences' step


def central_difference(loss_at, rounding, h=STEP, truncation=True):
    """(L(h) - L(-h)) / 2h for ``loss_at`` (t -> the float64 loss at t along a direction and the step it took, t
    as rounded into the values), and a bound of its distance to L'(0).

    Rounding: two evaluations of the loss differ by at most ``rounding * |L|`` (tests.tolerance.between for its
    sums, relative to the loss: a mean of one-signed terms), so the quotient by that over 2h. Truncation,
    h^2 |L'''| / 6, estimated by the step 2h (Richardson): D(2h) - D(h) = 3 h^2 L''' / 6 plus both quotients'
    rounding, so |truncation| <= |D(2h) - D(h)| / 3 + rounding |L| / 4h (the loss smooth across +-2h).
    ``truncation=False``: the rounding term alone (a lower bound of the bound, two evaluations fewer).
    """
    (ahead, forward), (behind, backward) = loss_at(h), loss_at(-h)
    numeric = (ahead - behind) / (forward - backward)
    noise = rounding * max(abs(ahead), abs(behind)) / (forward - backward)
    if not truncation:
        return numeric, noise
    (far_ahead, far_forward), (far_behind, far_backward) = loss_at(2 * h), loss_at(-2 * h)
    coarse = (far_ahead - far_behind) / (far_forward - far_backward)
    return numeric, noise + abs(coarse - numeric) / 3 + noise / 2


def along_entry(fn, x, index):
    """t -> (fn(x with its entry ``index`` moved by t), the step taken: t rounded into the entry)."""
    flat = x.view(-1)

    def at(t):
        original = flat[index].item()
        flat[index] = original + t
        try:
            return fn(x).item(), flat[index].item() - original
        finally:
            flat[index] = original

    return at


# --- shapes, switches, modes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "shots,fusion,ssm,aux_loss,mode",
    list(itertools.product((1, 5), FUSIONS, (True, False), (True, False), ("train", "eval", "no_grad"))),
)
def test_output_shapes_for_every_switch(shots, fusion, ssm, aux_loss, mode):
    model = sst_fast.SST(tiny_config(fusion=fusion, ssm=ssm, aux_loss=aux_loss, dropout=0.5))
    query, supports, masks, query_mask = episode(batch=2, shots=shots)
    model.train(mode == "train")
    with torch.set_grad_enabled(mode != "no_grad"):
        out = model(query, supports, masks, query_mask)
    assert out.logits.shape == (2, 2, 32, 32)
    assert out.prototypes.shape == (2, shots, 8)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    self_segmented = ssm or aux_loss or (fusion == "weighted" and shots > 1)
    assert (out.support_logits is not None) == self_segmented
    if self_segmented:
        assert out.support_logits.shape == (2, shots, 2, 32, 32)
    assert (out.tuned_prototypes is not None) == ssm
    if fusion == "max":
        assert out.shot_weights is None
    else:
        assert out.shot_weights.shape == (2, shots)
        # The IoUs' total and the weights' sum: K one-signed terms each (and a division).
        tol = between(torch.float32, same=[shots, shots])
        assert_close(out.shot_weights.sum(1), torch.ones(2), rtol=0, atol=tol)
    if aux_loss:
        assert torch.equal(out.loss, out.main_loss + out.aux_loss), "main + 1.0 * aux: one addition, as here"
    else:
        assert torch.equal(out.loss, out.main_loss)
    if mode == "no_grad":
        assert not any(
            t.requires_grad for t in vars(out).values() if isinstance(t, torch.Tensor)
        ), "nothing returned under no_grad keeps a graph"
    else:
        out.loss.backward()
        assert model.decoder.classifier.weight.grad is not None


def test_no_loss_without_query_mask_and_query_size_differs_from_support():
    model = sst_fast.SST(tiny_config()).eval()
    query, supports, masks, _ = episode(batch=1, shots=2, size=40, support_size=24)
    out = model(query, supports, masks)
    assert out.loss is None and out.main_loss is None
    assert out.logits.shape == (1, 2, 40, 40)
    assert out.support_logits.shape == (1, 2, 2, 24, 24)


@pytest.mark.parametrize("backbone,size", [("resnet50", 33), ("vgg16", 33)])
def test_large_backbones_at_small_input(backbone, size):
    model = sst_fast.SST(sst_fast.SSTConfig(backbone=backbone, channels=16, image_size=size)).train()
    query, supports, masks, query_mask = episode(batch=1, shots=2, size=size)
    out = model(query, supports, masks, query_mask)
    assert out.logits.shape == (1, 2, size, size)
    out.loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters()), "the backbone is frozen by default"
    assert model.embed.conv.weight.grad is not None


def test_eval_is_deterministic_and_train_dropout_is_not():
    model = sst_fast.SST(tiny_config(dropout=0.5))
    query, supports, masks, _ = episode(shots=2)
    model.eval()
    assert torch.equal(model(query, supports, masks).logits, model(query, supports, masks).logits)
    model.train()
    assert not torch.equal(model(query, supports, masks).logits, model(query, supports, masks).logits)


def test_state_dict_moves_between_sst_and_reference():
    fast, ref = sst_fast.SST(tiny_config(learnable_step=True)), SSTReference(tiny_config(learnable_step=True))
    assert list(fast.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(fast.state_dict())
    fast.eval(), ref.eval()
    inputs = episode(shots=3)
    # The same weights give the same loss up to rounding: the two models sum in other orders (fused ops, the
    # tuning step in closed form against autograd's).
    tol = tuning_tolerance(ref, inputs, torch.float32)
    expected = ref(*inputs).loss
    assert_close(fast(*inputs).loss, expected, rtol=0, atol=tol * expected.abs().item(), what="loss")
    assert "tuning.log_step" in fast.state_dict()


# --- the tuning step ------------------------------------------------------------------------


def self_segmentation_loss(model, rs, mask, labels):
    """Lsup(Rs) summed over images: Eq. 8-10 written out from the model's modules."""
    proto = ref_ops.masked_avg_pool(rs, mask, model.config.eps)
    logits = model.decoder(model.relation(rs, proto), labels.shape[-2:])
    return per_image_cross_entropy(logits, labels).sum()


@pytest.mark.parametrize("step,learnable", [(1.0, False), (0.37, False), (2.0, True)])
def test_tuned_features_are_rs_minus_alpha_times_finite_difference_gradient(step, learnable):
    torch.manual_seed(1)
    model = SSTReference(tiny_config(channels=4, tune_step=step, learnable_step=learnable)).double().eval()
    rs = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    labels = torch.zeros(2, 20, 20, dtype=torch.long)
    labels[0, 4:13, 6:15] = 1
    labels[1, 10:, :7] = 1
    labels[1, 9, :7] = 255
    mask = downsample_mask(labels, (5, 5), torch.float64)

    def loss(x):
        return self_segmentation_loss(model, x, mask, labels)

    with torch.no_grad():
        tuning = model.tune(rs, mask, labels)
        _, terms = conv_terms(model, lambda: loss(rs))
        # Lsup: the relation and decoder's convolutions, the pool of Rs (random signs), the mask's mass and the
        # mean over pixels (one sign). Autograd's dLsup/dRs adds each input gradient and the tile's (h * w terms).
        hw = rs[0, 0].numel()
        loss_rounding = between(torch.float64, mixed=[*terms, hw], same=[hw, labels[0].numel()])
        backward = input_gradient_terms(model.relation, model.decoder)
        gradient = tuning.feature_gradient
        gradient_rounding = between(torch.float64, mixed=[*terms, hw, *backward, hw]) * gradient.abs().max().item()
        expected_gradient, bounds = torch.zeros_like(rs), torch.zeros_like(rs)
        for index in range(rs.numel()):
            numeric, bound = central_difference(along_entry(loss, rs.clone(), index), loss_rounding)
            expected_gradient.view(-1)[index], bounds.view(-1)[index] = numeric, bound
        alpha = float(model.tuning.step())  # a learnable one is exp of a float32 log: alpha to ~2^-24
    # Each entry within the central difference's rounding and truncation plus autograd's rounding.
    ratio = ((gradient - expected_gradient).abs() / (bounds + gradient_rounding)).max().item()
    assert ratio <= 1, f"dLsup/dRs is off by {ratio:.2f} times what rounding and the step explain"
    # Eq. 11, then Eq. 12, with the model's alpha.
    expected = ref_ops.masked_avg_pool(rs - alpha * expected_gradient, mask, model.config.eps)
    # Both sides pool Rs - alpha g with weights summing to < 1, each with its g: alpha times the gradients'
    # distance, plus the pools' own rounding (h * w terms of both signs).
    tol = alpha * (bounds.max().item() + gradient_rounding) + between(torch.float64, mixed=[hw]) * expected.abs().max()
    assert_close(tuning.tuned_prototypes, expected, rtol=0, atol=tol.item(), what="pool(R's)")
    assert (tuning.tuned_prototypes - tuning.prototypes).abs().max() > tol, "the step must move p beyond that"


def test_tuning_agrees_with_the_closed_form_op():
    """The model's autograd tuning step equals ops.tuned_prototype fed with dLsup/dy (docs/design.md §3)."""
    model = SSTReference(tiny_config(channels=6, tune_step=3.0)).double().eval()
    rs = torch.randn(3, 6, 7, 6, dtype=torch.float64, requires_grad=True)
    labels = (torch.rand(3, 28, 24) > 0.6).long()
    labels[2] = 0  # one empty support
    mask = downsample_mask(labels, (7, 6), torch.float64)

    proto = ref_ops.masked_avg_pool(rs, mask, 5e-4)
    y = model.relation.conv(torch.cat([rs, ref_ops.tile(proto, (7, 6))], 1))
    loss = per_image_cross_entropy(model.decoder(model.relation.refine(y), (28, 24)), labels).sum()
    (delta,) = torch.autograd.grad(loss, y)
    closed_form = sst_fast.ops.tuned_prototype(
        delta, mask, model.relation.conv.weight, proto.detach(), step=3.0, dilation=model.relation.dilation
    )
    with torch.no_grad():
        tuning = model.tune(rs.detach(), mask, labels)
    # The same delta on both sides (the same forward and backward down to y). Then the closed form's sums over
    # h * w (S, dQ) and C_out * k * k (the weight contraction), against autograd's input gradient (C_out * k * k),
    # the tile's gradient (h * w) and the pool of R's (h * w, both signs; the mask's mass, one sign): relative to
    # p' (p plus the step, which the step's sums are relative to).
    hw = 7 * 6
    tol = between(torch.float64, mixed=[*input_gradient_terms(model.relation.conv), hw, hw], same=[hw])
    scale = tuning.prototypes.abs().max() + (tuning.tuned_prototypes - tuning.prototypes).abs().max()
    assert_close(closed_form, tuning.tuned_prototypes, rtol=0, atol=tol * scale.item())
    assert torch.equal(tuning.tuned_prototypes[2], torch.zeros(6, dtype=torch.float64))


def test_evaluation_under_no_grad_still_tunes():
    model = sst_fast.SST(tiny_config(tune_step=10.0)).eval()
    query, supports, masks, _ = episode(shots=2)
    with torch.no_grad():
        out = model(query, supports, masks)
    assert (out.tuned_prototypes - out.prototypes).abs().max() > 0


def test_ssm_off_uses_plain_prototypes():
    config = tiny_config(ssm=False)
    model, ablated = sst_fast.SST(config).eval(), sst_fast.SST(tiny_config(ssm=True, tune_step=10.0)).eval()
    ablated.load_state_dict(model.state_dict())
    query, supports, masks, _ = episode(shots=1)
    plain, tuned = model(query, supports, masks), ablated(query, supports, masks)
    assert plain.tuned_prototypes is None
    assert_close(plain.prototypes, tuned.prototypes, 0, 0)
    reference = SSTReference(ablated.config).eval()
    reference.load_state_dict(ablated.state_dict())
    tol = tuning_tolerance(reference, (query, supports, masks), torch.float32)  # two computations' distance at most
    assert (plain.logits - tuned.logits).abs().max() > tol * plain.logits.abs().max(), "ssm must change the logits"


# --- second order / first order -------------------------------------------------------------


def _tuned_prototype_grads(first_order):
    model = sst_fast.SST(tiny_config(first_order=first_order, tune_step=20.0)).train()
    query, supports, masks, query_mask = episode(shots=2)
    out = model(query, supports, masks, query_mask)
    params = [model.decoder.classifier.weight, model.relation.conv.weight, model.embed.conv.weight]
    return torch.autograd.grad(out.tuned_prototypes.sum(), params, allow_unused=True), model, out


def test_second_order_gradients_reach_relation_and_decoder():
    (classifier, relation, encoder), _, _ = _tuned_prototype_grads(first_order=False)
    assert classifier.abs().sum() > 0 and relation.abs().sum() > 0 and encoder.abs().sum() > 0


def test_first_order_detaches_the_inner_gradient():
    (classifier, relation, encoder), _, _ = _tuned_prototype_grads(first_order=True)
    assert classifier is None and relation is None, "dLsup/dRs is a constant in first order"
    assert encoder.abs().sum() > 0, "R's = Rs - alpha g still depends on Rs"


def test_first_and_second_order_parameter_gradients_differ():
    grads = {}
    inputs = episode(shots=1)
    for first_order in (False, True):
        torch.manual_seed(0)
        config = tiny_config(first_order=first_order, tune_step=20.0, aux_loss=False)
        model = sst_fast.SST(config).train()
        model(*inputs).loss.backward()
        grads[first_order] = model.relation.conv.weight.grad.clone()
    reference = SSTReference(config)
    reference.load_state_dict(model.state_dict())
    # Two computations of one gradient differ by at most tol (its forward, inner-step and backward sums), and
    # the second-order pass goes back through the inner step's sums once more: twice that. A larger difference
    # is the second-order term, not rounding.
    tol = 2 * tuning_tolerance(reference, inputs, torch.float32, gradients=True)
    scale = max(grads[False].abs().max(), grads[True].abs().max())
    assert (grads[False] - grads[True]).abs().max() > tol * scale


GRADCHECK_NAMES = [
    "decoder.classifier.weight",
    "relation.conv.weight",
    "relation.conv.bias",
    "relation.blocks.1.conv2.bias",
    "embed.conv.bias",
    "tuning.log_step",
]


def _loss_of_parameters(first_order, form, step):
    """The float64 episode loss as a function of a few parameters (every part of the model: decoder, relation,
    embedding, the learnable step), their values, and how far two evaluations of the loss and of its gradient
    may be apart relative to their scale (counted on the reference; the embedding's sums are counted too, its bias
    being one of the parameters)."""
    config = tiny_config(channels=4, tune_step=step, tune_form=form, learnable_step=True, first_order=first_order)
    model = sst_fast.SST(config).double().eval()
    inputs = episode(batch=1, shots=2, size=24, dtype=torch.float64)
    out = model(*inputs)
    assert (out.tuned_prototypes - out.prototypes).abs().max() > 1e-3, "the tuning step must matter here"
    params = dict(model.named_parameters())
    values = tuple(params[name].detach().clone().requires_grad_() for name in GRADCHECK_NAMES)

    def loss_of(*values):
        replaced = dict(zip(GRADCHECK_NAMES, values, strict=True))
        return torch.func.functional_call(model, replaced, inputs).loss

    reference = SSTReference(config).double()
    reference.load_state_dict(model.state_dict())
    loss_rounding = tuning_tolerance(reference, inputs, torch.float64, backbone=True)
    # The outer backward's sums, and second order the same again back through the inner step.
    gradient_rounding = 2 * tuning_tolerance(reference, inputs, torch.float64, gradients=True, backbone=True)
    return loss_of, values, loss_rounding, gradient_rounding


@pytest.mark.parametrize("form,step", [("paper", 50.0), ("relative", 0.5)])
@pytest.mark.parametrize("first_order", [False, True])
def test_directional_derivatives_through_the_tuning_step_float64(first_order, form, step):
    """Numerical derivatives of the loss see every path; the analytic ones must too (second order).

    Along random directions d of the parameters t, the central difference (L(t + h d) - L(t - h d)) / 2h against
    the analytic dL/dt . d, within what float64 and the step explain (central_difference: the loss's rounding
    over 2h, the truncation by a second step; the analytic side's rounding; the steps' rounding into t, u |t|
    per entry). In first order the path through dLsup/dRs is cut, so the analytic derivative must miss by more
    than that: proof that the second-order term is large enough here to be seen.
    (test_gradcheck_through_the_tuning_step_float64, marked slow, checks every entry.)
    """
    loss_of, inputs, loss_rounding, gradient_rounding = _loss_of_parameters(first_order, form, step)
    gradients = torch.autograd.grad(loss_of(*inputs), inputs)
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(3):
        direction = [torch.randn(x.shape, generator=generator, dtype=x.dtype) for x in inputs]
        pairs = list(zip(inputs, direction, gradients, strict=True))
        analytic = sum((g * d).sum() for _, d, g in pairs).item()

        def loss_at(t, pairs=pairs):
            with torch.no_grad():
                return loss_of(*(x + t * d for x, d, _ in pairs)).item(), t

        numeric, bound = central_difference(loss_at, loss_rounding)
        bound += gradient_rounding * sum((g.abs().max() * d.abs().sum()).item() for _, d, g in pairs)
        bound += unit_roundoff(torch.float64) * sum((g * x).abs().sum().item() for x, _, g in pairs) / STEP
        worst = max(worst, abs(numeric - analytic) / bound)
    if first_order:
        assert worst > 1, f"first order is within {worst:.2f} of the bound: the term it cuts is not seen"
    else:
        assert worst <= 1, f"the analytic derivative is off by {worst:.2f} times what rounding and the step explain"


@pytest.mark.slow
@pytest.mark.parametrize("form,step", [("paper", 50.0), ("relative", 0.5)])
@pytest.mark.parametrize("first_order", [False, True])
def test_gradcheck_through_the_tuning_step_float64(first_order, form, step):
    """Every entry of the gradient against its central difference, within what float64 and the step explain
    (as test_directional_derivatives_...; a minute or more per case). In first order some entry must miss."""
    loss_of, inputs, loss_rounding, gradient_rounding = _loss_of_parameters(first_order, form, step)
    gradients = torch.autograd.grad(loss_of(*inputs), inputs)
    entries = [(x, g, index) for x, g in zip(inputs, gradients, strict=True) for index in range(x.numel())]
    worst = 0.0
    with torch.no_grad():
        for x, g, index in entries:
            analytic, analytic_bound = g.view(-1)[index].item(), gradient_rounding * g.abs().max().item()
            loss_at = along_entry(lambda _: loss_of(*inputs), x.detach(), index)
            numeric, bound = central_difference(loss_at, loss_rounding, truncation=False)
            if abs(numeric - analytic) > bound + analytic_bound:  # beyond rounding: truncation, then?
                numeric, bound = central_difference(loss_at, loss_rounding)
            worst = max(worst, abs(numeric - analytic) / (bound + analytic_bound))
            if worst > 1:  # one entry decides
                break
    assert (worst > 1) == first_order, f"an entry is off by {worst:.2f} times the bound"


def test_learnable_step_is_positive_and_trained():
    model = sst_fast.SST(tiny_config(learnable_step=True, tune_step=0.5)).train()
    # exp of log(0.5) rounded to float32: |log 0.5| u, and exp within one ulp (2u).
    assert model.tuning.step().item() == pytest.approx(0.5, rel=(abs(math.log(0.5)) + 2) * unit_roundoff(torch.float32))
    query, supports, masks, query_mask = episode(shots=2)
    model(query, supports, masks, query_mask).loss.backward()
    assert model.tuning.log_step.grad is not None and model.tuning.log_step.grad != 0


# --- fusion ---------------------------------------------------------------------------------


def test_fusion_weights_normalise_ious():
    ious = torch.tensor([[0.2, 0.6, 0.2], [0.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    weights = fusion_weights(ious)
    tol = between(torch.float32, same=[3, 3])  # the total of 3 IoUs, a division; the check's sum of 3 weights
    assert_close(weights, torch.tensor([[0.2, 0.6, 0.2], [1 / 3, 1 / 3, 1 / 3], [0.0, 1.0, 0.0]]), rtol=0, atol=tol)
    assert_close(weights.sum(1), torch.ones(3), rtol=0, atol=tol)


def test_foreground_iou_by_hand():
    prediction = torch.tensor([[[1, 1, 0], [0, 1, 0]], [[0, 0, 0], [0, 0, 0]], [[1, 1, 1], [1, 1, 1]]])
    labels = torch.tensor([[[1, 0, 0], [0, 1, 255]], [[0, 0, 0], [0, 0, 0]], [[255, 255, 1], [0, 0, 255]]])
    # image 0: inter 2, union 3; image 1: empty union -> 0; image 2: ignore excluded, inter 1, union 3.
    tol = between(torch.float32)  # exact counts, one division: a rounding
    assert_close(foreground_iou(prediction, labels), torch.tensor([2 / 3, 0.0, 1 / 3]), rtol=0, atol=tol)


def test_fuse_modes():
    relations = torch.randn(2, 3, 4, 5, 5)
    weights = fusion_weights(torch.rand(2, 3))
    expected = sum(weights[:, k, None, None, None] * relations[:, k] for k in range(3))
    tol = between(torch.float32, mixed=[3])  # a sum of K = 3 weighted maps, in another order
    assert_close(fuse(relations, "weighted", weights), expected, rtol=0, atol=tol * expected.abs().max().item())
    assert_close(fuse(relations, "max", None), relations.max(1).values, 0, 0)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_model_fusion_matches_per_shot_relations(fusion):
    query, supports, masks, _ = episode(batch=2, shots=3)
    model = sst_fast.SST(tiny_config(fusion=fusion, tune_step=20.0, aux_loss=True)).eval()
    model = balance_classifier(model, query, supports, masks, on="supports")
    out = model(query, supports, masks)
    reference = SSTReference(model.config).eval()
    reference.load_state_dict(model.state_dict())
    # The relation as a module (the reference's convolution on the concatenation, shot by shot) against the
    # model's fused op on all shots, then the same decoder: rounding apart.
    tol = model_tolerance(reference, (query, supports, masks), torch.float32)
    rq = model.encode(query)
    per_shot = torch.stack([model.relation(rq, out.tuned_prototypes[:, k]) for k in range(3)], 1)
    if fusion == "weighted":
        ious = foreground_iou(out.support_logits.flatten(0, 1).argmax(1), masks.flatten(0, 1).long()).view(2, 3)
        assert_close(out.shot_weights, fusion_weights(ious), 0, 0)
        assert (out.shot_weights - 1 / 3).abs().max() > 0.02, "the check needs unequal IoU weights"
        fused = (out.shot_weights[:, :, None, None, None] * per_shot).sum(1)
        averaged = model.decoder(per_shot.mean(1), (32, 32))
        beyond = tol * averaged.abs().max()
        assert (averaged - model.decoder(fused, (32, 32))).abs().max() > beyond, "weighted must differ from average"
    elif fusion == "average":
        assert_close(out.shot_weights, torch.full((2, 3), 1 / 3), 0, 0)
        fused = per_shot.mean(1)
    else:
        fused = per_shot.max(1).values
    expected = model.decoder(fused, (32, 32))
    assert_close(out.logits, expected, rtol=0, atol=tol * expected.abs().max().item())
    untuned = torch.stack([model.relation(rq, out.prototypes[:, k]) for k in range(3)], 1)
    assert (untuned - per_shot).abs().max() > tol * per_shot.abs().max(), "the relation must see the tuned prototypes"


def test_one_shot_weight_is_one():
    model = sst_fast.SST(tiny_config(ssm=False, aux_loss=False)).eval()
    query, supports, masks, _ = episode(shots=1)
    out = model(query, supports, masks)
    assert out.support_logits is None and torch.equal(out.shot_weights, torch.ones(2, 1))


# --- empty and ignored masks ----------------------------------------------------------------


@pytest.mark.parametrize("form,step", [("paper", 5.0), ("relative", 0.3)])
@pytest.mark.parametrize("fill", [0, 255])
def test_empty_or_ignored_support_gives_defined_results(fill, form, step):
    query, supports, masks, query_mask = episode(shots=2)
    masks[0, 1] = fill
    config = tiny_config(tune_step=step, tune_form=form, freeze_backbone=True)  # BN alike in train and eval
    model = sst_fast.SST(config)
    model = balance_classifier(model, query, supports, masks, on="supports").train()
    out = model(query, supports, masks, query_mask)
    assert torch.equal(out.prototypes[0, 1], torch.zeros(8)), "an empty mask pools to a zero prototype"
    for value in (out.logits, out.support_logits, out.loss, out.tuned_prototypes, out.shot_weights):
        assert torch.isfinite(value).all()
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert out.shot_weights[0].tolist() == [1.0, 0.0], "a shot with nothing to segment gets no weight"
    assert torch.equal(out.tuned_prototypes[0, 1], torch.zeros(8)), "an empty prototype does not move"


def test_all_ignore_query_mask_gives_zero_main_loss():
    assert per_image_cross_entropy(torch.randn(2, 2, 4, 4), torch.full((2, 4, 4), 255)).tolist() == [0.0, 0.0]


# --- bad input ------------------------------------------------------------------------------


def _bad(**changes):
    query, supports, masks, query_mask = episode(shots=2)
    args = dict(query=query, support_images=supports, support_masks=masks, query_mask=query_mask)
    for key, change in changes.items():
        args[key] = change(args[key])
    return args


@pytest.mark.parametrize(
    "args,error,match",
    [
        (_bad(query=lambda q: q[0]), ValueError, r"query must be \[B, 3, H, W\]"),
        (_bad(query=lambda q: q[:, :1]), ValueError, "3 colour channels"),
        (_bad(query=lambda q: q.numpy()), TypeError, "query must be a torch.Tensor"),
        (_bad(query=lambda q: (q * 255).to(torch.uint8)), ValueError, "query must be a floating-point"),
        (_bad(query=lambda q: q.index_fill(2, torch.tensor([3]), float("nan"))), ValueError, "query contains NaN"),
        (_bad(support_images=lambda s: s[:, 0]), ValueError, r"support_images must be \[B, K, 3, H, W\]"),
        (_bad(support_images=lambda s: s[:1]), ValueError, "support_images must hold B = 2"),
        (_bad(support_images=lambda s: s[:, :0]), ValueError, "support_images is empty"),
        (_bad(support_images=lambda s: s.double()), ValueError, "support_images must match query's dtype"),
        (_bad(support_images=lambda s: s.clone().fill_(float("inf"))), ValueError, "support_images contains NaN"),
        (_bad(support_masks=lambda m: m[:, :1]), ValueError, "support_masks must be .* K = 2"),
        (_bad(support_masks=lambda m: m[:, :, :-1]), ValueError, "support_masks must have the support images' size"),
        (_bad(support_masks=lambda m: m[:, 0]), ValueError, r"support_masks must be \[B, K, H, W\]"),
        (_bad(support_masks=lambda m: m.clone().fill_(2)), ValueError, "support_masks must hold only 0"),
        (_bad(support_masks=lambda m: m.float() + 0.5), ValueError, r"found \d+\.5"),
        (_bad(query_mask=lambda m: m[:, :-2]), ValueError, r"query_mask must be \[B, H, W\]"),
        (_bad(query_mask=lambda m: m.clone().fill_(7)), ValueError, "query_mask must hold only 0"),
        (_bad(query_mask=lambda m: m.tolist()), TypeError, "query_mask must be a torch.Tensor"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_bad_input_names_the_argument(args, error, match):
    model = sst_fast.SST(tiny_config())
    with pytest.raises(error, match=match):
        model(**args)


def test_bool_and_float_masks_are_accepted():
    model = sst_fast.SST(tiny_config()).eval()
    query, supports, masks, _ = episode(shots=2)
    masks = masks.clamp(max=1)
    expected = model(query, supports, masks).logits
    assert torch.equal(model(query, supports, masks.bool()).logits, expected)
    assert torch.equal(model(query, supports, masks.float()).logits, expected)


def test_inference_mode_gives_the_no_grad_result():
    model = sst_fast.SST(tiny_config(tune_step=10.0)).eval()
    query, supports, masks, query_mask = episode(shots=2)
    with torch.no_grad():
        expected = model(query, supports, masks, query_mask)
    with torch.inference_mode():
        actual = model(query, supports, masks, query_mask)
    assert torch.equal(actual.logits, expected.logits)
    assert torch.equal(actual.tuned_prototypes, expected.tuned_prototypes)
    assert torch.equal(actual.loss, expected.loss)


def test_input_dtype_must_match_the_model():
    model = sst_fast.SST(tiny_config())
    query, supports, masks, _ = episode(shots=1, dtype=torch.float64)
    with pytest.raises(ValueError, match="query has dtype torch.float64 but the model's parameters are torch.float32"):
        model(query, supports, masks)


def test_aux_weight_scales_the_auxiliary_loss():
    model = sst_fast.SST(tiny_config(aux_weight=0.25)).eval()
    out = model(*episode(shots=2))
    assert torch.equal(out.loss, out.main_loss + 0.25 * out.aux_loss), "the model's own operations, in its order"


# --- intermediates for the figures (explain=True) --------------------------------------------


@pytest.mark.parametrize("form", ["paper", "relative"])
def test_explain_returns_the_untuned_decoding_and_the_feature_gradient(form):
    import dataclasses

    torch.manual_seed(0)
    config = tiny_config(tune_form=form, tune_step=0.5 if form == "relative" else 50.0)
    model = sst_fast.SST(config).eval()
    reference = SSTReference(config).eval()
    reference.load_state_dict(model.state_dict())
    untuned = sst_fast.SST(dataclasses.replace(config, ssm=False)).eval()
    untuned.load_state_dict(model.state_dict())
    query, supports, masks, _ = episode(batch=2, shots=1)
    plain = model(query, supports, masks)
    assert plain.untuned_logits is None and plain.feature_gradient is None  # nothing extra unless asked
    out = model(query, supports, masks, explain=True)
    # explain=True tunes as the reference does (the full gradient map, autograd) instead of the fused ops: two
    # computations of the tuning step and everything after it.
    tol = tuning_tolerance(reference, (query, supports, masks), torch.float32)
    assert_close(out.logits, plain.logits, rtol=0, atol=tol * plain.logits.abs().max().item())
    # The untuned decoding: the same prototypes (pooled by the same op) through the query's relation and decoder.
    expected = untuned(query, supports, masks).logits
    untuned_tol = model_tolerance(reference, (query, supports, masks), torch.float32)
    assert_close(out.untuned_logits, expected, rtol=0, atol=untuned_tol * expected.abs().max().item())
    moved = (out.untuned_logits - out.logits).abs().max()
    assert moved > tol * out.logits.abs().max(), "the step moved the prediction beyond rounding"
    expected = reference(query, supports, masks, explain=True).feature_gradient
    assert out.feature_gradient.shape == (2, 1, config.channels, *expected.shape[-2:])
    # The same autograd step, the pools by the fused op against the reference's: the supports' relation and
    # decoder, forward and back, carry the pool's rounding.
    assert_close(out.feature_gradient, expected, rtol=0, atol=tol * expected.abs().max().item())
    # Without the tuning module: the untuned decoding is the prediction and there is no gradient.
    no_ssm = untuned(query, supports, masks, explain=True)
    assert torch.equal(no_ssm.untuned_logits, no_ssm.logits) and no_ssm.feature_gradient is None
    assert no_ssm.support_logits is not None
