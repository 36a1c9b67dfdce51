"""Bad input across the public Python API: each case ends in a clear error that names what is wrong, or in a
defined result. (The command line's cases are the table in tests/cli/test_errors.py.)

REFUSED rows: (id, call, exception type, fragments the message must contain). DEFINED rows: (id, call, check).
"""

import types
import warnings

import numpy as np
import pytest
import torch

from sst_fast import SST, SSTConfig, ops, predict
from sst_fast.data import DataError, EpisodeDataset, EpisodeManifest, EpisodeSampler, open_dataset
from sst_fast.data.episodes import Episode
from sst_fast.engine import CheckpointError, ConfigError, evaluate, load_checkpoint, load_run_config, score_episodes
from sst_fast.metrics import FewShotMeter, mean_ci
from sst_fast.reference import SSTReference


@pytest.fixture(scope="module")
def e(tmp_path_factory):
    """What the cases act on: small tensors, a tiny model, a small synthetic data set, a scratch folder."""
    generator = torch.Generator().manual_seed(0)
    config = SSTConfig(backbone="tiny", channels=8, image_size=(32, 32))
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("bad-input")
    (tmp / "text.pt").write_text("hello")
    torch.save({"a": 1}, tmp / "foreign.pt")
    (tmp / "broken.json").write_text("{")
    dataset = open_dataset("synthetic", None, image_size=64, train_images=40, val_images=20)
    return types.SimpleNamespace(
        features=torch.randn(2, 4, 5, 5, generator=generator),
        mask=(torch.rand(2, 1, 5, 5, generator=generator) > 0.5).float(),
        weight=torch.randn(3, 8, 3, 3, generator=generator),
        proto=torch.randn(2, 4, generator=generator),
        delta=torch.randn(2, 3, 5, 5, generator=generator),
        model=SST(config).eval(),
        reference=SSTReference(config).eval(),
        query=torch.randn(1, 3, 32, 32, generator=generator),
        support=torch.randn(1, 1, 3, 32, 32, generator=generator),
        support_mask=torch.ones(1, 1, 32, 32, dtype=torch.long),
        image=np.zeros((20, 20, 3), np.uint8),
        image_mask=np.ones((20, 20), np.uint8),
        dataset=dataset,
        train_split=dataset.fold_split(0).train_split,
        tmp=tmp,
    )


def case(name, call, error, *fragments):
    return pytest.param(call, error, fragments, id=name)


REFUSED = [
    # --- ops.masked_avg_pool ---
    case("pool-features-3d", lambda e: ops.masked_avg_pool(e.features[0], e.mask[0]), ValueError, "features", "4 dim"),
    case("pool-features-int", lambda e: ops.masked_avg_pool(e.features.long(), e.mask), ValueError, "floating"),
    case("pool-features-list", lambda e: ops.masked_avg_pool([[1.0]], e.mask), TypeError, "features", "torch.Tensor"),
    case(
        "pool-mask-size", lambda e: ops.masked_avg_pool(e.features, e.mask[..., :4]), ValueError, "mask", "[2, 1, 5, 4]"
    ),
    case("pool-mask-batch", lambda e: ops.masked_avg_pool(e.features, e.mask[:1]), ValueError, "mask", "[1, 1, 5, 5]"),
    case("pool-mask-dtype", lambda e: ops.masked_avg_pool(e.features.double(), e.mask.half()), ValueError, "float16"),
    case("pool-eps-0", lambda e: ops.masked_avg_pool(e.features, e.mask, eps=0), ValueError, "eps", "> 0"),
    case("pool-eps-nan", lambda e: ops.masked_avg_pool(e.features, e.mask, eps=float("nan")), ValueError, "eps", "nan"),
    # --- ops.prototype_conv2d ---
    case("conv-proto-size", lambda e: ops.prototype_conv2d(e.features, e.proto[:, :3], e.weight), ValueError, "proto"),
    case("conv-weight-in", lambda e: ops.prototype_conv2d(e.features, e.proto, e.weight[:, :7]), ValueError, "2C = 8"),
    case(
        "conv-even-kernel",
        lambda e: ops.prototype_conv2d(e.features, e.proto, torch.randn(3, 8, 2, 2)),
        ValueError,
        "odd",
    ),
    case(
        "conv-bias", lambda e: ops.prototype_conv2d(e.features, e.proto, e.weight, torch.randn(4)), ValueError, "bias"
    ),
    case(
        "conv-dilation-0",
        lambda e: ops.prototype_conv2d(e.features, e.proto, e.weight, None, 0),
        ValueError,
        "dilation",
    ),
    case(
        "conv-dilation-1.5", lambda e: ops.prototype_conv2d(e.features, e.proto, e.weight, None, 1.5), ValueError, "1.5"
    ),
    case(
        "conv-proto-dtype", lambda e: ops.prototype_conv2d(e.features, e.proto.double(), e.weight), ValueError, "proto"
    ),
    # --- ops.tuned_prototype ---
    case(
        "tune-delta-channels",
        lambda e: ops.tuned_prototype(e.delta[:, :2], e.mask, e.weight, e.proto),
        ValueError,
        "delta",
        "Co",
    ),
    case(
        "tune-step-inf",
        lambda e: ops.tuned_prototype(e.delta, e.mask, e.weight, e.proto, step=float("inf")),
        ValueError,
        "step",
    ),
    case(
        "tune-step-vector",
        lambda e: ops.tuned_prototype(e.delta, e.mask, e.weight, e.proto, step=torch.ones(2)),
        ValueError,
        "0-dim",
    ),
    case(
        "tune-proto-batch", lambda e: ops.tuned_prototype(e.delta, e.mask, e.weight, e.proto[:1]), ValueError, "B = 2"
    ),
    # --- the models ---
    case(
        "model-query-3d", lambda e: e.model(e.query[0], e.support, e.support_mask), ValueError, "query", "[B, 3, H, W]"
    ),
    case("model-support-4d", lambda e: e.model(e.query, e.support[:, 0], e.support_mask), ValueError, "support_images"),
    case(
        "model-masks-shots",
        lambda e: e.model(e.query, e.support, e.support_mask.expand(1, 2, 32, 32)),
        ValueError,
        "support_masks",
        "K = 1",
    ),
    case("model-mask-labels", lambda e: e.model(e.query, e.support, e.support_mask * 3), ValueError, "found 3"),
    case("model-mask-soft", lambda e: e.model(e.query, e.support, e.support_mask * 0.5), ValueError, "found 0.5"),
    case(
        "model-mask-size",
        lambda e: e.model(e.query, e.support[..., :16, :16], e.support_mask),
        ValueError,
        "support_masks",
        "[16, 16]",
    ),
    case("model-no-shots", lambda e: e.model(e.query, e.support[:, :0], e.support_mask[:, :0]), ValueError, "empty"),
    case("model-int-images", lambda e: e.model(e.query.long(), e.support, e.support_mask), ValueError, "floating"),
    case("model-nan-images", lambda e: e.model(e.query * np.nan, e.support, e.support_mask), ValueError, "NaN"),
    case("reference-query-3d", lambda e: e.reference(e.query[0], e.support, e.support_mask), ValueError, "query"),
    case("config-channels-0", lambda e: SSTConfig(channels=0), ValueError, "channels", "got 0"),
    case("config-fusion", lambda e: SSTConfig(fusion="sum"), ValueError, "fusion", "'sum'"),
    case("config-size", lambda e: SSTConfig(image_size=(0, 5)), ValueError, "image_size"),
    case("config-tune-form", lambda e: SSTConfig(tune_form="sum"), ValueError, "tune_form", "'sum'"),
    # --- predict ---
    case("predict-no-support", lambda e: predict(e.model, e.image, [], []), ValueError, "support_images"),
    case(
        "predict-mask-count",
        lambda e: predict(e.model, e.image, [e.image, e.image], [e.image_mask]),
        ValueError,
        "support_masks",
        "(2)",
    ),
    case(
        "predict-mask-size",
        lambda e: predict(e.model, e.image, e.image, e.image_mask[:10]),
        ValueError,
        "support_masks[0]",
    ),
    case("predict-mask-labels", lambda e: predict(e.model, e.image, e.image, e.image_mask * 7), ValueError, "7"),
    case("predict-path-image", lambda e: predict(e.model, "q.png", e.image, e.image_mask), TypeError, "query_image"),
    case(
        "predict-float-range",
        lambda e: predict(e.model, e.image + 3.0, e.image, e.image_mask),
        ValueError,
        "query_image",
        "[0, 1]",
    ),
    case(
        "predict-size-0", lambda e: predict(e.model, e.image, e.image, e.image_mask, image_size=0), ValueError, "size"
    ),
    # --- data: data sets, samplers, episode sets, manifests ---
    case("data-unknown", lambda e: open_dataset("imagenet"), ValueError, "dataset", "'imagenet'"),
    case("data-missing-root", lambda e: open_dataset("pascal", e.tmp / "nope"), DataError, "PASCAL VOC", "nope"),
    case("data-no-root", lambda e: open_dataset("coco"), ValueError, "root", "coco"),
    case("data-unknown-option", lambda e: open_dataset("synthetic", colour=3), ValueError, "colour", "image_size"),
    case("data-root-for-synthetic", lambda e: open_dataset("synthetic", e.tmp), ValueError, "root"),
    case("data-fold-9", lambda e: e.dataset.fold_split(9), ValueError, "fold", "9"),
    case("data-unknown-image", lambda e: e.dataset.load("nope"), ValueError, "'nope'"),
    case("sampler-shots-0", lambda e: EpisodeSampler(e.dataset, [1], e.train_split, 0), ValueError, "shots"),
    case("sampler-class-99", lambda e: EpisodeSampler(e.dataset, [99], e.train_split, 1), ValueError, "classes", "99"),
    case("sampler-split", lambda e: EpisodeSampler(e.dataset, [1], "nope", 1), ValueError, "split", "'nope'"),
    case("sampler-too-few-images", lambda e: EpisodeSampler(e.dataset, [1], e.train_split, 10**4), DataError, "needs"),
    case(
        "sampler-episodes-negative",
        lambda e: EpisodeSampler(e.dataset, [1], e.train_split, 1).sample(-1, 0),
        ValueError,
        "episodes",
    ),
    case(
        "sampler-episodes-beyond-the-maximum",
        lambda e: EpisodeSampler(e.dataset, [1], e.train_split, 1).sample(10**20, 0),
        ValueError,
        "episodes",
        "at most 10,000,000",
    ),
    case("sampler-seed", lambda e: EpisodeSampler(e.dataset, [1], e.train_split, 1).sample(3, -1), ValueError, "seed"),
    case("episodes-size-0", lambda e: EpisodeDataset(e.dataset, [], 0), ValueError, "size"),
    case(
        "episodes-unknown-image",
        lambda e: EpisodeDataset(e.dataset, [Episode(1, "nope", ("nope2",))], 32)[0],
        ValueError,
        "'nope'",
    ),
    case("episodes-index", lambda e: EpisodeDataset(e.dataset, [], 32)[3], IndexError, "index 3", "0 episodes"),
    case("manifest-missing", lambda e: EpisodeManifest.load(e.tmp / "nope.json"), DataError, "nope.json"),
    case("manifest-broken", lambda e: EpisodeManifest.load(e.tmp / "broken.json"), DataError, "broken.json"),
    case(
        "manifest-other-data",
        lambda e: EpisodeManifest({"name": "other"}, "val", 0, 1, 0, []).check(e.dataset, 0),
        ValueError,
        "drawn from",
    ),
    # --- metrics ---
    case("meter-no-classes", lambda e: FewShotMeter([]), ValueError, "class_ids"),
    case(
        "meter-shapes",
        lambda e: FewShotMeter([1]).update(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5), [1, 1]),
        ValueError,
        "(2, 4, 5)",
    ),
    case(
        "meter-pred-labels",
        lambda e: FewShotMeter([1]).update(torch.full((1, 4, 4), 2), torch.zeros(1, 4, 4), 1),
        ValueError,
        "pred",
    ),
    case(
        "meter-class",
        lambda e: FewShotMeter([1]).update(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), 2),
        ValueError,
        "class_id 2",
    ),
    case("mean-ci-empty", lambda e: mean_ci([]), ValueError, "at least one"),
    case("mean-ci-confidence", lambda e: mean_ci([1, 2], 1.5), ValueError, "confidence", "1.5"),
    # --- engine: checkpoints, configurations, evaluation ---
    case("checkpoint-missing", lambda e: load_checkpoint(e.tmp / "nope.pt"), CheckpointError, "nope.pt", "not exist"),
    case("checkpoint-text", lambda e: load_checkpoint(e.tmp / "text.pt"), CheckpointError, "text.pt", "not a readable"),
    case("checkpoint-foreign", lambda e: load_checkpoint(e.tmp / "foreign.pt"), CheckpointError, "not an sst_fast"),
    case("config-unknown", lambda e: load_run_config("nope"), ConfigError, "'nope'"),
    case("config-lr-negative", lambda e: load_run_config("synthetic", ["optim.lr=-1"]), ConfigError, "optim.lr"),
    case("config-unknown-key", lambda e: load_run_config("synthetic", ["run.nope=1"]), ConfigError, "run.nope"),
    case(
        "config-val-episodes-huge",
        lambda e: load_run_config("synthetic", ["data.val_episodes=99999999999999999999"]),
        ConfigError,
        "data.val_episodes",
        "10000000",
    ),
    case(
        "config-batch-beyond-epoch",
        lambda e: load_run_config("synthetic", ["optim.batch_size=100000"]),
        ConfigError,
        "optim.batch_size=100000",
        "optim.episodes_per_epoch=800",
    ),
    case(
        "config-key-twice",
        lambda e: load_run_config("synthetic", ["data.options={seed: 1, seed: 2}"]),
        ConfigError,
        "data.options.seed twice",
    ),
    case("evaluate-no-seeds", lambda e: evaluate(e.model, e.dataset, 0, seeds=[]), ValueError, "seeds"),
    case("evaluate-same-seeds", lambda e: evaluate(e.model, e.dataset, 0, seeds=[1, 1]), ValueError, "distinct"),
    case("evaluate-amp", lambda e: evaluate(e.model, e.dataset, 0, amp="fp8"), ValueError, "amp", "'fp8'"),
    case("evaluate-fold", lambda e: evaluate(e.model, e.dataset, 7), ValueError, "fold", "7"),
    case("evaluate-episodes-0", lambda e: evaluate(e.model, e.dataset, 0, episodes=0), ValueError, "episodes"),
    case("evaluate-shots-0", lambda e: evaluate(e.model, e.dataset, 0, shots=0), ValueError, "shots"),
    case(
        "evaluate-dataset-not-a-dataset",
        lambda e: evaluate(e.model, 3, 0),
        TypeError,
        "dataset must be a FewShotDataset",
        "got int",
    ),
    case(
        "evaluate-nan-logits",
        lambda e: evaluate(_nan_model, e.dataset, 0, size=32, episodes=3),
        ValueError,
        "non-finite logits",
        "episode 0 (class ",
    ),
    case(
        "evaluate-classes-the-model-trained-on",
        lambda e: evaluate(e.model, e.dataset, 1, trained_on={"dataset": "synthetic", "fold": 0}, episodes=2),
        ValueError,
        "trained on synthetic fold 0",
        "were its training classes",
        "allow_seen_classes=True",
    ),
    case(
        "evaluate-manifest-decides-shots",
        lambda e: evaluate(e.model, e.dataset, 0, manifests=[_manifest(e)], shots=2),
        ValueError,
        "shots (--shots): the manifests decide it (1), got 2",
    ),
    case(
        "score-batch-0",
        lambda e: score_episodes(e.model, e.dataset, [1], [], 32, batch_size=0),
        ValueError,
        "batch_size",
    ),
]


@pytest.mark.parametrize(("call", "error", "fragments"), REFUSED)
def test_bad_input_is_refused_with_a_clear_error(e, call, error, fragments):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error) as raised:
            call(e)
    message = str(raised.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert len(message) < 1000 and "Traceback" not in message


def _nan_model(query, support_images, support_masks):
    return torch.full((query.shape[0], 2, 8, 8), np.nan)


def _manifest(e) -> EpisodeManifest:
    split = e.dataset.fold_split(0)
    episodes = EpisodeSampler(e.dataset, split.test_classes, split.test_split, 1).sample(2, 0)
    return EpisodeManifest(e.dataset.describe(), split.test_split, 0, 1, 0, episodes)


def _nan_prototype(e):
    return torch.isnan(ops.masked_avg_pool(e.features, e.mask * np.nan)).all()


def _empty_mask_predicts_background(e):
    with pytest.warns(UserWarning, match="no object pixel"):
        return predict(e.model, e.image, e.image, e.image_mask * 0).shape == (20, 20)


DEFINED = [
    pytest.param(lambda e: ops.masked_avg_pool(e.features[:0], e.mask[:0]).shape == (0, 4), id="pool-empty-batch"),
    pytest.param(lambda e: ops.masked_avg_pool(e.features, e.mask * 0).abs().max() == 0, id="pool-empty-mask-is-zero"),
    pytest.param(_nan_prototype, id="pool-nan-mask-gives-nan"),
    pytest.param(
        lambda e: e.model(e.query, e.support, e.support_mask).loss is None, id="model-without-query-mask-has-no-loss"
    ),
    pytest.param(
        lambda e: (
            e.model(e.query[..., :4, :4], e.support[..., :4, :4], e.support_mask[..., :4, :4]).logits.shape
            == (1, 2, 4, 4)
        ),
        id="model-4x4-images",
    ),
    pytest.param(
        lambda e: predict(e.model, e.image[..., 0], e.image, e.image_mask).shape == (20, 20), id="predict-gray"
    ),
    pytest.param(_empty_mask_predicts_background, id="predict-empty-support-mask-warns"),
    pytest.param(
        lambda e: score_episodes(e.model, e.dataset, [1], [], 32)["episodes"] == 0, id="score-no-episodes-is-empty"
    ),
    pytest.param(
        lambda e: evaluate(e.model, "synthetic", 0, episodes=2, size=32).card.dataset == "synthetic",
        id="evaluate-dataset-by-name",
    ),
]


@pytest.mark.parametrize("check", DEFINED)
def test_edge_input_has_a_defined_result(e, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # an empty meter warns that no class was scored
        assert check(e)


def test_the_tables_hold_at_least_thirty_distinct_cases():
    ids = [param.id for param in REFUSED + DEFINED]
    assert len(ids) == len(set(ids)) and len(ids) >= 30
