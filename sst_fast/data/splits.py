"""Class splits of the few-shot benchmarks (docs/design.md §4).

Class ids are 1-based everywhere, as in the label maps: VOC ids 1..20, COCO ids 1..80 in the order
of COCO's sorted category ids, synthetic ids 1..20. FSS-1000 has no folds: its 520/240/240 class
split is read from split files in the data folder (:class:`sst_fast.data.FSS1000`).
"""

from __future__ import annotations

from dataclasses import dataclass

PASCAL_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

COCO_STYLES = ("interleaved", "contiguous")
FOLDS = 4
_FOLD_DATASETS = {"pascal": 20, "synthetic": 20, "coco": 80}


def fold_classes(dataset: str, fold: int, style: str = "interleaved") -> list[int]:
    """The novel (test) classes of ``fold`` of a fold-based benchmark, as 1-based class ids.

    - ``"pascal"`` (PASCAL-5i) and ``"synthetic"``: fold i -> ``5i+1 .. 5i+5``.
    - ``"coco"`` (COCO-20i): ``style="interleaved"`` (FWB/PFENet/HSNet) -> ``{4k + i + 1 : k = 0..19}``;
      ``style="contiguous"`` (PANet) -> ``20i+1 .. 20i+20``.
    """
    if dataset not in _FOLD_DATASETS:
        hint = " (FSS-1000 has no folds: its test classes come from its split files)" if dataset == "fss" else ""
        raise ValueError(f"dataset must be one of {sorted(_FOLD_DATASETS)}, got {dataset!r}{hint}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < FOLDS:
        raise ValueError(f"fold must be an integer in 0..{FOLDS - 1}, got {fold!r}")
    if dataset == "coco":
        if style == "interleaved":
            return [4 * k + fold + 1 for k in range(20)]
        if style == "contiguous":
            return list(range(20 * fold + 1, 20 * fold + 21))
        raise ValueError(f"style must be one of {COCO_STYLES}, got {style!r}")
    return list(range(5 * fold + 1, 5 * fold + 6))


FSS_FOLDS = ("test", "val")


def check_fold(dataset: str, fold):
    """``fold`` if ``dataset`` has it, else the ValueError that every part of the project raises for it (the
    configuration, ``train``, ``eval`` and the data sets all check a fold here)."""
    if dataset == "fss":
        if fold not in FSS_FOLDS:
            raise ValueError(f"fold must be 'test' or 'val' for FSS-1000 (it has no numbered folds), got {fold!r}")
        return fold
    fold_classes(dataset, fold)
    return fold


def base_classes(dataset: str, fold: int, style: str = "interleaved") -> list[int]:
    """The training classes of ``fold``: every class of the data set that is not novel in it."""
    novel = set(fold_classes(dataset, fold, style))
    return [c for c in range(1, _FOLD_DATASETS[dataset] + 1) if c not in novel]


@dataclass(frozen=True)
class FoldSplit:
    """What a benchmark fold trains and tests on: class ids and the image split each side draws from."""

    train_classes: tuple[int, ...]
    test_classes: tuple[int, ...]
    train_split: str
    test_split: str
