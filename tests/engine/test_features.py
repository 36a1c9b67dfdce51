"""The frozen-backbone feature cache: what it stores, when it is reused or rebuilt, and training on it."""

import importlib
import json
import logging

import pytest
import torch

from sst_fast import SST, SSTConfig
from sst_fast.data import EpisodeDataset, open_dataset
from sst_fast.data.episodes import fold_sampler, network_input
from sst_fast.engine.checkpoint import load_checkpoint
from sst_fast.engine.features import CachedEpisodeDataset, FeatureCache, cache_key
from sst_fast.engine.runconfig import ConfigError
from sst_fast.engine.train import Trainer, train
from tests.engine.float64 import Float64SST, training_tolerance
from tests.engine.tiny import tiny_config
from tests.tolerance import LAMBDA, unit_roundoff

SIZE = (64, 64)


@pytest.fixture(scope="module")
def dataset():
    return open_dataset("synthetic", None, image_size=64, train_images=120, val_images=20)


def backbone(seed=0):
    torch.manual_seed(seed)
    return SST(SSTConfig(backbone="tiny", channels=8, image_size=SIZE, freeze_backbone=True)).backbone.eval()


def test_the_cache_holds_the_backbone_outputs_in_float16(dataset, tmp_path):
    net = backbone()
    ids = dataset.image_ids("train")[:10]
    cache = FeatureCache.open_or_build(net, dataset, ids, SIZE, root=tmp_path, batch_size=4)
    images = torch.stack([network_input(dataset.load(i).image, SIZE) for i in ids[7:]])
    with torch.no_grad():
        expected = net(images)
    cached = cache[ids[7:]]
    assert cached.dtype == torch.float16 and cached.shape == expected.shape
    torch.testing.assert_close(cached.float(), expected, rtol=2**-10, atol=1e-4)
    assert cache.folder.name == cache_key(net, dataset, ids, SIZE)
    with pytest.raises(KeyError, match="not in"):
        cache[["no-such-image"]]


def test_the_cache_is_reused_and_keyed_by_backbone_and_images(dataset, tmp_path):
    ids = dataset.image_ids("train")[:6]
    first = FeatureCache.open_or_build(backbone(0), dataset, ids, SIZE, root=tmp_path)
    stamp = (first.folder / "features.f16").stat().st_mtime_ns
    again = FeatureCache.open_or_build(backbone(0), dataset, ids, SIZE, root=tmp_path)
    assert again.folder == first.folder and (again.folder / "features.f16").stat().st_mtime_ns == stamp
    assert FeatureCache.open_or_build(backbone(1), dataset, ids, SIZE, root=tmp_path).folder != first.folder
    assert FeatureCache.open_or_build(backbone(0), dataset, ids[:5], SIZE, root=tmp_path).folder != first.folder


def test_a_damaged_cache_is_rebuilt_with_a_warning(dataset, tmp_path, caplog):
    ids = dataset.image_ids("train")[:4]
    cache = FeatureCache.open_or_build(backbone(), dataset, ids, SIZE, root=tmp_path)
    expected = cache[ids].clone()
    with open(cache.folder / "features.f16", "r+b") as file:
        file.truncate(100)
    with pytest.raises(ValueError, match="not .* bytes"):
        FeatureCache(cache.folder)
    with caplog.at_level(logging.WARNING):
        rebuilt = FeatureCache.open_or_build(backbone(), dataset, ids, SIZE, root=tmp_path, log=logging.getLogger())
    assert "rebuilding" in caplog.text
    assert torch.equal(rebuilt[ids], expected)
    (cache.folder / "meta.json").write_text(json.dumps({"format": 0}))
    with pytest.raises(ValueError, match="meta.json"):
        FeatureCache(cache.folder)


def test_cached_episodes_have_the_image_episodes_masks(dataset, tmp_path):
    split = dataset.fold_split(0)
    episodes = fold_sampler(dataset, 0, 1, "train").sample(5, 0)
    ids = sorted({i for e in episodes for i in (e.query, *e.supports)})
    cache = FeatureCache.open_or_build(backbone(), dataset, ids, SIZE, root=tmp_path)
    cached, plain = CachedEpisodeDataset(dataset, episodes, SIZE, cache), EpisodeDataset(dataset, episodes, SIZE)
    assert split.train_classes
    for index in range(len(episodes)):
        a, b = cached[index], plain[index]
        assert torch.equal(a["query_mask"], b["query_mask"]) and torch.equal(a["support_masks"], b["support_masks"])
        assert a["support_features"].shape[0] == 1 and a["class_id"] == b["class_id"]
        assert torch.equal(a["query_features"], cache[[episodes[index].query]][0])


FROZEN = ("data.augment=false", "model.freeze_backbone=true")


def losses_on_cached_features_and_on_images(tmp_path):
    """The logged losses of three steps trained on cached features and on images (the runs, then the losses)."""
    cached = train(tiny_config(*FROZEN, "data.feature_cache=true"), tmp_path / "cached", max_steps=3, progress=False)
    plain = train(tiny_config(*FROZEN), tmp_path / "plain", max_steps=3, progress=False)
    losses = [
        [r["loss"] for r in load_checkpoint(run.last_checkpoint)["history"] if "loss" in r] for run in (cached, plain)
    ]
    assert len(losses[0]) == 3
    return losses


def assert_losses_follow(losses, dtype):
    """The loss at step s within s float16 roundings of the features (each earlier update carried one, and the
    step's own forward; a rounded input moves the first convolution's sums by lam u16 of their value: Hoeffding,
    as in tests/tolerance.py) plus the two runs' own rounding in ``dtype`` (training_tolerance: a forward and s - 1
    steps, the backbone's sums included: the cache ran it in other batches)."""
    forward, step = training_tolerance(dtype, tiny_config(*FROZEN))
    for s, (a, b) in enumerate(zip(*losses, strict=True), start=1):
        tol = s * LAMBDA * unit_roundoff(torch.float16) + forward + (s - 1) * step
        assert a == pytest.approx(b, rel=tol), f"step {s}: float16 features, the same training to their rounding"


def test_training_on_cached_features_follows_training_on_images(tmp_path, monkeypatch):
    assert_losses_follow(losses_on_cached_features_and_on_images(tmp_path), torch.float32)
    log = (tmp_path / "cached" / "train.log").read_text()
    assert "cached the backbone features" in log
    # Resuming opens the same cache instead of building it again.
    Trainer.resume(tmp_path / "cached", progress=False).fit(max_steps=4)
    assert (tmp_path / "cached" / "train.log").read_text().count("cached the backbone features") == 1
    # In float64 (a cache of its own, of the float64 backbone's features), whose rounding is 2^-29 of float32's,
    # what is left is the features' float16 rounding: the bound that float32's rounding made loose above.
    monkeypatch.setenv("SST_FAST_CACHE", str(tmp_path / "cache64"))
    monkeypatch.setattr(importlib.import_module("sst_fast.engine.train"), "SST", Float64SST)
    assert_losses_follow(losses_on_cached_features_and_on_images(tmp_path / "float64"), torch.float64)


def test_the_feature_cache_needs_a_frozen_backbone_and_no_augmentation(tmp_path):
    with pytest.raises(ConfigError, match="data.augment=false"):
        tiny_config("data.feature_cache=true")
    with pytest.raises(ConfigError, match="model.freeze_backbone=true"):
        Trainer(
            tiny_config("data.augment=false", "model.freeze_backbone=false", "data.feature_cache=true"),
            tmp_path / "run",
            progress=False,
        )
