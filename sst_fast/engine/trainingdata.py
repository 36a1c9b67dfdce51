"""What a run trains and validates on: the fold's training episodes, the base-class validation episodes on
held-out training images, and each epoch's loader (the same global batches on any number of processes)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import Augment, EpisodeDataset, EpisodeManifest, EpisodeSampler, collate_episodes, open_dataset
from ..data.episodes import fold_sampler, holdout
from . import distributed, runlog
from .features import CachedEpisodeDataset
from .runconfig import ConfigError, RunConfig

HOLDOUT_SALT = "validation"
VALIDATION_SEED = 0


class TrainingData:
    """The data of a training run (:class:`sst_fast.engine.train.Trainer`): ``dataset``, the training
    ``sampler`` over the images outside the validation hold-out, ``episodes_per_epoch``, ``steps_per_epoch``
    and ``total_steps``, and the fixed ``val_classes`` / ``val_episodes``. ``manifest_path``: where to save the
    validation manifest (rank 0), or None."""

    def __init__(self, config: RunConfig, world: distributed.World, log, manifest_path: Path | None) -> None:
        self.config = config
        self.world = world
        data, shots = config.data, config.model.shots
        self.dataset = open_dataset(data.dataset, data.root, **data.options)
        split = self.dataset.fold_split(data.fold)
        if not split.train_classes:
            raise ConfigError(
                f"data.fold: fold {data.fold} of {data.dataset} has no base classes to train on (every class is "
                "novel): name them with data.options.base/novel, data.options.folds or the data's splits.yaml"
            )
        train_images = self.dataset.image_ids(split.train_split)
        held_out = holdout(train_images, data.val_fraction, HOLDOUT_SALT)
        kept = [image for image in train_images if image not in held_out]
        self.sampler = fold_sampler(self.dataset, data.fold, shots, "train", data.exclude_novel, images=kept)
        self.episodes_per_epoch = config.optim.episodes_per_epoch or len(kept)
        batch_size, processes = config.optim.batch_size, world.size
        if batch_size > self.episodes_per_epoch:  # (a set optim.episodes_per_epoch is checked with the config)
            raise ConfigError(
                f"optim.batch_size={batch_size} is more than an epoch (optim.episodes_per_epoch=null: one episode "
                f"per training image, {len(kept)} training images here): every epoch would be one step of "
                f"{len(kept)} episodes; lower optim.batch_size or set optim.episodes_per_epoch"
            )
        if batch_size < processes:
            raise ConfigError(
                f"optim.batch_size={batch_size} (the global batch) is smaller than the {processes} processes"
            )
        self.steps_per_epoch = self.episodes_per_epoch // batch_size
        if self.episodes_per_epoch % batch_size >= processes:  # a last, smaller batch that every rank can share
            self.steps_per_epoch += 1
        self.total_steps = config.optim.epochs * self.steps_per_epoch

        # Validation: base-class episodes on the held-out training images, the same episodes every time.
        excluded = set(split.test_classes) if data.exclude_novel else set()
        classes = []
        for class_id in split.train_classes:
            pool = [i for i in self.dataset.class_images(split.train_split, class_id) if i in held_out]
            pool = [i for i in pool if excluded.isdisjoint(self.dataset.image_classes(split.train_split, i))]
            if len(pool) >= shots + 1:
                classes.append(class_id)
        if not classes:
            raise ConfigError(
                f"data.val_fraction={data.val_fraction} holds out too few images for {shots}-shot validation "
                "episodes of any base class; raise it"
            )
        missing = sorted(set(split.train_classes) - set(classes))
        sampler = EpisodeSampler(self.dataset, classes, split.train_split, shots, tuple(excluded), images=held_out)
        self.val_classes = classes
        self.val_episodes = sampler.sample(data.val_episodes, VALIDATION_SEED)
        manifest = EpisodeManifest(
            self.dataset.describe(), split.train_split, data.fold, shots, VALIDATION_SEED, self.val_episodes
        )
        if manifest_path is not None:
            manifest.save(manifest_path)
        log.info(
            "%s fold %s: %d training images (%d held out for validation), %d base classes, %d-shot, "
            "%d episodes/epoch = %d steps of %d",
            data.dataset,
            data.fold,
            len(kept),
            len(held_out),
            len(split.train_classes),
            shots,
            self.episodes_per_epoch,
            self.steps_per_epoch,
            config.optim.batch_size,
        )
        if missing:
            log.warning("validation leaves out base classes %s (too few held-out images)", missing)
        leftover = self.episodes_per_epoch % batch_size
        if 0 < leftover < processes:
            log.warning(
                "the last %d episode(s) of each epoch are left out: fewer than the %d processes", leftover, processes
            )
        if processes > 1:
            log.info("%d processes share each batch of %d episodes", processes, batch_size)

    def loader(self, epoch: int, start_batch: int, device: torch.device, feature_cache=None):
        """Epoch ``epoch``'s episodes (seeded by ``(run.seed, epoch)``) from global batch ``start_batch`` on, as
        this rank's share of each global batch; from ``feature_cache`` when given, else from the images."""
        cfg = self.config
        episodes = self.sampler.sample(self.episodes_per_epoch, (cfg.run.seed, epoch))
        augment = Augment(cfg.model.image_size) if cfg.data.augment else None
        if feature_cache is not None:
            dataset = CachedEpisodeDataset(self.dataset, episodes, cfg.model.image_size, feature_cache)
        else:
            dataset = EpisodeDataset(
                self.dataset, episodes, cfg.model.image_size, augment=augment, seed=(cfg.run.seed, epoch)
            )
        # The global batches of the epoch (the last one only if every rank can take part), from start_batch on;
        # this rank loads its share of each.
        size = cfg.optim.batch_size
        batches = [range(first, min(first + size, len(dataset))) for first in range(0, len(dataset), size)]
        batches = batches[: self.steps_per_epoch][start_batch:]
        shares = [[batch[i] for i in distributed.split(len(batch), self.world)] for batch in batches]
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=shares,
            num_workers=cfg.data.workers,
            collate_fn=collate_episodes,
            pin_memory=device.type == "cuda",
            worker_init_fn=runlog.ignore_interrupts,
            # Its own generator: creating an iterator must not draw from the torch RNG that dropout uses.
            generator=torch.Generator().manual_seed(0),
            persistent_workers=False,
        )
