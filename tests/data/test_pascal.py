import json
import os

import numpy as np
import pytest

from sst_fast.data import DataError, PascalVOC, binary_mask, fold_classes
from sst_fast.data import base as data_base
from tests.data.layouts import make_voc, voc_images


@pytest.fixture
def voc(tmp_path):
    images = voc_images(per_class=3)
    ids = sorted(images)
    val = ids[::3]  # one image of each class
    return make_voc(tmp_path / "VOC2012", images, val=val, train_aug=ids), images, val


def test_splits_follow_the_val_list_and_train_aug_minus_val(voc, tmp_path):
    root, images, val = voc
    dataset = PascalVOC(root, cache_dir=tmp_path / "cache")
    assert dataset.image_ids("val") == val
    assert dataset.image_ids("train") == [i for i in sorted(images) if i not in set(val)]


def test_without_train_aug_every_label_minus_val_is_training(tmp_path):
    images = voc_images(per_class=2)
    root = make_voc(tmp_path / "VOC2012", images, val=sorted(images)[:5])
    dataset = PascalVOC(root, cache_dir=tmp_path / "cache")
    assert dataset.image_ids("train") == sorted(images)[5:]


def test_another_training_list_from_outside_the_data_folder(voc, tmp_path):
    root, images, val = voc
    ids = sorted(images)
    chosen = [i for i in ids if i not in set(val)][::2]
    listing = tmp_path / "lists" / "pfenet_train.txt"
    listing.parent.mkdir()
    # PFENet's format: image and label paths, one pair a line; a val id in it is dropped (never trained on).
    listing.write_text("".join(f"JPEGImages/{i}.jpg SegmentationClassAug/{i}.png\n" for i in [*chosen, val[0]]))
    dataset = PascalVOC(root, cache_dir=tmp_path / "cache", train_list=listing)
    assert dataset.image_ids("train") == chosen and dataset.image_ids("val") == val
    default = PascalVOC(root, cache_dir=tmp_path / "cache")
    assert dataset.describe()["train_list"].startswith(f"pfenet_train.txt ({len(chosen)} ids, ")
    assert default.describe()["train_list"].startswith("train_aug.txt (")
    assert dataset.describe() != default.describe()
    with pytest.raises(DataError, match="train_list: .*nowhere.txt is not a file"):
        PascalVOC(root, train_list=tmp_path / "nowhere.txt")


@pytest.mark.parametrize("fold", range(4))
def test_class_images_per_fold_with_the_small_object_filter(voc, tmp_path, fold):
    root, images, val = voc
    dataset = PascalVOC(root, cache_dir=tmp_path / "cache")
    split = dataset.fold_split(fold)
    assert split.test_classes == tuple(range(5 * fold + 1, 5 * fold + 6))
    assert set(split.train_classes) | set(split.test_classes) == set(range(1, 21))
    for class_id in split.test_classes:
        # 2500 px of its own class pass the 2048 px filter; the 300 px second object does not.
        expected = [i for i in val if images[i].get(class_id) == 2500]
        assert dataset.class_images("val", class_id) == expected
        assert len(expected) == 1


def test_min_pixels_zero_counts_every_pixel(voc, tmp_path):
    root, images, val = voc
    dataset = PascalVOC(root, min_pixels=0, cache_dir=tmp_path / "cache")
    expected = [i for i in val if 3 in images[i]]  # class 3 itself and the small class 3 in class 2's images
    assert dataset.class_images("val", 3) == expected
    assert len(expected) == 2


def test_load_keeps_255_and_binary_mask_makes_other_classes_background(voc, tmp_path):
    root, images, val = voc
    dataset = PascalVOC(root, cache_dir=tmp_path / "cache")
    image_id = val[0]
    sample = dataset.load(image_id)
    assert sample.image.shape == (64, 96, 3) and sample.image.dtype == np.uint8
    assert dataset.image_classes("val", image_id) == images[image_id]
    assert (sample.label == 255).sum() == 16
    (main, small) = images[image_id]
    mask = binary_mask(sample.label, main)
    assert (mask == 1).sum() == 2500 and (mask == 255).sum() == 16 and (mask == 0).sum() == 64 * 96 - 2516
    assert (binary_mask(sample.label, small) == 1).sum() == 300


def test_pfenet_style_and_plain_lists_give_the_same_ids(tmp_path):
    images = voc_images(per_class=1)
    root = make_voc(tmp_path / "VOC2012", images, val=sorted(images)[:2], train_aug=sorted(images))
    plain = root / "ImageSets" / "SegmentationAug" / "train_aug.txt"
    two_column = PascalVOC(root, cache_dir=tmp_path / "c1").image_ids("train")
    plain.write_text("\n".join(sorted(images)) + "\n")
    assert PascalVOC(root, cache_dir=tmp_path / "c2").image_ids("train") == two_column


@pytest.mark.parametrize("missing", ["JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation/val.txt"])
def test_missing_data_names_the_expected_layout(voc, tmp_path, missing):
    root = voc[0]
    target = root / missing
    if target.is_dir():
        for child in target.iterdir():
            child.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(DataError, match="Expected layout") as error:
        PascalVOC(root)
    assert missing in str(error.value)


def test_a_root_that_does_not_exist_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="SegmentationClassAug"):
        PascalVOC(tmp_path / "nowhere")


def test_an_unreadable_image_is_reported_with_its_path(voc, tmp_path):
    root, _, val = voc
    broken = root / "JPEGImages" / f"{val[0]}.jpg"
    broken.write_bytes(b"not a jpeg")
    dataset = PascalVOC(root, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match=f"cannot read image .*{val[0]}.jpg"):
        dataset.load(val[0])


def test_prepare_reports_every_unreadable_label(voc, tmp_path):
    root, _, val = voc
    for image_id in val[:2]:
        (root / "SegmentationClassAug" / f"{image_id}.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="2 unreadable") as error:
        PascalVOC(root, cache_dir=tmp_path / "cache").prepare()
    assert all(image_id in str(error.value) for image_id in val[:2])


def test_a_colour_label_is_refused_not_misread(voc, tmp_path):
    from PIL import Image

    root, _, val = voc
    path = root / "SegmentationClassAug" / f"{val[0]}.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(DataError, match="mode RGB"):
        PascalVOC(root, cache_dir=tmp_path / "cache").load_label(val[0])


def test_a_missing_image_file_names_it(voc, tmp_path):
    root, _, val = voc
    (root / "JPEGImages" / f"{val[0]}.jpg").unlink()
    with pytest.raises(DataError, match=f"{val[0]}.jpg not found"):
        PascalVOC(root, cache_dir=tmp_path / "cache").load(val[0])


def test_prepare_caches_once_and_the_cache_is_reused(voc, tmp_path, monkeypatch):
    root = voc[0]
    cache = tmp_path / "cache"
    first = PascalVOC(root, cache_dir=cache)
    index = first.prepare()
    assert set(index.paths) == {"train", "val"} and all(path.parent == cache for path in index.paths.values())

    def no_reading(*_):
        raise AssertionError("the cached index must be used")

    monkeypatch.setattr(PascalVOC, "load_label", no_reading)
    second = PascalVOC(root, cache_dir=cache)
    assert second.class_images("val", 1) == first.class_images("val", 1)
    assert second.index.paths == {"val": index.paths["val"]}  # only the split asked for is read


def test_a_tampered_cache_is_rebuilt_with_a_warning(voc, tmp_path):
    root, _, _ = voc
    cache = tmp_path / "cache"
    path = PascalVOC(root, cache_dir=cache).prepare().paths["val"]
    payload = json.loads(path.read_text())
    image_id = next(iter(payload["counts"]))
    payload["counts"][image_id] = {"7": 99999}
    path.write_text(json.dumps(payload))
    dataset = PascalVOC(root, cache_dir=cache)
    with pytest.warns(UserWarning, match="corrupted"):
        dataset.prepare()
    assert "7" not in json.loads(path.read_text())["counts"][image_id]


def test_a_changed_label_file_gives_a_new_index(voc, tmp_path):
    root, _, val = voc
    cache = tmp_path / "cache"
    old = PascalVOC(root, cache_dir=cache).prepare().paths["val"]
    label = root / "SegmentationClassAug" / f"{val[0]}.png"
    stat = label.stat()
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert PascalVOC(root, cache_dir=cache).prepare().paths["val"] != old


def test_an_unwritable_cache_keeps_the_index_in_memory(voc, tmp_path, monkeypatch):
    root = voc[0]

    def refuse(*_):
        raise PermissionError("read-only")

    monkeypatch.setattr(data_base, "write_text_atomic", refuse)
    dataset = PascalVOC(root, cache_dir=tmp_path / "cache")
    with pytest.warns(UserWarning, match="cannot write index cache"):
        index = dataset.prepare()
    assert index.paths == {"train": None, "val": None} and dataset.class_images("val", 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"min_pixels": -1}, "min_pixels"), ({"min_pixels": 1.5}, "min_pixels"), ({"min_pixels": True}, "min_pixels")],
)
def test_bad_arguments_name_themselves(voc, kwargs, match):
    with pytest.raises(ValueError, match=match):
        PascalVOC(voc[0], **kwargs)


def test_bad_split_and_class(voc, tmp_path):
    dataset = PascalVOC(voc[0], cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="split must be one of"):
        dataset.class_images("test", 1)
    with pytest.raises(ValueError, match="class_id must be in 1..20"):
        dataset.class_images("val", 21)
    assert dataset.class_name(15) == "person" and fold_classes("pascal", 2) == [11, 12, 13, 14, 15]
