"""sst_fast.predict: one-episode inference from PIL images and numpy arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import sst_fast
from sst_fast import predict
from tests.conftest import balance_classifier, foreground_fraction

QUERY_HW = (37, 50)  # [H, W]
SUPPORT_HW = (40, 30)


def _prepare(query, supports, masks, size=(32, 32)):
    """predict's preprocessing written out: resize (bilinear / nearest on pixel centres), normalise."""
    import torch.nn.functional as F

    from sst_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    def image(array):
        # contiguous as predict's own: a channels-last tensor would run the network on other kernels
        t = torch.from_numpy(array).permute(2, 0, 1).float()[None].contiguous() / 255
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
        return (t - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]

    def mask(array):
        return F.interpolate(torch.from_numpy(array)[None, None].float(), size=size, mode="nearest-exact")[0, 0]

    q = image(query)
    s = torch.cat([image(x) for x in supports])[None]
    m = torch.stack([mask(x) for x in masks])[None].to(torch.uint8)
    return q, s, m


def _balanced_model(**config):
    """A tiny model whose predictions on the module's episode are about half foreground."""
    model = sst_fast.SST(sst_fast.SSTConfig(backbone="tiny", channels=8, image_size=32, **config))
    query = _image(QUERY_HW, 0)
    supports = [_image(SUPPORT_HW, 10 + i) for i in range(3)]
    masks = [_mask(SUPPORT_HW, 20 + i) for i in range(3)]
    return balance_classifier(model, *_prepare(query, supports, masks))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _balanced_model()


def _image(hw, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)


def _mask(hw, seed, ignore: bool = True) -> np.ndarray:
    """0/1 labels with an object rectangle (and a 255 ignore band when asked)."""
    h, w = hw
    rng = np.random.default_rng(seed)
    mask = np.zeros(hw, dtype=np.uint8)
    top, left = rng.integers(0, h // 3), rng.integers(0, w // 3)
    mask[top : top + h // 2, left : left + w // 2] = 1
    if ignore:
        mask[-2:, :] = 255
    return mask


@pytest.fixture(scope="module")
def episode():
    query = _image(QUERY_HW, 0)
    supports = [_image(SUPPORT_HW, 10 + i) for i in range(3)]
    masks = [_mask(SUPPORT_HW, 20 + i) for i in range(3)]
    return query, supports, masks


def _check_result(result, hw=QUERY_HW):
    assert isinstance(result, np.ndarray)
    assert result.dtype == np.uint8
    assert result.shape == tuple(hw)
    assert set(np.unique(result)) <= {0, 1}


# --- what it returns -------------------------------------------------------------------------


def test_numpy_one_shot_single_objects(model, episode):
    query, supports, masks = episode
    result = predict(model, query, supports[0], masks[0])
    _check_result(result)
    # a single object and a one-element list are the same episode
    np.testing.assert_array_equal(result, predict(model, query, [supports[0]], [masks[0]]))
    np.testing.assert_array_equal(result, predict(model, query, (supports[0],), (masks[0],)))


def test_pil_one_shot(model, episode):
    query, supports, masks = episode
    result = predict(model, Image.fromarray(query), Image.fromarray(supports[0]), Image.fromarray(masks[0], mode="L"))
    _check_result(result)
    # PIL and numpy hold the same pixels: same answer
    np.testing.assert_array_equal(result, predict(model, query, supports[0], masks[0]))


def test_three_shots_lists(model, episode):
    query, supports, masks = episode
    result = predict(model, query, supports, masks)
    _check_result(result)
    pil = predict(
        model,
        Image.fromarray(query),
        [Image.fromarray(s) for s in supports],
        [Image.fromarray(m, mode="L") for m in masks],
    )
    np.testing.assert_array_equal(result, pil)
    np.testing.assert_array_equal(result, predict(model, query, tuple(supports), tuple(masks)))


def test_supports_of_different_sizes(model):
    query = _image((29, 61), 1)
    sizes = [(40, 30), (25, 33), (64, 48)]
    supports = [_image(hw, 30 + i) for i, hw in enumerate(sizes)]
    masks = [_mask(hw, 40 + i) for i, hw in enumerate(sizes)]
    _check_result(predict(model, query, supports, masks), (29, 61))


def test_output_at_query_size_not_network_size(model, episode):
    _, supports, masks = episode
    for hw in [(32, 32), (8, 100), (70, 13), (1, 1)]:
        _check_result(predict(model, _image(hw, 5), supports[0], masks[0]), hw)


def test_explicit_image_size(model, episode):
    query, supports, masks = episode
    _check_result(predict(model, query, supports, masks, image_size=(24, 40)))
    _check_result(predict(model, query, supports, masks, image_size=16))


def test_deterministic(model, episode):
    query, supports, masks = episode
    first = predict(model, query, supports, masks)
    second = predict(model, query, supports, masks)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("freeze", [False, True], ids=["trainable-backbone", "frozen-backbone"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_restores_train_eval_mode(episode, training, freeze):
    torch.manual_seed(1)
    model = _balanced_model(freeze_backbone=freeze)
    model.train(training)
    if freeze:  # a frozen backbone keeps its BatchNorm in eval even in train mode
        bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns and not any(bn.training for bn in bns)
    modes = {name: m.training for name, m in model.named_modules()}
    query, supports, masks = episode
    predict(model, query, supports[0], masks[0])
    assert {name: m.training for name, m in model.named_modules()} == modes
    # predict runs in eval mode: its result is the deterministic eval-mode prediction, which a
    # train-mode (dropout) forward would not reproduce.
    if training:
        q, s, m = _prepare(query, supports, masks)
        with torch.no_grad():
            noisy = [model(q, s, m).logits for _ in range(2)]
            model.eval()
            expected = F.interpolate(model(q, s, m).logits, size=QUERY_HW, mode="bilinear").argmax(1)[0]
            model.train()
        assert not torch.equal(*noisy), "dropout must be visible for this check to mean anything"
        assert 0.05 < foreground_fraction(expected) < 0.95
        np.testing.assert_array_equal(predict(model, query, supports, masks), expected.numpy())


def test_does_not_change_parameters_or_buffers(episode):
    torch.manual_seed(2)
    model = sst_fast.SST(sst_fast.SSTConfig(backbone="tiny", channels=8, image_size=32)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    query, supports, masks = episode
    predict(model, query, supports, masks)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"predict changed {key}"
    assert all(p.grad is None for p in model.parameters())


def test_matches_model_forward(model, episode):
    """predict = resize, ImageNet-normalise, model in eval, upsample logits to the query size, argmax."""
    import torch.nn.functional as F

    query, supports, masks = episode
    q, s, m = _prepare(query, supports, masks)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(q, s, m).logits
    model.train(was_training)
    logits = F.interpolate(logits, size=QUERY_HW, mode="bilinear", align_corners=False)
    expected = logits.argmax(1)[0].numpy().astype(np.uint8)
    assert 0.1 < foreground_fraction(expected) < 0.9, "the check needs a mixed prediction"
    np.testing.assert_array_equal(predict(model, query, supports, masks), expected)


# --- mask formats ----------------------------------------------------------------------------


def test_mask_modes_agree(model, episode):
    query, supports, _ = episode
    mask = _mask(SUPPORT_HW, 20, ignore=False)  # 0/1 only, so bool is the same labels
    reference = predict(model, query, supports[0], mask)
    _check_result(reference)

    as_l = Image.fromarray(mask, mode="L")
    as_p = Image.fromarray(mask, mode="L").convert("P")
    as_p.putpalette([0, 0, 0, 128, 0, 0] + [255, 255, 255] * 254)  # VOC-like palette: index = label
    assert as_p.mode == "P"
    np.testing.assert_array_equal(np.asarray(as_p), mask)
    for variant in [as_l, as_p, mask.astype(bool), mask.astype(np.int64), Image.fromarray(mask.astype(bool))]:
        np.testing.assert_array_equal(predict(model, query, supports[0], variant), reference)


def test_palette_mask_with_ignore(model, episode):
    query, supports, masks = episode
    as_p = Image.fromarray(masks[0], mode="L").convert("P")
    as_p.putpalette([0, 0, 0, 128, 0, 0] + [0, 0, 0] * 253 + [224, 224, 192])
    np.testing.assert_array_equal(
        predict(model, query, supports[0], as_p), predict(model, query, supports[0], masks[0])
    )


def test_bool_masks_three_shots(model, episode):
    query, supports, _ = episode
    masks = [_mask(SUPPORT_HW, 50 + i, ignore=False).astype(bool) for i in range(3)]
    _check_result(predict(model, query, supports, masks))


def test_all_background_or_all_ignore_mask(model, episode):
    query, supports, _ = episode
    for value in (0, 255):
        with pytest.warns(UserWarning, match=r"support_masks\[0\] has no object pixel .* divided by 255"):
            _check_result(predict(model, query, supports[0], np.full(SUPPORT_HW, value, np.uint8)))


# --- image formats ---------------------------------------------------------------------------


def test_rgba_pil_images(model, episode):
    query, supports, masks = episode
    alpha = np.full((*QUERY_HW, 1), 77, np.uint8)
    s_alpha = np.full((*SUPPORT_HW, 1), 200, np.uint8)
    rgba_query = Image.fromarray(np.concatenate([query, alpha], 2), mode="RGBA")
    rgba_supports = [Image.fromarray(np.concatenate([s, s_alpha], 2), mode="RGBA") for s in supports]
    result = predict(model, rgba_query, rgba_supports, masks)
    _check_result(result)
    np.testing.assert_array_equal(result, predict(model, query, supports, masks))


def test_rgba_numpy_and_grayscale_images(model, episode):
    query, supports, masks = episode
    rgba = np.concatenate([query, np.zeros((*QUERY_HW, 1), np.uint8)], 2)
    np.testing.assert_array_equal(
        predict(model, rgba, supports[0], masks[0]), predict(model, query, supports[0], masks[0])
    )
    gray = query[:, :, 0]
    np.testing.assert_array_equal(
        predict(model, gray, supports[0], masks[0]),
        predict(model, np.repeat(gray[:, :, None], 3, 2), supports[0], masks[0]),
    )
    np.testing.assert_array_equal(
        predict(model, Image.fromarray(gray, mode="L"), supports[0], masks[0]),
        predict(model, gray, supports[0], masks[0]),
    )


def test_float_images_in_unit_range(model, episode):
    query, supports, masks = episode
    as_float = lambda a: a.astype(np.float32) / np.float32(255)  # noqa: E731
    result = predict(model, as_float(query), [as_float(s) for s in supports], masks)
    _check_result(result)
    np.testing.assert_array_equal(result, predict(model, query, supports, masks))
    _check_result(predict(model, as_float(query).astype(np.float64), supports[0], masks[0]))


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_value", [2, 128, 254])
def test_mask_values_outside_labels(model, episode, bad_value):
    query, supports, masks = episode
    bad = masks[1].copy()
    bad[3, 4] = bad_value
    with pytest.raises(ValueError, match=r"support_masks\[1\]"):
        predict(model, query, supports, [masks[0], bad, masks[2]])


def test_mask_negative_or_fractional_values(model, episode):
    query, supports, masks = episode
    negative = masks[0].astype(np.int16)
    negative[0, 0] = -1
    with pytest.raises(ValueError, match=r"support_masks\[0\]"):
        predict(model, query, supports[0], negative)
    fractional = masks[0].astype(np.float32)
    fractional[0, 0] = 0.5
    with pytest.raises(ValueError, match=r"support_masks\[0\]"):
        predict(model, query, supports[0], fractional)


def test_pil_mask_bad_values(model, episode):
    query, supports, masks = episode
    bad = masks[2].copy()
    bad[0, 0] = 3
    with pytest.raises(ValueError, match=r"support_masks\[2\]"):
        predict(model, query, supports, [masks[0], masks[1], Image.fromarray(bad, mode="L")])


def test_rgb_mask_rejected(model, episode):
    query, supports, masks = episode
    with pytest.raises(ValueError, match=r"support_masks\[0\]"):
        predict(model, query, supports[0], Image.fromarray(np.repeat(masks[0][:, :, None], 3, 2)))
    with pytest.raises(ValueError, match=r"support_masks\[0\]"):
        predict(model, query, supports[0], np.repeat(masks[0][:, :, None], 3, 2))


def test_mask_image_size_mismatch(model, episode):
    query, supports, masks = episode
    with pytest.raises(ValueError, match=r"support_masks\[1\]"):
        predict(model, query, supports, [masks[0], masks[1].T.copy(), masks[2]])
    with pytest.raises(ValueError):
        predict(model, query, supports[0], _mask((40, 31), 0))


def test_mask_count_mismatch(model, episode):
    query, supports, masks = episode
    with pytest.raises(ValueError):
        predict(model, query, supports, masks[:2])
    with pytest.raises(ValueError):
        predict(model, query, supports[0], masks)
    with pytest.raises(ValueError):
        predict(model, query, supports[:2], masks)


def test_no_supports(model, episode):
    query, _, _ = episode
    with pytest.raises(ValueError):
        predict(model, query, [], [])


def test_tensor_image_is_type_error(model, episode):
    query, supports, masks = episode
    with pytest.raises(TypeError):
        predict(model, torch.from_numpy(query), supports[0], masks[0])
    with pytest.raises(TypeError):
        predict(model, query, [torch.from_numpy(supports[0])], [masks[0]])
    with pytest.raises(TypeError):
        predict(model, query, supports[0], torch.from_numpy(masks[0]))


def test_other_types_are_type_error(model, episode):
    _, supports, masks = episode
    with pytest.raises(TypeError):
        predict(model, "query.png", supports[0], masks[0])


@pytest.mark.parametrize("bad", [1.5, -0.1, np.nan, np.inf])
def test_float_image_outside_unit_range(model, episode, bad):
    query, supports, masks = episode
    image = query.astype(np.float32) / 255
    image[0, 0, 0] = bad
    with pytest.raises(ValueError, match="query_image"):
        predict(model, image, supports[0], masks[0])
    support = supports[0].astype(np.float32) / 255
    support[1, 1, 2] = bad
    with pytest.raises(ValueError, match=r"support_images\[0\]"):
        predict(model, query, support, masks[0])


def test_bad_image_shapes_and_dtypes(model, episode):
    query, supports, masks = episode
    with pytest.raises(ValueError, match="query_image"):
        predict(model, query[:, :, :2], supports[0], masks[0])
    with pytest.raises(ValueError, match="query_image"):
        predict(model, query.astype(np.uint16), supports[0], masks[0])
    with pytest.raises(ValueError, match="query_image"):
        predict(model, query[None], supports[0], masks[0])


@pytest.mark.parametrize("image_size", [0, -3, (32,), 2.5, (32, 0), True])
def test_bad_image_size_is_named(image_size):
    model = sst_fast.SST(sst_fast.SSTConfig(backbone="tiny", channels=8, image_size=32))
    image = np.zeros((20, 20, 3), np.uint8)
    mask = np.zeros((20, 20), np.uint8)
    with pytest.raises(ValueError, match="image_size"):
        sst_fast.predict(model, image, image, mask, image_size=image_size)


def test_empty_float_image_is_named():
    model = sst_fast.SST(sst_fast.SSTConfig(backbone="tiny", channels=8, image_size=32))
    mask = np.zeros((20, 20), np.uint8)
    with pytest.raises(ValueError, match="query_image is empty"):
        sst_fast.predict(model, np.zeros((0, 5, 3), np.float32), np.zeros((20, 20, 3), np.uint8), mask)


def test_pil_input_raises_no_warning(recwarn):
    model = sst_fast.SST(sst_fast.SSTConfig(backbone="tiny", channels=8, image_size=32))
    image = Image.fromarray(np.zeros((20, 20, 3), np.uint8))
    sst_fast.predict(model, image, image, Image.fromarray(np.zeros((20, 20), np.uint8)))
    assert not [w for w in recwarn if "not writable" in str(w.message)]
