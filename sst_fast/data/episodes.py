"""Few-shot episodes: seeded sampling, manifests that reproduce them, and the tensors the model eats.

An episode is (class, query image, K support images), all holding the class. Sampling is a pure
function of the seed: the class uniformly among the given classes, then K + 1 distinct images of
that class (the first is the query), so a support never equals its query. A manifest stores the
episodes as JSON with a SHA-256 of their content; evaluating from a manifest replays exactly the
same episodes.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import transforms
from ..config import MAX_COUNT, as_size, positive_int
from ..files import sha256_json, strict_json, write_text_atomic
from ..protocol import PROTOCOLS, SUPPORT_DRAWS, Protocol, check_protocol_data, protocol_for
from .base import DataError, FewShotDataset

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class Episode:
    class_id: int
    query: str
    supports: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"class_id": self.class_id, "query": self.query, "supports": list(self.supports)}

    @classmethod
    def from_dict(cls, data: dict) -> Episode:
        return cls(int(data["class_id"]), str(data["query"]), tuple(str(s) for s in data["supports"]))


class EpisodeSampler:
    """Draws episodes of ``classes`` from the images of ``split``, class first: a class uniformly, then the
    query uniformly among its images, then the supports.

    ``exclude_classes``: drop every image in which any of these classes appears at all (the
    BAM-style training filter for novel classes; by default such images are kept and the novel
    pixels are simply background in the binary masks). ``images``: draw only from these image ids
    (e.g. a validation hold-out, see :func:`holdout`); ``None`` uses every image of the split.
    ``supports``: ``"distinct"`` (K distinct images besides the query) or ``"independent"`` (K
    independent uniform draws among the class's images other than the query, as HSNet draws them).
    """

    def __init__(
        self,
        dataset: FewShotDataset,
        classes: Sequence[int],
        split: str,
        shots: int,
        exclude_classes: Sequence[int] = (),
        images: Collection[str] | None = None,
        supports: str = "distinct",
    ):
        positive_int(shots, "shots")
        if supports not in SUPPORT_DRAWS:
            raise ValueError(f"supports must be one of {sorted(SUPPORT_DRAWS)}, got {supports!r}")
        classes = [dataset.check_class(c, "classes") for c in classes]
        if not classes:
            raise ValueError("classes must name at least one class")
        dataset.check_split(split)
        excluded = {dataset.check_class(c, "exclude_classes") for c in exclude_classes}
        self.dataset, self.split, self.shots, self.classes = dataset, split, shots, classes
        self.supports = supports
        self.pools = self._class_pools(excluded, None if images is None else set(images))
        needed = shots + 1 if supports == "distinct" else 2  # the query and one other image at least
        for class_id, pool in self.pools.items():
            if len(pool) < needed:
                raise DataError(
                    f"{dataset.name}: class {class_id} ({dataset.class_name(class_id)}) has {len(pool)} image(s) in "
                    f"split {split!r} after filtering (min_pixels={dataset.min_pixels}); a {shots}-shot episode "
                    f"needs {needed}"
                )
        self._positions = {c: {image: n for n, image in enumerate(pool)} for c, pool in self.pools.items()}

    def _class_pools(self, excluded: set[int], allowed: set[str] | None) -> dict[int, list[str]]:
        """Each class's images: past the small-object filter, without the excluded classes, among ``allowed``."""
        pools = {}
        for class_id in self.classes:
            pool = self.dataset.class_images(self.split, class_id)
            if excluded:
                pool = [i for i in pool if excluded.isdisjoint(self.dataset.image_classes(self.split, i))]
            if allowed is not None:
                pool = [i for i in pool if i in allowed]
            pools[class_id] = pool
        return pools

    # The number of episodes a seed gives when none is asked for; None: any number.
    count: int | None = None

    def sample(self, episodes: int | None, seed) -> list[Episode]:
        """``episodes`` episodes from ``seed`` (an int or a sequence of ints, e.g. ``(seed, epoch)``)."""
        episodes = self._check_count(episodes)
        rng = np.random.default_rng(_seed_words(seed))
        drawn = []
        for number in range(episodes):
            drawn.append(self._episode(number, rng))
        return drawn

    def _check_count(self, episodes: int | None) -> int:
        if episodes is None:
            if self.count is None:
                raise ValueError(f"episodes: {type(self).__name__} needs a number of episodes")
            return self.count
        positive_int(episodes, "episodes")
        if episodes > MAX_COUNT:
            raise ValueError(f"episodes (--episodes) must be at most {MAX_COUNT:,}, got {episodes:,}")
        return episodes

    def _episode(self, number: int, rng: np.random.Generator) -> Episode:
        class_id = self.classes[int(rng.integers(len(self.classes)))]
        pool = self.pools[class_id]
        if self.supports == "distinct":  # query and supports in one draw (the manifests of earlier versions)
            picks = rng.choice(len(pool), size=self.shots + 1, replace=False)
            return Episode(class_id, pool[picks[0]], tuple(pool[i] for i in picks[1:]))
        return self._with_supports(class_id, pool[int(rng.integers(len(pool)))], rng)

    def strangers(self, episode: Episode) -> set[str]:
        """The images of ``episode`` this sampler could not have drawn for its class (empty: it could have)."""
        pool = self._positions.get(episode.class_id, {})
        outside = {support for support in episode.supports if support not in pool}
        if not self._draws_query(episode.query, episode.class_id):
            outside.add(episode.query)
        return outside

    def _draws_query(self, query: str, class_id: int) -> bool:
        return query in self._positions[class_id]

    def _with_supports(self, class_id: int, query: str, rng: np.random.Generator) -> Episode:
        """The episode of ``query`` and ``class_id`` with supports drawn among the class's images but the query."""
        pool = self.pools[class_id]
        skip = self._positions[class_id].get(query)  # the query's place in the pool, if it is there
        others = len(pool) - (skip is not None)
        if self.supports == "distinct":
            if others < self.shots:
                raise DataError(
                    f"{self.dataset.name}: class {class_id} has {others} image(s) besides query {query}; "
                    f"{self.shots} distinct supports are needed"
                )
            picks = rng.choice(others, size=self.shots, replace=False)
        else:
            picks = rng.integers(others, size=self.shots)
        picks = [int(i) + (skip is not None and i >= skip) for i in picks]
        return Episode(class_id, query, tuple(pool[i] for i in picks))


class ImageFirstSampler(EpisodeSampler):
    """PFENet's test sampling (docs/design.md §4.3): the queries are the images of ``split`` that hold a
    test class past the small-object filter, taken in the data set's order and wrapping around; each
    episode's class is drawn uniformly among the test classes present in the query (any pixel count),
    its supports among that class's images (past the filter) other than the query."""

    def __init__(self, dataset, classes, split, shots, supports: str = "distinct"):
        super().__init__(dataset, classes, split, shots, supports=supports)
        listed = set().union(*(set(pool) for pool in self.pools.values()))
        self.queries = [image for image in dataset.image_ids(split) if image in listed]
        self.present = {
            image: [c for c in self.classes if dataset.image_classes(split, image).get(c, 0) > 0]
            for image in self.queries
        }

    def _draws_query(self, query, class_id):
        return class_id in self.present.get(query, ())

    def _episode(self, number, rng):
        query = self.queries[number % len(self.queries)]
        present = self.present[query]
        return self._with_supports(present[int(rng.integers(len(present)))], query, rng)


class PairListSampler(EpisodeSampler):
    """HSNet's PASCAL sampling (docs/design.md §4.3): a fixed list of (image, class) pairs walked in order,
    wrapping around; the supports among the class's other images of the list.

    ``pairs``: the list (HSNet's own for PASCAL-5i, :func:`hsnet_pascal_pairs_path`); each image must be in
    ``split`` and hold its class. Without it, every (image, class) pair of ``split`` with the class past
    the small-object filter, in the data set's image order (classes ascending within an image).
    """

    def __init__(self, dataset, classes, split, shots, supports: str = "independent", pairs=None, source="pairs"):
        self._listed = None if pairs is None else [(str(image), int(c)) for image, c in pairs]
        self._source = source
        super().__init__(dataset, classes, split, shots, supports=supports)
        if self._listed is None:
            self.pairs = [
                (image, c)
                for image in dataset.image_ids(split)
                for c in sorted(self.classes)
                if image in self._positions[c]
            ]
        else:
            self.pairs = self._listed
        self._pair_set = set(self.pairs)

    def _draws_query(self, query, class_id):
        return (query, class_id) in self._pair_set

    def _class_pools(self, excluded, allowed):
        if self._listed is None:
            return super()._class_pools(excluded, allowed)
        for image, class_id in self._listed:
            if class_id not in self.classes:
                raise DataError(f"{self._source}: class {class_id} of {image} is not a test class of this fold")
        absent, unlabelled = pair_mismatches(self.dataset, self.split, self._listed)
        if absent or unlabelled:
            listed = len({image for image, _ in self._listed})
            raise DataError(f"{self._source}: " + mismatch_text(absent, unlabelled, listed, f"in split {self.split!r}"))
        # HSNet's support pools: the list's images of each class.
        return {c: sorted({image for image, k in self._listed if k == c}) for c in self.classes}

    def _episode(self, number, rng):
        query, class_id = self.pairs[number % len(self.pairs)]
        return self._with_supports(class_id, query, rng)


class ListedClassSampler(PairListSampler):
    """HSNet's COCO-20i sampling (docs/design.md §4.3): class first, as :class:`EpisodeSampler` draws, over the
    peer's per-class image lists: a class uniformly among the test classes, the query uniformly among the
    list's images of the class, the supports among its other listed images. ``pairs`` (required): the lists
    as (image, class) pairs, checked as :class:`PairListSampler` checks them."""

    def __init__(self, dataset, classes, split, shots, supports: str = "independent", pairs=None, source="pairs"):
        if pairs is None:
            raise ValueError("ListedClassSampler needs the lists' (image, class) pairs")
        super().__init__(dataset, classes, split, shots, supports=supports, pairs=pairs, source=source)

    _episode = EpisodeSampler._episode


class EveryImageSampler(EpisodeSampler):
    """HSNet's FSS-1000 sampling (docs/design.md §4.3): every image of every test class once as the query
    (classes ascending, each class's images in order), the supports among the class's other images.
    A seed gives exactly :attr:`count` episodes."""

    def __init__(self, dataset, classes, split, shots, supports: str = "independent"):
        super().__init__(dataset, classes, split, shots, supports=supports)
        self.queries = [(image, c) for c in sorted(self.classes) for image in self.pools[c]]
        self.count = len(self.queries)

    def _check_count(self, episodes):
        if episodes is not None and episodes != self.count:
            raise ValueError(
                f"episodes (--episodes): every test image is the query once, {self.count} episodes; "
                f"got episodes={episodes}"
            )
        return self.count

    def _episode(self, number, rng):
        query, class_id = self.queries[number]
        return self._with_supports(class_id, query, rng)


SAMPLERS = {
    "class-first": EpisodeSampler,
    "image-first": ImageFirstSampler,
    "pair-list": PairListSampler,
    "every-image": EveryImageSampler,
}


def protocol_sampler(dataset: FewShotDataset, fold, shots: int, protocol: Protocol) -> EpisodeSampler:
    """The test-episode sampler of ``protocol`` on ``fold``: its sampling rule and its support draw."""
    split = dataset.fold_split(fold)
    check_protocol_data(protocol, dataset.describe())
    sampler = SAMPLERS[protocol.sampling]
    if protocol.pair_lists and protocol.dataset == "coco":
        return _hsnet_coco_sampler(dataset, fold, shots, protocol)
    if protocol.pair_lists:
        path = hsnet_pascal_pairs_path(fold)
        pairs = read_pairs(path)
        absent, unlabelled = pair_mismatches(dataset, split.test_split, pairs)
        if absent or unlabelled:
            listed = len({image for image, _ in pairs})
            found = mismatch_text(absent, unlabelled, listed, "in this folder's val list")
            raise DataError(
                "protocol hsnet: HSNet's PASCAL-5i pair lists are drawn from the standard VOC2012 val list "
                f"(ImageSets/Segmentation/val.txt, 1449 ids, SBD-augmented labels); of its fold-{fold} pairs, {found}\n"
                f"The pairs are {path} (HSNet's data/splits/pascal/val/fold{fold}.txt): --protocol hsnet needs the "
                "standard val list and SegmentationClassAug labels; sst and pfenet draw from any val list."
            )
        return PairListSampler(
            dataset, split.test_classes, split.test_split, shots, protocol.supports, pairs, str(path)
        )
    return sampler(dataset, split.test_classes, split.test_split, shots, supports=protocol.supports)


def hsnet_pascal_pairs_path(fold) -> Path:
    """HSNet's PASCAL-5i test pairs of ``fold`` as shipped in sst_fast (github.com/juhongm999/hsnet,
    ``data/splits/pascal/val/fold<f>.txt``, commit e288916): ``<image id>__<VOC class id>`` per line."""
    from importlib import resources

    if fold not in (0, 1, 2, 3):
        raise ValueError(f"fold must be 0, 1, 2 or 3 for HSNet's PASCAL-5i pairs, got {fold!r}")
    return Path(str(resources.files("sst_fast.data") / "hsnet_pairs" / f"pascal_val_fold{fold}.txt"))


def _hsnet_coco_sampler(dataset: FewShotDataset, fold, shots: int, protocol: Protocol) -> EpisodeSampler:
    """HSNet's COCO-20i test sampler: class first over HSNet's per-class lists of ``fold``
    (:func:`hsnet_coco_pairs_path`). Listed images the val split lacks are refused, counted and named; a pair
    whose class has no pixel in this data set's label (rendered here from the annotations, not HSNet's
    PNGs) is dropped with a warning."""
    split = dataset.fold_split(fold)
    path = hsnet_coco_pairs_path(fold)
    pairs = read_pairs(path)
    absent, unlabelled = pair_mismatches(dataset, split.test_split, pairs)
    listed = len({image for image, _ in pairs})
    if absent:
        found = mismatch_text(absent, [], listed, "in this folder's val2014 annotations")
        raise DataError(
            "protocol hsnet: HSNet's COCO-20i lists name val2014 images of the COCO 2014 release "
            f"(annotations/instances_val2014.json, 40504 images); of its fold-{fold} lists, {found}\n"
            f"The lists are {path} (HSNet's data/splits/coco/val/fold{fold}.pkl): --protocol hsnet needs the "
            "whole val2014 annotation file; sst and pfenet draw from any."
        )
    if unlabelled:
        warnings.warn(
            f"protocol hsnet: {mismatch_text([], unlabelled, listed, '')}: the labels rendered from "
            f"{split.test_split}2014's annotations show no pixel of the class there; left out of the pools",
            stacklevel=3,
        )
        dropped = set(unlabelled)
        pairs = [pair for pair in pairs if pair not in dropped]
    return ListedClassSampler(dataset, split.test_classes, split.test_split, shots, protocol.supports, pairs, str(path))


def hsnet_coco_pairs_path(fold) -> Path:
    """HSNet's COCO-20i test images of ``fold`` by class as shipped in sst_fast (github.com/juhongm999/hsnet,
    ``data/splits/coco/val/fold<f>.pkl``, commit e288916, converted): ``<image id>__<class id>`` per line,
    in sst_fast's ids (``val/<12 digits>``, classes 1..80), after a ``#`` header naming the source."""
    from importlib import resources

    if fold not in (0, 1, 2, 3):
        raise ValueError(f"fold must be 0, 1, 2 or 3 for HSNet's COCO-20i lists, got {fold!r}")
    return Path(str(resources.files("sst_fast.data") / "hsnet_pairs" / f"coco_val_fold{fold}.txt"))


def pair_mismatches(dataset: FewShotDataset, split: str, pairs) -> tuple[list[str], list[tuple[str, int]]]:
    """What of the (image, class) ``pairs`` the data set lacks: the images not in ``split`` (sorted), and the
    pairs whose image is in it but whose label has no pixel of the class (in the list's order)."""
    images = set(dataset.image_ids(split))
    absent = sorted({image for image, _ in pairs if image not in images})
    unlabelled = [
        (image, class_id)
        for image, class_id in pairs
        if image in images and dataset.image_classes(split, image).get(class_id, 0) == 0
    ]
    return absent, unlabelled


def mismatch_text(absent: list[str], unlabelled: list[tuple[str, int]], listed: int, where: str, shown: int = 5) -> str:
    """:func:`pair_mismatches`' findings in words, counts and the first few of each; ``where``: the images' place
    (``"in split 'val'"``)."""

    def few(items) -> str:
        return ", ".join(items[:shown]) + (", ..." if len(items) > shown else "")

    parts = []
    if absent:
        parts.append(f"{len(absent)} of the {listed} images are not {where} ({few(absent)})")
    if unlabelled:
        named = [f"{image} class {class_id}" for image, class_id in unlabelled]
        parts.append(f"{len(unlabelled)} pairs name a class their image's label lacks ({few(named)})")
    return "; ".join(parts)


def read_pairs(path) -> list[tuple[str, int]]:
    """A pair list: ``<image id>__<class id>`` per line -> [(image id, class id)], in the file's order.
    Blank lines and ``#`` comment lines are skipped."""
    pairs = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        image, separator, class_id = line.strip().rpartition("__")
        if not separator or not class_id.isdigit():
            raise DataError(f"{path}:{number}: expected '<image id>__<class id>', got {line!r}")
        pairs.append((image, int(class_id)))
    return pairs


def fold_sampler(
    dataset: FewShotDataset,
    fold,
    shots: int,
    stage: str,
    exclude_novel: bool = False,
    images: Collection[str] | None = None,
) -> EpisodeSampler:
    """The sampler of a benchmark fold: ``stage="train"`` draws base classes from the training images,
    ``stage="test"`` the fold's novel classes from the test images. ``exclude_novel`` (training only)
    drops every training image that shows a novel class at all (BAM); by default they are kept and
    their novel pixels are background. ``images`` (training only) restricts the training images,
    e.g. to one side of a :func:`holdout`.
    """
    split = dataset.fold_split(fold)
    if stage == "train":
        excluded = split.test_classes if exclude_novel else ()
        return EpisodeSampler(
            dataset, split.train_classes, split.train_split, shots, exclude_classes=excluded, images=images
        )
    if stage == "test":
        if exclude_novel or images is not None:
            raise ValueError("exclude_novel and images apply to training episodes only")
        return EpisodeSampler(dataset, split.test_classes, split.test_split, shots)
    raise ValueError(f"stage must be 'train' or 'test', got {stage!r}")


def holdout(image_ids: Sequence[str], fraction: float, salt: str = "validation") -> set[str]:
    """The ids of about ``fraction`` of ``image_ids``, chosen by a hash of each id: the same image is
    held out whatever the order or number of the others, so the hold-out is stable as data are added."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    threshold = int(fraction * 2**64)
    held = set()
    for image_id in image_ids:
        digest = hashlib.sha256(f"{salt}:{image_id}".encode()).digest()
        if int.from_bytes(digest[:8], "big") < threshold:
            held.add(image_id)
    return held


def sample_episodes(dataset, classes, split, shots, episodes, seed, exclude_classes=()) -> list[Episode]:
    """Shorthand for ``EpisodeSampler(dataset, classes, split, shots, exclude_classes).sample(episodes, seed)``."""
    return EpisodeSampler(dataset, classes, split, shots, exclude_classes).sample(episodes, seed)


@dataclass
class EpisodeManifest:
    """The episodes of one evaluation, with what they were drawn from. ``sha256`` identifies the content."""

    dataset: dict
    split: str
    fold: int | str | None
    shots: int
    seed: int | list[int] | None
    episodes: list[Episode] = field(default_factory=list)
    protocol: str = "sst"  # the evaluation protocol that drew them (sst_fast.protocol)

    def __post_init__(self):
        if self.seed is not None:  # plain ints, whatever integer type the caller used: JSON needs them
            words = _seed_words(self.seed)
            self.seed = words[0] if isinstance(self.seed, (int, np.integer)) else words

    def check(self, dataset: FewShotDataset, fold) -> None:
        """Refuse to replay this manifest on other data: another data set or configuration, another
        fold, or episodes that the manifest's protocol could not have drawn from this data set (an image
        not in the split or without the class, a support equal to the query, a wrong number of
        supports, repeated supports where the protocol draws distinct ones)."""
        described = dataset.describe()
        if self.dataset != described:
            raise ValueError(f"manifest was drawn from {self.dataset}, not from this data set {described}")
        split = dataset.fold_split(fold)
        if self.fold != fold or self.split != split.test_split:
            raise ValueError(f"manifest is for fold {self.fold!r} (split {self.split!r}), not fold {fold!r}")
        sampler = protocol_sampler(dataset, fold, self.shots, protocol_for(self.protocol, dataset.name))
        for number, episode in enumerate(self.episodes):
            if episode.class_id not in split.test_classes:
                raise ValueError(
                    f"manifest episode {number}: class {episode.class_id} is not a test class of fold {fold}"
                )
            if len(episode.supports) != self.shots or episode.query in episode.supports:
                raise ValueError(f"manifest episode {number}: needs {self.shots} supports, none the query")
            if sampler.supports == "distinct" and len(set(episode.supports)) != self.shots:
                raise ValueError(
                    f"manifest episode {number}: protocol {self.protocol} draws {self.shots} distinct supports"
                )
            strangers = sampler.strangers(episode)
            if strangers:
                raise ValueError(
                    f"manifest episode {number}: {sorted(strangers)} hold no class {episode.class_id} in split "
                    f"{self.split!r} of this data set"
                )

    def content(self) -> dict:
        content = {
            "format": MANIFEST_FORMAT,
            "dataset": self.dataset,
            "split": self.split,
            "fold": self.fold,
            "shots": self.shots,
            "seed": self.seed,
            "episodes": [episode.to_dict() for episode in self.episodes],
        }
        if self.protocol != "sst":  # sst manifests keep the content (and SHA-256) they always had
            content["protocol"] = self.protocol
        return content

    @property
    def sha256(self) -> str:
        return sha256_json(self.content())

    def save(self, path) -> Path:
        path = Path(path)
        payload = self.content()
        payload["sha256"] = sha256_json(payload)
        write_text_atomic(path, strict_json(payload, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path) -> EpisodeManifest:
        """Read a manifest; a file whose content does not match its SHA-256 is refused."""
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise DataError(f"cannot read episode manifest {path}: {error}") from error
        if not isinstance(payload, dict) or "sha256" not in payload or "episodes" not in payload:
            raise DataError(f"{path} is not an episode manifest (no 'episodes' / 'sha256')")
        recorded = payload.pop("sha256")
        if recorded != sha256_json(payload):
            raise DataError(f"episode manifest {path} fails its SHA-256 check: it was modified or is corrupted")
        if payload.get("format") != MANIFEST_FORMAT:
            raise DataError(f"episode manifest {path} has format {payload.get('format')!r}, expected {MANIFEST_FORMAT}")
        episodes = [Episode.from_dict(e) for e in payload["episodes"]]
        protocol = payload.get("protocol", "sst")
        if protocol not in PROTOCOLS:
            raise DataError(f"episode manifest {path} names an unknown protocol {protocol!r}")
        return cls(
            payload["dataset"], payload["split"], payload["fold"], payload["shots"], payload["seed"], episodes, protocol
        )


class EpisodeDataset(torch.utils.data.Dataset):
    """Episodes -> model tensors.

    Item ``i`` is a dict: ``query`` [3, H, W] and ``support_images`` [K, 3, H, W] (ImageNet-normalised
    float), ``query_mask`` [H, W] and ``support_masks`` [K, H, W] (long: 0, 1, 255), ``class_id``,
    ``index``; with ``keep_original=True`` also ``query_label`` [H0, W0], the query's binary mask at
    its stored size (for ``original_size`` evaluation); with ``score_size`` also ``score_mask``, that
    mask resized to ``score_size`` by PyTorch's ``"nearest"`` rule (a protocol that scores at a fixed size). Without
    ``augment`` every image is resized to ``size`` (bilinear; masks nearest). With an
    :class:`~sst_fast.data.augment.Augment` each image gets its own random transform, drawn from
    ``(seed, i)`` so that an item never depends on worker count or order.
    """

    def __init__(
        self,
        dataset: FewShotDataset,
        episodes: Sequence[Episode],
        size,
        augment=None,
        seed=0,
        keep_original: bool = False,
        score_size=None,
    ):
        self.dataset = dataset
        self.episodes = list(episodes)
        self.size = as_size(size, "size")
        self.augment = augment
        self.seed = seed
        self.keep_original = keep_original
        self.score_size = None if score_size is None else as_size(score_size, "score_size")

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, index: int) -> dict:
        if not -len(self.episodes) <= index < len(self.episodes):
            raise IndexError(f"episode index {index} is out of range for {len(self.episodes)} episodes")
        episode = self.episodes[index]
        generator = None
        if self.augment is not None:
            generator = torch.Generator().manual_seed(_derive_seed(self.seed, index))
        query = self.dataset.load(episode.query)
        query_label = torch.from_numpy(self.dataset.episode_mask(query.label, episode.class_id))
        query_image, query_mask = self._prepare(query.image, query_label, generator)
        images, masks = [], []
        for support_id in episode.supports:
            support = self.dataset.load(support_id)
            support_label = torch.from_numpy(self.dataset.episode_mask(support.label, episode.class_id))
            image, mask = self._prepare(support.image, support_label, generator)
            images.append(image)
            masks.append(mask)
        item = {
            "query": query_image,
            "query_mask": query_mask,
            "support_images": torch.stack(images),
            "support_masks": torch.stack(masks),
            "class_id": episode.class_id,
            "index": index,
        }
        if self.keep_original:
            item["query_label"] = query_label.long()
        if self.score_size is not None:
            # HSNet's rule for the labels it scores at a fixed size: F.interpolate's default "nearest".
            item["score_mask"] = transforms.resize_mask(query_label.long(), self.score_size, mode="nearest")
        return item

    def _prepare(self, image: np.ndarray, mask: torch.Tensor, generator):
        if self.augment is not None:
            return self.augment(network_input(image), mask.long(), generator)
        return network_input(image, self.size), network_mask(mask, self.size)


def network_input(image: np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
    """An [H, W, 3] uint8 image -> the normalised [3, H, W] float tensor, resized bilinearly to ``size``."""
    tensor = transforms.normalize(torch.from_numpy(image).permute(2, 0, 1).float().div_(255))
    if size is not None and tuple(tensor.shape[1:]) != tuple(size):
        tensor = transforms.resize_image(tensor, size)
    return tensor.contiguous()


def network_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An episode mask [H, W] -> long, resized (nearest) to ``size``."""
    mask = mask.long()
    if tuple(mask.shape) != tuple(size):
        mask = transforms.resize_mask(mask, size)
    return mask.contiguous()


def collate_episodes(items: list[dict]) -> dict:
    """Stack the fixed-size tensors of a batch; ``query_label`` (sizes differ) stays a list."""
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key == "query_label":
            batch[key] = values
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = torch.tensor(values)
    return batch


def _seed_words(seed) -> list[int]:
    words = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
    if not words or any(isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 0 for w in words):
        raise ValueError(f"seed must be a non-negative integer or a sequence of them, got {seed!r}")
    return [int(w) for w in words]


def _derive_seed(seed, index: int) -> int:
    """A 63-bit torch seed from (seed words, index), well mixed so neighbouring items are unrelated."""
    state = np.random.SeedSequence([*_seed_words(seed), index]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))
