"""Properties of the few-shot metrics over random episodes (hypothesis): what sharded evaluation relies on
(split and merge, order), bounds, perfect predictions, ignored pixels, symmetry, and mean_ci's equivariance."""

import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sst_fast.metrics import FewShotMeter, mean_ci

# Examples per property: a quick sweep in every run, the thorough one (``-m slow``) with 500.
BUDGETS = [pytest.param(100, id="100"), pytest.param(500, id="500", marks=pytest.mark.slow)]
CLASSES = (3, 7, 9)


@st.composite
def episodes(draw, min_size=1):
    """A list of (pred [1, H, W], target [1, H, W], class id) with labels 0/1 and (target) 255."""
    count = draw(st.integers(min_size, 8))
    drawn = []
    for _ in range(count):
        height, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        seed = draw(st.integers(0, 2**31))
        generator = torch.Generator().manual_seed(seed)
        pred = torch.randint(0, 2, (1, height, width), generator=generator)
        target = torch.randint(0, 3, (1, height, width), generator=generator)
        target[target == 2] = 255
        drawn.append((pred, target, draw(st.sampled_from(CLASSES))))
    return drawn


def measured(items) -> dict:
    meter = FewShotMeter(CLASSES)
    for pred, target, class_id in items:
        meter.update(pred, target, class_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # classes without episodes
        return meter.compute()


def same(a: dict, b: dict, exact_episode_mean: bool = True) -> bool:
    """Equal metrics, NaN equal to NaN; the episode-wise mean to 1e-12 when summed in another order."""

    def equal(x, y, tolerance=0.0):
        return (math.isnan(x) and math.isnan(y)) or abs(x - y) <= tolerance

    return (
        equal(a["miou"], b["miou"])
        and equal(a["fb_iou"], b["fb_iou"])
        and all(equal(a["class_iou"][c], b["class_iou"][c]) for c in CLASSES)
        and equal(a["episode_miou"], b["episode_miou"], 0.0 if exact_episode_mean else 1e-12)
        and a["episodes"] == b["episodes"]
        and a["class_episodes"] == b["class_episodes"]
    )


def check(budget, strategy, body):
    settings(max_examples=budget, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])(
        given(strategy)(body)
    )()


@pytest.mark.parametrize("budget", BUDGETS)
def test_merging_the_meters_of_a_split_equals_one_meter(budget):
    def body(case):
        items, cut = case
        cut = cut % (len(items) + 1)
        first, second = FewShotMeter(CLASSES), FewShotMeter(CLASSES)
        for pred, target, class_id in items[:cut]:
            first.update(pred, target, class_id)
        for pred, target, class_id in items[cut:]:
            second.update(pred, target, class_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            assert same(first.merge(second).compute(), measured(items))

    check(budget, st.tuples(episodes(), st.integers(0, 100)), body)


@pytest.mark.parametrize("budget", BUDGETS)
def test_the_order_of_episodes_changes_nothing_but_rounding(budget):
    def body(case):
        items, order = case
        assert same(measured([items[i] for i in order]), measured(items), exact_episode_mean=False)

    def permutations(items):
        return st.permutations(range(len(items))).map(lambda order: (items, order))

    check(budget, episodes().flatmap(permutations), body)


@pytest.mark.parametrize("budget", BUDGETS)
def test_ious_lie_in_zero_one(budget):
    def body(items):
        result = measured(items)
        values = [result["miou"], result["fb_iou"], result["episode_miou"], *result["class_iou"].values()]
        assert all(math.isnan(v) or 0 <= v <= 1 for v in values)
        assert result["episodes"] == len(items)

    check(budget, episodes(), body)


@pytest.mark.parametrize("budget", BUDGETS)
def test_a_perfect_prediction_scores_one(budget):
    def body(items):
        perfect = [(torch.where(target == 255, pred, target), target, c) for pred, target, c in items]
        result = measured(perfect)
        assert all(math.isnan(v) or v == 1 for v in result["class_iou"].values())
        assert math.isnan(result["miou"]) or result["miou"] == 1
        assert result["fb_iou"] == 1 or math.isnan(result["fb_iou"])
        assert math.isnan(result["episode_miou"]) or result["episode_miou"] == 1

    check(budget, episodes(), body)


@pytest.mark.parametrize("budget", BUDGETS)
def test_predictions_on_ignored_pixels_do_not_count(budget):
    def body(items):
        flipped = [(torch.where(target == 255, 1 - pred, pred), target, c) for pred, target, c in items]
        assert same(measured(flipped), measured(items))

    check(budget, episodes(), body)


@pytest.mark.parametrize("budget", BUDGETS)
def test_iou_is_symmetric_in_prediction_and_truth(budget):
    def body(items):
        plain = [(pred, target.clamp(max=1), c) for pred, target, c in items]  # no ignored pixels
        assert same(measured([(target, pred, c) for pred, target, c in plain]), measured(plain))

    check(budget, episodes(), body)


@pytest.mark.parametrize("budget", BUDGETS)
def test_a_batched_update_equals_one_update_per_episode(budget):
    def body(case):
        (height, width), seed, count = case
        generator = torch.Generator().manual_seed(seed)
        pred = torch.randint(0, 2, (count, height, width), generator=generator)
        target = torch.randint(0, 2, (count, height, width), generator=generator)
        classes = torch.tensor(CLASSES)[torch.randint(0, len(CLASSES), (count,), generator=generator)]
        batched = FewShotMeter(CLASSES)
        batched.update(pred, target, classes)
        items = [(pred[i : i + 1], target[i : i + 1], int(classes[i])) for i in range(count)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            assert same(batched.compute(), measured(items))

    shape = st.tuples(st.integers(1, 6), st.integers(1, 6))
    check(budget, st.tuples(shape, st.integers(0, 2**31), st.integers(1, 6)), body)


values = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=12)


@pytest.mark.parametrize("budget", BUDGETS)
def test_mean_ci_moves_with_a_shift_and_scales_with_a_factor(budget):
    def body(case):
        sample, shift, factor = case
        mean, ci = mean_ci(sample)
        assert ci >= 0
        shifted_mean, shifted_ci = mean_ci([v + shift for v in sample])
        assert shifted_mean == pytest.approx(mean + shift, abs=1e-6) and shifted_ci == pytest.approx(ci, abs=1e-6)
        scaled_mean, scaled_ci = mean_ci([v * factor for v in sample])
        assert scaled_mean == pytest.approx(mean * factor, abs=1e-6)
        assert scaled_ci == pytest.approx(ci * abs(factor), rel=1e-9, abs=1e-6)

    check(budget, st.tuples(values, st.floats(-1e3, 1e3), st.floats(-10, 10)), body)
