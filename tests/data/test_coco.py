"""COCO-20i on a tiny data set in the real COCO 2014 layout, with exactly known pixel counts.

Category ids are COCO's own (1..90 with gaps), so class ids are ranks: category 1 (person) -> 1,
2 (bicycle) -> 2, 3 (car) -> 3, 13 (stop sign) -> 12, 28 (umbrella) -> 26, 48 (fork) -> 43,
90 (toothbrush) -> 80.

val2014 (COCO image id: content, pixel counts after painting):
    9   64x64  crowd toothbrush (uncompressed RLE, columns 0-39) under an umbrella polygon
               (columns 32-63): toothbrush 2048, umbrella 2048
    42  64x96  compressed RLEs: stop sign 2049, bicycle 2047, car 2048 (the whole image)
    77  64x64  no annotation
    139 64x64  person polygon (rows 0-47) with a toothbrush polygon lying on it (10x10, listed
               first in the file): person 2972, toothbrush 100
    500 64x64  fork made of two polygons: 2560
train2014:
    3   64x64  bicycle polygon over the whole image: 4096
    8   64x64  toothbrush (rows 0-31) and stop sign (rows 32-63): 2048 each
    25  64x64  person (rows 0-39): 2560, bicycle (rows 40-63): 1536
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import sst_fast.data.coco as coco_module
from sst_fast.data.base import DataError
from sst_fast.data.coco import COCO20i

# The 80 categories of COCO 2014 as the annotation files list them.
CATEGORIES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear",
    24: "zebra", 25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle",
    46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut",
    61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet",
    72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave",
    79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase",
    87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}  # fmt: skip
PERSON, BICYCLE, CAR, STOP_SIGN, UMBRELLA, FORK, TOOTHBRUSH = 1, 2, 3, 12, 26, 43, 80
# Image ids: split and the COCO image id in 12 digits, as in COCO's file names.
V9, V42, V77, V139, V500 = (f"val/{n:012d}" for n in (9, 42, 77, 139, 500))
T3, T8, T25 = (f"train/{n:012d}" for n in (3, 8, 25))
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.mask")  # numpy 2 copy keyword


def rectangle(x0, y0, x1, y1):
    """A polygon covering columns x0..x1-1 and rows y0..y1-1: (x1 - x0) * (y1 - y0) pixels."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def column_major_run(height, width, start, stop):
    """A mask of the pixels start..stop-1 in COCO's column-major order."""
    flat = np.zeros(height * width, dtype=np.uint8)
    flat[start:stop] = 1
    return np.asfortranarray(flat.reshape((height, width), order="F"))


def compressed_rle(mask):
    rle = mask_utils.encode(mask)
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def write_split(root, split, images, annotations):
    """Write the images as JPEGs and the annotation file, both in COCO's naming."""
    folder = root / f"{split}2014"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    entries = []
    for image_id, (height, width) in images.items():
        name = f"COCO_{split}2014_{image_id:012d}.jpg"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / name, "JPEG")
        entries.append({"id": image_id, "file_name": name, "height": height, "width": width})
    for number, annotation in enumerate(annotations, start=1):
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("area", 0.0)
        annotation.setdefault("bbox", [0.0, 0.0, 0.0, 0.0])
        annotation["id"] = {"train": 1000, "val": 2000}[split] + number
    # Categories in reverse, to check that class ids follow the sorted category ids, not file order.
    categories = [{"id": i, "name": n, "supercategory": "thing"} for i, n in reversed(CATEGORIES.items())]
    payload = {"info": {}, "licenses": [], "images": entries, "annotations": annotations, "categories": categories}
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(payload))


@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "coco"
    val = [
        {"image_id": 9, "category_id": 90, "iscrowd": 1, "segmentation": {"size": [64, 64], "counts": [0, 2560, 1536]}},
        {"image_id": 9, "category_id": 28, "segmentation": [rectangle(32, 0, 64, 64)]},
        {"image_id": 42, "category_id": 13, "segmentation": compressed_rle(column_major_run(64, 96, 0, 2049))},
        {"image_id": 42, "category_id": 2, "segmentation": compressed_rle(column_major_run(64, 96, 2049, 4096))},
        {"image_id": 42, "category_id": 3, "segmentation": compressed_rle(column_major_run(64, 96, 4096, 6144))},
        {"image_id": 139, "category_id": 90, "segmentation": [rectangle(20, 20, 30, 30)]},
        {"image_id": 139, "category_id": 1, "segmentation": [rectangle(0, 0, 64, 48)]},
        {"image_id": 500, "category_id": 48, "segmentation": [rectangle(0, 0, 32, 40), rectangle(32, 0, 64, 40)]},
    ]
    write_split(root, "val", {9: (64, 64), 42: (64, 96), 77: (64, 64), 139: (64, 64), 500: (64, 64)}, val)
    train = [
        {"image_id": 3, "category_id": 2, "segmentation": [rectangle(0, 0, 64, 64)]},
        {"image_id": 8, "category_id": 90, "segmentation": [rectangle(0, 0, 64, 32)]},
        {"image_id": 8, "category_id": 13, "segmentation": [rectangle(0, 32, 64, 64)]},
        {"image_id": 25, "category_id": 1, "segmentation": [rectangle(0, 0, 64, 40)]},
        {"image_id": 25, "category_id": 2, "segmentation": [rectangle(0, 40, 64, 64)]},
    ]
    write_split(root, "train", {3: (64, 64), 8: (64, 64), 25: (64, 64)}, train)
    return root


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


def test_class_ids_are_ranks_of_the_sorted_category_ids(coco_root):
    dataset = COCO20i(coco_root)
    assert dataset.num_classes == 80 and len(dataset.class_names) == 80
    assert dataset.class_names == tuple(CATEGORIES[c] for c in sorted(CATEGORIES))
    names = {PERSON: "person", BICYCLE: "bicycle", CAR: "car", STOP_SIGN: "stop sign", UMBRELLA: "umbrella"}
    names |= {FORK: "fork", TOOTHBRUSH: "toothbrush"}
    for class_id, name in names.items():
        assert dataset.class_name(class_id) == name


def test_image_ids_list_every_image_in_numeric_order(coco_root):
    dataset = COCO20i(coco_root)
    assert dataset.image_ids("val") == [V9, V42, V77, V139, V500]
    assert dataset.image_ids("train") == [T3, T8, T25]
    with pytest.raises(ValueError, match="split"):
        dataset.image_ids("test")


def test_pycocotools_prints_nothing(coco_root, capsys):
    COCO20i(coco_root).image_ids("train")
    assert capsys.readouterr().out == ""


def test_only_reading_coco_needs_pycocotools(coco_root):
    """``import sst_fast`` (its CLI, its other data sets) works on a machine without pycocotools; reading COCO
    there fails with a DataError that names the package, not a ModuleNotFoundError from deep inside."""
    script = f"""
import sys
sys.modules.update(dict.fromkeys(("pycocotools", "pycocotools.coco", "pycocotools.mask")))  # None: not importable
import sst_fast, sst_fast.cli, sst_fast.data
from sst_fast.data import COCO20i, DataError
assert len(sst_fast.data.open_dataset("synthetic").image_ids("train")) > 0
try:
    COCO20i({str(coco_root)!r}).image_ids("val")
except DataError as error:
    print(error)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "COCO-20i needs pycocotools" in result.stdout and "pip install pycocotools" in result.stdout


def test_label_paints_small_objects_over_large_ones(coco_root):
    label = COCO20i(coco_root).load_label(V139)
    assert label.dtype == np.uint8 and label.shape == (64, 64)
    assert label[25, 25] == TOOTHBRUSH and label[5, 5] == PERSON and label[60, 5] == 0
    values, counts = np.unique(label, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist(), strict=True)) == {0: 1024, PERSON: 2972, TOOTHBRUSH: 100}


def test_crowd_regions_are_their_class(coco_root):
    label = COCO20i(coco_root).load_label(V9)
    assert (label[:, :32] == TOOTHBRUSH).all() and (label[:, 32:] == UMBRELLA).all()


def test_rle_and_multi_polygon_annotations(coco_root):
    dataset = COCO20i(coco_root)
    assert dataset.class_pixels(V42) == {STOP_SIGN: 2049, BICYCLE: 2047, CAR: 2048}
    assert dataset.class_pixels(V500) == {FORK: 2560}
    assert dataset.class_pixels(V77) == {}
    label = dataset.load_label(V42)
    assert label.shape == (64, 96) and label[0, 0] == STOP_SIGN and label[-1, -1] == CAR


def test_small_object_filter(coco_root, cache_dir):
    filtered = COCO20i(coco_root, cache_dir=cache_dir)
    assert filtered.class_images("val", STOP_SIGN) == [V42]  # 2049 pixels
    assert filtered.class_images("val", CAR) == [V42]  # 2048 = 2 * 32 * 32: kept
    assert filtered.class_images("val", BICYCLE) == []  # 2047
    assert filtered.class_images("val", TOOTHBRUSH) == [V9]  # the 100-pixel one in val/139 is dropped
    unfiltered = COCO20i(coco_root, min_pixels=0, cache_dir=cache_dir)
    assert unfiltered.class_images("val", BICYCLE) == [V42]
    assert unfiltered.class_images("val", TOOTHBRUSH) == [V9, V139]
    assert unfiltered.image_classes("val", V139) == {PERSON: 2972, TOOTHBRUSH: 100}


def test_class_lists_keep_their_order_through_the_cache(coco_root, cache_dir):
    fresh = COCO20i(coco_root, min_pixels=0, cache_dir=cache_dir)
    lists = [fresh.class_images("val", c) for c in range(1, 81)]
    assert fresh.index.paths["val"] is not None and lists[TOOTHBRUSH - 1] == [V9, V139]
    cached = COCO20i(coco_root, min_pixels=0, cache_dir=cache_dir)
    assert cached.prepare(["val"]).paths["val"] == fresh.index.paths["val"]
    assert [cached.class_images("val", c) for c in range(1, 81)] == lists


def fold_images(dataset, fold):
    """{class: images} over the classes of each side of ``fold`` that have images."""
    split = dataset.fold_split(fold)
    sides = {}
    for side, classes, image_split in (
        ("test", split.test_classes, split.test_split),
        ("train", split.train_classes, split.train_split),
    ):
        found = {c: dataset.class_images(image_split, c) for c in classes}
        sides[side] = {c: images for c, images in found.items() if images}
    return sides


# Training-side images of every class present in train2014 (default filter: train/25's bicycle is too small).
TRAIN_IMAGES = {PERSON: [T25], BICYCLE: [T3], STOP_SIGN: [T8], TOOTHBRUSH: [T8]}


def train_except(*novel):
    return {c: images for c, images in TRAIN_IMAGES.items() if c not in novel}


@pytest.mark.parametrize(
    ("style", "fold", "test", "train"),
    [
        ("interleaved", 0, {PERSON: [V139]}, train_except(PERSON)),
        ("interleaved", 1, {UMBRELLA: [V9]}, train_except(BICYCLE)),
        ("interleaved", 2, {CAR: [V42], FORK: [V500]}, TRAIN_IMAGES),
        ("interleaved", 3, {STOP_SIGN: [V42], TOOTHBRUSH: [V9]}, train_except(STOP_SIGN, TOOTHBRUSH)),
        ("contiguous", 0, {PERSON: [V139], CAR: [V42], STOP_SIGN: [V42]}, train_except(PERSON, BICYCLE, STOP_SIGN)),
        ("contiguous", 1, {UMBRELLA: [V9]}, TRAIN_IMAGES),
        ("contiguous", 2, {FORK: [V500]}, TRAIN_IMAGES),
        ("contiguous", 3, {TOOTHBRUSH: [V9]}, train_except(TOOTHBRUSH)),
    ],
)
def test_fold_images(coco_root, cache_dir, style, fold, test, train):
    dataset = COCO20i(coco_root, style=style, cache_dir=cache_dir)
    assert fold_images(dataset, fold) == {"test": test, "train": train}


def test_fold_split(coco_root):
    interleaved = COCO20i(coco_root).fold_split(1)
    assert interleaved.test_classes == tuple(range(2, 81, 4))
    assert set(interleaved.train_classes) == set(range(1, 81)) - set(interleaved.test_classes)
    assert (interleaved.train_split, interleaved.test_split) == ("train", "val")
    contiguous = COCO20i(coco_root, style="contiguous").fold_split(3)
    assert contiguous.test_classes == tuple(range(61, 81)) and contiguous.train_classes == tuple(range(1, 61))
    with pytest.raises(ValueError, match="fold"):
        COCO20i(coco_root).fold_split(4)


def test_style_and_describe(coco_root):
    with pytest.raises(ValueError, match="style"):
        COCO20i(coco_root, style="panet")
    card = COCO20i(coco_root, style="contiguous", min_pixels=0).describe()
    assert card == {"dataset": "coco", "min_pixels": 0, "style": "contiguous"}


def test_load_reads_image_and_label(coco_root):
    dataset = COCO20i(coco_root)
    sample = dataset.load(V42)
    assert sample.image.shape == (64, 96, 3) and sample.image.dtype == np.uint8
    np.testing.assert_array_equal(sample.label, dataset.load_label(V42))
    for bad in ("42", "val/42", "test/000000000042", "val/x", 42):
        with pytest.raises(ValueError, match="image_id must be"):
            dataset.load(bad)
    with pytest.raises(ValueError, match="no image 43 in .*instances_val2014.json"):
        dataset.load("val/000000000043")


def test_corrupt_jpeg_fails_on_load_not_on_prepare(coco_root, cache_dir):
    path = coco_root / "val2014" / "COCO_val2014_000000000042.jpg"
    path.write_bytes(b"\xff\xd8 this is not a JPEG")
    dataset = COCO20i(coco_root, cache_dir=cache_dir)
    dataset.prepare()  # the index comes from the annotations alone
    assert dataset.class_images("val", STOP_SIGN) == [V42]
    with pytest.raises(DataError, match="COCO_val2014_000000000042.jpg"):
        dataset.load(V42)


def test_image_size_must_match_annotations(coco_root):
    Image.new("RGB", (32, 32)).save(coco_root / "val2014" / "COCO_val2014_000000000077.jpg", "JPEG")
    with pytest.raises(DataError, match="32x32 pixels"):
        COCO20i(coco_root).load(V77)


def test_missing_root_fails_at_construction_with_the_layout(tmp_path):
    with pytest.raises(DataError, match="cocodataset.org") as error:
        COCO20i(tmp_path / "nowhere")
    assert "instances_train2014.json" in str(error.value) and "val2014/" in str(error.value)


def test_missing_annotation_file_fails_when_its_split_is_needed(coco_root, cache_dir):
    (coco_root / "annotations" / "instances_train2014.json").unlink()
    dataset = COCO20i(coco_root, cache_dir=cache_dir)
    assert dataset.image_ids("val")[0] == V9
    with pytest.raises(DataError, match="instances_train2014.json") as error:
        dataset.image_ids("train")
    assert "Expected layout" in str(error.value)
    with pytest.raises(DataError, match="instances_train2014.json"):
        dataset.prepare()


def test_missing_image_folder_fails_on_load(coco_root):
    for path in (coco_root / "val2014").iterdir():
        path.unlink()
    (coco_root / "val2014").rmdir()
    dataset = COCO20i(coco_root)
    assert dataset.load_label(V9).shape == (64, 64)
    with pytest.raises(DataError, match="val2014") as error:
        dataset.load(V9)
    assert "Expected layout" in str(error.value)


def test_annotation_files_must_hold_the_80_categories(coco_root):
    path = coco_root / "annotations" / "instances_val2014.json"
    payload = json.loads(path.read_text())
    payload["categories"] = payload["categories"][1:]
    path.write_text(json.dumps(payload))
    with pytest.raises(DataError, match="79 categories"):
        COCO20i(coco_root).image_ids("val")
    path.write_text("{not json")
    with pytest.raises(DataError, match="instances_val2014.json"):
        COCO20i(coco_root).image_ids("val")


def test_prepare_caches_and_a_second_instance_reads_no_annotation(coco_root, cache_dir, monkeypatch):
    index = COCO20i(coco_root, cache_dir=cache_dir).prepare()
    assert all(path.parent == cache_dir and path.is_file() for path in index.paths.values())

    def refuse(path):
        raise AssertionError(f"read {path} although the index is cached")

    monkeypatch.setattr(coco_module, "_build_api", refuse)
    second = COCO20i(coco_root, cache_dir=cache_dir)
    assert second.prepare().paths == index.paths
    assert second.class_images("val", TOOTHBRUSH) == [V9]
    assert second.image_classes("val", V139) == {PERSON: 2972, TOOTHBRUSH: 100}
    assert second.image_classes("train", T3) == {BICYCLE: 4096}


def test_tampered_cache_is_rebuilt_with_a_warning(coco_root, cache_dir):
    path = COCO20i(coco_root, cache_dir=cache_dir).prepare().paths["val"]
    text = path.read_text()
    assert text.count("2972") == 1
    path.write_text(text.replace("2972", "9999"))
    with pytest.warns(UserWarning, match="corrupted"):
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")  # see pytestmark
        rebuilt = COCO20i(coco_root, cache_dir=cache_dir).prepare()
    assert rebuilt.image_classes("val", V139) == {PERSON: 2972, TOOTHBRUSH: 100}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert COCO20i(coco_root, cache_dir=cache_dir).prepare().paths["val"] == path


def test_fingerprint_follows_the_annotation_files(coco_root):
    dataset = COCO20i(coco_root)
    before = dataset.fingerprint("val")
    assert before["root"] == str(coco_root.resolve())
    path = coco_root / "annotations" / "instances_val2014.json"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert dataset.fingerprint("val") != before


def test_degenerate_polygons_are_dropped_not_misread(tmp_path):
    root = tmp_path / "coco"
    val = [
        # 2 and 4 coordinates: no area (pycocotools would fail on the first and read the second as a box).
        {"image_id": 1, "category_id": 1, "segmentation": [[3, 4]]},
        {"image_id": 1, "category_id": 2, "segmentation": [[0, 0, 60, 60]]},
        # One degenerate ring beside a real one: the real one is kept.
        {"image_id": 1, "category_id": 3, "segmentation": [[1, 1, 2, 2], rectangle(0, 0, 8, 8)]},
    ]
    write_split(root, "val", {1: (64, 64)}, val)
    write_split(root, "train", {2: (64, 64)}, [])
    assert COCO20i(root, min_pixels=0, cache_dir=tmp_path / "cache").class_pixels("val/000000000001") == {CAR: 64}


def test_an_unreadable_segmentation_names_the_annotation(tmp_path):
    root = tmp_path / "coco"
    write_split(root, "val", {1: (64, 64)}, [{"image_id": 1, "category_id": 1, "segmentation": {"counts": [1]}}])
    write_split(root, "train", {2: (64, 64)}, [])
    with pytest.raises(DataError, match="annotation 2001"):
        COCO20i(root, cache_dir=tmp_path / "cache").load_label("val/000000000001")


def test_evaluating_on_val_needs_no_training_annotations(coco_root, cache_dir):
    (coco_root / "annotations" / "instances_train2014.json").unlink()
    dataset = COCO20i(coco_root, cache_dir=cache_dir)
    assert set(dataset.prepare(["val"]).counts) == {"val"}
    assert dataset.class_images("val", STOP_SIGN) == [V42]
    with pytest.raises(DataError, match="instances_train2014.json"):
        dataset.class_images("train", BICYCLE)


def test_a_pickled_copy_loads_like_the_original(coco_root, cache_dir):
    dataset = COCO20i(coco_root, cache_dir=cache_dir)
    expected = dataset.load(V42)
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._apis == {}  # annotation indexes are re-read in the copy, never pickled
    sample = copy.load(V42)
    assert np.array_equal(sample.label, expected.label) and np.array_equal(sample.image, expected.image)
