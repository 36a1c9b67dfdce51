"""FSS-1000 on a tiny data set in the real layout: class folders of <n>.jpg + <n>.png, and splits/*.txt.

Classes (sorted union of the split files -> ids): ab_wheel 1, apple 2, bee 3, cat 4, dog 5,
zebra_fish 6; train = ab_wheel, bee, zebra_fish; val = cat; test = apple, dog. Images are 16x16.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sst_fast.data.base import DataError, binary_mask
from sst_fast.data.fss import FSS1000

SIZE = 16
AB_WHEEL, APPLE, BEE, CAT, DOG, ZEBRA_FISH = 1, 2, 3, 4, 5, 6


def gray_mask(rows=slice(0, 0), cols=slice(0, SIZE), value=255):
    """A 0/``value`` grayscale mask image with the block ``rows x cols`` set."""
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[rows, cols] = value
    return Image.fromarray(mask, mode="L")


def write_image(root, name, number, mask, size=(SIZE, SIZE)):
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(number).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / f"{number}.jpg", "JPEG")
    mask.save(folder / f"{number}.png")


def write_splits(root, train=("zebra_fish", "ab_wheel", "", "bee"), val=("cat",), test=("dog", "apple")):
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for split, names in (("train", train), ("val", val), ("test", test)):
        (root / "splits" / f"{split}.txt").write_text("".join(f"{name}\n" for name in names))


@pytest.fixture
def fss_root(tmp_path):
    root = tmp_path / "fss"
    write_splits(root)
    write_image(root, "ab_wheel", 1, gray_mask(rows=slice(0, 8)))  # 128 pixels
    write_image(root, "ab_wheel", 2, gray_mask(rows=slice(0, 4), cols=slice(0, 4)))  # 16
    write_image(root, "ab_wheel", 10, gray_mask(rows=slice(8, 12)))  # 64
    white_on_black = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    white_on_black[:8, :8] = 255
    write_image(root, "apple", 1, Image.fromarray(white_on_black, mode="RGB"))  # 64
    near_threshold = np.zeros((SIZE, SIZE), dtype=np.uint8)
    near_threshold[:4] = 127  # background: not above 127
    near_threshold[4:8] = 128  # foreground: 64 pixels
    write_image(root, "apple", 2, Image.fromarray(near_threshold, mode="L"))
    write_image(root, "bee", 1, gray_mask(rows=slice(0, 2)).convert("1"))  # 32, a 1-bit PNG
    write_image(root, "bee", 2, gray_mask())  # empty
    palette = gray_mask(rows=slice(0, 16), cols=slice(0, 3)).convert("P")
    write_image(root, "cat", 1, palette)  # 48, a palette PNG
    write_image(root, "dog", 1, gray_mask(rows=slice(0, 16)))  # 256
    write_image(root, "dog", 2, gray_mask(rows=slice(0, 1)))  # 16
    write_image(root, "zebra_fish", 1, gray_mask(rows=slice(0, 5)))  # 80
    return root


def test_class_ids_follow_the_sorted_union_of_the_split_files(fss_root):
    dataset = FSS1000(fss_root)
    assert dataset.class_names == ("ab_wheel", "apple", "bee", "cat", "dog", "zebra_fish")
    assert dataset.num_classes == 6 and dataset.class_id("cat") == CAT and dataset.class_name(DOG) == "dog"
    assert dataset.split_classes("train") == (AB_WHEEL, BEE, ZEBRA_FISH)
    assert dataset.split_classes("val") == (CAT,)
    assert dataset.split_classes("test") == (APPLE, DOG)
    with pytest.raises(ValueError, match="not a class"):
        dataset.class_id("horse")


def test_image_ids_are_the_split_classes_images_sorted(fss_root):
    dataset = FSS1000(fss_root)
    assert dataset.image_ids("train") == ["ab_wheel/1", "ab_wheel/10", "ab_wheel/2", "bee/1", "bee/2", "zebra_fish/1"]
    assert dataset.image_ids("val") == ["cat/1"]
    assert dataset.image_ids("test") == ["apple/1", "apple/2", "dog/1", "dog/2"]


def test_labels_from_gray_rgb_1bit_and_palette_masks(fss_root):
    dataset = FSS1000(fss_root)
    label = dataset.load_label("ab_wheel/1")
    assert label.dtype == np.uint16 and label.shape == (SIZE, SIZE)
    assert (label[:8] == AB_WHEEL).all() and (label[8:] == 0).all()
    rgb = dataset.load_label("apple/1")
    assert (rgb[:8, :8] == APPLE).all() and np.count_nonzero(rgb) == 64
    threshold = dataset.load_label("apple/2")
    assert (threshold[:4] == 0).all() and (threshold[4:8] == APPLE).all() and (threshold[8:] == 0).all()
    assert np.count_nonzero(dataset.load_label("bee/1") == BEE) == 32
    assert np.count_nonzero(dataset.load_label("cat/1") == CAT) == 48


def test_class_pixels_and_filter_off_by_default(fss_root, tmp_path):
    dataset = FSS1000(fss_root, cache_dir=tmp_path / "cache")
    assert dataset.min_pixels == 0
    assert dataset.image_classes("train", "ab_wheel/2") == {AB_WHEEL: 16}
    assert dataset.image_classes("train", "bee/2") == {}
    assert dataset.class_images("train", AB_WHEEL) == ["ab_wheel/1", "ab_wheel/10", "ab_wheel/2"]
    assert dataset.class_images("train", BEE) == ["bee/1"]  # an empty mask never counts
    assert dataset.class_images("test", DOG) == ["dog/1", "dog/2"]
    filtered = FSS1000(fss_root, min_pixels=64, cache_dir=tmp_path / "cache")
    assert filtered.class_images("train", AB_WHEEL) == ["ab_wheel/1", "ab_wheel/10"]
    assert filtered.class_images("test", DOG) == ["dog/1"]


def test_load(fss_root):
    dataset = FSS1000(fss_root)
    sample = dataset.load("dog/2")
    assert sample.image.shape == (SIZE, SIZE, 3) and sample.image.dtype == np.uint8
    np.testing.assert_array_equal(sample.label, dataset.load_label("dog/2"))
    for bad in ("dog", "horse/1", "dog/3", "dog/02"):
        with pytest.raises(ValueError, match="image"):
            dataset.load(bad)


def test_load_checks_image_and_mask_sizes(fss_root):
    write_image(fss_root, "dog", 2, gray_mask(), size=(20, 16))
    with pytest.raises(DataError, match="20x16 pixels but its mask"):
        FSS1000(fss_root).load("dog/2")


def test_unreadable_files_name_their_path(fss_root):
    (fss_root / "dog" / "1.png").write_bytes(b"not a png")
    (fss_root / "dog" / "2.jpg").write_bytes(b"not a jpeg")
    dataset = FSS1000(fss_root)
    with pytest.raises(DataError, match="dog/1.png"):
        dataset.load_label("dog/1")
    with pytest.raises(DataError, match="dog/2.jpg"):
        dataset.load("dog/2")


def test_fold_split(fss_root):
    dataset = FSS1000(fss_root)
    test = dataset.fold_split("test")
    assert (test.train_classes, test.test_classes) == ((AB_WHEEL, BEE, ZEBRA_FISH), (APPLE, DOG))
    assert (test.train_split, test.test_split) == ("train", "test")
    assert dataset.fold_split() == test
    val = dataset.fold_split("val")
    assert (val.train_classes, val.test_classes, val.test_split) == ((AB_WHEEL, BEE, ZEBRA_FISH), (CAT,), "val")
    for fold in (0, "train", None):
        with pytest.raises(ValueError, match="fold"):
            dataset.fold_split(fold)


def test_describe_names_the_split_lists(fss_root, tmp_path):
    described = FSS1000(fss_root).describe()
    assert described == {"dataset": "fss", "min_pixels": 0, "splits": described["splits"]}
    assert len(described["splits"]) == 16
    # Other lists (val and test swap a class): another description, so manifests never mix them.
    write_splits(tmp_path / "lists", val=("dog",), test=("cat", "apple"))
    assert FSS1000(fss_root, split_dir=tmp_path / "lists" / "splits").describe()["splits"] != described["splits"]


def test_missing_root_names_the_layout(tmp_path):
    with pytest.raises(DataError, match="FSS-1000") as error:
        FSS1000(tmp_path / "nowhere")
    assert "splits/test.txt" in str(error.value) and "1.png" in str(error.value)


def test_split_lists_from_another_folder_for_a_read_only_data_mount(fss_root, tmp_path):
    lists = tmp_path / "lists"
    write_splits(lists, train=("ab_wheel", "bee", "cat"), val=("zebra_fish",), test=("dog", "apple"))
    dataset = FSS1000(fss_root, split_dir=lists / "splits")
    assert dataset.split_files["val"] == lists / "splits" / "val.txt"
    assert [dataset.class_names[c - 1] for c in dataset.split_classes("val")] == ["zebra_fish"]
    with pytest.raises(DataError, match="FSS-1000 split lists"):
        FSS1000(fss_root, split_dir=tmp_path / "nowhere")


def test_the_packaged_split_lists_are_hsnets_520_240_240(tmp_path):
    from sst_fast.data.fss import _read_split_file, packaged_split_dir

    folder = packaged_split_dir()
    lists = {split: _read_split_file(folder / f"{split}.txt") for split in ("train", "val", "test")}
    assert [len(lists[s]) for s in ("train", "val", "test")] == [520, 240, 240]
    assert len(set().union(*lists.values())) == 1000
    assert lists["test"][:3] == ("bus", "hotel_slipper", "burj_al")  # HSNet's test.txt, in its order
    # A data folder without splits/ takes them: its class folders are needed only when a split is used.
    (tmp_path / "bus").mkdir()
    dataset = FSS1000(tmp_path)
    assert dataset.split_dir == folder and dataset.num_classes == 1000


def test_missing_split_file(fss_root):
    (fss_root / "splits" / "val.txt").unlink()
    with pytest.raises(DataError, match="val.txt") as error:
        FSS1000(fss_root)
    assert "Expected layout" in str(error.value)


def test_hsnet_trn_txt_serves_as_the_train_list(fss_root):
    (fss_root / "splits" / "train.txt").rename(fss_root / "splits" / "trn.txt")
    dataset = FSS1000(fss_root)
    assert dataset.split_files["train"].name == "trn.txt"
    assert dataset.split_classes("train") == (AB_WHEEL, BEE, ZEBRA_FISH)


def test_class_in_two_splits(fss_root):
    write_splits(fss_root, test=("dog", "apple", "bee"))
    with pytest.raises(DataError, match="'bee' is listed in both .*train.txt and .*test.txt"):
        FSS1000(fss_root)


def test_class_listed_twice(fss_root):
    write_splits(fss_root, val=("cat", "cat"))
    with pytest.raises(DataError, match="val.txt, line 2: class 'cat' is listed twice"):
        FSS1000(fss_root)


def test_missing_class_folder(fss_root, tmp_path):
    for path in (fss_root / "cat").iterdir():
        path.unlink()
    (fss_root / "cat").rmdir()
    dataset = FSS1000(fss_root, cache_dir=tmp_path / "cache")
    assert dataset.image_ids("test") == ["apple/1", "apple/2", "dog/1", "dog/2"]
    with pytest.raises(DataError, match="class folder .*cat \\(listed in .*val.txt\\) is missing") as error:
        dataset.image_ids("val")
    assert "Expected layout" in str(error.value)
    with pytest.raises(DataError, match="cat"):
        dataset.prepare()


def test_image_without_mask(fss_root):
    (fss_root / "bee" / "2.png").unlink()
    with pytest.raises(DataError, match="bee/2.jpg has no mask .*bee/2.png"):
        FSS1000(fss_root).image_ids("train")


def test_fingerprint_follows_masks(fss_root, tmp_path):
    dataset = FSS1000(fss_root, cache_dir=tmp_path / "cache")
    before = dataset.fingerprint("test")
    assert before["root"] == str(fss_root.resolve())
    path = dataset.prepare().paths["test"]
    assert path is not None and path.is_file()
    write_image(fss_root, "dog", 2, gray_mask(rows=slice(0, 2)))
    assert dataset.fingerprint("test") != before
    assert FSS1000(fss_root, cache_dir=tmp_path / "cache").image_classes("test", "dog/2") == {DOG: 32}


@pytest.fixture
def many_classes(tmp_path):
    """300 training classes c000..c299 (ids 1..300), one val and one test class (ids 301, 302)."""
    root = tmp_path / "many"
    train = [f"c{i:03d}" for i in range(300)]
    write_splits(root, train=train, val=("v",), test=("w",))
    for name in [*train, "v", "w"]:
        write_image(root, name, 1, gray_mask(rows=slice(0, 1)))
    return root


def test_class_ids_beyond_uint8(many_classes, tmp_path):
    dataset = FSS1000(many_classes, cache_dir=tmp_path / "cache")
    assert dataset.num_classes == 302 and dataset.class_id("c299") == 300 and dataset.class_id("w") == 302
    label = dataset.load_label("c299/1")
    assert label.dtype == np.uint16 and set(np.unique(label).tolist()) == {0, 300}
    assert dataset.class_images("train", 255) == ["c254/1"]
    assert dataset.class_images("train", 300) == ["c299/1"]
    assert dataset.class_images("test", 302) == ["w/1"]
    assert (binary_mask(label, 300)[0] == 1).all()


def test_class_255_is_a_class_not_the_ignore_label(many_classes, tmp_path):
    dataset = FSS1000(many_classes, cache_dir=tmp_path / "cache")
    label = dataset.load_label("c254/1")
    assert dataset.ignore_label is None
    assert set(np.unique(dataset.episode_mask(label, 255)).tolist()) == {0, 1}
    assert dataset.image_classes("train", "c254/1") == {255: int((label == 255).sum())}


def test_every_layout_problem_of_a_split_is_in_one_error(fss_root):
    (fss_root / "bee" / "2.png").unlink()
    (fss_root / "ab_wheel" / "10.png").unlink()
    for path in (fss_root / "zebra_fish").iterdir():
        path.unlink()
    dataset = FSS1000(fss_root)
    with pytest.raises(DataError) as error:
        dataset.image_ids("train")
    message = str(error.value)
    assert message.splitlines()[0].startswith("FSS-1000: 3 problems in the class folders of split 'train'")
    assert "ab_wheel/10.jpg has no mask" in message and "bee/2.jpg has no mask" in message
    assert "zebra_fish (listed in" in message and "holds no .jpg image" in message
    assert "Expected layout" in message
    ids, problems = dataset.survey("train")
    assert ids == ["ab_wheel/1", "ab_wheel/2", "bee/1"]
    assert [item for item, _ in problems] == ["ab_wheel/10", "bee/2", "zebra_fish"]
    assert dataset.survey("test") == (["apple/1", "apple/2", "dog/1", "dog/2"], [])
