import json
import math

import numpy as np
import pytest
import torch

from sst_fast.metrics import FewShotMeter, mean_ci, metrics_from_records, student_t_cdf, student_t_quantile


def t(rows):
    return torch.tensor(rows)


def test_hand_computed_episodes():
    meter = FewShotMeter([3, 7])
    # Class 3, episode 1: gt fg = 3 px, pred fg = 2 px, overlap 1 -> ∩ 1, ∪ 4. One ignored pixel predicted fg.
    meter.update(t([[[1, 1, 0], [0, 0, 0]]]), t([[[1, 0, 1], [1, 255, 0]]]), [3])
    # Class 3, episode 2: perfect, 2 px.
    meter.update(t([[[1, 1, 0], [0, 0, 0]]]), t([[[1, 1, 0], [0, 0, 0]]]), [3])
    # Class 7: no foreground predicted, 2 px of gt -> IoU 0.
    meter.update(t([[[0, 0, 0], [0, 0, 0]]]), t([[[0, 1, 1], [0, 0, 0]]]), [7])
    result = meter.compute()
    assert result["class_iou"] == {3: pytest.approx(3 / 6), 7: 0.0}
    assert result["miou"] == pytest.approx((0.5 + 0.0) / 2)
    assert result["episode_miou"] == pytest.approx((1 / 4 + 1 + 0) / 3)
    # Pooled over the three episodes (the ignored pixel excluded):
    # fg ∩ = 1 + 2 + 0 = 3, fg ∪ = 4 + 2 + 2 = 8; bg ∩ = 1 + 4 + 4 = 9, bg ∪ = 4 + 4 + 6 = 14.
    assert result["fb_iou"] == pytest.approx((3 / 8 + 9 / 14) / 2)
    assert result["episodes"] == 3 and result["class_episodes"] == {3: 2, 7: 1}


def test_an_all_ignore_episode_counts_for_nothing():
    meter = FewShotMeter([1])
    meter.update(t([[[1, 0], [0, 1]]]), t([[[1, 0], [0, 0]]]), [1])
    before = meter.compute()
    meter.update(t([[[1, 1], [1, 1]]]), t([[[255, 255], [255, 255]]]), [1])
    after = meter.compute()
    assert after["miou"] == before["miou"] == pytest.approx(1 / 2)
    assert after["fb_iou"] == before["fb_iou"] and after["episode_miou"] == before["episode_miou"]
    assert after["episodes"] == 2


def test_a_class_without_any_foreground_is_left_out_with_a_warning():
    meter = FewShotMeter([1, 2])
    meter.update(t([[[1, 0]]]), t([[[1, 0]]]), [1])
    with pytest.warns(UserWarning, match=r"classes \[2\]"):
        result = meter.compute()
    assert math.isnan(result["class_iou"][2]) and result["miou"] == 1.0


def test_batched_update_equals_one_by_one():
    generator = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 2, (6, 9, 7), generator=generator)
    target = torch.randint(0, 2, (6, 9, 7), generator=generator)
    target[target.bool() & (torch.rand(target.shape, generator=generator) < 0.2)] = 255
    classes = torch.tensor([1, 2, 1, 3, 3, 2])
    batched, single = FewShotMeter([1, 2, 3]), FewShotMeter([1, 2, 3])
    batched.update(pred, target, classes)
    for i in range(6):
        single.update(pred[i], target[i], int(classes[i]))
    assert batched.compute() == single.compute()


def independent_metrics(episodes, class_ids):
    """The docs/design.md §4 definitions written out with numpy, one episode at a time."""
    inter = {c: 0 for c in class_ids}
    union = {c: 0 for c in class_ids}
    pooled = np.zeros((2, 2))
    episode_ious = []
    for pred, target, c in episodes:
        pred, target = np.asarray(pred), np.asarray(target)
        keep = target != 255
        p, g = pred[keep], target[keep]
        i, u = np.sum((p == 1) & (g == 1)), np.sum((p == 1) | (g == 1))
        inter[c] += i
        union[c] += u
        if u:
            episode_ious.append(i / u)
        for k, value in enumerate((0, 1)):
            pooled[k] += [np.sum((p == value) & (g == value)), np.sum((p == value) | (g == value))]
    miou = np.mean([inter[c] / union[c] for c in class_ids])
    return miou, np.mean(pooled[:, 0] / pooled[:, 1]), np.mean(episode_ious)


@pytest.mark.parametrize("seed", range(5))
def test_matches_an_independent_implementation_on_random_predictions(seed):
    rng = np.random.default_rng(seed)
    class_ids = [2, 5, 11, 19]
    meter = FewShotMeter(class_ids)
    episodes = []
    for _ in range(40):
        size = tuple(rng.integers(1, 20, 2))
        target = (rng.random(size) < rng.random()).astype(np.int64)
        target[rng.random(size) < 0.1] = 255
        pred = (rng.random(size) < rng.random()).astype(np.int64)
        episodes.append((pred, target, int(rng.choice(class_ids))))
        meter.update(torch.from_numpy(pred), torch.from_numpy(target), episodes[-1][2])
    miou, fb_iou, episode_miou = independent_metrics(episodes, class_ids)
    result = meter.compute()
    assert result["miou"] == pytest.approx(miou, abs=1e-12)
    assert result["fb_iou"] == pytest.approx(fb_iou, abs=1e-12)
    assert result["episode_miou"] == pytest.approx(episode_miou, abs=1e-12)


def test_merged_shards_equal_one_meter():
    generator = torch.Generator().manual_seed(1)
    pred = torch.randint(0, 2, (8, 5, 5), generator=generator)
    target = torch.randint(0, 2, (8, 5, 5), generator=generator)
    classes = torch.tensor([1, 2] * 4)
    whole, left, right = FewShotMeter([1, 2]), FewShotMeter([1, 2]), FewShotMeter([1, 2])
    whole.update(pred, target, classes)
    left.update(pred[:3], target[:3], classes[:3])
    right.update(pred[3:], target[3:], classes[3:])
    assert left.merge(right).compute() == whole.compute()
    with pytest.raises(ValueError, match="different classes"):
        whole.merge(FewShotMeter([1, 3]))


@pytest.mark.parametrize(
    ("pred", "target", "class_id", "match"),
    [
        (torch.zeros(1, 2, 2), torch.zeros(1, 2, 3), [1], "both be"),
        (torch.full((1, 2, 2), 2), torch.zeros(1, 2, 2), [1], "pred must hold only 0"),
        (torch.zeros(1, 2, 2), torch.full((1, 2, 2), 3), [1], "target must hold only"),
        (torch.zeros(2, 2, 2), torch.zeros(2, 2, 2), [1], "one class per episode"),
        (torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), [9], "not one of the meter's classes"),
    ],
)
def test_bad_updates_are_refused(pred, target, class_id, match):
    with pytest.raises(ValueError, match=match):
        FewShotMeter([1, 2]).update(pred, target, class_id)


@pytest.mark.parametrize("class_ids", [[], [1, 1]])
def test_bad_class_lists(class_ids):
    with pytest.raises(ValueError, match="class_ids"):
        FewShotMeter(class_ids)


@pytest.mark.parametrize(
    ("dof", "quantile"),
    [(1, 12.7062047), (2, 4.3026527), (4, 2.7764451), (9, 2.2621572), (30, 2.0422725), (10**6, 1.9599663)],
)
def test_student_t_quantiles_match_the_tables(dof, quantile):
    assert student_t_quantile(0.975, dof) == pytest.approx(quantile, abs=1e-6)
    assert student_t_cdf(quantile, dof) == pytest.approx(0.975, abs=1e-7)
    assert student_t_cdf(-quantile, dof) == pytest.approx(0.025, abs=1e-7)


def test_mean_ci():
    mean, half = mean_ci([0.50, 0.52, 0.48, 0.51, 0.49])
    assert mean == pytest.approx(0.5)
    assert half == pytest.approx(2.7764451 * np.std([0.50, 0.52, 0.48, 0.51, 0.49], ddof=1) / math.sqrt(5))
    single_mean, single_half = mean_ci([0.4])
    assert single_mean == 0.4 and math.isnan(single_half)
    with pytest.raises(ValueError, match="at least one"):
        mean_ci([])


def _same_metrics(left: dict, right: dict) -> bool:
    """Equal to the bit, NaN equal to NaN."""

    def same(x, y):
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        return (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)) or x == y

    return same(left, right)


@pytest.mark.filterwarnings("ignore:classes .* have no IoU")
@pytest.mark.parametrize("empty_class", ["skip", "zero"])
@pytest.mark.parametrize("empty_fb_term", ["skip", "zero", "nan"])
def test_records_recompute_every_metric_to_the_bit(empty_class, empty_fb_term):
    rng = np.random.default_rng(7)
    classes = [2, 5, 9, 11]  # class 11 gets no episode
    meter = FewShotMeter(classes, empty_class=empty_class, empty_fb_term=empty_fb_term)
    for _ in range(6):
        pred = torch.from_numpy(rng.integers(0, 2, (3, 5, 7)))
        target = torch.from_numpy(rng.choice([0, 1, 255], (3, 5, 7), p=[0.5, 0.3, 0.2]))
        target[0] = 255  # an episode with nothing scored: empty unions
        meter.update(pred, target, torch.from_numpy(rng.choice(classes[:3], 3)))
    records = meter.records()
    assert len(records) == 18 and meter.counts().shape == (18, 5)
    assert records[0]["union"] == [0, 0] and records[0]["iou"] is None
    rebuilt = metrics_from_records(records, classes, empty_class, empty_fb_term)
    assert _same_metrics(rebuilt, meter.compute())
    # Through JSON, as episodes.jsonl stores them.
    assert _same_metrics(metrics_from_records(json.loads(json.dumps(records)), classes, empty_class, empty_fb_term),
                         meter.compute())  # fmt: skip


def test_merged_meters_keep_the_episodes_in_merge_order():
    first, second, whole = FewShotMeter([1, 2]), FewShotMeter([1, 2]), FewShotMeter([1, 2])
    episodes = [(t([[1, 0, 1]]), t([[1, 1, 0]]), [1]), (t([[0, 0, 1]]), t([[0, 1, 1]]), [2])]
    episodes += [(t([[1, 1, 1]]), t([[0, 0, 1]]), [2])]
    for number, episode in enumerate(episodes):
        (first if number < 2 else second).update(*episode)
        whole.update(*episode)
    merged = first.merge(second)
    assert torch.equal(merged.counts(), whole.counts())
    assert merged.counts()[:, 0].tolist() == [1, 2, 2]
    # pred 1 0 1, target 1 1 0: foreground ∩ 1, ∪ 3; background ∩ 0, ∪ 2.
    assert merged.records()[0] == {"class_id": 1, "intersection": [0, 1], "union": [2, 3], "iou": 1 / 3}
    assert FewShotMeter([1]).counts().shape == (0, 5)


def test_records_of_an_unknown_class_are_refused():
    record = {"class_id": 4, "intersection": [1, 1], "union": [2, 2]}
    with pytest.raises(ValueError, match="class 4 is not one of"):
        metrics_from_records([record], [1, 2])
    with pytest.raises(ValueError, match="empty_fb_term"):
        metrics_from_records([], [1], empty_fb_term="none")
