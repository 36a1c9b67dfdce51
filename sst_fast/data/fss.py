"""FSS-1000: 1000 classes of 10 images each, one annotated object per image (docs/design.md §4).

The data are the FSS-1000 class folders as their authors distribute them, plus the 520/240/240
train/val/test class split files that HSNet distributes (see :data:`LAYOUT`). Copies of HSNet's three
lists ship with the package (``sst_fast/data/fss_splits/``, from github.com/juhongm999/hsnet
``data/splits/fss/`` at commit e288916); they are used when the data folder has no ``splits/`` and
no ``split_dir`` is given, so a read-only data mount needs nothing written into it. Conventions:

- **Class ids** 1..N are the positions of the class names in the sorted union of the three split
  files (N = 1000 for the real data set).
- **Image ids** are ``"<class name>/<n>"``, e.g. ``"ab_wheel/3"`` for ``root/ab_wheel/3.jpg``.
- **Label maps** hold the class id on the object and 0 elsewhere; FSS-1000 has no ignore band. The
  masks are 0/255 grayscale or white-on-black RGB PNGs: a pixel is foreground when its grayscale
  value exceeds 127. As class ids go up to 1000, label maps are ``uint16``, not ``uint8``.
- **Splits** are the class splits: ``image_ids("test")`` are the images of the test classes.
- **Small-object filter off by default** (``min_pixels=0``): FSS-1000 images are 224x224 with a
  single object each, and the usual protocol (FSS-1000, HSNet) uses every image of a class.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import numpy as np

from .base import (
    DataError,
    FewShotDataset,
    Sample,
    file_stats,
    layout_error,
    paired,
    read_image,
    require_paths,
)
from .splits import FSS_FOLDS, FoldSplit, check_fold

# Accepted names of each split's class list, first match wins: HSNet calls the train list trn.txt.
SPLIT_FILES = {"train": ("train.txt", "trn.txt"), "val": ("val.txt",), "test": ("test.txt",)}
FOREGROUND_THRESHOLD = 127

LAYOUT = """\
  <root>/
    <class name>/1.jpg 1.png 2.jpg 2.png ...  each image beside its mask (white object on black)
    splits/train.txt   (or HSNet's trn.txt)   optional: the 520 training class names, one a line
    splits/val.txt                            optional: the 240 validation class names
    splits/test.txt                           optional: the 240 test class names
Get the class folders from FSS-1000 (https://github.com/HKUSTCV/FSS-1000; unzip them directly under
<root>). The split lists default to <root>/splits/ when it exists, else to the copies of HSNet's lists
shipped with sst_fast; data.options.split_dir=DIR names another folder holding the three lists."""


def read_mask(path) -> np.ndarray:
    """An FSS-1000 mask PNG (grayscale, RGB or palette) -> bool [H, W], True where the gray value exceeds 127."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            gray = np.array(image.convert("L"))
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"cannot read mask {path}: {error}") from error
    return gray > FOREGROUND_THRESHOLD


class FSS1000(FewShotDataset):
    """FSS-1000 with its 520/240/240 train/val/test class split.

    Args:
        root: the folder holding the class folders (:data:`LAYOUT`).
        split_dir: the folder of the train/val/test class lists (default: ``<root>/splits`` if it exists, else
            the packaged copies of HSNet's 520/240/240 lists, :func:`packaged_split_dir`).
        min_pixels: a class counts as present in an image only with at least this many pixels;
            0 (the default) turns the filter off, as the FSS-1000 protocol uses every image.
        cache_dir: where :meth:`prepare` caches the class index (default: :func:`default_cache_dir`).

    The split files are read and checked at construction (a missing file, a class listed twice,
    or in two splits, is a :class:`DataError`); a split's class folders are listed and checked
    (folder present, every ``.jpg`` beside its ``.png``) when the split is first needed, every problem
    of the split named in one :class:`DataError` (:meth:`survey` lists them without raising).
    """

    name = "fss"
    splits = ("train", "val", "test")
    ignore_label = None  # masks are object/background only; class ids run past 255
    named_folds = FSS_FOLDS  # no numbered folds: "test" tests on the test classes, "val" on the val ones
    reported_folds = ("test",)  # the protocol's

    def __init__(self, root, min_pixels: int = 0, cache_dir=None, split_dir=None):
        super().__init__(min_pixels=min_pixels, cache_dir=cache_dir)
        self.root = Path(root).expanduser()
        require_paths("FSS-1000", self.root, [self.root], LAYOUT)
        if split_dir is not None:
            self.split_dir = Path(split_dir).expanduser()
            require_paths("FSS-1000 split lists", self.split_dir, [self.split_dir], LAYOUT)
        elif (self.root / "splits").is_dir():
            self.split_dir = self.root / "splits"
        else:
            self.split_dir = packaged_split_dir()
        self.split_files = {split: self._find_split_file(split) for split in self.splits}
        self._split_classes = {split: _read_split_file(path) for split, path in self.split_files.items()}
        self._split_of_class: dict[str, str] = {}
        for split, names in self._split_classes.items():
            for name in names:
                if name in self._split_of_class:
                    other = self.split_files[self._split_of_class[name]]
                    raise DataError(
                        f"class {name!r} is listed in both {other} and {self.split_files[split]}: "
                        f"the train, val and test classes must be disjoint"
                    )
                self._split_of_class[name] = split
        self._class_names = tuple(sorted(self._split_of_class))
        self._class_ids = {name: class_id for class_id, name in enumerate(self._class_names, start=1)}
        # class name -> (image numbers with their masks, the folder's problems), listed on first use
        self._scans: dict[str, tuple[tuple[str, ...], list[tuple[str, str]]]] = {}

    # -- FewShotDataset ----------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    def class_id(self, name: str) -> int:
        """The class id of a class name."""
        try:
            return self._class_ids[name]
        except KeyError:
            raise ValueError(f"{name!r} is not a class of {self.name} (see {self.split_dir})") from None

    def split_classes(self, split: str) -> tuple[int, ...]:
        """The class ids of ``split``, ascending."""
        return tuple(sorted(self._class_ids[name] for name in self._split_classes[self.check_split(split)]))

    def image_ids(self, split: str) -> list[str]:
        """The images of the split's classes, sorted as strings (``"ab_wheel/10"`` before ``"ab_wheel/2"``),
        the same order in which the class index lists them. A split whose class folders cannot be listed
        (:meth:`survey`'s problems) is one :class:`DataError` naming every problem."""
        ids, problems = self.survey(split)
        if problems:
            raise layout_error("FSS-1000", self.root, LAYOUT, problems, f"in the class folders of split {split!r}")
        return ids

    def survey(self, split: str) -> tuple[list[str], list[tuple[str, str]]]:
        """The images of the split's classes that have their masks, and every problem of its class folders:
        ``(class name, ...)`` for a folder missing or without images, ``(image id, ...)`` for an image
        without its mask."""
        ids, problems = [], []
        for name in self._split_classes[self.check_split(split)]:
            numbers, found = self._scan(name)
            ids.extend(f"{name}/{number}" for number in numbers)
            problems.extend(found)
        return sorted(ids), sorted(problems)

    def load(self, image_id: str) -> Sample:
        """The JPEG and the label map of :meth:`load_label` (their sizes must agree)."""
        name, number = self._locate(image_id)
        path = self.root / name / f"{number}.jpg"
        return paired(read_image(path), self.load_label(image_id), path, f"its mask {path.with_suffix('.png')}")

    def load_label(self, image_id: str) -> np.ndarray:
        """The label map from the mask alone: uint16, the class id on the object, 0 elsewhere."""
        name, number = self._locate(image_id)
        mask = read_mask(self.root / name / f"{number}.png")
        return mask.astype(np.uint16) * np.uint16(self._class_ids[name])

    def fold_split(self, fold="test") -> FoldSplit:
        """FSS-1000 has no folds: ``"test"`` (the protocol) tests on the test classes, ``"val"`` on the val ones.

        Training is on the train classes either way.
        """
        check_fold("fss", fold)
        return FoldSplit(self.split_classes("train"), self.split_classes(fold), "train", fold)

    def fingerprint(self, split: str) -> dict:
        """The resolved root and the size and mtime of the split files and of the split's masks."""
        masks = [self.root / f"{image_id}.png" for image_id in self.image_ids(split)]
        return {"root": str(self.root.resolve()), "files": file_stats([*self.split_files.values(), *masks])}

    # -- files -----------------------------------------------------------------------------------
    def describe(self) -> dict:
        """With the split lists' identity: the class ids are positions in their union, so manifests, caches
        and results drawn with other lists never pass for these."""
        return {**super().describe(), "splits": self.splits_digest()}

    def splits_digest(self) -> str:
        """SHA-256 (first 16 hex digits) of the three lists' class names, split by split."""
        text = "\n".join(f"{split}:{','.join(self._split_classes[split])}" for split in self.splits)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _find_split_file(self, split: str) -> Path:
        candidates = [self.split_dir / name for name in SPLIT_FILES[split]]
        for path in candidates:
            if path.is_file():
                return path
        require_paths("FSS-1000", self.split_dir, candidates[:1], LAYOUT)
        raise DataError(f"{candidates[0]} is not a file.\nExpected layout:\n{LAYOUT}")

    def _class_images(self, name: str) -> tuple[str, ...]:
        """The image numbers of a class folder (every ``<n>.jpg`` must have its ``<n>.png``), sorted."""
        numbers, problems = self._scan(name)
        if problems:
            raise layout_error("FSS-1000", self.root, LAYOUT, problems, f"in class folder {name!r}")
        return numbers

    def _scan(self, name: str) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
        """A class folder's image numbers that have their masks (sorted), and its problems (:meth:`survey`)."""
        if name not in self._scans:
            self._scans[name] = self._list_folder(name)
        return self._scans[name]

    def _list_folder(self, name: str) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
        folder = self.root / name
        listed_in = self.split_files[self._split_of_class[name]]
        if not folder.is_dir():
            return (), [(name, f"class folder {folder} (listed in {listed_in}) is missing")]
        numbers, problems = [], []
        for image in folder.glob("*.jpg"):
            if image.with_suffix(".png").is_file():
                numbers.append(image.stem)
            else:
                problems.append((f"{name}/{image.stem}", f"image {image} has no mask {image.with_suffix('.png')}"))
        if not numbers and not problems:
            problems.append((name, f"class folder {folder} (listed in {listed_in}) holds no .jpg image"))
        return tuple(sorted(numbers)), sorted(problems)

    def _locate(self, image_id: str) -> tuple[str, str]:
        """``"ab_wheel/3"`` -> ``("ab_wheel", "3")``, checking that the image exists in the data set."""
        name, separator, number = str(image_id).partition("/")
        if not separator or name not in self._class_ids:
            raise ValueError(f"image_id must be '<class name>/<n>' with a class of {self.name}, got {image_id!r}")
        if number not in self._scan(name)[0]:  # an image with its mask loads, whatever else its folder lacks
            raise ValueError(f"image {image_id!r}: no {number}.jpg in {self.root / name}")
        return name, number


def _read_split_file(path: Path) -> tuple[str, ...]:
    """Class names, one a line (blank lines skipped); a name listed twice or not a plain folder name is an error."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read split file {path}: {error}") from error
    names: dict[str, None] = {}  # ordered set
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            continue
        if "/" in name or "\\" in name or name in (".", "..", "splits"):
            raise DataError(f"{path}, line {number}: {name!r} is not a class folder name")
        if name in names:
            raise DataError(f"{path}, line {number}: class {name!r} is listed twice")
        names[name] = None
    if not names:
        raise DataError(f"split file {path} lists no class.\nExpected layout:\n{LAYOUT}")
    return tuple(names)


def packaged_split_dir() -> Path:
    """The copies of HSNet's FSS-1000 train/val/test class lists that ship with sst_fast."""
    return Path(str(resources.files("sst_fast.data") / "fss_splits"))
