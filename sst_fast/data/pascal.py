"""PASCAL-5i from VOC2012 with the SBD-augmented labels, as users have it on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .base import (
    DEFAULT_MIN_PIXELS,
    DataError,
    FewShotDataset,
    Sample,
    file_stats,
    paired,
    read_image,
    read_label,
    require_paths,
)
from .splits import PASCAL_CLASSES, FoldSplit, base_classes, fold_classes

LAYOUT = """\
  JPEGImages/<id>.jpg                       VOC2012 images
  SegmentationClassAug/<id>.png             SBD-augmented labels (class ids 0..20, 255 = boundary)
  ImageSets/Segmentation/val.txt            the VOC2012 val list (1449 ids): the test images
  ImageSets/SegmentationAug/train_aug.txt   optional: the training ids (else every label minus val)
(root is VOCdevkit/VOC2012 with SegmentationClassAug unpacked into it, as for CANet/PFENet/HSNet;
data.options.train_list=FILE trains on another list of ids, e.g. PFENet's, from any folder)"""


class PascalVOC(FewShotDataset):
    """PASCAL-5i: VOC2012 ``JPEGImages`` + ``SegmentationClassAug``.

    Test images are the VOC2012 val list; training images are ``train_list`` when given (a file of image
    ids, one a line, or PFENet's ``JPEGImages/<id>.jpg SegmentationClassAug/<id>.png`` pairs), else
    ``train_aug.txt`` when present, else every augmented label; in every case minus the val images (so
    no test image is trained on). The training list's identity is part of :meth:`describe`.
    """

    name = "pascal"
    splits = ("train", "val")

    def __init__(self, root, *, min_pixels: int = DEFAULT_MIN_PIXELS, cache_dir=None, train_list=None):
        super().__init__(min_pixels=min_pixels, cache_dir=cache_dir)
        self.root = Path(root)
        self.images_dir = self.root / "JPEGImages"
        self.labels_dir = self.root / "SegmentationClassAug"
        self.val_list = self.root / "ImageSets" / "Segmentation" / "val.txt"
        self.train_list = self.root / "ImageSets" / "SegmentationAug" / "train_aug.txt"
        require_paths("PASCAL VOC", self.root, [self.images_dir, self.labels_dir, self.val_list], LAYOUT)
        if train_list is not None:
            self.train_list = Path(train_list).expanduser()
            if not self.train_list.is_file():
                raise DataError(f"train_list: {self.train_list} is not a file (a list of image ids, one a line)")
        self._ids: dict[str, list[str]] = {}

    @property
    def class_names(self) -> tuple[str, ...]:
        return PASCAL_CLASSES

    def describe(self) -> dict:
        """With the training list's identity (its name and a digest of its ids), so that runs, caches and
        manifests made with another training list never pass for this one's."""
        ids = self.image_ids("train")
        digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
        source = self.train_list.name if self.train_list.exists() else "all labels"
        return {**super().describe(), "train_list": f"{source} ({len(ids)} ids, {digest})"}

    def image_ids(self, split: str) -> list[str]:
        self.check_split(split)
        if not self._ids:
            val = _read_list(self.val_list)
            if self.train_list.exists():
                candidates = _read_list(self.train_list)
            else:
                candidates = sorted(path.stem for path in self.labels_dir.glob("*.png"))
            held_out = set(val)
            self._ids = {"train": [i for i in candidates if i not in held_out], "val": val}
        return self._ids[split]

    def load(self, image_id: str) -> Sample:
        path = self._path(self.images_dir, image_id, ".jpg")
        return paired(read_image(path), self.load_label(image_id), path, "its label")

    def load_label(self, image_id: str):
        return read_label(self._path(self.labels_dir, image_id, ".png"))

    def fold_split(self, fold) -> FoldSplit:
        return FoldSplit(tuple(base_classes("pascal", fold)), tuple(fold_classes("pascal", fold)), "train", "val")

    def fingerprint(self, split: str) -> dict:
        ids = self.image_ids(split)
        return {
            "root": str(self.root.resolve()),
            "images": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
            "labels": file_stats(self.labels_dir / f"{image_id}.png" for image_id in ids),
        }

    def _path(self, folder: Path, image_id: str, suffix: str) -> Path:
        path = folder / f"{image_id}{suffix}"
        if not path.exists():
            raise DataError(f"PASCAL VOC: {path} not found (image {image_id!r}).\nExpected layout:\n{LAYOUT}")
        return path


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text().split()
    except OSError as error:
        raise DataError(f"cannot read image list {path}: {error}") from error
    # PFENet-style lists hold "JPEGImages/<id>.jpg SegmentationClassAug/<id>.png" pairs; plain lists hold ids.
    ids = [Path(token).stem for token in lines if not token.startswith("SegmentationClass")]
    return list(dict.fromkeys(ids))
