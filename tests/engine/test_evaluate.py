import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import sst_fast
from sst_fast.data import EpisodeDataset, EpisodeManifest, collate_episodes
from sst_fast.files import strict_json
from sst_fast.engine import evaluate
from sst_fast.metrics import FewShotMeter
from sst_fast.protocol import ProtocolCard
from tests.conftest import balance_classifier
from tests.data.layouts import ArrayDataset, random_arrays
from tests.models.helpers import tiny_config

# A handful of episodes leaves some classes without any: the meter warns, and these tests know.
pytestmark = pytest.mark.filterwarnings("ignore:classes .* have no IoU")


def _batches(items, size):
    return [collate_episodes([items[i] for i in range(start, min(start + size, len(items)))])
            for start in range(0, len(items), size)]


@pytest.fixture(scope="module")
def dataset():
    return ArrayDataset(random_arrays(per_class=4, size=(24, 32)))


@pytest.fixture(scope="module")
def model(dataset):
    torch.manual_seed(0)
    model = sst_fast.SST(tiny_config(image_size=(24, 32))).eval()
    item = EpisodeDataset(dataset, [sst_fast.data.Episode(1, "val/01-0", ("val/01-1",))], (24, 32))[0]
    return balance_classifier(model, item["query"][None], item["support_images"][None], item["support_masks"][None])


def test_metrics_equal_a_plain_loop_over_the_same_episodes(dataset, model):
    result = evaluate(model, dataset, fold=0, shots=1, episodes=12, seeds=[0], size=(24, 32), batch_size=5)
    manifest = result.manifests[0]
    meter = FewShotMeter(dataset.fold_split(0).test_classes)
    # In evaluate's batches (5, 5, 2): the same convolutions on the same shapes give the same logits to the
    # bit, so the IoUs, sums of whole pixels, must be equal; what is checked is the accounting.
    for batch in _batches(EpisodeDataset(dataset, manifest.episodes, (24, 32)), 5):
        with torch.no_grad():
            logits = model(batch["query"], batch["support_images"], batch["support_masks"]).logits
        meter.update(logits.argmax(1), batch["query_mask"], batch["class_id"])
    expected = meter.compute()
    run = result.runs[0]
    assert run["class_iou"] == pytest.approx(expected["class_iou"], abs=1e-12, nan_ok=True)
    assert run["fb_iou"] == pytest.approx(expected["fb_iou"], abs=1e-12)
    assert 0 < run["fb_iou"] < 1 and run["episodes"] == 12


def test_replaying_the_manifests_reproduces_the_metrics(dataset, model, tmp_path):
    first = evaluate(model, dataset, fold=1, shots=2, episodes=6, seeds=[3, 4], size=(24, 32))
    paths = [manifest.save(tmp_path / f"seed{manifest.seed}.json") for manifest in first.manifests]
    replay = evaluate(model, dataset, fold=1, size=(24, 32), manifests=[EpisodeManifest.load(p) for p in paths])
    assert replay.runs == first.runs
    assert replay.card == first.card and replay.card.seeds == (3, 4) and replay.card.shots == 2


def test_original_size_at_the_stored_size_equals_input_size(dataset, model):
    at_input = evaluate(model, dataset, fold=2, episodes=8, size=(24, 32))
    at_original = evaluate(model, dataset, fold=2, episodes=8, size=(24, 32), original_size=True)
    assert at_original.runs == at_input.runs
    assert at_original.card.resolution == "original"


def test_original_size_scores_upsampled_logits_against_the_stored_labels(dataset, model):
    result = evaluate(model, dataset, fold=0, episodes=6, size=(16, 16), original_size=True)
    meter = FewShotMeter(dataset.fold_split(0).test_classes)
    items = EpisodeDataset(dataset, result.manifests[0].episodes, (16, 16), keep_original=True)
    (batch,) = _batches(items, 8)  # evaluate's one batch of 6: the same kernels, the same logits to the bit
    with torch.no_grad():
        logits = model(batch["query"], batch["support_images"], batch["support_masks"]).logits
    for index in range(len(items)):
        upsampled = torch.nn.functional.interpolate(logits[index : index + 1], size=(24, 32), mode="bilinear")
        meter.update(upsampled.argmax(1), items[index]["query_label"][None], [items[index]["class_id"]])
    assert result.runs[0] == meter.compute()
    at_input = evaluate(model, dataset, fold=0, episodes=6, size=(16, 16))
    assert at_input.runs[0]["fb_iou"] != result.runs[0]["fb_iou"]  # 16x16 masks are not the 24x32 labels


def test_seeds_give_a_confidence_interval_and_a_complete_card(dataset, model):
    result = evaluate(model, dataset, fold=3, episodes=5, seeds=[0, 1, 2], size=(24, 32), checkpoint="ckpt.pt")
    summary = result.summary()
    mean, half = summary["fb_iou"]
    assert mean == pytest.approx(sum(run["fb_iou"] for run in result.runs) / 3) and half >= 0
    card = result.card
    assert card.test_classes == (16, 17, 18, 19, 20) and card.episodes == 5 and card.seeds == (0, 1, 2)
    assert len(card.manifests) == 3 and card.checkpoint == "ckpt.pt" and card.model["backbone"] == "tiny"
    assert card.code_version.startswith("sst_fast ")
    text = str(card)
    for field in ("fold 3", "5 per seed", "seeds 0, 1, 2", "network input 24x32", "ckpt.pt", "FB-IoU"):
        assert field in text
    assert ProtocolCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
    table = result.table(dataset.class_names)
    assert "16 class16" in table and "mIoU" in table and "±" in table
    assert json.loads(json.dumps(result.to_dict()))["protocol"]["fold"] == 3


def test_a_manifest_of_another_fold_is_refused(dataset, model):
    manifests = evaluate(model, dataset, fold=0, episodes=2, size=(24, 32)).manifests
    with pytest.raises(ValueError, match="manifest is for fold 0"):
        evaluate(model, dataset, fold=1, size=(24, 32), manifests=manifests)
    relabelled = [replace(manifests[0], fold=1)]
    with pytest.raises(ValueError, match="is not a test class of fold 1"):
        evaluate(model, dataset, fold=1, size=(24, 32), manifests=relabelled)


def test_evaluation_restores_training_mode(dataset, model):
    model.train()
    evaluate(model, dataset, fold=0, episodes=2, size=(24, 32))
    assert model.training
    model.eval()


def test_unknown_protocol_fields_are_refused():
    with pytest.raises(ValueError, match="unknown protocol card fields"):
        ProtocolCard.from_dict({"dataset": "x", "colour": "blue"})


def test_collate_keeps_original_labels_as_a_list(dataset):
    episodes = [sst_fast.data.Episode(1, "val/01-0", ("val/01-1",))] * 2
    items = [EpisodeDataset(dataset, episodes, 16, keep_original=True)[i] for i in range(2)]
    assert collate_episodes(items)["query_label"][0].shape == (24, 32)


def test_manifests_replay_only_on_the_data_they_were_drawn_from(dataset, model):
    manifest = evaluate(model, dataset, fold=0, shots=2, episodes=3, size=(24, 32)).manifests[0]
    other = ArrayDataset(random_arrays(per_class=4, size=(24, 32)), min_pixels=5)
    with pytest.raises(ValueError, match="drawn from"):
        evaluate(model, other, fold=0, size=(24, 32), manifests=[manifest])
    episode = manifest.episodes[0]
    cases = {
        "needs 2 supports": replace(episode, supports=episode.supports[:1]),
        "none the query": replace(episode, supports=(episode.query, episode.supports[0])),
        "distinct supports": replace(episode, supports=(episode.supports[0], episode.supports[0])),
        "hold no class": replace(episode, supports=(episode.supports[0], "val/20-0")),
    }
    for match, bad in cases.items():
        broken = replace(manifest, episodes=[bad])
        with pytest.raises(ValueError, match=match):
            evaluate(model, dataset, fold=0, size=(24, 32), manifests=[broken])
    with pytest.raises(ValueError, match="fold"):
        evaluate(model, dataset, fold=0, size=(24, 32), manifests=[replace(manifest, fold=1)])


def test_numpy_seeds_and_saving_the_result(dataset, model, tmp_path):
    result = evaluate(model, dataset, fold=0, episodes=3, seeds=np.arange(2), size=(24, 32))
    assert result.card.seeds == (0, 1) and all(type(seed) is int for seed in result.card.seeds)
    metrics = result.save(tmp_path / "eval")
    saved = json.loads(metrics.read_text())
    assert saved["protocol"]["manifests"] == [m.sha256 for m in result.manifests]
    assert saved["protocol"]["data"] == dataset.describe()
    assert (tmp_path / "eval" / "protocol.txt").read_text().strip() == str(result.card)
    replayed = [EpisodeManifest.load(tmp_path / "eval" / "manifests" / f"seed-{seed}.json") for seed in (0, 1)]
    assert replayed == result.manifests
    with pytest.raises(ValueError, match="seeds"):
        evaluate(model, dataset, fold=0, episodes=3, seeds=[], size=(24, 32))


def test_metrics_files_are_strict_json(dataset, model, tmp_path):
    """A class no episode scores is NaN in memory and null on disk: json.loads in strict mode reads the file."""
    result = evaluate(model, dataset, fold=0, episodes=1, seeds=[0], size=(24, 32))
    assert any(math.isnan(iou) for iou in result.class_iou().values())
    path = result.save(tmp_path / "eval")

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    saved = json.loads(path.read_text(), parse_constant=refuse)
    assert None in saved["class_iou"].values()
    assert strict_json({"a": (float("nan"), float("inf"), 1.5)}, indent=None) == '{"a": [null, null, 1.5]}'


def test_the_default_input_size_is_the_models_trained_size(dataset, model):
    default = evaluate(model, dataset, fold=0, episodes=6)
    assert default.card.input_size == (24, 32)
    assert default.runs == evaluate(model, dataset, fold=0, episodes=6, size=(24, 32)).runs
    with pytest.raises(ValueError, match=r"size: Sequential has no config.image_size"):
        evaluate(torch.nn.Sequential(torch.nn.Identity()), dataset, fold=0, episodes=6)


def _same(computed, saved) -> bool:
    """A recomputed number equals metrics.json's to the bit (strict JSON writes NaN as null)."""
    return math.isnan(computed) if saved is None else computed == saved


@pytest.mark.parametrize("protocol", ["sst", "pfenet", "hsnet"])
def test_episodes_jsonl_recomputes_metrics_json_under_each_protocols_conventions(protocol, tmp_path):
    from sst_fast.metrics import metrics_from_records
    from sst_fast.protocol import protocol_for
    from tests.engine.test_protocols import SIZE, layout_dataset, left_quarter

    dataset = layout_dataset()
    result = evaluate(left_quarter, dataset, 0, size=SIZE, protocol=protocol, episodes=7, seeds=[5, 6], batch_size=3)
    result.save(tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    lines = (tmp_path / "episodes.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 14 and set(records[0]) == {
        "seed", "episode", "class_id", "query", "supports", "intersection", "union", "iou"
    }  # fmt: skip
    rules = protocol_for(protocol, dataset.name)
    per_seed = []
    for manifest, run in zip(result.manifests, saved["runs"], strict=True):
        mine = [r for r in records if r["seed"] == manifest.seed]
        assert [r["episode"] for r in mine] == list(range(7))
        assert [(r["class_id"], r["query"], tuple(r["supports"])) for r in mine] == [
            (e.class_id, e.query, e.supports) for e in manifest.episodes
        ]
        for r in mine:
            fg_union = r["union"][1]
            assert r["iou"] == (r["intersection"][1] / fg_union if fg_union else None)
        again = metrics_from_records(mine, result.card.test_classes, rules.empty_class, rules.empty_fb_term)
        for key in ("miou", "fb_iou", "episode_miou"):
            assert _same(again[key], run[key]), (key, again[key], run[key])
        assert all(_same(again["class_iou"][c], run["class_iou"][str(c)]) for c in result.card.test_classes)
        assert again["class_episodes"] == {c: run["class_episodes"][str(c)] for c in result.card.test_classes}
        per_seed.append(again["miou"])
    assert _same(sum(per_seed) / len(per_seed), saved["summary"]["miou"]["mean"])  # the summary's mean, as computed


def test_the_records_keep_episode_order_across_batches_and_a_stale_file_goes(dataset, model, tmp_path):
    whole = evaluate(model, dataset, fold=0, episodes=5, seeds=[0], size=(24, 32), batch_size=5)
    batched = evaluate(model, dataset, fold=0, episodes=5, seeds=[0], size=(24, 32), batch_size=2)
    assert torch.equal(whole.counts[0], batched.counts[0])
    assert list(batched.episode_records()) == list(whole.episode_records())
    batched.save(tmp_path)
    assert (tmp_path / "episodes.jsonl").exists()
    replace(batched, counts=None).save(tmp_path)  # a result without counts leaves no other one's behind
    assert not (tmp_path / "episodes.jsonl").exists()
