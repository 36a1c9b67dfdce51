import pytest

from sst_fast.data import base_classes, fold_classes


@pytest.mark.parametrize("dataset", ["pascal", "synthetic"])
def test_pascal_like_folds(dataset):
    assert fold_classes(dataset, 0) == [1, 2, 3, 4, 5]
    assert fold_classes(dataset, 3) == [16, 17, 18, 19, 20]
    novel = [c for fold in range(4) for c in fold_classes(dataset, fold)]
    assert sorted(novel) == list(range(1, 21))
    assert base_classes(dataset, 1) == [1, 2, 3, 4, 5, *range(11, 21)]


def test_coco_interleaved_is_every_fourth_class():
    assert fold_classes("coco", 0) == [1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 45, 49, 53, 57, 61, 65, 69, 73, 77]
    assert fold_classes("coco", 3, style="interleaved")[:3] == [4, 8, 12]


def test_coco_contiguous_is_blocks_of_twenty():
    assert fold_classes("coco", 1, style="contiguous") == list(range(21, 41))


@pytest.mark.parametrize("style", ["interleaved", "contiguous"])
def test_coco_folds_partition_the_80_classes(style):
    novel = [c for fold in range(4) for c in fold_classes("coco", fold, style=style)]
    assert sorted(novel) == list(range(1, 81))
    assert len(base_classes("coco", 0, style)) == 60


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("pascal", 4), "fold must be an integer in 0..3"),
        (("pascal", -1), "fold"),
        (("pascal", "0"), "fold"),
        (("pascal", True), "fold"),
        (("voc", 0), "dataset must be one of"),
        (("fss", 0), "FSS-1000 has no folds"),
        (("coco", 0, "random"), "style must be one of"),
    ],
)
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        fold_classes(*args)
