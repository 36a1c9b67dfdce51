"""Few-shot evaluation: episodes -> model -> metrics, over seeds, with the protocol card."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import as_size, positive_int
from ..data.base import FewShotDataset
from ..files import write_json_atomic, write_text_atomic
from ..data.episodes import Episode, EpisodeDataset, EpisodeManifest, collate_episodes, fold_sampler
from ..metrics import FewShotMeter, mean_ci
from ..protocol import ProtocolCard, code_version
from . import distributed
from .runlog import is_terminal
from .speed import AMP_DTYPES, autocast


@dataclass
class EvaluationResult:
    """Metrics of each seed, their mean ± 95% CI, the manifests and the protocol card."""

    card: ProtocolCard
    runs: list[dict]  # FewShotMeter.compute() of each seed
    manifests: list[EpisodeManifest] = field(repr=False)

    def summary(self) -> dict:
        """``{metric: (mean, ci95 half-width)}`` for miou, fb_iou and episode_miou over the seeds."""
        return {key: mean_ci([run[key] for run in self.runs]) for key in ("miou", "fb_iou", "episode_miou")}

    def class_iou(self) -> dict[int, float]:
        """Each class's IoU averaged over the seeds that scored it (NaN if none did)."""
        averages = {}
        for c in self.card.test_classes:
            scored = [run["class_iou"][c] for run in self.runs if not math.isnan(run["class_iou"][c])]
            averages[c] = sum(scored) / len(scored) if scored else math.nan
        return averages

    def to_dict(self) -> dict:
        return {
            "protocol": self.card.to_dict(),
            "summary": {key: {"mean": mean, "ci95": ci} for key, (mean, ci) in self.summary().items()},
            "class_iou": {str(c): iou for c, iou in self.class_iou().items()},
            "runs": [_json_keys(run) for run in self.runs],
        }

    def save(self, directory) -> Path:
        """Write ``metrics.json`` (card, summary, per-class and per-seed numbers), ``protocol.txt`` and each
        seed's manifest (``manifests/seed-<seed>.json``) into ``directory``; returns the metrics file."""
        directory = Path(directory)
        for stale in (directory / "manifests").glob("seed-*.json"):  # an earlier run's seeds must not linger
            stale.unlink()
        for manifest in self.manifests:
            manifest.save(directory / "manifests" / f"seed-{manifest.seed}.json")
        write_text_atomic(directory / "protocol.txt", str(self.card) + "\n")
        metrics = directory / "metrics.json"
        write_json_atomic(metrics, self.to_dict())
        return metrics

    def table(self, class_names: Sequence[str] | None = None) -> str:
        """A plain-text table: per-class IoU, then mIoU, FB-IoU and episode-wise IoU (mean ± 95% CI in %)."""
        names = {c: f"{c} {class_names[c - 1]}" if class_names else str(c) for c in self.card.test_classes}
        width = max(24, *(len(name) + 2 for name in names.values()))
        lines = [f"{'class':<{width}} {'IoU %':>8}"]
        for c, iou in self.class_iou().items():
            lines.append(f"{names[c]:<{width}} {_percent(iou):>8}")
        lines.append("")
        for label, (mean, ci) in zip(("mIoU", "FB-IoU", "episode IoU"), self.summary().values(), strict=True):
            spread = f" ± {100 * ci:.2f}" if not math.isnan(ci) else ""
            lines.append(f"{label:<{width}} {_percent(mean):>8}{spread}")
        return "\n".join(lines)


def evaluate(
    model: nn.Module,
    dataset: FewShotDataset,
    fold,
    shots: int = 1,
    episodes: int = 1000,
    seeds: Sequence[int] = (0,),
    size=None,
    original_size: bool = False,
    batch_size: int = 8,
    num_workers: int = 0,
    manifests: Sequence[EpisodeManifest] | None = None,
    checkpoint: str | None = None,
    progress: bool = False,
    amp: str = "off",
) -> EvaluationResult:
    """Evaluate ``model`` on ``fold`` of ``dataset``: one run of ``episodes`` episodes per seed.

    With ``manifests`` the episodes are replayed from them instead of sampled (``shots``, ``episodes``
    and ``seeds`` then come from the manifests). ``original_size`` scores at each label's stored size
    (logits upsampled bilinearly) instead of the network's input size. ``size``: the network's input size
    (default: the model's own ``config.image_size``, the size it was trained at, as ``sst-fast eval`` does).
    ``amp``: ``off``, ``bf16`` or ``fp16`` autocast (written on the protocol card).
    """
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    split = dataset.fold_split(fold)
    size = as_size(model_input_size(model) if size is None else size, "size")
    if manifests is None:
        seeds = check_seeds(seeds)
        sampler = fold_sampler(dataset, fold, shots, stage="test")
        manifests = [
            EpisodeManifest(dataset.describe(), split.test_split, fold, shots, seed, sampler.sample(episodes, seed))
            for seed in seeds
        ]
    else:
        manifests = list(manifests)
        if not manifests:
            raise ValueError("manifests must hold at least one manifest")
        for manifest in manifests:
            manifest.check(dataset, fold)
        if len({(m.shots, len(m.episodes)) for m in manifests}) > 1:
            raise ValueError("manifests must all have the same shots and number of episodes")
    runs = [
        score_episodes(
            model, dataset, split.test_classes, manifest.episodes, size, original_size, batch_size, num_workers,
            progress=f"seed {manifest.seed}" if progress else None,
            amp=amp,
        )
        for manifest in manifests
    ]
    card = ProtocolCard(
        dataset=dataset.name,
        split_style=dataset.describe().get("style"),
        fold=fold,
        shots=manifests[0].shots,
        episodes=len(manifests[0].episodes),
        seeds=tuple(m.seed for m in manifests),
        data=dataset.describe(),
        test_classes=tuple(split.test_classes),
        test_split=split.test_split,
        resolution="original" if original_size else "input",
        input_size=size,
        min_pixels=dataset.min_pixels,
        checkpoint=checkpoint,
        model=_model_summary(model, amp),
        manifests=tuple(m.sha256 for m in manifests),
        code_version=code_version(),
    )
    return EvaluationResult(card, runs, manifests)


def model_input_size(model: nn.Module) -> tuple[int, int]:
    """The input size a model was trained at (its ``config.image_size``); a ValueError for a model without one."""
    size = getattr(getattr(model, "config", None), "image_size", None)
    if size is None:
        raise ValueError(f"size: {type(model).__name__} has no config.image_size to evaluate at; pass size=(H, W)")
    return as_size(size, "model.config.image_size")


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """``seeds`` as a list, or a ValueError: at least one, distinct (a repeated seed repeats its episodes)."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return seeds


def score_episodes(
    model: nn.Module,
    dataset: FewShotDataset,
    classes: Sequence[int],
    episodes: Sequence[Episode],
    size,
    original_size: bool = False,
    batch_size: int = 8,
    num_workers: int = 0,
    progress: str | None = None,
    amp: str = "off",
) -> dict:
    """Segment the queries of ``episodes`` with ``model`` (eval mode, no gradients) and score them:
    :meth:`FewShotMeter.compute` over ``classes``. ``progress``: the label of a progress bar, or None;
    ``amp``: ``off``, ``bf16`` or ``fp16`` autocast.

    In a process group (:mod:`sst_fast.engine.distributed`) every rank must call it: the batches are dealt
    to the ranks and the result, the same on every rank, equals a single process's exactly."""
    positive_int(batch_size, "batch_size")
    world = distributed.current()
    data = EpisodeDataset(dataset, episodes, as_size(size, "size"), keep_original=original_size)
    # The same batches as a single process, whole batches dealt to the ranks: each batch's numbers are the same.
    batches = [list(range(first, min(first + batch_size, len(data)))) for first in range(0, len(data), batch_size)]
    mine = list(distributed.deal(len(batches), world))
    loader = torch.utils.data.DataLoader(
        data,
        batch_sampler=[batches[index] for index in mine],
        num_workers=num_workers,
        collate_fn=collate_episodes,
        generator=torch.Generator().manual_seed(0),  # leave the global torch RNG (dropout's) untouched
    )
    parameter = next(model.parameters())
    meters = {}
    was_training = model.training
    model.eval()
    try:
        for index, batch in zip(mine, _progress(loader, progress if world.main else None), strict=True):
            meters[index] = meter = FewShotMeter(classes)
            with torch.no_grad(), autocast(parameter.device, amp):
                logits = model(
                    batch["query"].to(parameter.device, parameter.dtype),
                    batch["support_images"].to(parameter.device, parameter.dtype),
                    batch["support_masks"].to(parameter.device),
                ).logits.float()
            if original_size:
                for row, label in enumerate(batch["query_label"]):
                    # Back to the label's own size: the inverse of the bilinear input resize (pixel centres).
                    scaled = F.interpolate(
                        logits[row : row + 1], size=label.shape, mode="bilinear", align_corners=False
                    )
                    meter.update(scaled.argmax(1).cpu(), label[None], batch["class_id"][row : row + 1])
            else:
                meter.update(logits.argmax(1).cpu(), batch["query_mask"], batch["class_id"])
    finally:
        model.train(was_training)
    total = FewShotMeter(classes)
    for gathered in distributed.all_gather(meters, world):
        meters.update(gathered)
    for index in range(len(batches)):  # in batch order: the episode-wise mean sums in the same order
        total.merge(meters[index])
    return total.compute()


def _model_summary(model: nn.Module, amp: str = "off") -> dict:
    summary = {"class": type(model).__name__}
    config = getattr(model, "config", None)
    if config is not None:
        keys = ("backbone", "ssm", "aux_loss", "fusion", "tune_step", "tune_form", "first_order")
        summary.update({k: getattr(config, k) for k in keys if hasattr(config, k)})
    if amp != "off":
        summary["amp"] = amp
    return summary


def _progress(iterable, description: str | None):
    if description is None or not is_terminal(sys.stderr):
        return iterable  # no bar without a terminal: its carriage returns would run together in a log file
    from tqdm import tqdm

    return tqdm(iterable, desc=description, unit="batch", leave=False, dynamic_ncols=True)


def _json_keys(run: dict) -> dict:
    """JSON object keys are strings: the per-class dicts' int keys become str."""
    return {
        key: {str(c): v for c, v in value.items()} if isinstance(value, dict) else value for key, value in run.items()
    }


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f}"
