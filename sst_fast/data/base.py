"""What every few-shot data set provides, and the per-class image index built once by ``prepare``.

A data set is a set of images with label maps in the VOC convention (0 background, class ids
1..N, 255 ignore), grouped into image splits ("train", "val", ...). Few-shot episodes need, for a
split and a class, the images in which that class is present; computing that means reading every
label map, so :meth:`FewShotDataset.prepare` does it once and caches the per-image class pixel
counts in a JSON file with a SHA-256 checksum. The small-object filter is applied to the counts
when the lists are asked for, so changing it never needs a new index.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..config import IGNORE_LABEL
from ..files import default_cache_dir, sha256_json, strict_json, write_text_atomic
from .splits import FOLDS, FoldSplit

# PFENet's small-object filter: a class counts as present in an image only with >= 2*32*32 pixels.
DEFAULT_MIN_PIXELS = 2 * 32 * 32
INDEX_FORMAT = 2


class DataError(ValueError):
    """Missing, malformed or unreadable data. The message names the file or the expected layout."""


# Problems named in full in one message (an error, the data check's report); the rest are counted.
SHOWN_PROBLEMS = 20


def listed(texts: Sequence[str]) -> list[str]:
    """``texts`` as indented lines: at most :data:`SHOWN_PROBLEMS` of them, the rest counted in a last line."""
    lines = [f"  {text}" for text in texts[:SHOWN_PROBLEMS]]
    if len(texts) > SHOWN_PROBLEMS:
        lines.append(f"  ... and {len(texts) - SHOWN_PROBLEMS} more")
    return lines


def layout_error(what: str, root, layout: str, problems: Sequence[tuple[str, str]], where: str = "") -> DataError:
    """One :class:`DataError` naming every ``(item, text)`` problem of a data folder: the only one as its first
    line, else their count (``where`` they are) and the first, then each (:func:`listed`); then the expected
    ``layout`` under ``root``."""
    texts = [text for _, text in problems]
    if len(texts) == 1:
        head = f"{texts[0]}."
    else:
        place = f" {where}" if where else ""
        head = "\n".join([f"{what}: {len(texts)} problems{place}, the first: {texts[0]}; all of them:", *listed(texts)])
    return DataError(f"{head}\nExpected layout under {root}:\n{layout}")


@dataclass(frozen=True)
class Sample:
    """One image and its label map, as stored."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    label: np.ndarray  # [H, W] uint8 (uint16 beyond 254 classes): 0 background, class ids, the ignore label


def paired(image: np.ndarray, label: np.ndarray, image_path, label_source) -> Sample:
    """A :class:`Sample`, after checking that the image and its label map have the same size."""
    if image.shape[:2] != label.shape:
        raise DataError(
            f"image {image_path} is {image.shape[1]}x{image.shape[0]} pixels but {label_source} "
            f"is {label.shape[1]}x{label.shape[0]}: they must match"
        )
    return Sample(image, label)


def read_image(path) -> np.ndarray:
    """An image file -> [H, W, 3] uint8 RGB. An unreadable file raises :class:`DataError` with path and reason."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"cannot read image {path}: {error}") from error


def read_label(path) -> np.ndarray:
    """A single-channel label PNG (mode L or P: the pixel values are the labels) -> [H, W] uint8."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "1"):
                raise DataError(
                    f"label {path} must be a single-channel PNG of class ids (mode L or P), got mode {image.mode}"
                )
            return np.array(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"cannot read label {path}: {error}") from error


def binary_mask(label: np.ndarray, class_id: int, ignore_label: int | None = IGNORE_LABEL) -> np.ndarray:
    """A label map -> the episode's mask for ``class_id``: 1 on the class, 255 where ignored, 0 elsewhere.

    Every other class, novel ones included, becomes background: the PFENet treatment of novel-class
    pixels in training images. ``ignore_label=None``: the label map has no ignore value.
    """
    mask = (label == class_id).astype(np.uint8)
    if ignore_label is not None:
        mask[label == ignore_label] = IGNORE_LABEL
    return mask


def require_paths(dataset: str, root: Path, paths, layout: str) -> None:
    """Raise a :class:`DataError` naming the expected layout when any of ``paths`` is missing."""
    missing = [str(path) for path in paths if not Path(path).exists()]
    if missing:
        raise DataError(
            f"{dataset} data not found: missing {', '.join(missing)}.\nExpected layout under {root}:\n{layout}"
        )


def file_stats(paths) -> str:
    """A digest of (name, size, mtime) of files: cheap, and changes whenever a file is replaced.

    A missing file is part of the digest too (the index build then reports it by name).
    """
    digest = hashlib.sha256()
    for path in sorted(str(p) for p in paths):
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


class DatasetIndex:
    """Per split, per image: the pixel count of every class present. Filled split by split, on demand.

    ``paths[split]`` is the cache file a split was read from or written to (``None``: memory only).
    """

    def __init__(self):
        self.counts: dict[str, dict[str, dict[int, int]]] = {}
        self.paths: dict[str, Path | None] = {}

    def image_classes(self, split: str, image_id: str) -> dict[int, int]:
        try:
            return self.counts[split][image_id]
        except KeyError:
            raise ValueError(f"image {image_id!r} is not in split {split!r}") from None

    def class_images(self, split: str, class_id: int, min_pixels: int) -> list[str]:
        """Sorted, so that a list never depends on whether the index was built or read from its cache."""
        threshold = max(int(min_pixels), 1)
        images = [image for image, classes in self.counts[split].items() if classes.get(class_id, 0) >= threshold]
        return sorted(images)


class FewShotDataset(abc.ABC):
    """A few-shot segmentation data set: images, VOC-convention labels, splits and folds.

    Subclasses define :attr:`name`, :attr:`splits`, the class names, the image ids of each split,
    how one image is loaded, how a fold splits the classes, and a fingerprint of their files.
    """

    name: ClassVar[str]
    splits: ClassVar[tuple[str, ...]]
    # The label that marks "do not score" in this data set's label maps; None when there is none.
    ignore_label: ClassVar[int | None] = IGNORE_LABEL
    # Threads that prepare() reads label maps with: file decoding releases the GIL, numpy-bound
    # generation barely does (a generated data set sets 1).
    prepare_workers: ClassVar[int] = 8
    # The folds the data set has, known from its name alone (0..3: the four-fold benchmarks); None where only
    # its data says (the folder data set), and :attr:`folds` then reads them.
    named_folds: ClassVar[tuple | None] = tuple(range(FOLDS))
    # The folds a benchmark reports when none are named; None: every fold.
    reported_folds: ClassVar[tuple | None] = None

    def __init__(self, *, min_pixels: int = DEFAULT_MIN_PIXELS, cache_dir=None):
        if isinstance(min_pixels, bool) or not isinstance(min_pixels, int) or min_pixels < 0:
            raise ValueError(f"min_pixels must be a non-negative integer (0 turns the filter off), got {min_pixels!r}")
        self.min_pixels = min_pixels
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.index = DatasetIndex()

    # -- what a data set defines ---------------------------------------------------------------
    @property
    @abc.abstractmethod
    def class_names(self) -> tuple[str, ...]:
        """Names of classes 1..N (index 0 holds class 1)."""

    @abc.abstractmethod
    def image_ids(self, split: str) -> list[str]:
        """The images of ``split``, in a fixed order."""

    @abc.abstractmethod
    def load(self, image_id: str) -> Sample:
        """The image and label map of ``image_id``."""

    @abc.abstractmethod
    def fold_split(self, fold) -> FoldSplit:
        """The classes and image splits that ``fold`` trains and tests on."""

    @abc.abstractmethod
    def fingerprint(self, split: str) -> dict:
        """JSON-able identity of the files that ``split``'s index is built from (changes when they change)."""

    def survey(self, split: str) -> tuple[list[str], list[tuple[str, str]]]:
        """The images of ``split`` that can be listed, and every problem found listing them as (what, what is
        wrong): where :meth:`image_ids` stops at a layout it cannot list (FSS-1000: a class folder missing, an
        image without its mask), this goes on, so that ``data check`` reports every problem in one pass."""
        return self.image_ids(split), []

    def class_pixels(self, image_id: str) -> dict[int, int]:
        """Pixel count of each class present in ``image_id`` (background and ignore excluded)."""
        counts = np.bincount(self.load_label(image_id).ravel())
        return {int(c): int(counts[c]) for c in np.flatnonzero(counts) if c != 0 and c != self.ignore_label}

    def load_label(self, image_id: str) -> np.ndarray:
        """The label map alone; data sets that can skip decoding the image override this."""
        return self.load(image_id).label

    def episode_mask(self, label: np.ndarray, class_id: int) -> np.ndarray:
        """:func:`binary_mask` with this data set's ignore label."""
        return binary_mask(label, class_id, self.ignore_label)

    def describe(self) -> dict:
        """The data set's part of a protocol card."""
        return {"dataset": self.name, "min_pixels": self.min_pixels}

    # -- derived -------------------------------------------------------------------------------
    @property
    def folds(self) -> tuple:
        """The folds this data set has: its :attr:`named_folds`."""
        return self.named_folds

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_name(self, class_id: int) -> str:
        self.check_class(class_id)
        return self.class_names[class_id - 1]

    def check_class(self, class_id, name: str = "class_id") -> int:
        if isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer)):
            raise ValueError(f"{name} must be an integer class id, got {class_id!r}")
        if not 1 <= class_id <= self.num_classes:
            raise ValueError(f"{name} must be in 1..{self.num_classes} for {self.name}, got {class_id}")
        return int(class_id)

    def check_split(self, split: str) -> str:
        if split not in self.splits:
            raise ValueError(f"split must be one of {self.splits} for {self.name}, got {split!r}")
        return split

    def class_images(self, split: str, class_id: int) -> list[str]:
        """Images of ``split`` in which ``class_id`` is present (at least ``min_pixels`` pixels)."""
        self.check_class(class_id)
        return self._indexed(split).class_images(split, class_id, self.min_pixels)

    def image_classes(self, split: str, image_id: str) -> dict[int, int]:
        """Pixel count of every class in ``image_id`` (unfiltered)."""
        return self._indexed(split).image_classes(split, image_id)

    def cache_path(self, split: str) -> Path | None:
        """Where ``split``'s index is cached. Data sets that are cheap to index return ``None``: memory only."""
        key = sha256_json({"dataset": self.name, "split": split, "fingerprint": self.fingerprint(split)})[:16]
        return (self.cache_dir or default_cache_dir()) / f"{self.name}-{split}-{key}.json"

    def prepare(self, splits=None, force: bool = False, workers: int | None = None) -> DatasetIndex:
        """Build (or load from the cache) the per-image class pixel counts of ``splits`` (default: all).

        Each split is indexed on its own, so evaluating on one split never reads another's files.
        A cache file carries the split's fingerprint and a SHA-256 of its content: a file that fails
        the check is rebuilt with a warning, never trusted. Unreadable images abort with a
        :class:`DataError` listing them.
        """
        for split in self.splits if splits is None else splits:
            self.check_split(split)
            if force or split not in self.index.counts:
                self._index_split(split, force, workers)
        return self.index

    def _indexed(self, split: str) -> DatasetIndex:
        self.check_split(split)
        if split not in self.index.counts:
            self._index_split(split, force=False, workers=None)
        return self.index

    def _index_split(self, split: str, force: bool, workers: int | None) -> None:
        path = self.cache_path(split)
        identity = {"dataset": self.name, "split": split, "fingerprint": self.fingerprint(split)}
        counts = None
        if path is not None and path.exists() and not force:
            counts = _read_index(path, identity)
        if counts is None:
            counts = self._count_split(split, workers)
            if path is not None:
                path = _write_index(path, identity, counts)
        self.index.counts[split] = counts
        self.index.paths[split] = path

    def _count_split(self, split: str, workers: int | None) -> dict[str, dict[int, int]]:
        image_ids = self.image_ids(split)
        workers = workers if workers is not None else min(self.prepare_workers, os.cpu_count() or 1)
        failures: list[str] = []

        def count(image_id):
            try:
                return self.class_pixels(image_id)
            except DataError as error:
                failures.append(str(error))
                return None

        if workers > 1 and len(image_ids) > 1:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(count, image_ids))
        else:
            results = [count(image_id) for image_id in image_ids]
        if failures:
            shown = "\n  ".join(sorted(failures)[:10])
            more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
            raise DataError(f"{self.name}: {len(failures)} unreadable file(s) in split {split!r}:\n  {shown}{more}")
        return dict(zip(image_ids, results, strict=True))


def _read_index(path: Path, identity: dict) -> dict | None:
    """The counts cached in ``path``, or ``None`` when they are stale (rebuilt) or damaged (rebuilt, with a warning)."""
    try:
        payload = json.loads(path.read_text())
        checksum = payload.pop("sha256")
        valid = checksum == sha256_json(payload)
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        valid = False
    if not valid:
        message = f"{identity['dataset']}: index cache {path} is corrupted (checksum mismatch); rebuilding it"
        warnings.warn(message, stacklevel=4)
        return None
    if payload.get("format") != INDEX_FORMAT or payload.get("identity") != identity:
        return None
    return {image: {int(c): n for c, n in classes.items()} for image, classes in payload["counts"].items()}


def _write_index(path: Path, identity: dict, counts) -> Path | None:
    payload = {"format": INDEX_FORMAT, "identity": identity, "counts": counts}
    payload = json.loads(json.dumps(payload))  # int class keys -> str, as they are read back
    payload["sha256"] = sha256_json(payload)
    try:
        write_text_atomic(path, strict_json(payload, indent=None, sort_keys=True, separators=(",", ":")))
    except OSError as error:
        message = f"{identity['dataset']}: cannot write index cache {path} ({error}); keeping it in memory"
        warnings.warn(message, stacklevel=4)
        return None
    return path
