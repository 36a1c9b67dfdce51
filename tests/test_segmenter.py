"""sst_fast.Segmenter: one support set, many queries; the support branch runs once.

The reference for every mask is :func:`sst_fast.predict` on the same query. The support branch is the same
code on the same shapes in both (bit for bit); the query branch runs on a batch of queries here and on one
query there, other kernels: the logits agree within the rounding error of the query branch
(tests/tolerance.py), and the masks agree exactly on every pixel whose margin is beyond it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sst_fast
from sst_fast.models.sst import SupportState
from sst_fast.predict import input_size, prepare_query, prepare_supports
from tests.conftest import balance_classifier
from tests.tolerance import between

SIZE = 32
QUERY_SIZES = [(37, 50), (20, 20), (64, 31), (33, 33)]  # four: a batch of 3 leaves a last batch of one
SUPPORT_SIZES = [(40, 30), (25, 33)]


def _image(hw, seed) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*hw, 3), dtype=np.uint8)


def _mask(hw, seed) -> np.ndarray:
    h, w = hw
    rng = np.random.default_rng(seed)
    mask = np.zeros(hw, dtype=np.uint8)
    top, left = rng.integers(0, h // 3), rng.integers(0, w // 3)
    mask[top : top + h // 2, left : left + w // 2] = 1
    mask[-2:, :] = 255
    return mask


@pytest.fixture(scope="module")
def episode():
    queries = [_image(hw, i) for i, hw in enumerate(QUERY_SIZES)]
    supports = [_image(hw, 10 + i) for i, hw in enumerate(SUPPORT_SIZES)]
    masks = [_mask(hw, 20 + i) for i, hw in enumerate(SUPPORT_SIZES)]
    return queries, supports, masks


def _tiny(cls=sst_fast.SST, **config):
    torch.manual_seed(0)
    return cls(sst_fast.SSTConfig(backbone="tiny", channels=8, image_size=SIZE, **config)).eval()


@pytest.fixture(scope="module")
def model(episode):
    """A tiny untrained model whose first query is about half object (an all-background mask proves nothing)."""
    queries, supports, masks = episode
    model = _tiny()
    size = input_size(model, None)
    support_batch, mask_batch = prepare_supports(model, supports, masks, size)
    return balance_classifier(model, prepare_query(queries[0], "q", size)[0][None], support_batch, mask_batch)


def query_branch_tolerance(model: nn.Module, shots: int) -> float:
    """Relative to the logits' largest magnitude: the query branch's rounding, from its sums (tests/tolerance.py):
    every convolution's C_in * k * k random-sign products (backbone, embedding, relation, decoder), and the
    one-signed sums of the decoder's image pooling (h * w) and the K-shot fusion."""
    mixed = [
        module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        for part in (model.backbone, model.embed, model.relation, model.decoder)
        for module in part.modules()
        if isinstance(module, nn.Conv2d)
    ]
    return between(torch.float32, mixed=mixed, same=[SIZE * SIZE, shots])


def _reference_logits(model, query, supports, masks) -> torch.Tensor:
    """What predict computes for one query, at the query's own size: [2, H, W]."""
    size = input_size(model, None)
    support_batch, mask_batch = prepare_supports(model, supports, masks, size, stacklevel=2)
    batch, original = prepare_query(query, "query", size)
    with torch.no_grad():
        logits = model(batch[None].to(support_batch), support_batch, mask_batch).logits  # its device and dtype
    return F.interpolate(logits, size=original, mode="bilinear", align_corners=False)[0]


def _assert_same_mask(mask, expected, logits, tol, what):
    assert mask.dtype == np.uint8 and mask.shape == expected.shape, what
    margin = (logits[1] - logits[0]).abs()
    decided = (margin > tol * logits.abs().max()).numpy()
    np.testing.assert_array_equal(mask[decided], expected[decided], err_msg=what)
    assert decided.mean() > 0.9, f"{what}: too few decided pixels to compare"


@pytest.mark.parametrize("shots", [1, 2])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_predict_many_equals_predict_per_query(model, episode, shots, batch_size):
    queries, supports, masks = episode
    segmenter = sst_fast.Segmenter(model, supports[:shots], masks[:shots])
    results = segmenter.predict_many(queries, batch_size=batch_size)
    assert len(results) == len(queries)
    tol = query_branch_tolerance(model, shots)
    for index, (query, result) in enumerate(zip(queries, results, strict=True)):
        expected = sst_fast.predict(model, query, supports[:shots], masks[:shots])
        logits = _reference_logits(model, query, supports[:shots], masks[:shots])
        _assert_same_mask(result, expected, logits, tol, f"queries[{index}]")
        _assert_same_mask(segmenter.predict(query), expected, logits, tol, f"predict(queries[{index}])")
    assert any(0 < result.mean() < 1 for result in results), "every mask is constant: the comparison is vacuous"


@pytest.mark.parametrize("cls", [sst_fast.SST, sst_fast.reference.SSTReference], ids=["SST", "reference"])
@pytest.mark.parametrize("shots", [1, 2])
def test_forward_is_encode_supports_then_segment_queries(cls, shots):
    """Both models: forward == segment_queries(encode_supports(...)); B episodes bit for bit (the same ops on
    the same shapes), one state shared by B queries within the query branch's rounding (a batch of B)."""
    model = _tiny(cls, fusion="weighted")
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(3, 3, SIZE, SIZE, generator=generator)
    supports = torch.randn(3, shots, 3, SIZE, SIZE, generator=generator)
    masks = (torch.rand(3, shots, SIZE, SIZE, generator=generator) > 0.5).to(torch.uint8)
    with torch.no_grad():
        expected = model(query, supports, masks)
        state = model.encode_supports(supports, masks)
        out = model.segment_queries(query, state)
    assert isinstance(state, SupportState) and state.batch == 3 and state.shots == shots
    assert state.tuned_prototypes is not None and not state.prototypes.requires_grad
    assert torch.equal(out.logits, expected.logits)
    assert torch.equal(out.tuned_prototypes, expected.tuned_prototypes)
    assert torch.equal(out.shot_weights, expected.shot_weights)

    with torch.inference_mode():  # the tuning step steps out of inference mode inside
        shared = model.encode_supports(supports[:1], masks[:1])
        together = model.segment_queries(query, shared).logits
    alone = torch.cat([model(q[None], supports[:1], masks[:1]).logits for q in query])
    tol = query_branch_tolerance(model, shots)
    assert (together - alone).abs().max() <= tol * alone.abs().max()


def test_state_batches_must_match():
    model = _tiny()
    supports = torch.randn(2, 1, 3, SIZE, SIZE)
    masks = torch.ones(2, 1, SIZE, SIZE, dtype=torch.uint8)
    with torch.no_grad():
        state = model.encode_supports(supports, masks)
        with pytest.raises(ValueError, match="query"):
            model.segment_queries(torch.randn(3, 3, SIZE, SIZE), state)
        with pytest.raises(TypeError, match="state"):
            model.segment_queries(torch.randn(2, 3, SIZE, SIZE), "state")
        with pytest.raises(ValueError, match="support_masks"):
            model.encode_supports(supports, masks[:, :, :5])


def test_the_model_mode_is_restored_and_eval_is_used(model, episode):
    queries, supports, masks = episode
    expected = sst_fast.predict(model, queries[0], supports[:1], masks[:1])
    model.train()
    try:
        segmenter = sst_fast.Segmenter(model, supports[:1], masks[:1])
        assert model.training
        # dropout and batch statistics would change the answer: the query runs in eval mode as predict does
        np.testing.assert_array_equal(segmenter.predict(queries[0]), expected)
        assert model.training
    finally:
        model.eval()


def test_an_empty_support_mask_warns_as_predict_does(model, episode):
    queries, supports, masks = episode
    empty = [np.zeros_like(masks[0]), masks[1]]
    with pytest.warns(UserWarning) as from_predict:
        expected = sst_fast.predict(model, queries[0], supports, empty)
    with pytest.warns(UserWarning) as from_segmenter:
        segmenter = sst_fast.Segmenter(model, supports, empty)
    assert [str(w.message) for w in from_segmenter] == [str(w.message) for w in from_predict]
    assert "support_masks[0] has no object pixel" in str(from_segmenter[0].message)
    assert from_segmenter[0].filename == __file__ == from_predict[0].filename  # the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, when the supports are read: not per query
        result = segmenter.predict(queries[0])
    tol = query_branch_tolerance(model, 2)
    with pytest.warns(UserWarning):
        logits = _reference_logits(model, queries[0], supports, empty)
    _assert_same_mask(result, expected, logits, tol, "empty")


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda m, q, s, k: sst_fast.Segmenter(m, s, k[:1]), "support_masks"),
        (lambda m, q, s, k: sst_fast.Segmenter(m, [], []), "support_images"),
        (lambda m, q, s, k: sst_fast.Segmenter(m, [s[0][..., :2]], k[:1]), r"support_images\[0\]"),
        (lambda m, q, s, k: sst_fast.Segmenter(m, s[:1], [k[1]]), r"support_masks\[0\]"),
        (lambda m, q, s, k: sst_fast.Segmenter(m, s, k, image_size=0), "image_size"),
        (lambda m, q, s, k: sst_fast.Segmenter(nn.Linear(2, 2), s, k), "model"),
        (lambda m, q, s, k: sst_fast.Segmenter(m, s, k).predict("query.jpg"), "query"),
        (lambda m, q, s, k: sst_fast.Segmenter(m, s, k).predict_many(q, batch_size=0), "batch_size"),
        (lambda m, q, s, k: sst_fast.Segmenter(m, s, k).predict_many(q, batch_size=2.0), "batch_size"),
        (lambda m, q, s, k: sst_fast.Segmenter(m, s, k).predict_many(q[0]), "queries"),
        (lambda m, q, s, k: sst_fast.Segmenter(m, s, k).predict_many([q[0], q[1][..., :2]]), r"queries\[1\]"),
    ],
)
def test_bad_input_errors_name_the_argument(model, episode, call, argument):
    queries, supports, masks = episode
    with pytest.raises((ValueError, TypeError), match=argument):
        call(model, queries, supports, masks)
