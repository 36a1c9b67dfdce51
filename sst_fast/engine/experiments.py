"""Multi-run experiments: the paper's ablations (Table 1, Table 2) and the embedded demo, with a report.

Each variant is an ordinary training run in its own folder, so an experiment that is stopped picks
up where it was: finished runs are reused, unfinished ones resumed. All variants are evaluated on
the same episodes (one manifest per seed), so their differences are paired.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

from ..config import positive_int
from ..data import FewShotDataset, open_dataset
from ..data.base import write_text_atomic
from ..metrics import mean_ci
from .checkpoint import load_checkpoint, model_from_checkpoint
from .evaluate import EvaluationResult, check_seeds, evaluate
from .runconfig import RunConfig
from .train import TrainResult, Trainer

# Table 1 of the paper: the self-supervised tuning module (SSM) and the auxiliary loss, on and off.
TABLE1_VARIANTS = {
    "baseline": {"ssm": False, "aux_loss": False},
    "+ssm": {"ssm": True, "aux_loss": False},
    "+aux": {"ssm": False, "aux_loss": True},
    "sst": {"ssm": True, "aux_loss": True},
}
# Table 2: how the K self-segmentations fuse in the 5-shot setting (one trained model, three fusions).
TABLE2_FUSIONS = ("max", "average", "weighted")
METRICS = (("miou", "mIoU"), ("fb_iou", "FB-IoU"), ("episode_miou", "episode IoU"))


class ExperimentInterrupted(Exception):
    """A training run of the experiment stopped (Ctrl-C); running the experiment again continues it."""


@dataclasses.dataclass
class Evaluation:
    variant: str
    shots: int
    fusion: str
    result: EvaluationResult


@dataclasses.dataclass
class ExperimentResult:
    out_dir: Path
    dataset: FewShotDataset
    runs: dict[str, TrainResult]
    evaluations: list[Evaluation]
    train_seconds: dict[str, float]

    def find(self, variant: str, shots: int, fusion: str | None = None) -> Evaluation:
        for evaluation in self.evaluations:
            if evaluation.variant == variant and evaluation.shots == shots and fusion in (None, evaluation.fusion):
                return evaluation
        raise KeyError((variant, shots, fusion))


def train_variant(config: RunConfig, run_dir: Path, progress: bool = True, log=print) -> TrainResult:
    """Train ``config`` in ``run_dir``, resuming an unfinished run there and reusing a finished one."""
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists():
        state = load_checkpoint(last)
        saved = RunConfig.from_dict(state["config"])
        if saved.to_dict() != config.to_dict():
            raise ValueError(
                f"{run_dir} holds a run with another configuration; remove it or choose another output folder"
            )
        if state["epoch"] >= saved.optim.epochs:
            log(f"{run_dir.name}: already trained ({state['step']} steps), reusing it")
            best = state["best"]
            return TrainResult(run_dir, "finished", state["step"], state["epoch"], best["miou"], best["step"])
        log(f"{run_dir.name}: resuming at step {state['step']}")
        return Trainer.resume(run_dir, progress=progress).fit()
    return Trainer(config, run_dir, progress=progress).fit()


def run_experiment(
    config: RunConfig,
    out_dir,
    variants: dict[str, dict],
    shots: Sequence[int] = (1,),
    fusions: Sequence[str] | None = None,
    episodes: int | dict[int, int] = 1000,
    shots_for: dict[str, Sequence[int]] | None = None,
    seeds: Sequence[int] = (0,),
    progress: bool = True,
    log=print,
) -> ExperimentResult:
    """Train each variant (``config`` with the variant's model settings) in ``out_dir/runs/<variant>``, then
    evaluate its best checkpoint on the fold's novel classes for every K in ``shots``. ``fusions`` (for K > 1)
    evaluates the same checkpoint with each fusion; by default each model's own fusion. ``episodes``: per seed,
    one number for every K or ``{K: episodes}``. ``shots_for``: other K for some variants (``{name: Ks}``)."""
    out_dir = Path(out_dir)
    # What the evaluations will refuse, refused before hours of training.
    seeds = check_seeds(seeds)
    for count in episodes.values() if isinstance(episodes, dict) else (episodes,):
        positive_int(count, "episodes")
    dataset = open_dataset(config.data.dataset, config.data.root, **config.data.options)
    runs, seconds, evaluations = {}, {}, []
    for name, changes in variants.items():
        variant_config = RunConfig.from_dict({**config.to_dict(), "model": {**config.model.to_dict(), **changes}})
        log(f"== training {name} ({_describe(changes)})")
        started = time.perf_counter()
        runs[name] = train_variant(variant_config, out_dir / "runs" / _folder(name), progress, log)
        seconds[name] = time.perf_counter() - started
        if runs[name].status != "finished":
            return ExperimentResult(
                out_dir, dataset, runs, evaluations, seconds
            )  # interrupted: resumable, nothing to score
    manifests = {}  # (shots) -> manifests shared by every variant: paired comparisons
    for name in variants:
        checkpoint = best_or_last(runs[name])
        for k in (shots_for or {}).get(name, shots):
            for fusion in fusions if (fusions and k > 1) else (None,):
                overrides = {"fusion": fusion} if fusion else {}
                model = model_from_checkpoint(checkpoint, device=run_device(config), **overrides)
                label = f"{name}, {k}-shot" + (f", {fusion}" if fusion else "")
                log(f"== evaluating {label}")
                result = evaluate(
                    model,
                    dataset,
                    config.data.fold,
                    shots=k,
                    episodes=episodes[k] if isinstance(episodes, dict) else episodes,
                    seeds=seeds,
                    size=config.model.image_size,
                    batch_size=config.optim.batch_size,
                    num_workers=config.data.workers,
                    manifests=manifests.get(k),
                    checkpoint=str(checkpoint),
                    progress=progress,
                )
                manifests[k] = result.manifests
                result.save(out_dir / "eval" / (f"{_folder(name)}-{k}shot" + (f"-{fusion}" if fusion else "")))
                evaluations.append(Evaluation(name, k, model.config.fusion, result))
    return ExperimentResult(out_dir, dataset, runs, evaluations, seconds)


def results_table(experiment: ExperimentResult, shots: Sequence[int], metrics=("miou", "fb_iou")) -> str:
    """A Markdown table: one row per variant, mean ± 95% CI over seeds per (shots, metric), in %."""
    names = dict(METRICS)
    header = ["model", *[f"{k}-shot {names[m]}" for k in shots for m in metrics]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in experiment.runs:
        cells = [variant]
        for k in shots:
            summary = experiment.find(variant, k).result.summary()
            cells += [format_points(*summary[m]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fusion_table(experiment: ExperimentResult, variant: str, shots: int) -> str:
    """Table 2: mIoU and FB-IoU of one model's K-shot evaluation under each fusion."""
    lines = ["| fusion | mIoU | FB-IoU |", "|---|---|---|"]
    for evaluation in experiment.evaluations:
        if evaluation.variant == variant and evaluation.shots == shots:
            summary = evaluation.result.summary()
            lines.append(
                f"| {evaluation.fusion} | {format_points(*summary['miou'])} | {format_points(*summary['fb_iou'])} |"
            )
    return "\n".join(lines)


def paired_difference(better: EvaluationResult, worse: EvaluationResult, metric="miou"):
    """Mean ± 95% CI over seeds of ``better - worse``, two evaluations on the same manifests (a paired difference)."""
    return mean_ci([x[metric] - y[metric] for x, y in zip(better.runs, worse.runs, strict=True)])


def save_experiment(experiment: ExperimentResult, name: str) -> Path:
    """``<out>/<name>.json``: every evaluation's summary and per-class IoU, and the runs' training state."""
    content = {
        "runs": {
            variant: {
                "status": run.status,
                "steps": run.step,
                "best_val_miou": run.best_miou,
                "best_step": run.best_step,
                "train_seconds": experiment.train_seconds.get(variant),
            }
            for variant, run in experiment.runs.items()
        },
        "evaluations": [
            {"variant": e.variant, "shots": e.shots, "fusion": e.fusion, **e.result.to_dict()}
            for e in experiment.evaluations
        ],
    }
    return write_text_atomic(experiment.out_dir / f"{name}.json", json.dumps(content, indent=1) + "\n")


def ablation(config: RunConfig, out_dir, episodes=1000, seeds=(0,), progress=True, log=print) -> Path:
    """The paper's Table 1 (baseline, +SSM, +aux loss, SST; 1-shot) and Table 2 (SST, 5-shot, three fusions)
    on ``config``'s data set and fold. Writes ``ablation.md`` and ``ablation.json``; returns the Markdown path."""
    experiment = run_experiment(
        config,
        out_dir,
        TABLE1_VARIANTS,
        shots=(1,),
        shots_for={"sst": (1, 5)},
        fusions=TABLE2_FUSIONS,
        episodes=episodes,
        seeds=seeds,
        progress=progress,
        log=log,
    )
    stopped = [name for name, run in experiment.runs.items() if run.status != "finished"]
    if stopped:
        raise ExperimentInterrupted(f"training of {stopped[0]} stopped; run the same command again to continue")
    one_shot = "\n".join(
        ["| model | SSM | aux loss | 1-shot mIoU | 1-shot FB-IoU |", "|---|---|---|---|---|"]
        + [
            f"| {v} | {_tick(TABLE1_VARIANTS[v]['ssm'])} | {_tick(TABLE1_VARIANTS[v]['aux_loss'])} | "
            f"{format_points(*experiment.find(v, 1).result.summary()['miou'])} | "
            f"{format_points(*experiment.find(v, 1).result.summary()['fb_iou'])} |"
            for v in TABLE1_VARIANTS
        ]
    )
    card = experiment.find("sst", 1).result.card
    text = (
        "\n\n".join(
            [
                f"# Ablation: {config.data.dataset} fold {config.data.fold}",
                f"Novel classes, {card.episodes} episodes × seeds {list(card.seeds)}, mean ± 95% CI over seeds (%).",
                "## Table 1: the self-supervised tuning module and the auxiliary loss (1-shot)",
                one_shot,
                "## Table 2: 5-shot fusion of the SST model",
                fusion_table(experiment, "sst", 5),
                "## Protocol",
                "```\n" + str(card) + "\n```",
            ]
        )
        + "\n"
    )
    save_experiment(experiment, "ablation")
    return write_text_atomic(Path(out_dir) / "ablation.md", text)


def best_or_last(run: TrainResult) -> Path:
    return run.best_checkpoint if run.best_checkpoint.exists() else run.last_checkpoint


def run_device(config: RunConfig) -> str:
    """The device ``run.device`` names, resolved (``auto`` -> CUDA when available)."""
    from .train import resolve_device

    return str(resolve_device(config.run.device))


def _folder(name: str) -> str:
    return name.replace("+", "plus-")


def _describe(changes: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in changes.items()) or "as configured"


def format_points(mean: float, ci: float, digits: int = 1, signed: bool = False) -> str:
    """A fraction's mean ± 95% CI in percentage points, e.g. ``40.7 ± 1.4`` (``+0.02 ± 0.01`` signed); NaN is ``-``."""
    if math.isnan(mean):
        return "-"
    text = f"{100 * mean:{'+' if signed else ''}.{digits}f}"
    return text + (f" ± {100 * ci:.{digits}f}" if not math.isnan(ci) else "")


def _tick(flag: bool) -> str:
    return "✓" if flag else ""
