"""The evaluation protocols (sst_fast.protocol): each sampler and scoring rule against the peer's rule,
written out independently here (docs/design.md §4.3), on small generated data sets."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sst_fast.cli import main
from sst_fast.data import EpisodeManifest
from sst_fast.data.episodes import protocol_sampler
from sst_fast.data.fss import FSS1000
from sst_fast.engine import evaluate
from sst_fast.metrics import FewShotMeter
from sst_fast.protocol import PROTOCOLS, ProtocolCard, protocol_for
from tests.data.layouts import ArrayDataset, label_map
from tests.data.test_fss import gray_mask, write_image, write_splits

ROOT = Path(__file__).resolve().parents[2]
MIN = 40  # the small-object filter of the layout below (pixels)
SIZE = (24, 24)  # 400 / 24 is no integer: nearest rules differ
# Test images of fold 0 (test classes 1-5) and their class pixel counts.
LAYOUT = {
    "a": {1: 60, 2: 10},  # class 2 is present but under the filter
    "b": {2: 50},
    "c": {7: 100},  # a base class only: never a query
    "d": {3: 45, 1: 5},
    "e": {1: 41, 3: 41, 4: 41},
    "f": {2: 80, 5: 50},
    "g": {4: 60, 5: 60},
    "h": {5: 39, 4: 40},  # 5 one pixel under the filter
    "i": {1: 100},
    "j": {3: 100},
    "k": {2: 60},
}
TEST_CLASSES = (1, 2, 3, 4, 5)


def layout_dataset(extra: dict | None = None) -> ArrayDataset:
    layout = {**LAYOUT, **(extra or {})}
    images = {name: (np.zeros((*SIZE, 3), np.uint8), label_map(classes, SIZE)) for name, classes in layout.items()}
    return ArrayDataset({"train": {}, "val": images}, min_pixels=MIN)


def pools() -> dict[int, list[str]]:
    """Each test class's images past the filter (the support pools of every protocol)."""
    return {c: sorted(name for name, counts in LAYOUT.items() if counts.get(c, 0) >= MIN) for c in TEST_CLASSES}


def test_every_protocol_names_its_rules_and_peer():
    for name in PROTOCOLS:
        for dataset in ("pascal", "coco", "fss", "synthetic"):
            if (name, dataset) == ("pfenet", "fss"):
                with pytest.raises(ValueError, match="PFENet defines no FSS-1000"):
                    protocol_for(name, dataset)
                continue
            protocol = protocol_for(name, dataset)
            assert protocol.name == name and protocol.sampling_rule() and protocol.comparable
            if name != "sst":
                assert "commit" in protocol.source
    assert protocol_for("pfenet", "coco").episodes == 20000 and protocol_for("pfenet", "pascal").seed == 321
    assert protocol_for("hsnet", "pascal").score_size == (400, 400)
    with pytest.raises(ValueError, match="protocol must be one of"):
        protocol_for("panet", "pascal")


def test_pfenet_queries_walk_the_filtered_image_list_with_a_class_drawn_among_those_present():
    dataset = layout_dataset()
    sampler = protocol_sampler(dataset, 0, 1, protocol_for("pfenet", dataset.name))
    # PFENet: an image is a query when a test class in it passes the filter; then any test class in it.
    queries = [name for name in sorted(LAYOUT) if any(LAYOUT[name].get(c, 0) >= MIN for c in TEST_CLASSES)]
    present = {name: {c for c in TEST_CLASSES if LAYOUT[name].get(c, 0) > 0} for name in queries}
    assert queries == ["a", "b", "d", "e", "f", "g", "h", "i", "j", "k"]
    passes = 400
    episodes = sampler.sample(len(queries) * passes, seed=321)
    chosen = Counter()
    for number, episode in enumerate(episodes):
        assert episode.query == queries[number % len(queries)]
        assert episode.class_id in present[episode.query]
        (support,) = episode.supports
        assert support != episode.query and support in pools()[episode.class_id]
        chosen[episode.query, episode.class_id] += 1
    # Uniform among the classes present, the filtered-out class 2 of "a" included: binomial, 5 sigma.
    for query in queries:
        for class_id in present[query]:
            p = 1 / len(present[query])
            assert abs(chosen[query, class_id] - passes * p) <= 5 * math.sqrt(passes * p * (1 - p))
    assert chosen["a", 2] > 0 and chosen["h", 5] > 0


def test_pfenet_draws_distinct_supports_and_sst_filters_the_query_class():
    extra = {"x": {4: 50, 5: 50}}  # three images of every test class
    dataset = layout_dataset(extra)
    for episode in protocol_sampler(dataset, 0, 2, protocol_for("pfenet", dataset.name)).sample(300, 0):
        assert len(set(episode.supports)) == 2 and episode.query not in episode.supports
    for episode in protocol_sampler(dataset, 0, 1, protocol_for("sst", dataset.name)).sample(300, 0):
        assert {**LAYOUT, **extra}[episode.query][episode.class_id] >= MIN  # class-first: the class passes the filter


def test_hsnet_pairs_come_in_the_data_sets_order_with_independent_supports():
    dataset = layout_dataset()
    protocol = protocol_for("hsnet", dataset.name)
    pairs = [(name, c) for name in sorted(LAYOUT) for c in TEST_CLASSES if LAYOUT[name].get(c, 0) >= MIN]
    assert len(pairs) == 14
    episodes = protocol_sampler(dataset, 0, 3, protocol).sample(protocol.episodes, seed=protocol.seed)
    assert len(episodes) == 1000
    for number, episode in enumerate(episodes):
        assert (episode.query, episode.class_id) == pairs[number % len(pairs)]
        assert episode.query not in episode.supports
        assert set(episode.supports) <= set(pools()[episode.class_id])
    # Class 5 has two images: three independent draws besides the query can only repeat the other one.
    assert {e.supports for e in episodes if (e.query, e.class_id) == ("g", 5)} == {("f", "f", "f")}
    with pytest.raises(ValueError, match="a 3-shot episode needs 4"):
        protocol_sampler(dataset, 0, 3, protocol_for("pfenet", dataset.name))


def test_hsnet_walks_its_own_pascal_pairs_whatever_the_filter(tmp_path):
    from sst_fast.data.episodes import hsnet_pascal_pairs_path
    from sst_fast.data.pascal import PascalVOC
    from tests.data.layouts import make_voc

    lines = hsnet_pascal_pairs_path(0).read_text().split()
    assert len(lines) == 346  # HSNet's fold 0
    pairs = [(line.split("__")[0], int(line.split("__")[1])) for line in lines]
    images: dict[str, dict[int, int]] = {}
    for image, class_id in pairs:
        images.setdefault(image, {})[class_id] = 30  # far under the 2*32*32 filter
    root = make_voc(tmp_path / "voc", images, val=sorted(images), size=(12, 12), ignore=0)
    dataset = PascalVOC(root, cache_dir=tmp_path / "cache")
    assert all(not dataset.class_images("val", c) for c in TEST_CLASSES)  # the filter keeps nothing
    protocol = protocol_for("hsnet", "pascal")
    episodes = protocol_sampler(dataset, 0, 2, protocol).sample(1000, seed=0)
    own = {c: {image for image, k in pairs if k == c} for c in TEST_CLASSES}
    for number, episode in enumerate(episodes):
        assert (episode.query, episode.class_id) == pairs[number % len(pairs)]
        assert episode.query not in episode.supports and set(episode.supports) <= own[episode.class_id]
    result = evaluate(left_quarter, dataset, 0, size=(12, 12), protocol="hsnet", episodes=20)
    assert "HSNet's data/splits/pascal/val" in str(result.card)
    assert evaluate(left_quarter, dataset, 0, size=(12, 12), manifests=result.manifests).runs == result.runs


@pytest.fixture
def fss_test_set(tmp_path):
    root = tmp_path / "fss"
    write_splits(root, train=("bee",), val=("cat",), test=("dog", "apple", "zebra_fish"))
    for name, count in (("bee", 2), ("cat", 2), ("dog", 3), ("apple", 4), ("zebra_fish", 2)):
        for number in range(1, count + 1):
            write_image(root, name, number, gray_mask(rows=slice(0, 2 + number)))
    return FSS1000(root, cache_dir=tmp_path / "cache")


def test_hsnet_queries_every_fss_test_image_exactly_once(fss_test_set):
    dataset = fss_test_set
    protocol = protocol_for("hsnet", "fss")
    test_images = dataset.image_ids("test")
    assert len(test_images) == 9
    episodes = protocol_sampler(dataset, "test", 5, protocol).sample(None, seed=0)
    assert Counter(episode.query for episode in episodes) == Counter(test_images)
    for episode in episodes:
        own = set(dataset.class_images("test", episode.class_id))
        assert episode.query in own and episode.query not in episode.supports and set(episode.supports) <= own
    with pytest.raises(ValueError, match="every test image is the query once"):
        protocol_sampler(dataset, "test", 1, protocol).sample(5, seed=0)


def test_empty_class_and_fb_iou_conventions():
    def meter(**conventions):
        m = FewShotMeter((1, 2, 3), **conventions)
        m.update(torch.tensor([[1, 1, 1, 1, 0]]), torch.tensor([[1, 1, 1, 0, 1]]), 1)  # 3 / 5
        m.update(torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0, 0, 0]]), torch.tensor([[1] * 10]), 2)  # 3 / 10
        return m.compute()  # class 3: no episode

    with pytest.warns(UserWarning, match=r"classes \[3\] have no IoU"):
        skipped = meter()
    assert skipped["miou"] == pytest.approx(0.45) and math.isnan(skipped["class_iou"][3])
    zero = meter(empty_class="zero")
    assert zero["miou"] == pytest.approx(0.3) and zero["class_iou"][3] == 0.0
    everything = torch.ones(1, 4, 4, dtype=torch.long)  # no background anywhere: an empty background union
    expected = {"skip": 1.0, "zero": 0.5}
    for convention in ("skip", "zero", "nan"):
        m = FewShotMeter((1,), empty_fb_term=convention)
        m.update(everything, everything, 1)
        fb = m.compute()["fb_iou"]
        assert math.isnan(fb) if convention == "nan" else fb == expected[convention]
    with pytest.raises(ValueError, match="empty_class must be one of"):
        FewShotMeter((1,), empty_class="ignore")


def left_quarter(query, support_images, support_masks):
    """Foreground logit +1 on the left quarter of the input, -1 elsewhere; background 0. Not an nn.Module."""
    batch, _, height, width = query.shape
    logits = torch.zeros(batch, 2, height, width)
    logits[:, 1] = -1.0
    logits[:, 1, :, : width // 4] = 1.0
    return logits


def expected_scores(episodes, label_of, prediction, empty_class: str):
    """Per-class IoU and FB-IoU written out: sums of intersections and unions over each class's episodes."""
    inter, union, pooled = Counter(), Counter(), np.zeros((2, 2))
    for episode in episodes:
        target = label_of(episode.query) == episode.class_id
        inter[episode.class_id] += (prediction & target).sum()
        union[episode.class_id] += (prediction | target).sum()
        for side, (p, t) in enumerate(((~prediction, ~target), (prediction, target))):
            pooled[side] += [(p & t).sum(), (p | t).sum()]
    empty = 0.0 if empty_class == "zero" else math.nan
    ious = {c: inter[c] / union[c] if union[c] else empty for c in TEST_CLASSES}
    return ious, float(np.mean(pooled[:, 0] / pooled[:, 1]))


def test_hsnet_scores_at_400_by_nearest_labels_and_corner_aligned_logits():
    dataset = layout_dataset()
    result = evaluate(left_quarter, dataset, 0, size=SIZE, protocol="hsnet", episodes=14)
    # Labels: source row/column floor(i * 24 / 400). Logits +1 | -1 at columns 5 | 6 of 24, corner-aligned:
    # column x reads 23 x / 399, positive while below 5.5, so x <= 95 (pixel centres would give x <= 99).
    source = np.arange(400) * SIZE[0] // 400
    prediction = np.zeros((400, 400), bool)
    prediction[:, :96] = True

    def label_of(name):
        return label_map(LAYOUT[name], SIZE)[np.ix_(source, source)]

    ious, fb_iou = expected_scores(result.manifests[0].episodes, label_of, prediction, "zero")
    run = result.runs[0]
    assert run["class_iou"] == pytest.approx(ious) and run["fb_iou"] == pytest.approx(fb_iou)
    assert run["miou"] == pytest.approx(np.mean(list(ious.values())))
    assert result.card.protocol == "hsnet" and result.card.score_size == (400, 400)
    assert "400x400" in str(result.card) and "independent" in str(result.card)
    # HSNet has no table of this data set: its PASCAL rules, comparable only with the same protocol here.
    assert "no published table (HSNet's PASCAL-5i rules applied to arrays)" in str(result.card)


def test_pfenet_scores_at_the_label_size_and_counts_a_class_without_episodes_as_zero():
    dataset = layout_dataset()
    result = evaluate(left_quarter, dataset, 0, size=(8, 8), protocol="pfenet", episodes=3)
    assert result.card.episodes == 3 and result.card.seeds == (321,) and result.card.resolution == "original"
    # Logits +1 | -1 at columns 1 | 2 of 8, corner-aligned onto 24: column x reads 7 x / 23 < 1.5, so x <= 4
    # (pixel centres would give x <= 5).
    prediction = np.zeros(SIZE, bool)
    prediction[:, :5] = True
    episodes = result.manifests[0].episodes
    assert len({e.class_id for e in episodes}) < len(TEST_CLASSES)  # three episodes leave classes out

    def label_of(name):
        return label_map(LAYOUT[name], SIZE)

    ious, fb_iou = expected_scores(episodes, label_of, prediction, "zero")
    run = result.runs[0]
    assert run["class_iou"] == pytest.approx(ious) and run["fb_iou"] == pytest.approx(fb_iou)
    assert run["miou"] == pytest.approx(sum(ious.values()) / len(TEST_CLASSES))


def test_pfenet_manifests_replay_with_queries_whose_class_is_under_the_filter():
    dataset = layout_dataset()
    result = evaluate(left_quarter, dataset, 0, size=SIZE, protocol="pfenet", episodes=60)
    small = [e for e in result.manifests[0].episodes if LAYOUT[e.query][e.class_id] < MIN]
    assert small, "the sample holds queries whose class is under the filter"
    assert evaluate(left_quarter, dataset, 0, size=SIZE, manifests=result.manifests).runs == result.runs
    episode = small[0]
    foreign = replace(episode, query="c")  # "c" holds no test class at all
    with pytest.raises(ValueError, match="hold no class"):
        evaluate(left_quarter, dataset, 0, size=SIZE, manifests=[replace(result.manifests[0], episodes=[foreign])])


def test_manifests_keep_their_protocol_and_replay_only_under_it(tmp_path):
    dataset = layout_dataset()
    result = evaluate(left_quarter, dataset, 0, shots=3, size=SIZE, protocol="hsnet", episodes=14)
    path = result.manifests[0].save(tmp_path / "m.json")
    manifest = EpisodeManifest.load(path)
    assert manifest.protocol == "hsnet" and manifest.sha256 == result.manifests[0].sha256
    replayed = evaluate(left_quarter, dataset, 0, size=SIZE, manifests=[manifest])
    assert replayed.runs == result.runs and replayed.card.protocol == "hsnet"
    with pytest.raises(ValueError, match="drawn under hsnet"):
        evaluate(left_quarter, dataset, 0, size=SIZE, manifests=[manifest], protocol="sst")
    with pytest.raises(ValueError, match=r"original_size \(--original-size\): protocol hsnet"):
        evaluate(left_quarter, dataset, 0, size=SIZE, protocol="hsnet", original_size=True)
    card = ProtocolCard.from_dict(result.card.to_dict())
    assert card == result.card


def test_any_model_with_the_call_signature_is_scored_and_a_wrong_output_is_named():
    dataset = layout_dataset()
    with pytest.raises(ValueError, match="size"):
        evaluate(left_quarter, dataset, 0, episodes=3)  # a model without config.image_size
    with pytest.raises(ValueError, match=r"model must return logits \[B, 2, H, W\]"):
        evaluate(lambda q, s, m: q[:, :1], dataset, 0, size=SIZE, episodes=3)
    wrapped = type("Output", (), {})
    output = wrapped()

    def with_logits(q, s, m):
        output.logits = left_quarter(q, s, m)
        return output

    assert evaluate(with_logits, dataset, 0, size=SIZE, episodes=5).runs == evaluate(
        left_quarter, dataset, 0, size=SIZE, episodes=5
    ).runs


def test_eval_command_scores_a_model_from_a_file(tmp_path, capsys):
    factory = f"{ROOT / 'examples' / 'own_model.py'}:build"
    out = tmp_path / "own"
    common = ["--dataset", "synthetic", "--fold", "0", "--episodes", "6", "--no-progress"]
    assert main(["eval", "--model", factory, *common, "--size", "32", "--protocol", "hsnet", "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "hsnet" in shown and "PrototypeMatcher" in shown
    saved = (out / "metrics.json").read_text()
    assert '"protocol": "hsnet"' in saved and "own_model.py:build" in saved
    # A checkpoint is the factory's argument.
    from examples.own_model import PrototypeMatcher

    weights = tmp_path / "weights.pt"
    torch.save(PrototypeMatcher(seed=1).state_dict(), weights)
    assert main(["eval", str(weights), "--model", factory, *common, "--size", "32", "--out", str(tmp_path / "w")]) == 0
    assert str(weights) in (tmp_path / "w" / "metrics.json").read_text()
    assert main(["eval", "--model", factory, *common]) == 2  # no --size: the model has no config
    assert "--size" in capsys.readouterr().err
    assert main(["eval", "--model", factory, *common, "--size", "32", "--fusion", "max"]) == 2
    assert main(["eval", "--model", "no_such_module:build", *common, "--size", "32"]) == 2
    assert main(["eval", *common]) == 2  # neither a checkpoint nor --model
    assert "checkpoint" in capsys.readouterr().err


def test_eval_model_files_import_like_modules_and_size_comes_from_the_command_line(tmp_path, capsys):
    # A dataclass under postponed annotations needs its module in sys.modules; a config without image_size
    # leaves the size to --size.
    (tmp_path / "mine.py").write_text(
        "from __future__ import annotations\n"
        "import dataclasses\n"
        "import torch\n"
        "@dataclasses.dataclass\n"
        "class Settings:\n"
        "    scale: float = 1.0\n"
        "class Model(torch.nn.Module):\n"
        "    config = Settings()\n"
        "    def forward(self, query, support_images, support_masks):\n"
        "        return torch.zeros(query.shape[0], 2, *query.shape[-2:])\n"
        "def build():\n"
        "    return Model()\n"
    )
    common = ["--dataset", "synthetic", "--fold", "0", "--episodes", "3", "--no-progress", "--out", str(tmp_path / "o")]
    assert main(["eval", "--model", f"{tmp_path / 'mine.py'}:build", "--size", "32", *common]) == 0, capsys.readouterr()


# The benchmarks' names in the protocols' texts, and the data sets each protocol's paper has tables of.
TABLES = {"pascal": "PASCAL-5i", "coco": "COCO-20i", "fss": "FSS-1000"}
PUBLISHED = {"sst": ("pascal", "coco"), "pfenet": ("pascal", "coco"), "hsnet": ("pascal", "coco", "fss")}


def test_a_protocol_claims_only_the_tables_of_its_own_data_set():
    from sst_fast.data import DATASETS

    for name in PROTOCOLS:
        for dataset in (*DATASETS, "arrays"):
            if (name, dataset) == ("pfenet", "fss"):
                continue  # refused (test_every_protocol_names_its_rules_and_peer)
            protocol = protocol_for(name, dataset)
            claim = protocol.comparable
            for other, table in TABLES.items():
                if other != dataset:
                    assert f"{table} table" not in claim, (name, dataset, claim)
            if dataset in PUBLISHED[name]:
                assert TABLES[dataset] in claim and "table" in claim, (name, dataset, claim)
            else:
                assert claim.startswith("no published table"), (name, dataset, claim)
                assert f"applied to {dataset}" in claim, (name, dataset, claim)
    assert "SST paper" in protocol_for("sst", "pascal").comparable
    assert "SST paper" not in protocol_for("sst", "synthetic").comparable
    assert "PASCAL-5i rules" in protocol_for("pfenet", "synthetic").comparable


def test_the_card_of_a_peer_protocol_on_the_synthetic_set_claims_no_peer_table(tmp_path, capsys):
    factory = f"{ROOT / 'examples' / 'own_model.py'}:build"
    common = ["--dataset", "synthetic", "--fold", "0", "--episodes", "2", "--no-progress", "--size", "32"]
    for name in PROTOCOLS:
        assert main(["eval", "--model", factory, *common, "--protocol", name, "--out", str(tmp_path / name)]) == 0
        (line,) = [row for row in capsys.readouterr().out.splitlines() if row.strip().startswith("comparable with")]
        assert "no published table" in line and "PASCAL-5i tables" not in line and "SST paper" not in line, line


def hsnet_fold0_voc(root, val_drop: int = 0):
    """A VOC folder holding the images of HSNet's fold-0 pairs, each with its pair's classes; the val list lacks
    the first ``val_drop`` of them (sorted)."""
    from sst_fast.data.episodes import hsnet_pascal_pairs_path, read_pairs
    from tests.data.layouts import make_voc

    images: dict[str, dict[int, int]] = {}
    for image, class_id in read_pairs(hsnet_pascal_pairs_path(0)):
        images.setdefault(image, {})[class_id] = 30
    val = sorted(images)[val_drop:]
    return make_voc(root, images, val=val, size=(12, 12), ignore=0), sorted(images)


def test_hsnet_pairs_missing_from_the_val_list_are_counted_and_named(tmp_path):
    from sst_fast.data import DataError
    from sst_fast.data.pascal import PascalVOC

    root, images = hsnet_fold0_voc(tmp_path / "voc", val_drop=7)
    dataset = PascalVOC(root, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError) as error:
        protocol_sampler(dataset, 0, 1, protocol_for("hsnet", "pascal"))
    first = str(error.value).splitlines()[0]
    assert "HSNet's PASCAL-5i pair lists" in first and "standard VOC2012 val list" in first
    assert f"7 of the {len(images)} images" in first and images[0] in first
    assert "pascal_val_fold0.txt" in str(error.value)


def test_eval_hsnet_on_a_folder_with_another_val_list_says_what_it_lacks(tmp_path, capsys):
    root, images = hsnet_fold0_voc(tmp_path / "voc", val_drop=3)
    factory = f"{ROOT / 'examples' / 'own_model.py'}:build"
    argv = ["eval", "--model", factory, "--dataset", "pascal", "--root", str(root), "--fold", "0", "--size", "32"]
    code = main([*argv, "--protocol", "hsnet", "--no-progress", "--out", str(tmp_path / "out")])
    assert code == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert "HSNet's PASCAL-5i pair lists" in first and "standard VOC2012 val list" in first, first
    assert f"3 of the {len(images)} images" in first and images[0] in first, first


# HSNet's COCO-20i lists (sst_fast/data/hsnet_pairs/coco_val_fold*.txt, from its data/splits/coco/val/*.pkl).
HSNET_COCO = {0: (35783, 26052), 1: (17912, 15305), 2: (14563, 13138), 3: (14315, 12640)}  # pairs, images


def test_hsnet_coco_lists_ship_with_their_source_and_the_folds_classes():
    from sst_fast.data.episodes import hsnet_coco_pairs_path, read_pairs
    from sst_fast.data.splits import fold_classes

    for fold, (count, images) in HSNET_COCO.items():
        path = hsnet_coco_pairs_path(fold)
        header = [line for line in path.read_text().splitlines() if line.startswith("#")]
        assert f"data/splits/coco/val/fold{fold}.pkl, commit e288916" in header[1]
        pairs = read_pairs(path)
        assert len(pairs) == count and len(set(pairs)) == count and len({image for image, _ in pairs}) == images
        classes = [c for _, c in pairs]
        assert classes == sorted(classes)  # by class, as the pickle
        assert set(classes) == set(fold_classes("coco", fold, "interleaved")) == {4 * k + fold + 1 for k in range(20)}
        assert all(len(image) == 16 and image.startswith("val/") and image[4:].isdigit() for image, _ in pairs)
    assert Counter(c for _, c in read_pairs(hsnet_coco_pairs_path(0)))[1] == 19217  # person
    with pytest.raises(ValueError, match="fold must be 0, 1, 2 or 3"):
        hsnet_coco_pairs_path(4)
    assert '"hsnet_pairs/*.txt"' in (ROOT / "pyproject.toml").read_text()  # package data: in the wheel


def hsnet_coco_val(root, fold: int, held=None, unlabelled=()):
    """A COCO folder whose val2014 annotations hold ``held`` (default: every image of HSNet's fold list), 8x8
    pixels each, every listed class on its own row (8 px, far under the filter), but the ``unlabelled`` pairs;
    plus val image 1, unlisted, all of class ``4k + fold + 1``'s first class. No JPEG (write_jpegs adds them)."""
    import json

    from sst_fast.data.episodes import hsnet_coco_pairs_path, read_pairs
    from tests.data.test_coco import CATEGORIES

    pairs = read_pairs(hsnet_coco_pairs_path(fold))
    held = {image for image, _ in pairs} if held is None else set(held)
    categories = sorted(CATEGORIES)
    rows, annotations = Counter(), []

    def annotate(number, class_id, polygon):
        annotations.append(
            {"id": len(annotations) + 1, "image_id": number, "category_id": categories[class_id - 1],
             "iscrowd": 0, "area": 0.0, "bbox": [0.0, 0.0, 0.0, 0.0], "segmentation": [polygon]}
        )  # fmt: skip

    for image, class_id in pairs:
        if image in held and (image, class_id) not in unlabelled:
            row = rows[image]
            annotate(int(image[4:]), class_id, [0, row, 8, row, 8, row + 1, 0, row + 1])
        rows[image] += 1
    assert "val/000000000001" not in rows
    annotate(1, fold + 1, [0, 0, 8, 0, 8, 8, 0, 8])
    numbers = sorted({int(image[4:]) for image in held} | {1})
    payload = {
        "images": [{"id": n, "file_name": f"COCO_val2014_{n:012d}.jpg", "height": 8, "width": 8} for n in numbers],
        "annotations": annotations,
        "categories": [{"id": i, "name": name} for i, name in CATEGORIES.items()],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(payload))
    return root, pairs


@pytest.fixture(scope="module")
def hsnet_coco_fold3(tmp_path_factory):
    """Fold 3 (HSNet's smallest list) held whole, but for one pair whose class the annotations lack."""
    from sst_fast.data.coco import COCO20i

    tmp = tmp_path_factory.mktemp("hsnet_coco")
    dropped = ("val/000000001722", 4)  # a listed image of class 4 that also holds class 8
    root, pairs = hsnet_coco_val(tmp / "coco", 3, unlabelled={dropped})
    dataset = COCO20i(root, min_pixels=16, cache_dir=tmp / "cache")
    dataset.prepare(["val"])
    return dataset, pairs, dropped


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.mask")
def test_hsnet_coco_draws_class_first_over_its_own_lists(hsnet_coco_fold3):
    from sst_fast.data.episodes import ListedClassSampler

    dataset, pairs, dropped = hsnet_coco_fold3
    assert dropped in pairs and ("val/000000001722", 8) in pairs
    assert dataset.class_images("val", 4) == ["val/000000000001"]  # the listed images fall under the filter
    protocol = protocol_for("hsnet", "coco")
    with pytest.warns(UserWarning, match=r"1 pairs name a class their image's label lacks \(val/000000001722 class 4"):
        sampler = protocol_sampler(dataset, 3, 5, protocol)
    assert isinstance(sampler, ListedClassSampler) and sampler.supports == "independent"
    lists = {c: sorted({image for image, k in pairs if k == c and (image, k) != dropped}) for c in range(4, 81, 4)}
    assert sampler.pools == lists
    episodes = sampler.sample(protocol.episodes, seed=protocol.seed)
    assert len(episodes) == 1000 and len({e.class_id for e in episodes}) == 20
    # Class first, as the index-based sampler draws, the pools being HSNet's lists.
    rng = np.random.default_rng(0)
    for episode in episodes[:50]:
        class_id = sampler.classes[int(rng.integers(20))]
        pool = lists[class_id]
        query = pool[int(rng.integers(len(pool)))]
        others = [image for image in pool if image != query]
        supports = tuple(others[int(i)] for i in rng.integers(len(others), size=5))
        assert episode == type(episode)(class_id, query, supports)
    assert all(set(e.supports) | {e.query} <= set(lists[e.class_id]) and e.query not in e.supports for e in episodes)
    assert "in order, wrapping" not in protocol.sampling_rule() and "peer's listed images" in protocol.sampling_rule()


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.mask", "ignore:protocol hsnet:UserWarning")
def test_eval_hsnet_coco_replays_its_lists_and_says_so(hsnet_coco_fold3):
    from PIL import Image

    dataset, _, _ = hsnet_coco_fold3
    protocol = protocol_for("hsnet", "coco")
    folder = dataset.root / "val2014"
    folder.mkdir(exist_ok=True)
    for episode in protocol_sampler(dataset, 3, 1, protocol).sample(12, seed=0):
        for image in (episode.query, *episode.supports):
            Image.new("RGB", (8, 8), (90, 120, 150)).save(folder / f"COCO_val2014_{image[4:]}.jpg")
    result = evaluate(left_quarter, dataset, 3, size=(12, 12), protocol="hsnet", episodes=12)
    card = str(result.card)
    assert "coco_val_fold<f>.txt, HSNet's data/splits/coco/val/fold<f>.pkl" in card and "uniformly" in card
    assert evaluate(left_quarter, dataset, 3, size=(12, 12), manifests=result.manifests).runs == result.runs


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.mask")
def test_hsnet_coco_refuses_a_val_set_that_lacks_listed_images(tmp_path):
    from sst_fast.data import DataError
    from sst_fast.data.coco import COCO20i

    pairs = read_hsnet_coco(3)
    images = sorted({image for image, _ in pairs})
    root, _ = hsnet_coco_val(tmp_path / "coco", 3, held=images[7:100])  # all but 7 fail alike: a smaller set
    dataset = COCO20i(root, min_pixels=16, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError) as error:
        protocol_sampler(dataset, 3, 1, protocol_for("hsnet", "coco"))
    first = str(error.value).splitlines()[0]
    assert "HSNet's COCO-20i lists" in first and "instances_val2014.json" in first, first
    assert f"{len(images) - 93} of the {len(images)} images are not in this folder's val2014 annotations" in first
    assert ", ".join(images[:5]) + ", ..." in first and images[5] not in first
    assert "coco_val_fold3.txt" in str(error.value) and "data/splits/coco/val/fold3.pkl" in str(error.value)


def read_hsnet_coco(fold):
    from sst_fast.data.episodes import hsnet_coco_pairs_path, read_pairs

    return read_pairs(hsnet_coco_pairs_path(fold))


# --- caveats: what a card's numbers cannot be compared with (docs/design.md §4.3) ----------------------------


def _card(protocol: str, dataset: str, **fields) -> ProtocolCard:
    return ProtocolCard(
        dataset=dataset, fold=0, shots=1, episodes=10, seeds=(0,), test_classes=(1, 2), protocol=protocol, **fields
    )


@pytest.mark.parametrize("name", PROTOCOLS)
@pytest.mark.parametrize("dataset", ["pascal", "coco", "fss", "synthetic"])
def test_every_card_names_its_checkpoint_selection_and_training_list_caveats(name, dataset):
    if (name, dataset) == ("pfenet", "fss"):
        pytest.skip("refused: PFENet has no FSS-1000 protocol")
    protocol_for(name, dataset)  # a protocol that exists
    card = _card(name, dataset)
    assert [c.split(":")[0] for c in card.caveats[:2]] == ["checkpoint selection", "training list"]
    assert "held out" in card.caveats[0] and "never on the test fold" in card.caveats[0]
    text = str(card)
    assert all(caveat in text for caveat in card.caveats)
    assert text.splitlines()[3].split()[:3] == ["caveats", "checkpoint", "selection:"], text
    if dataset in ("pascal", "coco"):
        assert "pick theirs on the test fold" in card.caveats[0]
    if dataset == "pascal":
        assert "5,953" in card.caveats[1] and "train_aug" in card.caveats[1]
    if dataset == "coco":
        assert any(c.startswith("masks:") and "pycocotools" in c for c in card.caveats)
    if (name, dataset) == ("hsnet", "fss"):
        assert "240 validation classes" in card.caveats[0]
    if name != "sst":
        assert any(c.startswith("input size:") for c in card.caveats)
    assert ProtocolCard.from_dict(card.to_dict()) == card
    assert card.to_dict()["caveats"] == list(card.caveats)


@pytest.mark.parametrize("dataset", ["pascal", "coco", "fss", "synthetic"])
def test_the_sst_card_claims_no_agreement_with_the_sst_papers_tables(dataset):
    card = _card("sst", dataset, comparable=protocol_for("sst", dataset).comparable)
    text = str(card).lower()
    assert "comparable with the sst paper" not in text and "the sst paper (ijcai 2020)'s tables and" not in text
    if dataset in ("pascal", "coco"):
        assert "cannot be shown" in card.comparable
        assert any("does not state its scoring resolution" in c for c in card.caveats)


def test_a_metrics_json_from_before_caveats_reads_back_with_them(tmp_path):
    result = evaluate(left_quarter, layout_dataset(), 0, size=SIZE, episodes=4)
    saved = result.card.to_dict()
    assert saved["caveats"] and saved["caveats"] == list(result.card.caveats)
    del saved["caveats"]  # as every metrics.json written before the field existed
    old = ProtocolCard.from_dict(saved)
    assert old.caveats == result.card.caveats and "caveats" in str(old)
    explicit = ProtocolCard.from_dict({**saved, "caveats": ["only this"]})
    assert explicit.caveats == ("only this",)


def test_sst_defaults_to_enough_seeds_for_a_one_point_interval_on_the_papers_data_sets():
    # benchmarks/eval_precision.txt: the sd of one seed's mIoU is about k / sqrt(episodes), k = 16.3-22.0 points on
    # the synthetic stand-in; 1000 episodes x 5 seeds (PASCAL-5i) and x 10 (COCO-20i) keep t * k / sqrt(N * S) < 1.
    expected = {"pascal": (1000, (0, 1, 2, 3, 4)), "coco": (1000, tuple(range(10))), "fss": (1000, (0,))}
    for dataset, (episodes, seeds) in {**expected, "synthetic": (1000, (0,))}.items():
        protocol = protocol_for("sst", dataset)
        assert (protocol.episodes, protocol.seeds) == (episodes, seeds), dataset
    for name in ("pfenet", "hsnet"):  # the peers' own: one run, their seed
        assert len(protocol_for(name, "coco").seeds) == 1
    assert protocol_for("pfenet", "pascal").seeds == (321,)
