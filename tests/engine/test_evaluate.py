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
