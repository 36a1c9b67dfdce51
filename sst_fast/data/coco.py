"""COCO-20i: the 80 COCO 2014 categories in four folds of 20 (docs/design.md §4), read as users have COCO.

The data are the COCO 2014 images and instance annotations exactly as cocodataset.org distributes
them (see :data:`LAYOUT`); masks are rendered from the annotations with pycocotools. Conventions:

- **Class ids** 1..80 are the ranks of COCO's category ids in sorted order (COCO numbers its
  categories 1..90 with gaps): category 1 (person) is class 1, category 90 (toothbrush) class 80.
- **Image ids** are ``"<split>/<COCO image id, 12 digits>"``, e.g. ``"val/000000000042"`` for
  ``val2014/COCO_val2014_000000000042.jpg``: the COCO image id is unique only within one annotation
  file, the split prefix makes the string unique across both, and the zero padding of COCO's file
  names makes the ids sort as strings in numeric order.
- **Label maps** paint every annotation of the image with its class id, crowd annotations
  (``iscrowd=1``) included: a crowd region is made of objects of its class, so its pixels are that
  class, not background. Annotations are painted from the largest to the smallest, so that a small
  object lying on a large one stays visible. COCO has no ignore band: labels hold 0 and class ids.
- **Splits** are ``"train"`` (train2014) and ``"val"`` (val2014); a fold trains on its base classes
  in train2014 and tests on its novel classes in val2014, in either fold style of :data:`COCO_STYLES`.

Each annotation file is read only when a split first needs it (the train file is about 450 MB) and
then kept; the per-image class index built by :meth:`~FewShotDataset.prepare` comes from the
annotations alone, without decoding a single JPEG, and once cached needs no annotation file read.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .base import DEFAULT_MIN_PIXELS, DataError, FewShotDataset, Sample, file_stats, paired, read_image, require_paths
from .splits import COCO_STYLES, FoldSplit, base_classes, fold_classes

if TYPE_CHECKING:
    from pycocotools.coco import COCO

NUM_CLASSES = 80

LAYOUT = """\
  <root>/
    train2014/COCO_train2014_000000000009.jpg ...   the 82,783 training images
    val2014/COCO_val2014_000000000042.jpg ...       the 40,504 validation images
    annotations/instances_train2014.json
    annotations/instances_val2014.json
Download "2014 Train images", "2014 Val images" and "2014 Train/Val annotations" from
https://cocodataset.org/#download and unzip all three into <root> as they are."""


class COCO20i(FewShotDataset):
    """COCO-20i over the COCO 2014 images and instance annotations.

    Args:
        root: the folder holding ``train2014/``, ``val2014/`` and ``annotations/`` (:data:`LAYOUT`).
        style: fold definition, ``"interleaved"`` (FWB/PFENet/HSNet: fold i tests classes
            ``4k + i + 1``) or ``"contiguous"`` (PANet: fold i tests classes ``20i+1 .. 20i+20``).
        min_pixels: a class counts as present in an image only with at least this many pixels
            (PFENet's ``2 * 32 * 32`` by default; 0 turns the filter off).
        cache_dir: where :meth:`prepare` caches the class index (default: :func:`default_cache_dir`).

    A ``root`` that does not exist fails at once; a missing annotation file or image folder fails
    when a split first needs it. Every such error is a :class:`DataError` naming the expected layout.
    """

    name = "coco"
    splits = ("train", "val")

    def __init__(self, root, style: str = "interleaved", min_pixels: int = DEFAULT_MIN_PIXELS, cache_dir=None):
        super().__init__(min_pixels=min_pixels, cache_dir=cache_dir)
        if style not in COCO_STYLES:
            raise ValueError(f"style must be one of {COCO_STYLES}, got {style!r}")
        self.root = Path(root).expanduser()
        self.style = style
        require_paths("COCO", self.root, [self.root], LAYOUT)
        self._apis: dict[str, COCO] = {}
        self._image_ids: dict[str, list[str]] = {}
        self._categories: tuple[tuple[int, str], ...] | None = None  # (COCO category id, name), sorted by id
        self._class_of_category: dict[int, int] = {}
        self._lock = threading.Lock()

    # -- files -----------------------------------------------------------------------------------
    def annotation_path(self, split: str) -> Path:
        """``root/annotations/instances_<split>2014.json``."""
        return self.root / "annotations" / f"instances_{self.check_split(split)}2014.json"

    def image_dir(self, split: str) -> Path:
        """``root/<split>2014``."""
        return self.root / f"{self.check_split(split)}2014"

    # -- FewShotDataset ----------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """80: COCO-20i's folds are defined over the 80 categories (checked when annotations are read).

        Fixed rather than counted, so that class lists served from a cached index need no
        annotation file.
        """
        return NUM_CLASSES

    @property
    def class_names(self) -> tuple[str, ...]:
        """Category names of classes 1..80, from the annotation file read first (val if none yet)."""
        if self._categories is None:
            split = "val" if self.annotation_path("val").exists() else "train"
            self._api(split)
        return tuple(name for _, name in self._categories)

    def image_ids(self, split: str) -> list[str]:
        """Every image of the split's annotation file, in ascending COCO image id (= string order).

        Images without annotations are included: their label maps are all background.
        """
        self._api(split)
        return list(self._image_ids[split])

    def load(self, image_id: str) -> Sample:
        """The JPEG (its size checked against the annotation file) and the label map of :meth:`load_label`."""
        split, coco_id = self._locate(image_id)
        label = self.load_label(image_id)
        directory = self.image_dir(split)
        require_paths("COCO", self.root, [directory], LAYOUT)
        path = directory / self._apis[split].imgs[coco_id]["file_name"]
        return paired(read_image(path), label, path, f"its label from {self.annotation_path(split)}")

    def load_label(self, image_id: str) -> np.ndarray:
        """The label map rendered from the annotations alone (the JPEG is never opened).

        Every annotation, crowd or not, is painted with its class id, largest first, so that
        smaller objects overwrite the larger ones they lie on (ties: ascending annotation id).
        """
        split, coco_id = self._locate(image_id)
        api = self._apis[split]
        info = api.imgs[coco_id]
        label = np.zeros((info["height"], info["width"]), dtype=np.uint8)
        mask_utils = _pycocotools().mask
        regions = []
        for annotation in api.imgToAnns.get(coco_id, ()):  # .get: never insert into the shared defaultdict
            rle = self._annotation_rle(api, split, annotation)
            if rle is not None:
                class_id = self._class_of(split, annotation)
                regions.append((-int(mask_utils.area(rle)), annotation["id"], class_id, rle))
        for _, annotation_id, class_id, rle in sorted(regions, key=lambda region: region[:2]):
            mask = mask_utils.decode(rle)
            if mask.shape != label.shape:
                raise DataError(
                    f"{self.annotation_path(split)}: annotation {annotation_id} is {mask.shape[1]}x{mask.shape[0]} "
                    f"pixels but its image {coco_id} is {label.shape[1]}x{label.shape[0]}"
                )
            label[mask.astype(bool)] = class_id
        return label

    def fold_split(self, fold) -> FoldSplit:
        """Fold ``fold`` (0..3) in this data set's style: base classes on train2014, novel ones on val2014."""
        novel = fold_classes("coco", fold, self.style)
        return FoldSplit(tuple(base_classes("coco", fold, self.style)), tuple(novel), "train", "val")

    def fingerprint(self, split: str) -> dict:
        """The resolved root and the size and mtime of the split's annotation file (its index's only input)."""
        path = self.annotation_path(split)
        require_paths("COCO", self.root, [path], LAYOUT)
        return {"root": str(self.root.resolve()), "annotations": file_stats([path])}

    def describe(self) -> dict:
        return {**super().describe(), "style": self.style}

    def __getstate__(self) -> dict:
        """Loader workers get the data set without the annotation indexes (re-read on first use) or the lock."""
        state = self.__dict__.copy()
        state["_apis"] = {}
        state["_image_ids"] = {}
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- annotations ---------------------------------------------------------------------------------
    def _api(self, split: str) -> COCO:
        """The pycocotools index of ``split``'s annotation file, read on first use and then kept."""
        api = self._apis.get(self.check_split(split))
        if api is not None:
            return api
        with self._lock:
            if split not in self._apis:
                path = self.annotation_path(split)
                require_paths("COCO", self.root, [path], LAYOUT)
                api = _build_api(path)
                self._set_categories(path, api)
                self._image_ids[split] = [_image_id(split, coco_id) for coco_id in sorted(api.imgs)]
                self._apis[split] = api
            return self._apis[split]

    def _set_categories(self, path: Path, api: COCO) -> None:
        categories = tuple(sorted((int(c["id"]), str(c["name"])) for c in api.dataset["categories"]))
        if len(categories) != NUM_CLASSES:
            raise DataError(f"{path} lists {len(categories)} categories; COCO-20i needs the {NUM_CLASSES} of COCO")
        if self._categories is None:
            self._categories = categories
            self._class_of_category = {category: rank for rank, (category, _) in enumerate(categories, start=1)}
        elif categories != self._categories:
            read = ", ".join(str(self.annotation_path(split)) for split in self._apis)
            raise DataError(f"the categories of {path} differ from those of {read}")

    def _locate(self, image_id: str) -> tuple[str, int]:
        """``"val/000000000042"`` -> ``("val", 42)``, checking that the split's annotation file has the image."""
        split, separator, number = str(image_id).partition("/")
        if not (separator and split in self.splits and number.isascii() and number.isdigit()) or (
            _image_id(split, int(number)) != image_id
        ):
            raise ValueError(
                f"image_id must be '<split>/<COCO image id in 12 digits>' with split in {self.splits} "
                f"(e.g. 'val/000000000042'), got {image_id!r}"
            )
        coco_id = int(number)
        if coco_id not in self._api(split).imgs:
            raise ValueError(f"image {image_id!r}: no image {coco_id} in {self.annotation_path(split)}")
        return split, coco_id

    def _annotation_rle(self, api: COCO, split: str, annotation: dict):
        """The annotation's region as RLE (polygons, uncompressed or compressed RLE); None if it is empty.

        Polygons with fewer than three points (or an odd number of coordinates) cover no area and are
        dropped: pycocotools would misread a 4-number polygon as a box, and a 2-number one fails.
        """
        segmentation = annotation.get("segmentation")
        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
            if not polygons:
                return None
            annotation = {**annotation, "segmentation": polygons}
        elif not segmentation:
            return None
        try:
            return api.annToRLE(annotation)
        except Exception as error:  # pycocotools raises bare Exception for unsupported input
            raise DataError(
                f"{self.annotation_path(split)}: cannot read the segmentation of annotation "
                f"{annotation.get('id')}: {error!r}"
            ) from error

    def _class_of(self, split: str, annotation: dict) -> int:
        try:
            return self._class_of_category[annotation["category_id"]]
        except KeyError:
            raise DataError(
                f"{self.annotation_path(split)}: annotation {annotation.get('id')} has category "
                f"{annotation.get('category_id')!r}, which the file does not list"
            ) from None


def _image_id(split: str, coco_id: int) -> str:
    return f"{split}/{coco_id:012d}"


def _pycocotools():
    """pycocotools, imported where COCO is read: ``import sst_fast`` and every other data set work without it."""
    try:
        import pycocotools.coco
        import pycocotools.mask
    except ImportError as error:
        raise DataError(
            f"COCO-20i needs pycocotools, which cannot be imported ({error}); install it with "
            "'pip install pycocotools' (a dependency of sst_fast)"
        ) from error
    return pycocotools


def _build_api(path: Path) -> COCO:
    """Read one instances json into a pycocotools :class:`COCO`, without pycocotools' progress prints."""
    try:
        with open(path, "rb") as file:
            dataset = json.load(file)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read COCO annotations {path}: {error}") from error
    if not isinstance(dataset, dict):
        raise DataError(f"{path} is not a COCO instances file: it holds no JSON object")
    missing = [key for key in ("images", "annotations", "categories") if key not in dataset]
    if missing:
        raise DataError(f"{path} is not a COCO instances file: no {', '.join(missing)}")
    api = _pycocotools().coco.COCO()
    api.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api
