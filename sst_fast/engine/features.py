"""A frozen backbone's features, computed once: float16, memory-mapped, shared by every run that can use them.

With a frozen backbone (BatchNorm in eval mode) and no augmentation, the backbone's output for a
training image never changes, yet it is most of a train step's cost. :class:`FeatureCache` runs the
backbone once over the images (resized to the network's input size exactly as
:class:`~sst_fast.data.EpisodeDataset` does), stores the outputs as one float16 array on disk and
maps it into memory; :class:`CachedEpisodeDataset` then serves episodes as backbone features, and
training runs only the head (``SST.head``). The trainer does this with ``data.feature_cache=true``.

A cache lives in ``<cache dir>/features/<key>/`` (``$SST_FAST_CACHE``, see
:func:`~sst_fast.files.default_cache_dir`), ``key`` a SHA-256 of the backbone's weights, the
data set's description, the input size and the image list: another backbone or data set gets
another cache, and the same ones reuse it across runs. ``features.f16`` is written first and
``meta.json`` last, each atomically, so an interrupted build leaves no cache that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import as_size
from ..data.base import FewShotDataset
from ..files import default_cache_dir, strict_json, write_text_atomic
from ..data.episodes import EpisodeDataset, network_input, network_mask

FORMAT = 1


def cache_key(backbone: nn.Module, dataset: FewShotDataset, image_ids: Sequence[str], size) -> str:
    """The SHA-256 naming the cache of ``backbone``'s features of ``image_ids`` at ``size``."""
    digest = hashlib.sha256()
    header = {"format": FORMAT, "data": dataset.describe(), "size": list(as_size(size, "size"))}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    digest.update("\n".join(image_ids).encode())
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Backbone features [Cb, h, w] (float16) of a fixed list of images; ``cache[ids]`` -> [n, Cb, h, w]."""

    def __init__(self, folder) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
            shape = tuple(meta["shape"])
            self.image_ids: list[str] = list(meta["image_ids"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"feature cache: {meta_path} is missing or unreadable ({error})") from None
        if meta.get("format") != FORMAT or len(self.image_ids) != shape[0]:
            raise ValueError(f"feature cache: {meta_path} does not describe a format-{FORMAT} cache")
        path = self.folder / "features.f16"
        expected = int(np.prod(shape)) * 2
        if not path.is_file() or path.stat().st_size != expected:
            raise ValueError(f"feature cache: {path} is missing or not {expected} bytes; delete {self.folder}")
        self.meta = meta
        self.shape = shape
        self.rows = {image_id: row for row, image_id in enumerate(self.image_ids)}
        self._array = np.memmap(path, dtype=np.float16, mode="r", shape=shape)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, image_ids: Sequence[str]) -> torch.Tensor:
        """The features of ``image_ids`` (a copy out of the map), [n, Cb, h, w] float16."""
        try:
            rows = [self.rows[image_id] for image_id in image_ids]
        except KeyError as error:
            raise KeyError(f"feature cache: image {error.args[0]!r} is not in {self.folder}") from None
        return torch.from_numpy(np.stack([self._array[row] for row in rows]))

    @classmethod
    def open_or_build(
        cls,
        backbone: nn.Module,
        dataset: FewShotDataset,
        image_ids: Sequence[str],
        size,
        root=None,
        batch_size: int = 16,
        log=None,
    ) -> FeatureCache:
        """The cache of these features under ``root`` (default: the data cache dir), built if absent."""
        image_ids = list(image_ids)
        folder = Path(root or default_cache_dir() / "features") / cache_key(backbone, dataset, image_ids, size)
        if (folder / "meta.json").is_file():
            try:
                return cls(folder)
            except ValueError as error:
                if log is not None:
                    log.warning("%s; rebuilding it", error)
        return cls.build(folder, backbone, dataset, image_ids, size, batch_size, log)

    @classmethod
    def build(cls, folder, backbone, dataset, image_ids, size, batch_size: int = 16, log=None) -> FeatureCache:
        """Run ``backbone`` (eval mode, no gradients) over ``image_ids`` and write the cache in ``folder``."""
        folder, size = Path(folder), as_size(size, "size")
        if not image_ids:
            raise ValueError("feature cache: no images to cache")
        device = next(backbone.parameters()).device
        was_training = backbone.training
        backbone.eval()
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".features.{uuid.uuid4().hex}.tmp"
        array = None
        try:
            for start in range(0, len(image_ids), batch_size):
                chunk = image_ids[start : start + batch_size]
                images = torch.stack([network_input(dataset.load(image_id).image, size) for image_id in chunk]).to(
                    device
                )
                with torch.no_grad():
                    features = backbone(images).to("cpu", torch.float16)
                if array is None:
                    shape = (len(image_ids), *features.shape[1:])
                    array = np.memmap(temporary, dtype=np.float16, mode="w+", shape=shape)
                array[start : start + len(chunk)] = features.numpy()
            array.flush()
            del array
            os.replace(temporary, folder / "features.f16")
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        finally:
            backbone.train(was_training)
        meta = {
            "format": FORMAT,
            "shape": list(shape),
            "size": list(size),
            "data": dataset.describe(),
            "image_ids": list(image_ids),
        }
        write_text_atomic(folder / "meta.json", strict_json(meta, indent=None, default=str) + "\n")
        if log is not None:
            log.info("cached the backbone features of %d images in %s", len(image_ids), folder)
        return cls(folder)


class CachedEpisodeDataset(EpisodeDataset):
    """:class:`~sst_fast.data.EpisodeDataset` serving backbone features from a :class:`FeatureCache`.

    Items hold ``query_features`` [Cb, h, w] and ``support_features`` [K, Cb, h, w] (float16) in place
    of the images, and the masks at ``size`` as without augmentation (only the labels are read).
    """

    def __init__(self, dataset: FewShotDataset, episodes, size, cache: FeatureCache):
        super().__init__(dataset, episodes, size)
        self.cache = cache

    def __getitem__(self, index: int) -> dict:
        episode = self.episodes[index]
        ids = [episode.query, *episode.supports]
        features = self.cache[ids]
        masks = [self._mask(image_id, episode.class_id) for image_id in ids]
        return {
            "query_features": features[0],
            "query_mask": masks[0],
            "support_features": features[1:],
            "support_masks": torch.stack(masks[1:]),
            "class_id": episode.class_id,
            "index": index,
        }

    def _mask(self, image_id: str, class_id: int) -> torch.Tensor:
        return network_mask(
            torch.from_numpy(self.dataset.episode_mask(self.dataset.load_label(image_id), class_id)), self.size
        )
