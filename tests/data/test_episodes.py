import json
from collections import Counter

import numpy as np
import pytest
import torch

from sst_fast.data import (
    Augment,
    DataError,
    Episode,
    EpisodeDataset,
    EpisodeManifest,
    EpisodeSampler,
    collate_episodes,
    fold_sampler,
    sample_episodes,
)
from sst_fast.data.episodes import holdout
from tests.data.layouts import ArrayDataset, random_arrays


@pytest.fixture(scope="module")
def arrays():
    return ArrayDataset(random_arrays(per_class=6))


def test_same_seed_same_episodes_and_other_seeds_differ(arrays):
    first = sample_episodes(arrays, [1, 2, 3], "val", shots=2, episodes=50, seed=7)
    assert first == sample_episodes(arrays, [1, 2, 3], "val", shots=2, episodes=50, seed=7)
    assert first != sample_episodes(arrays, [1, 2, 3], "val", shots=2, episodes=50, seed=8)
    assert first != sample_episodes(arrays, [1, 2, 3], "val", shots=2, episodes=50, seed=(7, 1))


def test_episodes_hold_their_class_and_supports_differ_from_the_query(arrays):
    sampler = EpisodeSampler(arrays, [4, 5], "train", shots=5)
    for episode in sampler.sample(200, seed=0):
        assert episode.class_id in (4, 5) and len(episode.supports) == 5
        assert len({episode.query, *episode.supports}) == 6
        for image in (episode.query, *episode.supports):
            assert arrays.image_classes("train", image).get(episode.class_id, 0) > 0


def test_classes_are_drawn_uniformly(arrays):
    counts = Counter(e.class_id for e in sample_episodes(arrays, [1, 2, 3, 4], "val", 1, 4000, seed=3))
    assert all(abs(n / 4000 - 0.25) < 0.03 for n in counts.values())


def test_too_few_images_is_a_data_error_naming_the_class():
    data = random_arrays(per_class=4)
    del data["val"]["val/02-0"]
    EpisodeSampler(ArrayDataset(data), [1, 2], "val", shots=2)
    with pytest.raises(DataError, match=r"class 2 \(class2\) has 3 image.*3-shot episode needs 4"):
        EpisodeSampler(ArrayDataset(data), [1, 2, 3], "val", shots=3)


def test_exclude_classes_drops_images_that_contain_them():
    data = random_arrays(per_class=4)
    image, label = data["train"]["train/01-0"]
    label = label.copy()
    label[0, 0] = 9  # one pixel of class 9 in an image of class 1
    data["train"]["train/01-0"] = (image, label)
    dataset = ArrayDataset(data)
    assert "train/01-0" in EpisodeSampler(dataset, [1], "train", 1).pools[1]
    assert "train/01-0" not in EpisodeSampler(dataset, [1], "train", 1, exclude_classes=[9]).pools[1]


def test_a_sampler_restricted_to_images_draws_only_those(arrays):
    allowed = {image for image in arrays.image_ids("train") if image.endswith(("-0", "-1", "-2"))}
    sampler = EpisodeSampler(arrays, [1, 2, 3], "train", shots=2, images=allowed)
    for episode in sampler.sample(100, seed=0):
        assert {episode.query, *episode.supports} <= allowed
    with pytest.raises(DataError, match="3-shot episode needs 4"):
        EpisodeSampler(arrays, [1], "train", shots=3, images=allowed)
    with pytest.raises(ValueError, match="training episodes only"):
        fold_sampler(arrays, 0, 1, "test", images=allowed)


def test_holdout_is_a_stable_fraction_chosen_by_image_id():
    ids = [f"image-{i:05d}" for i in range(20000)]
    held = holdout(ids, 0.1)
    assert abs(len(held) / len(ids) - 0.1) < 0.01
    assert holdout(list(reversed(ids)), 0.1) == held  # order does not matter
    assert holdout(ids[:5000], 0.1) == {i for i in held if i in set(ids[:5000])}  # nor do the other images
    assert holdout(ids, 0.1, salt="other") != held
    assert holdout(ids, 0.0) == set() and holdout(ids, 1.0) == set(ids)
    with pytest.raises(ValueError, match="fraction"):
        holdout(ids, 1.5)


def test_fold_samplers_draw_base_classes_for_training_and_novel_ones_for_testing():
    data = random_arrays(per_class=3)
    image, label = data["train"]["train/07-0"]
    label = label.copy()
    label[0, :4] = 2  # a few pixels of fold 0's novel class 2 in a training image of class 7
    data["train"]["train/07-0"] = (image, label)
    dataset = ArrayDataset(data)
    train = fold_sampler(dataset, 0, shots=1, stage="train")
    assert train.split == "train" and train.classes == list(range(6, 21))
    assert "train/07-0" in train.pools[7]
    assert "train/07-0" not in fold_sampler(dataset, 0, 1, "train", exclude_novel=True).pools[7]
    test = fold_sampler(dataset, 0, shots=2, stage="test")
    assert test.split == "val" and test.classes == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="stage"):
        fold_sampler(dataset, 0, 1, "val")
    with pytest.raises(ValueError, match="training episodes only"):
        fold_sampler(dataset, 0, 1, "test", exclude_novel=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shots": 0}, "shots"),
        ({"classes": []}, "classes"),
        ({"classes": [21]}, "classes must be in 1..20"),
        ({"split": "test"}, "split"),
        ({"exclude_classes": [0]}, "exclude_classes"),
    ],
)
def test_bad_sampler_arguments(arrays, kwargs, match):
    arguments = {"classes": [1], "split": "val", "shots": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        EpisodeSampler(arrays, **arguments)


@pytest.mark.parametrize(("episodes", "seed"), [(0, 0), (5, -1), (5, "a"), (5, [])])
def test_bad_sample_arguments(arrays, episodes, seed):
    with pytest.raises(ValueError, match="episodes|seed"):
        EpisodeSampler(arrays, [1], "val", 1).sample(episodes, seed)


def test_manifest_round_trip(arrays, tmp_path):
    episodes = sample_episodes(arrays, [1, 2], "val", 3, 20, seed=5)
    manifest = EpisodeManifest(arrays.describe(), "val", 0, 3, 5, episodes)
    path = manifest.save(tmp_path / "manifest.json")
    loaded = EpisodeManifest.load(path)
    assert loaded == manifest and loaded.sha256 == manifest.sha256
    assert json.loads(path.read_text())["sha256"] == manifest.sha256


def test_a_modified_manifest_is_refused(arrays, tmp_path):
    manifest = EpisodeManifest(arrays.describe(), "val", 0, 1, 0, sample_episodes(arrays, [1], "val", 1, 4, 0))
    path = manifest.save(tmp_path / "manifest.json")
    payload = json.loads(path.read_text())
    payload["episodes"][0]["query"] = payload["episodes"][1]["query"]
    path.write_text(json.dumps(payload))
    with pytest.raises(DataError, match="SHA-256"):
        EpisodeManifest.load(path)
    path.write_text("{")
    with pytest.raises(DataError, match="cannot read episode manifest"):
        EpisodeManifest.load(path)
    path.write_text("[]")
    with pytest.raises(DataError, match="not an episode manifest"):
        EpisodeManifest.load(path)


def test_episode_dataset_items(arrays):
    episodes = [Episode(3, "val/03-0", ("val/03-1", "val/03-2"))]
    item = EpisodeDataset(arrays, episodes, size=(20, 28), keep_original=True)[0]
    assert item["query"].shape == (3, 20, 28) and item["query"].dtype == torch.float32
    assert item["support_images"].shape == (2, 3, 20, 28)
    assert item["support_masks"].shape == (2, 20, 28) and item["support_masks"].dtype == torch.long
    assert set(item["query_mask"].unique().tolist()) == {0, 1, 255}
    _, label = arrays.data["val"]["val/03-0"]
    expected = np.where(label == 3, 1, np.where(label == 255, 255, 0))
    assert torch.equal(item["query_label"], torch.from_numpy(expected))
    batch = collate_episodes([item, item])
    assert batch["query"].shape == (2, 3, 20, 28) and isinstance(batch["query_label"], list)
    assert batch["class_id"].tolist() == [3, 3]


def test_at_the_stored_size_images_are_only_normalised(arrays):
    episode = Episode(1, "val/01-0", ("val/01-1",))
    item = EpisodeDataset(arrays, [episode], size=(24, 32))[0]
    image, label = arrays.data["val"]["val/01-0"]
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(item["query"], (torch.from_numpy(image).permute(2, 0, 1) / 255 - mean) / std)
    assert torch.equal(item["query_mask"], torch.from_numpy(np.where(label == 255, 255, (label == 1) * 1)).long())


def test_augmented_items_depend_only_on_seed_and_index(arrays):
    episodes = sample_episodes(arrays, [1, 2], "train", 2, 6, seed=0)
    dataset = EpisodeDataset(arrays, episodes, size=24, augment=Augment((24, 24)), seed=(3, 1))
    again = EpisodeDataset(arrays, episodes, size=24, augment=Augment((24, 24)), seed=(3, 1))
    reordered = [again[i] for i in reversed(range(6))][::-1]
    for i in range(6):
        assert torch.equal(dataset[i]["query"], reordered[i]["query"])
        assert torch.equal(dataset[i]["support_masks"], reordered[i]["support_masks"])
    other = EpisodeDataset(arrays, episodes, size=24, augment=Augment((24, 24)), seed=(3, 2))
    assert not torch.equal(dataset[0]["query"], other[0]["query"])


def test_a_loader_with_workers_gives_the_same_batches(arrays):
    episodes = sample_episodes(arrays, [1, 2], "train", 1, 8, seed=0)
    dataset = EpisodeDataset(arrays, episodes, size=24, augment=Augment((24, 24)), seed=0)
    serial = list(torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_episodes))
    parallel = list(torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_episodes, num_workers=2))
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a["query"], b["query"]) and torch.equal(a["support_masks"], b["support_masks"])


def test_a_pair_list_names_every_pair_the_data_set_lacks(arrays):
    from sst_fast.data.episodes import PairListSampler

    good = [("val/01-0", 1), ("val/01-1", 1), ("val/02-0", 2), ("val/02-1", 2)]
    PairListSampler(arrays, [1, 2], "val", 1, pairs=good, source="mine.txt")
    lacking = [*good, ("val/99-0", 1), ("train/01-0", 1), ("val/01-2", 2), ("val/02-2", 1)]
    with pytest.raises(DataError) as error:
        PairListSampler(arrays, [1, 2], "val", 1, pairs=lacking, source="mine.txt")
    message = str(error.value)
    assert message.startswith("mine.txt: 2 of the 8 images are not in split 'val' (train/01-0, val/99-0)")
    assert "2 pairs name a class their image's label lacks (val/01-2 class 2, val/02-2 class 1)" in message


def test_a_listed_class_sampler_draws_class_first_within_its_lists(arrays, tmp_path):
    from sst_fast.data.episodes import ListedClassSampler, read_pairs

    path = tmp_path / "lists.txt"
    path.write_text("# a header\n  # indented\nval/01-4__1\nval/01-0__1\n\nval/01-2__1\nval/02-5__2\nval/02-1__2\n")
    pairs = read_pairs(path)
    assert pairs == [("val/01-4", 1), ("val/01-0", 1), ("val/01-2", 1), ("val/02-5", 2), ("val/02-1", 2)]
    sampler = ListedClassSampler(arrays, [1, 2], "val", 3, pairs=pairs, source=str(path))
    assert sampler.pools == {1: ["val/01-0", "val/01-2", "val/01-4"], 2: ["val/02-1", "val/02-5"]}
    plain = EpisodeSampler(arrays, [1, 2], "val", 3, supports="independent")
    plain.pools, plain._positions = sampler.pools, sampler._positions
    episodes = sampler.sample(200, seed=3)
    assert episodes == plain.sample(200, seed=3)  # the class-first rule, over the lists
    assert Counter(e.class_id for e in episodes).keys() == {1, 2}
    assert all(e.query not in e.supports and set(e.supports) <= set(sampler.pools[e.class_id]) for e in episodes)
    assert not sampler.strangers(episodes[0]) and sampler.strangers(Episode(1, "val/01-1", ("val/01-0",) * 3))
    with pytest.raises(ValueError, match="needs the lists"):
        ListedClassSampler(arrays, [1, 2], "val", 1)
