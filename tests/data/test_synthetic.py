import hashlib
import itertools

import numpy as np
import pytest

from sst_fast.config import IGNORE_LABEL
from sst_fast.data.base import binary_mask
from sst_fast.data.splits import base_classes, fold_classes
from sst_fast.data.synthetic import (
    CLASS_RECIPES,
    GENERATOR_VERSION,
    PALETTES,
    SHAPES,
    TEXTURES,
    SyntheticDataset,
    default_min_pixels,
)

# Digests of two renders (image bytes, then label bytes) at seed 0, 128×128. They pin the generator
# across machines and numpy builds; a deliberate change to the renders must bump GENERATOR_VERSION
# and update them.
GOLDEN = {
    "train/000000": "9991252cbd9c1666c089f99b7fb18f2fe5a585bc5d705a7e1630b3300525adcb",
    "val/000003": "389bc0a9ef4d36591d3666e14a874d67c51e7b5a6cb22cbb6bb3368e41e95dee",
}


@pytest.fixture(scope="module")
def dataset():
    return SyntheticDataset(train_images=120, val_images=60)


@pytest.fixture(scope="module")
def samples(dataset):
    """Every image of the small data set, rendered once: {image_id: Sample}."""
    return {image_id: dataset.load(image_id) for split in dataset.splits for image_id in dataset.image_ids(split)}


def _near(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` (Chebyshev distance) of a True pixel of ``mask``."""
    padded = np.pad(mask, radius)
    height, width = mask.shape
    out = np.zeros_like(mask)
    for dy, dx in itertools.product(range(2 * radius + 1), repeat=2):
        out |= padded[dy : dy + height, dx : dx + width]
    return out


def _run_lengths(mask: np.ndarray) -> np.ndarray:
    """Lengths of the runs of True along the rows of ``mask``."""
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    return np.nonzero(edges == -1)[1] - np.nonzero(edges == 1)[1]


# -- determinism -------------------------------------------------------------------------------


def test_same_seed_renders_identical_arrays(dataset, samples):
    again = SyntheticDataset(train_images=120, val_images=60)
    for image_id in ("train/000000", "train/000119", "val/000042"):
        first, second, third = samples[image_id], dataset.load(image_id), again.load(image_id)
        for other in (second, third):
            np.testing.assert_array_equal(first.image, other.image)
            np.testing.assert_array_equal(first.label, other.label)
        np.testing.assert_array_equal(dataset.load_label(image_id), first.label)


def test_renders_do_not_depend_on_the_split_sizes(samples):
    larger = SyntheticDataset(train_images=500, val_images=500, min_pixels=0)
    np.testing.assert_array_equal(larger.load("val/000042").image, samples["val/000042"].image)


def test_renders_match_the_pinned_digests():
    dataset = SyntheticDataset(train_images=10, val_images=10)
    assert GENERATOR_VERSION == 1, "update GOLDEN together with GENERATOR_VERSION"
    for image_id, digest in GOLDEN.items():
        sample = dataset.load(image_id)
        assert hashlib.sha256(sample.image.tobytes() + sample.label.tobytes()).hexdigest() == digest, image_id


def test_seeds_and_splits_render_different_images(samples):
    other = SyntheticDataset(seed=1, train_images=120, val_images=60)
    for image_id in ("train/000000", "train/000001", "val/000000"):
        assert not np.array_equal(other.load(image_id).image, samples[image_id].image)
        assert not np.array_equal(other.load_label(image_id), samples[image_id].label)
    assert not np.array_equal(samples["train/000000"].image, samples["val/000000"].image)


def test_the_returned_arrays_are_fresh(dataset):
    sample = dataset.load("train/000003")
    sample.image[:] = 0
    sample.label[:] = 0
    assert dataset.load("train/000003").image.any() and dataset.load("train/000003").label.any()


# -- classes and folds -------------------------------------------------------------------------


def test_twenty_classes_in_four_folds_of_five(dataset):
    assert dataset.name == "synthetic" and dataset.splits == ("train", "val")
    assert dataset.num_classes == 20 and len(set(dataset.class_names)) == 20
    novel = []
    for fold in range(4):
        split = dataset.fold_split(fold)
        assert split.test_classes == tuple(fold_classes("synthetic", fold)) == tuple(range(5 * fold + 1, 5 * fold + 6))
        assert split.train_classes == tuple(base_classes("synthetic", fold))
        assert set(split.train_classes) | set(split.test_classes) == set(range(1, 21))
        assert (split.train_split, split.test_split) == ("train", "val")
        novel += split.test_classes
    assert sorted(novel) == list(range(1, 21))
    with pytest.raises(ValueError, match="fold"):
        dataset.fold_split(4)


def test_no_single_cue_identifies_a_class():
    cues = [(r.shape, r.texture, r.palette) for r in CLASS_RECIPES]
    assert len(set(cues)) == 20
    for first, second in itertools.combinations(cues, 2):
        assert sum(a != b for a, b in zip(first, second, strict=True)) >= 2, (first, second)
    for position, values in enumerate((SHAPES, TEXTURES, PALETTES)):
        shared = [sum(cue[position] == value for cue in cues) for value in range(len(values))]
        assert min(shared) >= 4, (position, shared)
    for fold in range(4):  # every fold's novel classes show all five shapes
        assert {cues[c - 1][0] for c in fold_classes("synthetic", fold)} == set(range(5))


# -- images and labels ---------------------------------------------------------------------------


def test_images_and_labels_follow_the_voc_convention(samples):
    allowed = set(range(21)) | {IGNORE_LABEL}
    for image_id, sample in samples.items():
        assert sample.image.shape == (128, 128, 3) and sample.image.dtype == np.uint8, image_id
        assert sample.label.shape == (128, 128) and sample.label.dtype == np.uint8, image_id
        values = set(np.unique(sample.label).tolist())
        assert values <= allowed, (image_id, values - allowed)
        assert len(values - {0, IGNORE_LABEL}) >= 2, (image_id, values)
        assert 0 in values and IGNORE_LABEL in values, image_id


def test_other_image_sizes():
    small = SyntheticDataset(image_size=96, train_images=5, val_images=5)
    assert small.min_pixels == default_min_pixels(96)
    sample = small.load("val/000004")
    assert sample.image.shape == (96, 96, 3) and sample.label.shape == (96, 96)
    assert len(set(np.unique(sample.label).tolist()) - {0, IGNORE_LABEL}) >= 2


def test_the_ignore_band_straddles_object_borders(samples):
    runs = []
    for image_id, sample in samples.items():
        label = sample.label
        labelled = label != IGNORE_LABEL
        # Every change of label between 4-neighbours crosses the band: no labelled pixels touch
        # a different label, so every object is outlined by 255 (except at the image border).
        across = (label[:, 1:] != label[:, :-1]) & labelled[:, 1:] & labelled[:, :-1]
        down = (label[1:] != label[:-1]) & labelled[1:] & labelled[:-1]
        assert not across.any() and not down.any(), image_id
        # The band is thin: every ignored pixel lies within 2 px of a labelled one.
        assert _near(labelled, 2)[~labelled].all(), image_id
        runs += [_run_lengths(~labelled), _run_lengths(~labelled.T)]
    # About 2 px wide: across the borders it crosses, a row or column mostly meets 2 ignored pixels.
    runs = np.concatenate(runs)
    assert np.median(runs) == 2 and np.mean(runs == 2) > 0.6


def test_load_label_and_class_pixels_agree_with_load(dataset, samples):
    for image_id in ("train/000010", "val/000011"):
        label = samples[image_id].label
        np.testing.assert_array_equal(dataset.load_label(image_id), label)
        counts = np.bincount(label.ravel(), minlength=256)
        expected = {c: int(counts[c]) for c in range(1, 21) if counts[c]}
        assert dataset.class_pixels(image_id) == expected


def test_binary_mask_of_a_present_class(samples):
    label = samples["val/000005"].label
    class_id = int(next(c for c in np.unique(label) if 0 < c < IGNORE_LABEL))
    mask = binary_mask(label, class_id)
    assert (mask == 1).any() and set(np.unique(mask).tolist()) <= {0, 1, IGNORE_LABEL}
    np.testing.assert_array_equal(mask == 1, label == class_id)
    np.testing.assert_array_equal(mask == IGNORE_LABEL, label == IGNORE_LABEL)


def test_background_clutter_is_desaturated_and_objects_are_not(samples):
    background, objects = [], []
    for sample in samples.values():
        image = sample.image.astype(np.int16)
        spread = image.max(axis=2) - image.min(axis=2)  # a cheap saturation: max - min channel
        background.append(spread[sample.label == 0])
        objects.append(spread[(sample.label > 0) & (sample.label < IGNORE_LABEL)])
    background, objects = np.concatenate(background), np.concatenate(objects)
    assert np.percentile(background, 99.9) < np.percentile(objects, 1)


# -- image ids and arguments --------------------------------------------------------------------


def test_image_ids(dataset):
    train = dataset.image_ids("train")
    assert len(train) == 120 and train[0] == "train/000000" and train[-1] == "train/000119"
    assert dataset.image_ids("val")[-1] == "val/000059"
    with pytest.raises(ValueError, match="split"):
        dataset.image_ids("test")


@pytest.mark.parametrize(
    "image_id",
    ["train/000120", "val/000060", "test/000000", "train/12", "train/0000001", "train/00001a", "train000001", "", 5],
)
def test_unknown_image_ids_are_named(dataset, image_id):
    with pytest.raises(ValueError, match="unknown image id " + repr(image_id)):
        dataset.load(image_id)
    with pytest.raises(ValueError, match="unknown image id"):
        dataset.load_label(image_id)


@pytest.mark.parametrize(
    "argument,value",
    [
        ("seed", -1),
        ("seed", 1.5),
        ("seed", True),
        ("image_size", 16),
        ("image_size", 4096),
        ("image_size", "128"),
        ("train_images", 0),
        ("val_images", 1_000_000),
        ("val_images", None),
        ("min_pixels", -1),
        ("min_pixels", 2.5),
    ],
)
def test_invalid_arguments_are_named(argument, value):
    with pytest.raises(ValueError, match=f"{argument} must be"):
        SyntheticDataset(**{argument: value})


def test_min_pixels_default_scales_pfenets_threshold():
    # 2*32*32 pixels of a ~500x375 VOC image is ~1.1% of it: 179 pixels of a 128x128 image.
    assert default_min_pixels(128) == 179 and default_min_pixels(256) == 716
    assert SyntheticDataset().min_pixels == 179
    assert SyntheticDataset(min_pixels=0).min_pixels == 0


def test_fingerprint_describe_and_cache(tmp_path):
    dataset = SyntheticDataset(seed=3, image_size=64, train_images=8, val_images=4)
    expected = {"generator": GENERATOR_VERSION, "seed": 3, "image_size": 64, "train_images": 8, "val_images": 4}
    assert dataset.fingerprint() == expected
    assert dataset.describe() == {"dataset": "synthetic", "min_pixels": default_min_pixels(64), **expected}
    assert dataset.cache_path("val") is None
    assert dataset.prepare().paths == {"train": None, "val": None}

    options = {"image_size": 64, "train_images": 8, "val_images": 4, "cache_dir": tmp_path}
    cached = SyntheticDataset(seed=3, **options)
    path = cached.cache_path("val")
    assert path.parent == tmp_path and path.name.startswith("synthetic-val-")
    assert cached.prepare().paths["val"] == path and path.exists()
    reread = SyntheticDataset(seed=3, **options).prepare()
    assert reread.paths["val"] == path and reread.counts == dataset.index.counts
    assert SyntheticDataset(seed=4, **options).cache_path("val") != path


def test_the_index_does_not_depend_on_the_worker_count():
    serial = SyntheticDataset(train_images=120, val_images=60).prepare(workers=1)
    parallel = SyntheticDataset(train_images=120, val_images=60).prepare(workers=4)
    assert serial.counts == parallel.counts


# -- the data set as a benchmark ------------------------------------------------------------------


def test_defaults_give_every_class_plenty_of_images_in_both_splits():
    dataset = SyntheticDataset()
    assert (dataset.train_images, dataset.val_images, dataset.image_size) == (2000, 500, 128)
    dataset.prepare(workers=1)  # label maps only: a few seconds at most
    for class_id in range(1, 21):
        train, val = dataset.class_images("train", class_id), dataset.class_images("val", class_id)
        assert len(train) >= 200 and len(val) >= 50, (class_id, len(train), len(val))
    # Objects are generated well above the small-object filter.
    counts = [n for images in dataset.index.counts.values() for classes in images.values() for n in classes.values()]
    assert np.mean(np.array(counts) >= dataset.min_pixels) > 0.99


def _object_features(dataset, samples, split):
    """Per object (class region of at least min_pixels) of ``split``: appearance and placement statistics."""
    appearance, placement, classes = [], [], []
    for image_id in dataset.image_ids(split):
        sample = samples[image_id]
        image = sample.image.astype(np.float64)
        for class_id in np.unique(sample.label):
            region = sample.label == class_id
            if class_id in (0, IGNORE_LABEL) or region.sum() < dataset.min_pixels:
                continue
            pixels = image[region]
            # Texture: mean absolute difference between horizontal / vertical neighbours inside the region.
            along = np.abs(image[:, 1:] - image[:, :-1])[region[:, 1:] & region[:, :-1]].mean(axis=0)
            down = np.abs(image[1:] - image[:-1])[region[1:] & region[:-1]].mean(axis=0)
            appearance.append(np.concatenate([pixels.mean(axis=0), pixels.std(axis=0), along, down]))
            rows, cols = np.nonzero(region)
            placement.append([rows.mean(), cols.mean(), region.sum()])
            classes.append(int(class_id))
    return np.array(appearance), np.array(placement), np.array(classes)


def _nearest_centroid_accuracy(train_x, train_y, test_x, test_y) -> float:
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-9
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    labels = np.unique(train_y)
    centroids = np.stack([train_x[train_y == c].mean(axis=0) for c in labels])
    predicted = labels[((test_x[:, None] - centroids[None]) ** 2).sum(axis=2).argmin(axis=1)]
    return float((predicted == test_y).mean())


def test_classes_are_told_apart_by_appearance_not_by_placement(dataset, samples):
    # A guard against degenerate classes, not a target: simple colour and texture statistics of the
    # object pixels, nearest class centroid from train objects, scored on val objects (chance: 1/20).
    train_appearance, train_placement, train_y = _object_features(dataset, samples, "train")
    val_appearance, val_placement, val_y = _object_features(dataset, samples, "val")
    assert set(train_y.tolist()) == set(range(1, 21)) and len(val_y) > 100
    assert _nearest_centroid_accuracy(train_appearance, train_y, val_appearance, val_y) > 0.4
    # Position and size are drawn alike for every class: they say (almost) nothing about it.
    assert _nearest_centroid_accuracy(train_placement, train_y, val_placement, val_y) < 0.15
