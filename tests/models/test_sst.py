"""The SST model (reference stages): shapes, modes, switches, fusion, the tuning step, bad input."""

import itertools

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
from tests.models.helpers import episode, model_tolerance, tiny_config

FUSIONS = ("weighted", "average", "max")


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
        assert_close(out.shot_weights.sum(1), torch.ones(2), 1e-6, 1e-6)
    if aux_loss:
        assert_close(out.loss, out.main_loss + out.aux_loss, 1e-6, 1e-6)
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
    # The same weights give the same loss up to rounding: the two models sum in other orders (fused ops).
    tol = model_tolerance(ref, inputs, torch.float32)
    expected = ref(*inputs).loss
    assert_close(fast(*inputs).loss, expected, rtol=0, atol=tol * expected.abs().item(), what="loss")
    assert "tuning.log_step" in fast.state_dict()


# --- the tuning step ------------------------------------------------------------------------


def self_segmentation_loss(model, rs, mask, labels):
    """Lsup(Rs) summed over images: Eq. 8-10 written out from the model's modules."""
    proto = ref_ops.masked_avg_pool(rs, mask, model.config.eps)
    logits = model.decoder(model.relation(rs, proto), labels.shape[-2:])
    return per_image_cross_entropy(logits, labels).sum()


def central_differences(fn, x, h=1e-6):
    gradient = torch.zeros_like(x)
    flat, grad_flat = x.view(-1), gradient.view(-1)
    for i in range(flat.numel()):
        original = flat[i].item()
        flat[i] = original + h
        plus = fn(x).item()
        flat[i] = original - h
        minus = fn(x).item()
        flat[i] = original
        grad_flat[i] = (plus - minus) / (2 * h)
    return gradient


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

    with torch.no_grad():
        expected_gradient = central_differences(lambda x: self_segmentation_loss(model, x, mask, labels), rs.clone())
        tuning = model.tune(rs, mask, labels)
    assert_close(tuning.feature_gradient, expected_gradient, rtol=1e-6, atol=1e-9, what="dLsup/dRs")
    expected = ref_ops.masked_avg_pool(rs - step * expected_gradient, mask, 5e-4)  # Eq. 11, then Eq. 12
    assert_close(tuning.tuned_prototypes, expected, rtol=1e-8, atol=1e-10, what="pool(R's)")
    assert (tuning.tuned_prototypes - tuning.prototypes).abs().max() > 1e-6, "the step moved the prototype"


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
    assert_close(closed_form, tuning.tuned_prototypes, rtol=1e-10, atol=1e-12)
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
    assert not torch.allclose(plain.logits, tuned.logits)


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
    for first_order in (False, True):
        torch.manual_seed(0)
        model = sst_fast.SST(tiny_config(first_order=first_order, tune_step=20.0, aux_loss=False)).train()
        query, supports, masks, query_mask = episode(shots=1)
        model(query, supports, masks, query_mask).loss.backward()
        grads[first_order] = model.relation.conv.weight.grad.clone()
    assert not torch.allclose(grads[False], grads[True], rtol=1e-4, atol=0)


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
    embedding, the learnable step), and their values."""
    config = tiny_config(channels=4, tune_step=step, tune_form=form, learnable_step=True, first_order=first_order)
    model = sst_fast.SST(config).double().eval()
    query, supports, masks, query_mask = episode(batch=1, shots=2, size=24, dtype=torch.float64)
    out = model(query, supports, masks, query_mask)
    assert (out.tuned_prototypes - out.prototypes).abs().max() > 1e-3, "the tuning step must matter here"
    params = dict(model.named_parameters())
    inputs = tuple(params[name].detach().clone().requires_grad_() for name in GRADCHECK_NAMES)

    def loss_of(*values):
        replaced = dict(zip(GRADCHECK_NAMES, values, strict=True))
        return torch.func.functional_call(model, replaced, (query, supports, masks, query_mask)).loss

    return loss_of, inputs


@pytest.mark.parametrize("form,step", [("paper", 50.0), ("relative", 0.5)])
@pytest.mark.parametrize("first_order", [False, True])
def test_directional_derivatives_through_the_tuning_step_float64(first_order, form, step):
    """Numerical derivatives of the loss see every path; the analytic ones must too (second order).

    Along random directions u of the parameters, the central difference (L(t + h u) - L(t - h u)) / 2h
    against the analytic dL/dt . u, within gradcheck's atol 1e-7 and rtol 1e-5 (h = 1e-6: truncation
    ~h^2, rounding ~u64 / h, both far below). In first order the path through dLsup/dRs is cut, so the
    analytic derivative must miss by many times that: proof that the second-order term is large enough
    here to be seen. (test_gradcheck_through_the_tuning_step_float64, marked slow, checks every entry.)
    """
    loss_of, inputs = _loss_of_parameters(first_order, form, step)
    gradients = torch.autograd.grad(loss_of(*inputs), inputs)
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(3):
        direction = [torch.randn(x.shape, generator=generator, dtype=x.dtype) for x in inputs]
        analytic = sum((g * d).sum() for g, d in zip(gradients, direction, strict=True)).item()
        h = 1e-6
        with torch.no_grad():
            ahead = loss_of(*(x + h * d for x, d in zip(inputs, direction, strict=True)))
            behind = loss_of(*(x - h * d for x, d in zip(inputs, direction, strict=True)))
        numeric = ((ahead - behind) / (2 * h)).item()
        worst = max(worst, abs(numeric - analytic) / (1e-7 + 1e-5 * abs(numeric)))
    if first_order:
        assert worst > 10, f"first order is within {worst:.2f} of gradcheck's tolerance: the term it cuts is not seen"
    else:
        assert worst <= 1, f"the analytic derivative is off by {worst:.2f} times gradcheck's tolerance"


@pytest.mark.slow
@pytest.mark.parametrize("form,step", [("paper", 50.0), ("relative", 0.5)])
@pytest.mark.parametrize("first_order", [False, True])
def test_gradcheck_through_the_tuning_step_float64(first_order, form, step):
    """Every entry of the Jacobian (a minute or more per case; test_directional_derivatives_... checks the same
    in random directions in make test). In first order the same check must fail."""
    loss_of, inputs = _loss_of_parameters(first_order, form, step)
    passed = torch.autograd.gradcheck(loss_of, inputs, atol=1e-7, rtol=1e-5, raise_exception=False)
    assert passed == (not first_order)


def test_learnable_step_is_positive_and_trained():
    model = sst_fast.SST(tiny_config(learnable_step=True, tune_step=0.5)).train()
    assert model.tuning.step().item() == pytest.approx(0.5)
    query, supports, masks, query_mask = episode(shots=2)
    model(query, supports, masks, query_mask).loss.backward()
    assert model.tuning.log_step.grad is not None and model.tuning.log_step.grad != 0


# --- fusion ---------------------------------------------------------------------------------


def test_fusion_weights_normalise_ious():
    ious = torch.tensor([[0.2, 0.6, 0.2], [0.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    weights = fusion_weights(ious)
    assert_close(weights, torch.tensor([[0.2, 0.6, 0.2], [1 / 3, 1 / 3, 1 / 3], [0.0, 1.0, 0.0]]), 1e-7, 1e-7)
    assert_close(weights.sum(1), torch.ones(3), 1e-7, 1e-7)


def test_foreground_iou_by_hand():
    prediction = torch.tensor([[[1, 1, 0], [0, 1, 0]], [[0, 0, 0], [0, 0, 0]], [[1, 1, 1], [1, 1, 1]]])
    labels = torch.tensor([[[1, 0, 0], [0, 1, 255]], [[0, 0, 0], [0, 0, 0]], [[255, 255, 1], [0, 0, 255]]])
    # image 0: inter 2, union 3; image 1: empty union -> 0; image 2: ignore excluded, inter 1, union 3.
    assert_close(foreground_iou(prediction, labels), torch.tensor([2 / 3, 0.0, 1 / 3]), 1e-7, 1e-7)


def test_fuse_modes():
    relations = torch.randn(2, 3, 4, 5, 5)
    weights = fusion_weights(torch.rand(2, 3))
    expected = sum(weights[:, k, None, None, None] * relations[:, k] for k in range(3))
    assert_close(fuse(relations, "weighted", weights), expected, 1e-6, 1e-6)
    assert_close(fuse(relations, "max", None), relations.max(1).values, 0, 0)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_model_fusion_matches_per_shot_relations(fusion):
    query, supports, masks, _ = episode(batch=2, shots=3)
    model = sst_fast.SST(tiny_config(fusion=fusion, tune_step=20.0, aux_loss=True)).eval()
    model = balance_classifier(model, query, supports, masks, on="supports")
    out = model(query, supports, masks)
    rq = model.encode(query)
    per_shot = torch.stack([model.relation(rq, out.tuned_prototypes[:, k]) for k in range(3)], 1)
    if fusion == "weighted":
        ious = foreground_iou(out.support_logits.flatten(0, 1).argmax(1), masks.flatten(0, 1).long()).view(2, 3)
        assert_close(out.shot_weights, fusion_weights(ious), 0, 0)
        assert (out.shot_weights - 1 / 3).abs().max() > 0.02, "the check needs unequal IoU weights"
        fused = (out.shot_weights[:, :, None, None, None] * per_shot).sum(1)
        averaged = model.decoder(per_shot.mean(1), (32, 32))
        assert (averaged - model.decoder(fused, (32, 32))).abs().max() > 1e-3, "weighted must differ from average"
    elif fusion == "average":
        assert_close(out.shot_weights, torch.full((2, 3), 1 / 3), 0, 0)
        fused = per_shot.mean(1)
    else:
        fused = per_shot.max(1).values
    assert_close(out.logits, model.decoder(fused, (32, 32)), 1e-5, 1e-5)
    untuned = torch.stack([model.relation(rq, out.prototypes[:, k]) for k in range(3)], 1)
    assert (untuned - per_shot).abs().max() > 1e-3, "the relation must see the tuned prototypes"


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
    assert_close(out.loss, out.main_loss + 0.25 * out.aux_loss, 1e-6, 1e-7)


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
    assert_close(out.logits, plain.logits, atol=1e-5, rtol=1e-4)
    assert_close(out.untuned_logits, untuned(query, supports, masks).logits, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(out.untuned_logits, out.logits)  # the step moved the prediction
    expected = reference(query, supports, masks, explain=True).feature_gradient
    assert out.feature_gradient.shape == (2, 1, config.channels, *expected.shape[-2:])
    assert_close(out.feature_gradient, expected, atol=1e-7, rtol=1e-5)
    # Without the tuning module: the untuned decoding is the prediction and there is no gradient.
    no_ssm = untuned(query, supports, masks, explain=True)
    assert torch.equal(no_ssm.untuned_logits, no_ssm.logits) and no_ssm.feature_gradient is None
    assert no_ssm.support_logits is not None
