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
from ..files import strict_json, write_atomic, write_json_atomic, write_text_atomic
from ..data.episodes import Episode, EpisodeDataset, EpisodeManifest, collate_episodes, protocol_sampler
from ..metrics import FewShotMeter, episode_record, mean_ci
from ..protocol import (
    EMPTY_CLASS,
    EMPTY_FB_TERM,
    METRIC_DEFINITION,
    SUPPORT_DRAWS,
    Protocol,
    ProtocolCard,
    check_protocol_data,
    code_version,
    protocol_for,
)
from . import distributed
from .runlog import is_terminal
from .speed import AMP_DTYPES, autocast

EPISODES_FILE = "episodes.jsonl"  # each episode's record, one JSON object a line (EvaluationResult.save)


@dataclass
class EvaluationResult:
    """Metrics of each seed, their mean ± 95% CI, the manifests, the protocol card and each episode's counts."""

    card: ProtocolCard
    runs: list[dict]  # FewShotMeter.compute() of each seed
    manifests: list[EpisodeManifest] = field(repr=False)
    # FewShotMeter.counts() of each seed: a row per episode of its manifest, in order (None: not kept).
    counts: list[torch.Tensor] | None = field(default=None, repr=False)

    def episode_records(self):
        """Each episode's record, seed by seed in manifest order: ``{"seed", "episode" (its index in the seed's
        manifest), "class_id", "query", "supports", "intersection", "union", "iou"}`` (see
        :func:`~sst_fast.metrics.episode_record`); what ``episodes.jsonl`` holds, one a line."""
        if self.counts is None:
            raise ValueError("this evaluation kept no per-episode counts")
        for manifest, counts in zip(self.manifests, self.counts, strict=True):
            if len(counts) != len(manifest.episodes):
                raise ValueError(f"seed {manifest.seed}: {len(counts)} episode counts for {len(manifest.episodes)}")
            for number, (episode, row) in enumerate(zip(manifest.episodes, counts.tolist(), strict=True)):
                if row[0] != episode.class_id:
                    raise ValueError(f"seed {manifest.seed}, episode {number}: counts of class {row[0]}, not its class")
                scores = episode_record(*row)
                yield {
                    "seed": manifest.seed,
                    "episode": number,
                    "class_id": episode.class_id,
                    "query": episode.query,
                    "supports": list(episode.supports),
                    "intersection": scores["intersection"],
                    "union": scores["union"],
                    "iou": scores["iou"],
                }

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
        """Write ``metrics.json`` (card, summary, per-class and per-seed numbers), ``protocol.txt``, each
        seed's manifest (``manifests/seed-<seed>.json``) and each episode's record (``episodes.jsonl``, one JSON
        object a line: :meth:`episode_records`) into ``directory``; returns the metrics file."""
        directory = Path(directory)
        for stale in (directory / "manifests").glob("seed-*.json"):  # an earlier run's seeds must not linger
            stale.unlink()
        for manifest in self.manifests:
            manifest.save(directory / "manifests" / f"seed-{manifest.seed}.json")
        write_text_atomic(directory / "protocol.txt", str(self.card) + "\n")
        if self.counts is None:
            (directory / EPISODES_FILE).unlink(missing_ok=True)  # an earlier evaluation's episodes must not linger
        else:
            lines = [strict_json(record, indent=None) + "\n" for record in self.episode_records()]
            write_atomic(directory / EPISODES_FILE, lambda file: file.writelines(line.encode() for line in lines))
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


class NonFiniteLogits(ValueError):
    """A model returned NaN or infinite logits: its scores would be meaningless (an argmax of NaN is class 0)."""


def evaluate(
    model,
    dataset: FewShotDataset | str,
    fold,
    shots: int | None = None,
    episodes: int | None = None,
    seeds: Sequence[int] | None = None,
    size=None,
    original_size: bool = False,
    batch_size: int = 8,
    num_workers: int = 0,
    manifests: Sequence[EpisodeManifest] | None = None,
    checkpoint: str | None = None,
    progress: bool = False,
    amp: str = "off",
    protocol: str | Protocol | None = None,
    device=None,
    model_source: str | None = None,
    trained_on: dict | None = None,
    allow_seen_classes: bool = False,
) -> EvaluationResult:
    """Evaluate ``model`` on ``fold`` of ``dataset`` under ``protocol``: one run of ``episodes`` episodes per seed.

    ``model``: SST, or any ``nn.Module`` or callable with SST's call signature ``model(query, support_images,
    support_masks)`` (``[B, 3, H, W]``, ``[B, K, 3, H, W]``, ``[B, K, H, W]`` with 0/1/255) that returns
    logits ``[B, 2, h, w]`` (background, foreground), as a tensor or as an object with ``.logits``; logits at
    another size than the scored labels are resized bilinearly. ``protocol``: ``"sst"`` (the default),
    ``"pfenet"``, ``"hsnet"`` or a :class:`~sst_fast.protocol.Protocol`: how episodes are drawn and scored
    (docs/design.md §4.3). ``episodes`` and ``seeds`` default to the protocol's (sst: 1000 per seed; seeds 0-4
    on PASCAL-5i, 0-9 on COCO-20i, 0 elsewhere).

    ``dataset``: a :class:`~sst_fast.data.FewShotDataset`, or a data set name that needs no folder
    (``"synthetic"``; the others need :func:`~sst_fast.data.open_dataset` with their root). ``shots``: support
    images per episode (default 1).

    With ``manifests`` the episodes are replayed from them instead of sampled: ``shots``, ``episodes``,
    ``seeds`` and the protocol then come from the manifests, and a value given for one of them that differs
    from the manifests' is refused (it would be ignored otherwise). ``original_size`` scores at each label's stored
    size (logits upsampled bilinearly) instead of the network's input size; a protocol that scores at a
    fixed size refuses it. ``size``: the network's input size (default: the model's own
    ``config.image_size``, the size it was trained at; a model without one needs ``size``). ``device``:
    where the inputs go (default: the device of the model's parameters, else the CPU). ``amp``: ``off``,
    ``bf16`` or ``fp16`` autocast (written on the protocol card). ``model_source``: how the model was made,
    for the card (``sst-fast eval --model`` passes its ``module:factory``).

    ``trained_on``: ``{"dataset": name, "fold": fold}`` the model was trained on (default: the model's own
    ``trained_on``, which :func:`~sst_fast.engine.checkpoint.model_from_checkpoint` sets). On the same data set,
    test classes that were among that fold's training classes are refused: their scores are not few-shot
    results. ``allow_seen_classes=True`` scores them anyway, and the card names them.
    """
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    if not callable(model):
        raise ValueError(f"model must be an nn.Module or a callable, got {type(model).__name__}")
    dataset = as_dataset(dataset)
    split = dataset.fold_split(fold)
    training = seen_classes(
        getattr(model, "trained_on", None) if trained_on is None else trained_on, dataset, fold, allow_seen_classes
    )
    size = as_size(model_input_size(model) if size is None else size, "size")
    if manifests is not None:
        manifests = list(manifests)
        if not manifests:
            raise ValueError("manifests must hold at least one manifest")
        drawn_by = {m.protocol for m in manifests}
        if len(drawn_by) > 1:
            raise ValueError(f"manifests must all come from one protocol, got {sorted(drawn_by)}")
        name = getattr(protocol, "name", protocol)
        if name is not None and name != manifests[0].protocol:
            raise ValueError(
                f"protocol (--protocol): the manifests were drawn under {manifests[0].protocol}, not {name}"
            )
        protocol = manifests[0].protocol
        decided = {
            "shots (--shots)": (shots, manifests[0].shots),
            "episodes (--episodes)": (episodes, len(manifests[0].episodes)),
            "seeds (--seeds)": (None if seeds is None else list(seeds), [m.seed for m in manifests]),
        }
        for name, (given, theirs) in decided.items():
            if given is not None and given != theirs:
                raise ValueError(
                    f"{name}: the manifests decide it ({theirs}), got {given}; drop it to replay them, "
                    "or drop the manifests to draw new episodes"
                )
    if isinstance(protocol, Protocol):  # one of the built-in protocols, as protocol_for gives it
        if protocol != protocol_for(protocol.name, dataset.name):
            raise ValueError(
                f"protocol: {protocol.name!r} is not the built-in {protocol.name} protocol on {dataset.name}; "
                "pass its name (sst, pfenet or hsnet)"
            )
    else:
        protocol = protocol_for(protocol or "sst", dataset.name)
    check_protocol_data(protocol, dataset.describe())
    resolution = protocol.resolution
    if original_size:
        if resolution == "fixed":
            size_text = "x".join(str(n) for n in protocol.score_size)
            raise ValueError(
                f"original_size (--original-size): protocol {protocol.name} scores at {size_text} on {dataset.name}"
            )
        resolution = "original"
    if manifests is None:
        seeds = check_seeds(protocol.seeds if seeds is None else seeds)
        shots = 1 if shots is None else positive_int(shots, "shots")
        sampler = protocol_sampler(dataset, fold, shots, protocol)
        episodes = protocol.episodes if episodes is None else episodes
        manifests = [
            EpisodeManifest(
                dataset.describe(), split.test_split, fold, shots, seed, sampler.sample(episodes, seed), protocol.name
            )
            for seed in seeds
        ]
    else:
        for manifest in manifests:
            manifest.check(dataset, fold)
        if len({(m.shots, len(m.episodes)) for m in manifests}) > 1:
            raise ValueError("manifests must all have the same shots and number of episodes")
    scoring = Scoring(
        resolution, protocol.score_size, protocol.empty_class, protocol.empty_fb_term, protocol.align_corners
    )
    meters = [scoring.meter(split.test_classes) for _ in manifests]  # each seed's, to keep its episodes' counts
    runs = [
        score_episodes(
            model, dataset, split.test_classes, manifest.episodes, size, batch_size=batch_size,
            num_workers=num_workers, progress=f"seed {manifest.seed}" if progress else None, amp=amp,
            scoring=scoring, device=device, into=meter,
        )
        for manifest, meter in zip(manifests, meters, strict=True)
    ]  # fmt: skip
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
        resolution=resolution,
        input_size=size,
        min_pixels=dataset.min_pixels,
        class_sampling=f"{protocol.sampling_rule()}; supports: {SUPPORT_DRAWS[protocol.supports]}",
        small_objects=protocol.filter_rule(dataset.min_pixels),
        metric=f"{METRIC_DEFINITION}; {scoring.conventions()}",
        protocol=protocol.name,
        protocol_source=protocol.source,
        comparable=protocol.comparable,
        score_size=scoring.score_size,
        align_corners=scoring.align_corners,
        checkpoint=checkpoint,
        model=_model_summary(model, amp, model_source),
        trained_on=training,
        manifests=tuple(m.sha256 for m in manifests),
        code_version=code_version(),
    )
    return EvaluationResult(card, runs, manifests, [meter.counts() for meter in meters])


@dataclass(frozen=True)
class Scoring:
    """How predictions are scored: at the network's input size (``"input"``), at each label's stored size
    (``"original"``) or at ``score_size`` (``"fixed"``), with the meter's empty-class and FB-IoU conventions;
    logits at another size are resized bilinearly (``align_corners`` as given)."""

    resolution: str = "input"
    score_size: tuple[int, int] | None = None
    empty_class: str = "skip"
    empty_fb_term: str = "skip"
    align_corners: bool = False

    def __post_init__(self):
        if self.resolution not in ("input", "original", "fixed"):
            raise ValueError(f"resolution must be input, original or fixed, got {self.resolution!r}")
        if (self.resolution == "fixed") != (self.score_size is not None):
            raise ValueError("score_size goes with resolution 'fixed', and only with it")

    def meter(self, classes: Sequence[int]) -> FewShotMeter:
        return FewShotMeter(classes, empty_class=self.empty_class, empty_fb_term=self.empty_fb_term)

    def scored(self, logits: torch.Tensor, batch: dict):
        """The predictions of ``logits`` (the rows of ``batch`` they cover) as they are scored: resized to the
        labels bilinearly, then the argmax. Yields ``(prediction [n, H, W] on the CPU, target [n, H, W], rows)``
        groups of rows (a ``slice`` of the batch): one at the input or a fixed size, one per row at each
        label's own size."""
        count = len(logits)
        if self.resolution == "original":
            for row, label in enumerate(batch["query_label"][:count]):
                # Back to the label's own size: the inverse of the bilinear input resize (pixel centres).
                scaled = _resized(logits[row : row + 1], tuple(label.shape), self.align_corners)
                yield scaled.argmax(1).cpu(), label[None], slice(row, row + 1)
        else:
            target = (batch["score_mask"] if self.resolution == "fixed" else batch["query_mask"])[:count]
            scaled = _resized(logits, tuple(target.shape[-2:]), self.align_corners)
            yield scaled.argmax(1).cpu(), target, slice(0, count)

    def conventions(self) -> str:
        return f"empty class: {EMPTY_CLASS[self.empty_class]}; empty FB-IoU term: {EMPTY_FB_TERM[self.empty_fb_term]}"


def seen_classes(trained_on: dict | None, dataset: FewShotDataset, fold, allow: bool = False) -> dict | None:
    """What the card records of the model's training (``{"dataset", "fold", "seen_test_classes"}``, None when
    not known); a ValueError when test classes of ``fold`` were training classes, unless ``allow``.
    ``seen_test_classes`` is None for a model trained on another data set (its class ids mean other classes)."""
    if trained_on is None:
        return None
    if not isinstance(trained_on, dict) or not {"dataset", "fold"} <= set(trained_on):
        raise ValueError(f"trained_on must be a dict with 'dataset' and 'fold', got {trained_on!r}")
    record = {"dataset": trained_on["dataset"], "fold": trained_on["fold"], "seen_test_classes": None}
    if trained_on["dataset"] != dataset.name:
        return record
    test_classes = dataset.fold_split(fold).test_classes
    seen = sorted(set(test_classes) & set(dataset.fold_split(trained_on["fold"]).train_classes))
    record["seen_test_classes"] = seen
    if seen and not allow:
        shown = ", ".join(map(str, seen[:10])) + (", ..." if len(seen) > 10 else "")
        raise ValueError(
            f"fold (--fold): the model was trained on {dataset.name} fold {trained_on['fold']}, and {len(seen)} of "
            f"the {len(test_classes)} test classes of fold {fold} were its training classes ({shown}): their scores "
            f"are not few-shot results. Evaluate fold {trained_on['fold']} (the model's novel classes), or pass "
            "allow_seen_classes=True (--allow-seen-classes) to score them anyway; the card then names them"
        )
    return record


def as_dataset(dataset) -> FewShotDataset:
    """``dataset`` itself, or the data set a name opens without a folder (``"synthetic"``); a TypeError for
    anything else."""
    if isinstance(dataset, FewShotDataset):
        return dataset
    if isinstance(dataset, str):
        from ..data import open_dataset

        return open_dataset(dataset, None)
    raise TypeError(
        f"dataset must be a FewShotDataset (see sst_fast.data.open_dataset) or a data set name, "
        f"got {type(dataset).__name__}"
    )


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
    model,
    dataset: FewShotDataset,
    classes: Sequence[int],
    episodes: Sequence[Episode],
    size,
    original_size: bool = False,
    batch_size: int = 8,
    num_workers: int = 0,
    progress: str | None = None,
    amp: str = "off",
    scoring: Scoring | None = None,
    device=None,
    into: FewShotMeter | None = None,
) -> dict:
    """Segment the queries of ``episodes`` with ``model`` (an ``nn.Module`` in eval mode; a plain callable
    as it is, so one that wraps a module sets its mode itself; no gradients) and score them:
    :meth:`FewShotMeter.compute` over ``classes``. ``scoring``: the resolution and the metric's conventions
    (default: the network's input size, or each label's size with ``original_size``; the meter's defaults).
    ``progress``: the label of a progress bar, or None; ``amp``: ``off``, ``bf16`` or ``fp16`` autocast;
    ``model`` and ``device`` as for :func:`evaluate`. ``into``: the meter (of ``classes``, with the scoring's
    conventions) the episodes are added to, in their order, e.g. to keep their counts (default: a new one).

    In a process group (:mod:`sst_fast.engine.distributed`) every rank must call it: the batches are dealt
    to the ranks and the result, the same on every rank, equals a single process's exactly."""
    positive_int(batch_size, "batch_size")
    dataset = as_dataset(dataset)
    if scoring is None:
        scoring = Scoring("original" if original_size else "input")
    elif original_size:
        raise ValueError("original_size: pass it through scoring (Scoring('original')), not both")
    world = distributed.current()
    data = EpisodeDataset(
        dataset, episodes, as_size(size, "size"), keep_original=scoring.resolution == "original",
        score_size=scoring.score_size,
    )  # fmt: skip
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
    device, dtype = _placement(model, device)
    meters = {}
    broken = None  # the first batch whose logits are not finite: (its episode indices, which of them)
    module = model if isinstance(model, nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        for index, batch in zip(mine, _progress(loader, progress if world.main else None), strict=True):
            meters[index] = meter = scoring.meter(classes)
            with torch.no_grad(), autocast(device, amp):
                output = model(
                    batch["query"].to(device, dtype),
                    batch["support_images"].to(device, dtype),
                    batch["support_masks"].to(device),
                )
            logits = _logits(output, len(batch["class_id"])).float()
            finite = torch.isfinite(logits).flatten(1).all(1).cpu()
            if not finite.all():  # stop: every rank still meets the others in the gather below
                broken = [batches[index][row] for row in (~finite).nonzero().flatten().tolist()]
                break
            for prediction, target, rows in scoring.scored(logits, batch):
                meter.update(prediction, target, batch["class_id"][rows])
    finally:
        if module is not None:
            module.train(was_training)
    total = scoring.meter(classes) if into is None else into
    problems = []
    for gathered, bad in distributed.all_gather((meters, broken), world):
        meters.update(gathered)
        problems += bad or []
    if problems:
        problems.sort()
        shown = "; ".join(
            f"episode {i} (class {episodes[i].class_id}, query {episodes[i].query})" for i in problems[:5]
        )
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise NonFiniteLogits(
            f"model: non-finite logits (NaN or inf) for {shown}{more}; its scores would be meaningless "
            "(check the model's weights, or run without --amp fp16, whose range may overflow)"
        )
    for index in range(len(batches)):  # in batch order: the episode-wise mean sums in the same order
        total.merge(meters[index])
    return total.compute()


def _placement(model, device) -> tuple[torch.device, torch.dtype]:
    """Where the inputs go and in which dtype: ``device`` (default: the model's parameters', else the CPU) and
    the dtype of the model's first floating parameter (float32 for a model without one)."""
    parameters = list(model.parameters()) if isinstance(model, nn.Module) else []
    if device is not None:
        device = torch.device(device)
    else:
        device = parameters[0].device if parameters else torch.device("cpu")
    floating = [p.dtype for p in parameters if p.is_floating_point()]
    return device, floating[0] if floating else torch.float32


def _logits(output, batch: int) -> torch.Tensor:
    logits = getattr(output, "logits", output)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or logits.shape[:2] != (batch, 2):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"model must return logits [B, 2, H, W] with B = {batch} (a tensor, or an object with .logits), got {got}"
        )
    return logits


def _resized(logits: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def _model_summary(model, amp: str = "off", source: str | None = None) -> dict:
    summary = {"class": type(model).__name__}
    if source is not None:
        summary["source"] = source
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
