"""Data loading throughput: episodes per second into the model, so that loading never starves training.

Each benchmark times one pass of a single-process DataLoader over a fixed list of episodes
(``num_workers=0``: the per-core rate; workers multiply it). Episodes/s = episodes / median.
Beside them, one training step of the demo-sized model on the same batch, to compare with.
"""

import pytest
import torch

import sst_fast
from sst_fast.data import Augment, EpisodeDataset, EpisodeSampler, collate_episodes
from sst_fast.data.pascal import PascalVOC
from sst_fast.data.synthetic import SyntheticDataset
from tests.data.layouts import make_voc, voc_images

EPISODES = 32
BATCH = 8


@pytest.fixture(scope="module")
def synthetic():
    dataset = SyntheticDataset(seed=0)
    dataset.prepare()
    return dataset


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """VOC layout at VOC's own image size (500x375 JPEG, palette PNG labels)."""
    root = tmp_path_factory.mktemp("voc") / "VOC2012"
    images = voc_images(per_class=12, size=(375, 500))
    make_voc(root, images, val=sorted(images)[::2], size=(375, 500))
    dataset = PascalVOC(root, cache_dir=root.parent / "cache")
    dataset.prepare()
    return dataset


def episode_loader(dataset, split, shots, size, augment):
    split_info = dataset.fold_split(0)
    classes = split_info.train_classes if split == "train" else split_info.test_classes
    split_name = split_info.train_split if split == "train" else split_info.test_split
    episodes = EpisodeSampler(dataset, classes, split_name, shots).sample(EPISODES, seed=0)
    items = EpisodeDataset(dataset, episodes, size, augment=Augment(size) if augment else None, seed=0)
    return torch.utils.data.DataLoader(items, batch_size=BATCH, collate_fn=collate_episodes)


def consume(loader):
    for _batch in loader:
        pass


CASES = [
    pytest.param("synthetic", "val", 1, 128, False, id="synthetic-128-eval-1shot"),
    pytest.param("synthetic", "val", 5, 128, False, id="synthetic-128-eval-5shot"),
    pytest.param("synthetic", "train", 1, 128, True, id="synthetic-128-train-1shot-augment"),
    pytest.param("voc", "val", 1, 321, False, id="voc-321-eval-1shot"),
    pytest.param("voc", "val", 5, 321, False, id="voc-321-eval-5shot"),
    pytest.param("voc", "train", 1, 321, True, id="voc-321-train-1shot-augment"),
]


@pytest.mark.benchmark(group=f"episode loading ({EPISODES} episodes, batch {BATCH})")
@pytest.mark.parametrize(("source", "split", "shots", "size", "augment"), CASES)
def test_episode_loading(machine, request, source, split, shots, size, augment):
    dataset = request.getfixturevalue(source)
    loader = episode_loader(dataset, split, shots, size, augment)
    machine.extra_info["episodes"] = EPISODES
    machine.pedantic(consume, args=(loader,), rounds=5, warmup_rounds=1)
    record_rate(machine, EPISODES)


@pytest.mark.benchmark(group=f"episode loading ({EPISODES} episodes, batch {BATCH})")
def test_demo_model_train_step_for_comparison(machine, synthetic):
    """One SGD step of the tiny-backbone SST on a synthetic 1-shot batch of 8 at 128x128."""
    model = sst_fast.SST(sst_fast.SSTConfig(backbone="tiny", image_size=128))
    optimizer = torch.optim.SGD(model.parameters(), lr=5e-4, momentum=0.9)
    batch = next(iter(episode_loader(synthetic, "train", 1, 128, True)))

    def step():
        optimizer.zero_grad()
        out = model(batch["query"], batch["support_images"], batch["support_masks"], batch["query_mask"])
        out.loss.backward()
        optimizer.step()

    machine.pedantic(step, rounds=5, warmup_rounds=1)
    record_rate(machine, BATCH)


def record_rate(benchmark, episodes):
    """Episodes per second at the median, beside the timings (absent when benchmarks are disabled)."""
    if benchmark.stats is not None:
        benchmark.extra_info["episodes_per_s"] = episodes / benchmark.stats.stats.median
