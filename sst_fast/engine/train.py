"""Episodic training with a run folder, atomic checkpoints, base-class validation and exact resume.

A run folder holds::

    config.yaml              the resolved configuration (every default written out)
    version.json             code version, torch, python, the command line
    train.log                the log
    metrics.jsonl            one JSON record per logged step and per validation
    tensorboard/             the same scalars for TensorBoard
    validation/manifest.json the validation episodes (base classes, held-out training images)
    checkpoints/last.pt      the latest state (every ``run.checkpoint_every`` steps, each epoch, on Ctrl-C)
    checkpoints/best.pt      the state with the best validation mIoU
    curves.png               training curves

Everything random is a function of ``run.seed``: the initial weights, the episodes of epoch ``e``
(seed ``(seed, e)``), each episode's augmentation (seeded per item) and dropout (the torch RNG, saved
in every checkpoint). Resuming from a checkpoint therefore continues the very same run: training
N steps in one go or k steps, stop, resume, N - k steps ends with the same parameters.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
import warnings
from pathlib import Path

import torch

from ..config import positive_int
from ..files import first_missing, strict_json, write_json_atomic, write_text_atomic
from ..models import SST
from ..protocol import code_version
from . import distributed, runlog
from .checkpoint import load_checkpoint, save_checkpoint, saved_config
from .evaluate import score_episodes
from .features import FeatureCache
from .runconfig import ConfigError, RunConfig
from .runfolder import RunFolderBusy, RunLock, check_belongs, folder_run_id, new_run_id, record_run_id
from .speed import autocast, grad_scaler, set_memory_format
from .trainingdata import TrainingData

# Settings a resumed run may change: where the data are, how it runs and logs, and how long it trains
# (``optim.epochs`` only with the constant schedule: the poly schedule's length is part of every step's lr).
RESUMABLE_OVERRIDES = (
    "optim.epochs",
    "data.root",
    "data.workers",
    "run.device",
    "run.threads",
    "run.log_every",
    "run.checkpoint_every",
    "run.channels_last",
    "run.progress_seconds",
)


TRAINING_KEYS = ("optimizer", "scheduler", "step", "epoch", "batch_in_epoch", "rng", "best", "history")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss is no longer finite)."""


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    status: str  # "finished", "stopped" (max_steps reached) or "interrupted" (Ctrl-C / SIGTERM)
    step: int
    epoch: int
    best_miou: float | None
    best_step: int | None

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "best.pt"


class Trainer:
    """Trains :class:`sst_fast.SST` on the base classes of a fold; see the module docstring for the run folder.

    ``Trainer(config, run_dir)`` starts a new run (the folder must not hold one already);
    :meth:`Trainer.resume` continues the run in a folder from its last checkpoint.
    """

    def __init__(self, config: RunConfig, run_dir, progress: bool = True, _state: dict | None = None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.last_path = self.run_dir / "checkpoints" / "last.pt"
        self.best_path = self.run_dir / "checkpoints" / "best.pt"
        self.world = distributed.current()
        if _state is None:
            self._refuse_a_held_run()  # before taking the lock: a refused start leaves the folder as it was
        created = first_missing(self.run_dir)
        # One writer per run folder: rank 0 holds its lock from here to the end of fit() (the other ranks write
        # nothing). A folder that another process holds is left exactly as it is.
        self._lock = RunLock(self.run_dir) if self.world.main else None
        lock_file_existed = self.world.main and self._lock.path.exists()
        busy = None
        if self._lock is not None:
            try:
                self._lock.acquire()
            except RunFolderBusy as error:
                busy = str(error)
        busy = distributed.broadcast(busy, self.world)
        if busy is not None:
            raise RunFolderBusy(busy)
        try:
            if _state is None:
                self._refuse_a_held_run()  # again: it may have been written while we waited for the lock
            self.run_id = (
                new_run_id()
                if _state is None
                else check_belongs(self.run_dir, _state, saved_config(_state), RESUMABLE_OVERRIDES)
            )
        except BaseException:
            self._abandon(created, lock_file_existed, existing=None)
            raise
        # Every rank has checked the folder before rank 0 creates anything in it.
        distributed.barrier(self.world)
        existing = set(self.run_dir.iterdir()) if created is None and _state is None else None
        try:
            self._setup(_state)
        except BaseException as error:
            if _state is not None and isinstance(error, Exception) and hasattr(self, "log"):
                # A resumed run keeps its folder and its log: the log says why it could not go on.
                runlog.log_fatal(self.log, error, f"on resuming from step {_state['step']}")
            # A run that could not start leaves nothing behind: no half-made folder, no files in the user's.
            runlog.close_logger()
            self._abandon(created, lock_file_existed, existing)
            raise
        self._stop_reason: str | None = None
        self._stop_agreed = False

    def _refuse_a_held_run(self) -> None:
        if self.last_path.exists():
            raise ConfigError(
                f"run_dir: {self.run_dir} already holds a run; continue it with --resume or choose another folder"
            )

    def _abandon(self, created: Path | None, lock_file_existed: bool, existing: set[Path] | None) -> None:
        """Undo what a start that failed made (rank 0): the folder it created, or the files it added to the
        user's (``existing``: what the folder held before); then the lock, and the lock file if it made it."""
        if self._lock is None:
            return
        if created is not None:
            self._lock.release()
            shutil.rmtree(created, ignore_errors=True)
            return
        added = set(self.run_dir.iterdir()) - existing - {self._lock.path} if existing is not None else set()
        for entry in added:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        self._lock.release()
        if not lock_file_existed:
            self._lock.path.unlink(missing_ok=True)

    def _setup(self, _state: dict | None) -> None:
        config, world = self.config, self.world
        self.log = runlog.run_logger(self.run_dir / "train.log" if world.main else None, world)
        if config.run.threads is not None:
            torch.set_num_threads(config.run.threads)
        self.device = resolve_device(config.run.device, world=world)
        if _state is None:
            _check_backbone_weights(config)

        manifest = self.run_dir / "validation" / "manifest.json" if world.main else None
        self.data = TrainingData(config, world, self.log, manifest)
        torch.manual_seed(config.run.seed)  # the initial weights (the same on every rank)
        model_config = config.model
        if _state is not None:  # the checkpoint holds the backbone: never reread a file that may have moved
            model_config = dataclasses.replace(model_config, backbone_weights=None)
        self.model = set_memory_format(SST(model_config).to(self.device), config.run.channels_last)
        if world.distributed:  # each rank its own dropout stream
            torch.manual_seed(distributed.rank_seed(config.run.seed, world.rank))
        if _state is None:
            _check_weights_report(config, self.model.backbone.load_report, self.log)
        if config.model.backbone != "tiny" and config.model.backbone_weights is None and _state is None:
            self.log.warning(
                "model.backbone_weights is not set: the %s backbone starts from random weights", config.model.backbone
            )
        self.feature_cache = None
        if config.data.feature_cache:
            if not self.model.config.freeze_backbone:
                raise ConfigError("data.feature_cache needs a frozen backbone: set model.freeze_backbone=true")
            images = sorted(set().union(*self.data.sampler.pools.values()))
            # Rank 0 builds the cache; the others wait for it, then open it.
            if not world.main:
                distributed.barrier(world)
            self.feature_cache = FeatureCache.open_or_build(
                self.model.backbone, self.data.dataset, images, model_config.image_size, log=self.log
            )
            if world.main:
                distributed.barrier(world)
        self.network = self._wrap(self.model)
        self.optimizer = _optimizer(self.model, config.optim)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.scaler = grad_scaler(self.device, config.run.amp)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_miou: float | None = None
        self.best_step: int | None = None
        self.history: list[dict] = []
        self.checkpoint_step: int | None = None  # the step of checkpoints/last.pt, once this run wrote or read it
        if world.main:  # what a save killed half-way left behind (the checkpoint itself is whole)
            for stale in self.last_path.parent.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        if _state is not None:
            self._restore(_state)
        elif world.main:
            # A run that died before its first checkpoint may have left logs: a new run starts them afresh.
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            shutil.rmtree(self.run_dir / "tensorboard", ignore_errors=True)
            config.save(self.run_dir / "config.yaml")
            versions = {**runlog.versions(), "run_id": self.run_id}
            write_json_atomic(self.run_dir / "version.json", versions)

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def resume(cls, run_dir, overrides=(), progress: bool = True) -> Trainer:
        """Continue the run in ``run_dir`` from ``checkpoints/last.pt``. ``overrides`` may change only
        settings that do not alter the run (:data:`RESUMABLE_OVERRIDES`), e.g. ``optim.epochs`` to train longer."""
        from .runconfig import apply_overrides

        run_dir = Path(run_dir)
        last = run_dir / "checkpoints" / "last.pt"
        if not last.exists():
            raise ConfigError(f"resume: {run_dir} holds no checkpoints/last.pt to resume from")
        state = load_checkpoint(last)
        missing = sorted(set(TRAINING_KEYS) - set(state))
        if missing:
            raise ConfigError(f"resume: {last} is not a training checkpoint (it lacks {missing})")
        for override in overrides:
            key = str(override).partition("=")[0].strip()
            if key not in RESUMABLE_OVERRIDES:
                raise ConfigError(
                    f"resume: {key!r} cannot change in a resumed run (allowed: {', '.join(RESUMABLE_OVERRIDES)})"
                )
            if key == "optim.epochs" and state["config"]["optim"].get("schedule") == "poly":
                raise ConfigError("resume: optim.epochs cannot change with optim.schedule=poly (it sets every lr)")
        config = RunConfig.from_dict(apply_overrides(saved_config(state), overrides))
        trainer = cls(config, run_dir, progress=progress, _state=state)
        if overrides and trainer.world.main:
            config.save(run_dir / "config.yaml")
        return trainer

    def _wrap(self, model: SST) -> torch.nn.Module:
        """The module a training step calls: the model's training forward, in DistributedDataParallel on
        several processes (gradients averaged over the ranks during the backward pass)."""
        step = _TrainingForward(model, self.config.model.image_size)
        if not self.world.distributed:
            return step
        if not model.config.freeze_backbone and any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.backbone.modules()
        ):
            if self.device.type == "cuda":
                model.backbone = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.backbone)
            else:
                self.log.warning(
                    "the backbone's BatchNorm statistics are per process (no SyncBatchNorm on the CPU): "
                    "the run differs slightly from a single-process one"
                )
        return torch.nn.parallel.DistributedDataParallel(
            step,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            # Without the tuning module a learnable step takes no part in the loss.
            find_unused_parameters=not model.config.ssm,
        )

    def _lr_factor(self, step: int) -> float:
        if self.config.optim.schedule == "poly":
            return max(1.0 - step / self.data.total_steps, 0.0) ** 0.9
        return 1.0

    # --- checkpoints ----------------------------------------------------------------------------

    def state(self) -> dict:
        """Everything a resume needs; with several processes, every rank's random state (a collective call)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.world.distributed:
            rng = {**rng, "ranks": distributed.all_gather(rng, self.world)}
        return {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "rng": rng,
            "best": {"miou": self.best_miou, "step": self.best_step},
            "history": self.history,
            "code_version": code_version(),
            "run_id": self.run_id,
        }

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # empty (and absent in older checkpoints) unless run.amp is fp16
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_miou, self.best_step = state["best"]["miou"], state["best"]["step"]
        self.history = list(state["history"])
        self.checkpoint_step = self.step
        rng = state["rng"]
        saved_by = len(rng.get("ranks", ())) or 1
        if saved_by == self.world.size:
            rng = rng["ranks"][self.world.rank] if "ranks" in rng else rng
            torch.set_rng_state(rng["torch"])
            if self.device.type == "cuda" and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        else:
            # Another number of processes: the global batches are the same, the dropout streams cannot be.
            torch.manual_seed(distributed.rank_seed(self.config.run.seed + self.step, self.world.rank))
            self.log.warning(
                "the run was saved by %d process(es) and resumes on %d: dropout is reseeded, so it is not "
                "bit-identical to an uninterrupted run",
                saved_by,
                self.world.size,
            )
        if self.world.main:
            if folder_run_id(self.run_dir) != self.run_id:  # a run from before run ids: the folder records it now
                record_run_id(self.run_dir, self.run_id)
            # The log on disk may run ahead of the checkpoint (a crash after it): keep what the state knows.
            log = "".join(strict_json(r, indent=None) + "\n" for r in self.history)
            write_text_atomic(self.run_dir / "metrics.jsonl", log)
        self.log.info("resumed from %s at step %d (epoch %d)", state["path"], self.step, self.epoch)

    def save(self, best: bool = False) -> None:
        """Write checkpoints/last.pt (and best.pt): rank 0 writes, every rank returns once it is written."""
        state = self.state()
        if self.world.main:
            if best:  # best first: a crash between the two writes leaves last.pt behind, and resuming redoes it
                save_checkpoint(self.best_path, state)
            save_checkpoint(self.last_path, state)
        self.checkpoint_step = self.step
        distributed.barrier(self.world)

    # --- the loop -------------------------------------------------------------------------------

    def fit(self, max_steps: int | None = None) -> TrainResult:
        """Train to the configured number of epochs, or until global step ``max_steps`` (then checkpoint and
        return, resumable). Ctrl-C or SIGTERM finishes the current step, checkpoints and returns."""
        if max_steps is not None:
            positive_int(max_steps, "max_steps")
        if self._lock is not None:
            self._lock.acquire()  # held since __init__; taken again by a second fit() on the same trainer
        try:
            return self._fit(max_steps)
        except Exception as error:  # not KeyboardInterrupt: a second Ctrl-C aborts at once, as asked
            # Whatever ends the run is recorded in its log too, not only shown on the console.
            runlog.log_fatal(self.log, error, f"after step {self.step}", traceback=not isinstance(error, TrainingError))
            raise
        finally:
            if self._lock is not None:
                self._lock.release()

    def close(self) -> None:
        """Let another process have the run folder without training (fit() does this when it returns)."""
        if self._lock is not None:
            self._lock.release()

    def _fit(self, max_steps: int | None) -> TrainResult:
        # Events after the checkpoint's step were logged by a run that crashed: drop them (step+1 keeps the step's own).
        writer = None
        if self.world.main:
            purge = self.step + 1 if self.step else None
            writer = runlog.summary_writer(self.run_dir / "tensorboard", purge_step=purge)
        shown = self.progress and self.world.main
        bar = runlog.progress_bar(self.data.total_steps, self.step, shown, self.config.run.progress_seconds, self.log)
        status = "finished"
        started, start_step = time.perf_counter(), self.step
        try:
            with runlog.stop_on_signals(self._request_stop):
                status = self._loop(max_steps, writer, bar)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        rate = (self.step - start_step) / max(time.perf_counter() - started, 1e-9)
        self.log.info(
            "%s at step %d/%d (%.2f steps/s); best validation mIoU %s",
            status,
            self.step,
            self.data.total_steps,
            rate,
            runlog.percent(self.best_miou),
        )
        if status == "interrupted":
            self.log.info("resume with: sst-fast train --resume %s", self.run_dir)
        if self.world.main:
            self._plot_curves()
        return TrainResult(self.run_dir, status, self.step, self.epoch, self.best_miou, self.best_step)

    def _loop(self, max_steps, writer, bar) -> str:
        cfg = self.config
        if max_steps is not None and self.step >= max_steps:
            # Already there (a resumed run asked to stop at an earlier step): nothing to do, and the user is told.
            self.log.warning(
                "max_steps=%d is not beyond the step this run has reached (%d): nothing to train; "
                "a larger --max-steps (or none) trains on",
                max_steps,
                self.step,
            )
            return "stopped"
        while self.epoch < cfg.optim.epochs:
            for batch in self.data.loader(self.epoch, self.batch_in_epoch, self.device, self.feature_cache):
                record = self.train_step(batch)
                self.step += 1
                self.batch_in_epoch += 1
                bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
                bar.update(1)
                if self.step % cfg.run.log_every == 0 or self.step == 1:
                    self._record({"step": self.step, "epoch": self.epoch, **record}, writer)
                if self.step % cfg.run.checkpoint_every == 0:
                    self.save()
                if self._stopping or (max_steps is not None and self.step >= max_steps):
                    self.save()
                    return "interrupted" if self._stopping else "stopped"
            self.epoch += 1
            self.batch_in_epoch = 0
            improved = False
            if self.epoch % cfg.run.val_every == 0 or self.epoch == cfg.optim.epochs:
                improved = self.validate(writer)
            self.save(best=improved)
            if self._stopping and self.epoch < cfg.optim.epochs:
                return "interrupted"
        return "finished"

    @property
    def _stopping(self) -> bool:
        """A stop was asked for (on any rank: the ranks agree at every step, so they stop at the same one)."""
        return self._stop_agreed if self.world.distributed else self._stop_reason is not None

    def train_step(self, batch: dict) -> dict:
        """One optimiser step on a batch of episodes (this rank's share of the global batch with several
        processes); returns the global batch's losses and the learning rate used."""
        self.network.train()
        lr = self.optimizer.param_groups[0]["lr"]
        with autocast(self.device, self.config.run.amp):
            out = self.network(batch)
        loss = out.loss
        if self.world.distributed:
            # Sum the ranks' losses weighted by their share; the same exchange agrees on stopping.
            share = len(batch["class_id"])
            aux = out.aux_loss if out.aux_loss is not None else out.loss.new_zeros(())
            local = torch.stack([out.loss.detach(), out.main_loss.detach(), aux.detach()]).double().cpu() * share
            stop = float(self._stop_reason is not None)
            sums = distributed.all_sum(torch.cat([local, torch.tensor([share, stop], dtype=torch.float64)]), self.world)
            total = sums[3].item()
            losses = (sums[:3] / total).tolist()
            self._stop_agreed = bool(sums[4] > 0)
            # DistributedDataParallel averages the ranks' gradients: weighted so that it is the global mean.
            loss = out.loss * (self.world.size * share / total)
        else:
            losses = [out.loss.item(), out.main_loss.item(), out.aux_loss.item() if out.aux_loss is not None else 0.0]
        if not math.isfinite(losses[0]):
            raise TrainingError(
                f"the loss is {losses[0]} at step {self.step + 1} (optim.lr={self.config.optim.lr} too high?); "
                f"{self._last_checkpoint()}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.optim.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        record = {"loss": losses[0], "main_loss": losses[1], "lr": lr}
        if out.aux_loss is not None:
            record["aux_loss"] = losses[2]
        if self.model.tuning.log_step is not None:  # the learned alpha's trajectory
            record["tune_step"] = self.model.tuning.step().item()
        return record

    def _last_checkpoint(self) -> str:
        """Where a run that cannot go on stands: its last checkpoint, if one is on disk."""
        if not self.last_path.exists():
            return "no checkpoint was written yet (nothing to resume): start the run again, e.g. with a lower optim.lr"
        step = f" (step {self.checkpoint_step})" if self.checkpoint_step is not None else ""
        return f"the last checkpoint is {self.last_path}{step}"

    def validate(self, writer=None) -> bool:
        """Score the validation episodes; record them; True when the mIoU is the best so far."""
        with warnings.catch_warnings():
            # A class no validation episode scores is left out of the mIoU; that is expected, not news.
            warnings.simplefilter("ignore", UserWarning)
            metrics = score_episodes(
                self.model,
                self.data.dataset,
                self.data.val_classes,
                self.data.val_episodes,
                self.config.model.image_size,
                batch_size=self.config.optim.batch_size,
                num_workers=self.config.data.workers,
                progress="validation" if self.progress else None,
                amp=self.config.run.amp,
            )
        miou = metrics["miou"]
        improved = not math.isnan(miou) and (self.best_miou is None or miou > self.best_miou)
        if improved:
            self.best_miou, self.best_step = miou, self.step
        self._record(
            {"step": self.step, "epoch": self.epoch, "val_miou": miou, "val_fb_iou": metrics["fb_iou"]}, writer
        )
        self.log.info(
            "epoch %d step %d: validation mIoU %s, FB-IoU %s%s",
            self.epoch,
            self.step,
            runlog.percent(miou),
            runlog.percent(metrics["fb_iou"]),
            " (best)" if improved else "",
        )
        return improved

    def _record(self, record: dict, writer) -> None:
        self.history.append(record)
        if not self.world.main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as file:
            file.write(strict_json(record, indent=None) + "\n")
        if writer is not None:
            for key, value in record.items():
                if key not in ("step", "epoch"):
                    writer.add_scalar(("val/" if key.startswith("val_") else "train/") + key, value, record["step"])
        if "loss" in record:
            self.log.debug("step %d: %s", record["step"], record)

    def _request_stop(self, reason: str) -> None:
        self._stop_reason = reason
        self.log.warning("%s: stopping after this step and writing a checkpoint (again to abort at once)", reason)

    def _plot_curves(self) -> None:
        if not any("loss" in r or "val_miou" in r for r in self.history):
            return
        try:
            from ..viz import figure_curves

            figure_curves(self.history, self.run_dir / "curves.png", title=self.run_dir.name)
        except Exception as error:  # a figure must never cost a finished run
            self.log.warning("could not draw the training curves: %s", error)


class _TrainingForward(torch.nn.Module):
    """The model's training forward on a batch, from images or from cached backbone features (one module for
    DistributedDataParallel to wrap: it synchronises the gradients of whatever its forward computes)."""

    def __init__(self, model: SST, size) -> None:
        super().__init__()
        self.model = model
        self.size = size

    def forward(self, batch: dict):
        device = self.model.embed.conv.weight.device
        masks = batch["support_masks"].to(device, non_blocking=True), batch["query_mask"].to(device, non_blocking=True)
        if "query_features" in batch:  # data.feature_cache: the backbone ran once, ahead of training
            dtype = self.model.embed.conv.weight.dtype
            query = batch["query_features"].to(device, dtype, non_blocking=True)
            support = batch["support_features"].to(device, dtype, non_blocking=True)
            return self.model.head(query, support, *masks, size=self.size)
        query = batch["query"].to(device, non_blocking=True)
        support = batch["support_images"].to(device, non_blocking=True)
        return self.model(query, support, *masks)


# --- helpers --------------------------------------------------------------------------------------


def _optimizer(model: SST, optim) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters. With ``optim.step_lr`` the learnable tuning step
    (``tuning.log_step``) is a group of its own: that learning rate, no weight decay; without it the
    step is an ordinary parameter of the first group."""
    step = model.tuning.log_step
    own_group = optim.step_lr is not None and step is not None
    main = [p for p in model.parameters() if p.requires_grad and not (own_group and p is step)]
    groups = [{"params": main}] + ([{"params": [step], "lr": optim.step_lr, "weight_decay": 0.0}] if own_group else [])
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)


def _check_backbone_weights(config: RunConfig) -> None:
    """A frozen ResNet/VGG without weights stays random for the whole run: refuse it unless allowed."""
    model = config.model
    if (
        model.backbone != "tiny"
        and model.freeze_backbone
        and model.backbone_weights is None
        and not config.run.allow_random_backbone
    ):
        raise ConfigError(
            f"model.backbone_weights is not set: the frozen {model.backbone} backbone would stay random for the "
            "whole run, which can only learn on noise; set model.backbone_weights=PATH (torchvision's ImageNet "
            "weights, see docs/data.md), or run.allow_random_backbone=true to train anyway"
        )


def _check_weights_report(config: RunConfig, report, log) -> None:
    """A weights file that left part of the backbone at its random initialisation: an error unless allowed."""
    if report is None or not report.missing:
        return
    where = config.model.backbone_weights
    if not config.run.allow_random_backbone:
        raise ConfigError(
            f"model.backbone_weights: {where} fills only part of the {config.model.backbone} backbone ({report}); "
            "use a complete file, or run.allow_random_backbone=true to train with the rest random"
        )
    log.warning("model.backbone_weights: %s fills only part of the backbone (%s): the rest stays random", where, report)


def train(config: RunConfig, run_dir, max_steps: int | None = None, progress: bool = True) -> TrainResult:
    """Start a run in ``run_dir`` and train it (see :class:`Trainer`)."""
    return Trainer(config, run_dir, progress=progress).fit(max_steps)


def resolve_device(name: str, setting: str = "run.device", world: distributed.World | None = None) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything unusable is a :class:`ConfigError` naming ``setting``.
    With several processes, ``auto`` and ``cuda`` mean each process's own GPU (``cuda:LOCAL_RANK``)."""
    world = world or distributed.current()
    if name in ("auto", "cuda") and world.distributed and torch.cuda.is_available():
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{setting} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{setting} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting}={name!r} but this torch has no CUDA device; use 'cpu' or 'auto'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{setting}={name!r} but there are {torch.cuda.device_count()} CUDA device(s)")
    return device
