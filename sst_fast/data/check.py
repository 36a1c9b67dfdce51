"""Check a data folder before a long run: every file readable, every fold's classes and images counted.

``sst-fast data check --config pascal data.root=/data/VOC2012`` runs :func:`check_dataset` and prints
its :class:`CheckReport`. A missing folder or list is found when the data set opens (its error names
the expected layout); the check then lists every split, noting every image or folder it cannot list
(FSS-1000: a class folder missing, an image without its mask), reads every image and label it listed
(an unreadable or truncated file, an image whose label has another size) and counts, per fold, the
images and classes that training and testing will draw from, flagging classes too thin to make an
episode. Every problem is reported in one pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from .base import FewShotDataset, listed



@dataclasses.dataclass
class FoldSummary:
    """What one fold trains and tests on: classes, the images that hold them, the classes too thin to use."""

    fold: int | str
    train_classes: int
    train_images: int
    test_classes: int
    test_images: int
    thin: dict[str, list[int]]  # "train"/"test" -> classes with fewer images than an episode needs

    def line(self, shots: int) -> str:
        text = (
            f"fold {self.fold}: train {self.train_images} images of {self.train_classes} base classes, "
            f"test {self.test_images} images of {self.test_classes} novel classes"
        )
        for side, classes in self.thin.items():
            if classes:
                text += f"; {side} classes with fewer than {shots + 1} images: {classes}"
        return text


@dataclasses.dataclass
class CheckReport:
    dataset: str
    description: dict
    images: dict[str, int]  # split -> image count
    read: bool  # whether every file was read
    unreadable: list[tuple[str, str]]  # (image id, what is wrong)
    folds: list[FoldSummary]
    shots: int
    layout: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (what, what is wrong): unlisted

    @property
    def ok(self) -> bool:
        return not self.layout and not self.unreadable and not any(any(f.thin.values()) for f in self.folds)

    def __str__(self) -> str:
        lines = [f"{self.dataset}: " + ", ".join(f"{k}={v}" for k, v in self.description.items() if k != "dataset")]
        lines.append("images: " + ", ".join(f"{split} {count}" for split, count in self.images.items()))
        if self.layout:
            lines.append(f"{len(self.layout)} problem(s) in the data folder's layout (images not listed):")
        lines += listed([f"{item}: {problem}" for item, problem in self.layout])
        if self.read:
            total = sum(self.images.values())
            lines.append(f"read every image and label: {total - len(self.unreadable)} of {total} readable")
        else:
            lines.append("images not read (--no-read): only the labels were indexed")
        lines += listed([f"unreadable {image_id}: {problem}" for image_id, problem in self.unreadable])
        if self.layout or self.unreadable:
            lines.append("folds not counted: fix the problems above first")
        lines.extend(fold.line(self.shots) for fold in self.folds)
        lines.append("OK" if self.ok else "PROBLEMS FOUND")
        return "\n".join(lines)


def check_dataset(
    dataset: FewShotDataset,
    folds: Sequence | None = None,
    shots: int = 1,
    read: bool = True,
    workers: int = 8,
    log: Callable[[str], None] | None = None,
) -> CheckReport:
    """Check ``dataset``: list every split (:meth:`~FewShotDataset.survey`: every problem listing it), read every
    image and label listed (unless ``read`` is False), index the labels and count each fold's classes and
    images. ``shots``: the episodes the check plans for (a class needs ``shots + 1`` images). Problems are
    reported, never raised; a layout the data set cannot open raises when it is opened, before this."""
    say = log or (lambda _text: None)
    images, layout = {}, []
    for split in dataset.splits:  # every split's listing problems, not only the first one's
        images[split], problems = dataset.survey(split)
        layout.extend(problems)
    unreadable: list[tuple[str, str]] = []
    if read:
        ids = sorted({image_id for split_ids in images.values() for image_id in split_ids})
        say(f"reading {len(ids)} images and their labels")

        def problem(image_id: str) -> tuple[str, str] | None:
            try:
                dataset.load(image_id)
            except (OSError, ValueError, SyntaxError) as error:  # DataError is a ValueError
                return image_id, str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            return None

        with ThreadPoolExecutor(max(1, workers)) as pool:
            unreadable = [found for found in pool.map(problem, ids) if found is not None]
    summaries = []
    if not unreadable and not layout:
        say("indexing the labels' classes (cached for training)")
        dataset.prepare()
        for fold in folds if folds is not None else dataset.folds:
            summaries.append(_fold_summary(dataset, fold, shots))
    return CheckReport(
        dataset=dataset.name,
        description=dataset.describe(),
        images={split: len(ids) for split, ids in images.items()},
        read=read,
        unreadable=unreadable,
        folds=summaries,
        shots=shots,
        layout=layout,
    )


def _fold_summary(dataset: FewShotDataset, fold, shots: int) -> FoldSummary:
    split = dataset.fold_split(fold)
    counts, thin = {}, {}
    for side, classes, image_split in (
        ("train", split.train_classes, split.train_split),
        ("test", split.test_classes, split.test_split),
    ):
        pools = {c: dataset.class_images(image_split, c) for c in classes}
        counts[side] = len(set().union(*pools.values())) if pools else 0
        thin[side] = [c for c, pool in pools.items() if len(pool) < shots + 1]
    return FoldSummary(
        fold=fold,
        train_classes=len(split.train_classes),
        train_images=counts["train"],
        test_classes=len(split.test_classes),
        test_images=counts["test"],
        thin=thin,
    )
