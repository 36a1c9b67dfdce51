"""Small data sets with known answers: a VOC layout on disk and an in-memory data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sst_fast.data.base import FewShotDataset, Sample
from sst_fast.data.splits import FoldSplit, base_classes, fold_classes


def label_map(classes: dict[int, int], size=(64, 96), ignore: int = 0) -> np.ndarray:
    """A label map with exactly ``pixels`` pixels of each ``class: pixels`` (runs in raster order),
    followed by ``ignore`` pixels of 255, the rest background."""
    label = np.zeros(size[0] * size[1], dtype=np.uint8)
    start = 0
    for class_id, pixels in [*classes.items(), (255, ignore)]:
        label[start : start + pixels] = class_id
        start += pixels
    assert start <= label.size, "more labelled pixels than the image holds"
    return label.reshape(size)


def make_voc(
    root: Path,
    images: dict[str, dict[int, int]],
    val: list[str],
    train_aug: list[str] | None = None,
    size=(64, 96),
    ignore: int = 16,
    seed: int = 0,
) -> Path:
    """Write a VOC2012 + SegmentationClassAug layout: JPEG images, palette label PNGs, the val list
    and (optionally) ``ImageSets/SegmentationAug/train_aug.txt`` in PFENet's two-column form."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    palette = rng.integers(0, 256, 768).astype(np.uint8).tolist()
    for image_id, classes in images.items():
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg", quality=90)
        label = Image.fromarray(label_map(classes, size, ignore), mode="P")
        label.putpalette(palette)
        label.save(root / "SegmentationClassAug" / f"{image_id}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(val) + "\n")
    if train_aug is not None:
        (root / "ImageSets" / "SegmentationAug").mkdir(parents=True)
        lines = [f"JPEGImages/{i}.jpg SegmentationClassAug/{i}.png" for i in train_aug]
        (root / "ImageSets" / "SegmentationAug" / "train_aug.txt").write_text("\n".join(lines) + "\n")
    return root


def voc_images(per_class: int = 4, size=(64, 96)) -> dict[str, dict[int, int]]:
    """``per_class`` images of each VOC class holding it with 2500 px, plus a second class (c % 20 + 1)
    with 300 px, under the small-object threshold."""
    images = {}
    for class_id in range(1, 21):
        for n in range(per_class):
            images[f"2008_{class_id:02d}{n:04d}"] = {class_id: 2500, class_id % 20 + 1: 300}
    return images


class ArrayDataset(FewShotDataset):
    """An in-memory data set: ``splits`` maps split -> {image_id: (image [H,W,3] uint8, label [H,W] uint8)}."""

    name = "arrays"
    splits = ("train", "val")

    def __init__(
        self, data: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], num_classes: int = 20, min_pixels: int = 0
    ):
        super().__init__(min_pixels=min_pixels)
        self.data = data
        self._names = tuple(f"class{c}" for c in range(1, num_classes + 1))
        self._where = {image_id: split for split, items in data.items() for image_id in items}

    @property
    def class_names(self):
        return self._names

    def image_ids(self, split):
        return sorted(self.data[self.check_split(split)])

    def load(self, image_id):
        image, label = self.data[self._where[image_id]][image_id]
        return Sample(image, label)

    def fold_split(self, fold):
        return FoldSplit(tuple(base_classes("pascal", fold)), tuple(fold_classes("pascal", fold)), "train", "val")

    def fingerprint(self, split):
        return {"images": sorted(self.data[split])}

    def cache_path(self, split):
        return None


def random_arrays(per_class: int = 3, size=(24, 32), seed: int = 0) -> dict:
    """Random images, each with one class on a random rectangle plus a 255 border row, for every class and split."""
    rng = np.random.default_rng(seed)
    data = {"train": {}, "val": {}}
    for split in data:
        for class_id in range(1, 21):
            for n in range(per_class):
                image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                label = np.zeros(size, dtype=np.uint8)
                top, left = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
                label[top : top + size[0] // 2, left : left + size[1] // 2] = class_id
                label[-1] = 255
                data[split][f"{split}/{class_id:02d}-{n}"] = (image, label)
    return data
