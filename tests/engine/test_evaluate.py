import json
import math

import pytest
import torch

import sst_fast
from sst_fast.data import EpisodeDataset, EpisodeManifest, collate_episodes
from sst_fast.engine import evaluate
from sst_fast.metrics import FewShotMeter
from sst_fast.protocol import ProtocolCard
from tests.conftest import balance_classifier
from tests.data.layouts import ArrayDataset, random_arrays
from tests.models.helpers import tiny_config

# A handful of episodes leaves some classes without any: the meter warns, and these tests know.
pytestmark = pytest.mark.filterwarnings("ignore:classes .* have no IoU")


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
    for item in EpisodeDataset(dataset, manifest.episodes, (24, 32)):
        with torch.no_grad():
            logits = model(item["query"][None], item["support_images"][None], item["support_masks"][None]).logits
        meter.update(logits.argmax(1), item["query_mask"][None], [item["class_id"]])
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


def test_original_size_scores_at_the_label_size(dataset, model):
    result = evaluate(model, dataset, fold=0, episodes=4, size=(16, 16), original_size=True)
    assert result.runs[0]["episodes"] == 4 and not math.isnan(result.runs[0]["fb_iou"])


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
    with pytest.raises(ValueError, match="outside the fold's test classes"):
        evaluate(model, dataset, fold=1, size=(24, 32), manifests=manifests)


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
