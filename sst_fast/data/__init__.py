"""Data: benchmark data sets, splits, episodes and augmentation (docs/design.md §4).

- Splits: :func:`fold_classes`, :func:`base_classes`.
- Data sets (:class:`FewShotDataset`): :class:`PascalVOC` (PASCAL-5i), :class:`COCO20i`,
  :class:`FSS1000`, :class:`FolderDataset` (your own class folders), and the embedded
  :class:`SyntheticDataset`; :func:`open_dataset` by name.
- Episodes: :class:`EpisodeSampler`, :class:`EpisodeManifest`, :class:`EpisodeDataset`.
- :class:`Augment` for training; :mod:`~sst_fast.data.transforms` for user images.
"""

import inspect

from . import transforms
from .augment import Augment
from .base import DEFAULT_MIN_PIXELS, DataError, FewShotDataset, Sample, binary_mask
from .coco import COCO20i
from .episodes import (
    Episode,
    EpisodeDataset,
    EpisodeManifest,
    EpisodeSampler,
    collate_episodes,
    fold_sampler,
    sample_episodes,
)
from .folder import FolderDataset
from .fss import FSS1000
from .pascal import PascalVOC
from .splits import FoldSplit, base_classes, fold_classes
from .synthetic import SyntheticDataset

DATASETS = {
    "pascal": PascalVOC,
    "coco": COCO20i,
    "fss": FSS1000,
    "folder": FolderDataset,
    "synthetic": SyntheticDataset,
}


def open_dataset(name: str, root=None, **options) -> FewShotDataset:
    """A data set by name: ``pascal``, ``coco``, ``fss``, ``folder`` (all need ``root``) or ``synthetic`` (no root).

    ``options`` go to the class (``min_pixels``, ``cache_dir``, ``style`` for COCO, ``seed`` for synthetic).
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    accepted = sorted(set(inspect.signature(DATASETS[name]).parameters) - {"root"})
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"options: the {name} data set has no option {', '.join(unknown)} (it has {', '.join(accepted)})"
        )
    if name == "synthetic":
        if root is not None:
            raise ValueError("root: the synthetic data set is generated, it has no data folder")
        return SyntheticDataset(**options)
    if root is None:
        raise ValueError(f"root: the {name} data set needs its data folder")
    return DATASETS[name](root, **options)


__all__ = [
    "DATASETS",
    "DEFAULT_MIN_PIXELS",
    "FSS1000",
    "COCO20i",
    "Augment",
    "DataError",
    "Episode",
    "EpisodeDataset",
    "EpisodeManifest",
    "EpisodeSampler",
    "FewShotDataset",
    "FolderDataset",
    "FoldSplit",
    "PascalVOC",
    "Sample",
    "SyntheticDataset",
    "base_classes",
    "binary_mask",
    "collate_episodes",
    "fold_classes",
    "fold_sampler",
    "open_dataset",
    "sample_episodes",
    "transforms",
]
