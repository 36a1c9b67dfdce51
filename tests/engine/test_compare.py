"""The paired comparison (sst_fast.engine.compare): its bootstrap against hand-computed cases and a simulation
with a known difference, and comparisons of evaluation folders (pairing by training seed, refusals)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sst_fast.engine import evaluate
from sst_fast.engine.compare import compare, markdown, paired_bootstrap
from sst_fast.metrics import metrics_from_records
from tests.engine.test_protocols import SIZE, layout_dataset

# Rows: class, background intersection, background union, foreground intersection, foreground union.


def _records(rows):
    return [{"class_id": c, "intersection": [bi, fi], "union": [bu, fu]} for c, bi, bu, fi, fu in rows]


def test_a_constant_gain_on_every_episode_has_an_interval_of_zero_width():
    # Every episode: A finds 1 of 4 foreground pixels (background 6 of 8), B 3 of 4 (background 7 of 8).
    a = {0: np.array([[c, 6, 8, 1, 4] for c in (1, 2, 2, 1, 2)])}
    b = {0: np.array([[c, 7, 8, 3, 4] for c in (1, 2, 2, 1, 2)])}
    interval = paired_bootstrap([a], [b], [1, 2], replicates=300, seed=3)
    # Any resample: mIoU 3/4 - 1/4; FB-IoU (7/8 + 3/4) / 2 - (6/8 + 1/4) / 2.
    assert interval["miou"] == (0.5, 0.5) and interval["fb_iou"] == (0.3125, 0.3125)
    assert interval["class_iou"] == {1: (0.5, 0.5), 2: (0.5, 0.5)}


def test_two_episodes_give_the_three_resamples_computed_by_hand():
    a = {0: np.array([[1, 5, 6, 1, 4], [1, 5, 6, 2, 4]])}
    b = {0: np.array([[1, 5, 6, 3, 4], [1, 5, 6, 2, 4]])}
    # The observed difference: class IoU 5/8 - 3/8.
    observed = [metrics_from_records(_records(side[0]), [1])["miou"] for side in (a, b)]
    assert observed[1] - observed[0] == 0.25
    # Resamples {1, 1}: 6/8 - 2/8 = 0.5 (probability 1/4); {1, 2}: 0.25 (1/2); {2, 2}: 4/8 - 4/8 = 0 (1/4).
    interval = paired_bootstrap([a], [b], [1], replicates=4000, seed=0)
    assert interval["miou"] == (0.0, 0.5) and interval["class_iou"][1] == (0.0, 0.5)
    values, counts = np.unique(interval["replicates"], return_counts=True)
    assert values.tolist() == [0.0, 0.25, 0.5]
    assert counts / 4000 == pytest.approx([0.25, 0.5, 0.25], abs=0.03)


def test_the_draws_are_paired_seeded_and_antisymmetric():
    rng = np.random.default_rng(1)
    classes = rng.integers(1, 4, 60)
    a = {0: np.column_stack([classes, rng.integers(0, 50, (60, 4))]).astype(np.int64)}
    a[0][:, 2] += a[0][:, 1]  # unions at least the intersections
    a[0][:, 4] += a[0][:, 3]
    b = {0: a[0].copy()}
    b[0][:, 3] = np.minimum(b[0][:, 3] + rng.integers(0, 10, 60), b[0][:, 4])
    once = paired_bootstrap([a], [b], [1, 2, 3], replicates=500, seed=7)
    again = paired_bootstrap([a], [b], [1, 2, 3], replicates=500, seed=7)
    assert once["miou"] == again["miou"] and once["fb_iou"] == again["fb_iou"]
    assert paired_bootstrap([a], [b], [1, 2, 3], replicates=500, seed=8)["miou"] != once["miou"]
    swapped = paired_bootstrap([b], [a], [1, 2, 3], replicates=500, seed=7)
    assert swapped["miou"][0] == pytest.approx(-once["miou"][1], abs=1e-15)
    # The same model on both sides: every replicate's difference is exactly 0 (the same draws on both sides).
    assert paired_bootstrap([a], [a], [1, 2, 3], replicates=200, seed=7)["miou"] == (0.0, 0.0)


def _simulated(rng, episodes=200, classes=5):
    """A and B on the same episodes: foreground union 100 and background union 300 on each; A finds Bin(100, p)
    foreground pixels (p uniform in [0.2, 0.6]) and Bin(300, 0.8) background ones; B finds in addition a fifth
    of the foreground A misses and a tenth of the background A misses. True differences: class IoU
    0.2 * (1 - 0.4) = 0.12 for every class (so mIoU 0.12), background IoU 0.1 * 0.2 = 0.02, FB-IoU 0.07."""
    labels = rng.integers(1, classes + 1, episodes)
    fg = rng.binomial(100, rng.uniform(0.2, 0.6, episodes))
    bg = rng.binomial(300, 0.8, episodes)
    fg_b = fg + rng.binomial(100 - fg, 0.2)
    bg_b = bg + rng.binomial(300 - bg, 0.1)
    union = np.full(episodes, 100), np.full(episodes, 300)
    a = np.column_stack([labels, bg, union[1], fg, union[0]])
    b = np.column_stack([labels, bg_b, union[1], fg_b, union[0]])
    return {0: a}, {0: b}


def test_the_interval_covers_a_known_difference_about_95_times_in_100():
    rng = np.random.default_rng(2024)
    covered = {"miou": 0, "fb_iou": 0}
    replications = 200
    for replication in range(replications):
        a, b = _simulated(rng)
        interval = paired_bootstrap([a], [b], range(1, 6), replicates=1000, seed=replication)
        for key, truth in (("miou", 0.12), ("fb_iou", 0.07)):
            low, high = interval[key]
            covered[key] += low <= truth <= high
    for key in covered:
        assert 0.88 <= covered[key] / replications <= 0.995, covered


# --- evaluation folders ---------------------------------------------------------------------------


def left_columns(columns: int):
    """A model that calls the left ``columns`` of 24 foreground."""

    def model(query, support_images, support_masks):
        logits = torch.zeros(query.shape[0], 2, *query.shape[-2:])
        logits[:, 1] = -1.0
        logits[:, 1, :, :columns] = 1.0
        return logits

    return model


def _evaluation(folder, columns, train_seed=None, **options):
    """Evaluate ``left_columns(columns)`` into ``folder`` (inside a run folder of ``train_seed``, when given)."""
    options = {"episodes": 12, "seeds": [0, 1], **options}
    result = evaluate(left_columns(columns), layout_dataset(), 0, size=SIZE, **options)
    if train_seed is not None:
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(f"run:\n  seed: {train_seed}\n")
        folder = folder / "eval" / "layout"
    result.save(folder)
    return result


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Model A (left 6 columns, then 7) and B (left 10, then 8) trained with seeds 0 and 1; every evaluation on the
    same episodes."""
    root = tmp_path_factory.mktemp("compare")
    results = {}
    for side, widths in (("a", (6, 7)), ("b", (10, 8))):
        for seed, columns in enumerate(widths):
            results[side, seed] = _evaluation(root / side / f"seed-{seed}", columns, train_seed=seed)
    return root, results


def test_several_training_seeds_pair_by_seed_with_both_intervals(folders):
    root, results = folders
    # B's folders given in the other order: they are paired by the training seed of their run folders.
    comparison = compare([root / "a"], [root / "b" / "seed-1", root / "b" / "seed-0"], replicates=500, seed=0)
    assert [p["train_seed"] for p in comparison["pairs"]] == [0, 1]
    assert all(p["a"].startswith(str(root / "a" / f"seed-{p['train_seed']}")) for p in comparison["pairs"])
    assert all(p["b"].startswith(str(root / "b" / f"seed-{p['train_seed']}")) for p in comparison["pairs"])
    for key in ("miou", "fb_iou"):
        per_seed = [results["b", s].summary()[key][0] - results["a", s].summary()[key][0] for s in (0, 1)]
        entry = comparison["metrics"][key]
        assert entry["difference"] == pytest.approx(sum(per_seed) / 2, abs=1e-15)
        low, high = entry["ci95_training_seeds"]
        assert (low + high) / 2 == pytest.approx(entry["difference"], abs=1e-12) and low < high
        assert entry["ci95_episodes"][0] <= entry["difference"] <= entry["ci95_episodes"][1]
    assert [c["class_id"] for c in comparison["classes"]] == [1, 2, 3, 4, 5]
    json.loads(json.dumps(comparison, allow_nan=True))
    text = markdown(comparison)
    assert "B − A" in text and "| mIoU |" in text and "95% CI (training seeds)" in text and "## Per class" in text


def test_evaluations_of_other_episodes_or_another_protocol_are_refused_naming_what_differs(folders, tmp_path):
    root, _ = folders
    _evaluation(tmp_path / "fewer", 6, episodes=10)
    with pytest.raises(ValueError, match=r"differ in .*episodes \(12 vs 10\).*manifests \(sha256 "):
        compare([root / "a" / "seed-0"], [tmp_path / "fewer"])
    _evaluation(tmp_path / "pfenet", 6, protocol="pfenet", seeds=[0, 1])
    with pytest.raises(ValueError, match=r"protocol \(sst vs pfenet\)"):
        compare([root / "a" / "seed-0"], [tmp_path / "pfenet"])
    with pytest.raises(ValueError, match="A has 2 evaluation"):
        compare([root / "a"], [root / "b" / "seed-0"])


def test_a_damaged_or_old_folder_is_named(folders, tmp_path):
    root, _ = folders
    import shutil

    copy = shutil.copytree(root / "a" / "seed-0" / "eval" / "layout", tmp_path / "copy")
    lines = (copy / "episodes.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["intersection"][1] += 1
    (copy / "episodes.jsonl").write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match="does not reproduce metrics.json"):
        compare([copy], [root / "b" / "seed-0"])
    (copy / "episodes.jsonl").unlink()
    with pytest.raises(ValueError, match="has no episodes.jsonl"):
        compare([copy], [root / "b" / "seed-0"])
