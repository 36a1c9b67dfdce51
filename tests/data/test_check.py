"""``sst-fast data check``: a data folder validated before a long run."""

import json

import pytest

from sst_fast.cli import main
from sst_fast.data import PascalVOC
from sst_fast.data.check import check_dataset
from tests.data.layouts import make_voc, voc_images


@pytest.fixture
def voc(tmp_path, monkeypatch):
    monkeypatch.setenv("SST_FAST_CACHE", str(tmp_path / "cache"))
    images = voc_images(per_class=4)
    ids = sorted(images)
    # Two test and two training images of each class: enough for 1-shot episodes on both sides.
    return make_voc(tmp_path / "VOC2012", images, val=[i for k, i in enumerate(ids) if k % 4 < 2], train_aug=ids)


def check(root, *extra):
    return main(["data", "check", "--config", "pascal", f"data.root={root}", *extra])


def test_a_good_folder_is_counted_per_fold(voc, capsys):
    assert check(voc) == 0
    out = capsys.readouterr().out
    dataset = PascalVOC(voc)
    total = len(dataset.image_ids("train")) + len(dataset.image_ids("val"))
    assert f"read every image and label: {total} of {total} readable" in out
    for fold in range(4):
        assert f"fold {fold}: train " in out
    assert "of 15 base classes" in out and "of 5 novel classes" in out
    assert out.rstrip().endswith("OK")
    report = check_dataset(PascalVOC(voc))
    for fold in report.folds:  # every class of the fixture has images on both sides
        split = dataset.fold_split(fold.fold)
        expected = {i for c in split.test_classes for i in dataset.class_images("val", c)}
        assert fold.test_images == len(expected)


def test_unreadable_files_are_listed_and_the_exit_status_says_so(voc, capsys):
    ids = sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg"))
    (voc / "JPEGImages" / f"{ids[0]}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (voc / "SegmentationClassAug" / f"{ids[1]}.png").unlink()
    assert check(voc) == 2
    out = capsys.readouterr().out
    assert f"unreadable {ids[0]}" in out and f"unreadable {ids[1]}" in out
    assert "PROBLEMS FOUND" in out and "folds not counted" in out


def test_a_class_too_thin_for_an_episode_is_flagged(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SST_FAST_CACHE", str(tmp_path / "cache"))
    images = voc_images(per_class=4)
    ids = sorted(images)
    val = [i for k, i in enumerate(ids) if k % 4 < 2]
    of_20 = [i for i in val if 20 in images[i]]
    root = make_voc(tmp_path / "VOC2012", images, val=[i for i in val if i != of_20[0]], train_aug=ids)
    assert check(root, "--no-read") == 2
    out = capsys.readouterr().out
    assert "images not read (--no-read)" in out
    fold3 = next(line for line in out.splitlines() if line.startswith("fold 3: "))
    flagged = fold3.split("test classes with fewer than 2 images: ")[1]
    assert set(json.loads(flagged)) <= set(images[of_20[0]])  # only classes of the image taken out of the test list


def test_a_missing_folder_is_one_error_naming_the_layout(tmp_path, capsys):
    assert check(tmp_path / "nope") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count(": error: ") == 1
    assert err.startswith("sst-fast data: error: PASCAL VOC data not found")


@pytest.mark.parametrize("read", [True, False], ids=["read", "no-read"])
def test_fss_lists_every_missing_mask_and_class_folder_in_one_pass(tmp_path, monkeypatch, capsys, read):
    from tests.data.test_fss import gray_mask, write_image, write_splits

    monkeypatch.setenv("SST_FAST_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "fss"
    write_splits(root, train=("ab_wheel", "bee"), val=("cat",), test=("dog", "emu"))
    for name in ("ab_wheel", "bee", "cat", "dog"):
        for number in (1, 2, 3):
            write_image(root, name, number, gray_mask(rows=slice(0, 4)))
    (root / "bee" / "2.png").unlink()  # a training image without its mask
    (root / "cat" / "3.png").unlink()  # a val one
    (root / "dog" / "1.png").unlink()  # a test one
    (root / "ab_wheel" / "1.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # and an unreadable image
    # emu (test) has no folder at all
    code = main(["data", "check", "--config", "fss", f"data.root={root}", *([] if read else ["--no-read"])])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err == ""
    out = captured.out
    for image in ("bee/2", "cat/3", "dog/1"):
        assert f"{image}.jpg has no mask" in out, out
    assert "class folder" in out and "emu (listed in" in out and "is missing" in out
    assert ("unreadable ab_wheel/1" in out) == read
    assert "PROBLEMS FOUND" in out and "folds not counted" in out
