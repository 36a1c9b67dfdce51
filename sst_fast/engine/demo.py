"""The embedded demo: SST against its no-SSM/no-aux baseline on the synthetic data set, end to end.

Trains both models on the base classes of fold 0 (``configs/synthetic.yaml``), evaluates each on
the novel classes in the 1-shot and 5-shot settings on the same episodes, and writes ``report.md``
with the table, the paired difference, the protocol card and the figures (the paper's Fig. 3 and
Fig. 6, training curves). Sized to finish within minutes on two CPU cores; stopping it (Ctrl-C) and
running it again continues where it was.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..data import EpisodeDataset, collate_episodes
from ..data.base import write_text_atomic
from .checkpoint import model_from_checkpoint
from .evaluate import EvaluationResult, evaluate
from .experiments import (
    TABLE1_VARIANTS,
    ExperimentInterrupted,
    run_device,
    ExperimentResult,
    best_or_last,
    format_points,
    paired_difference,
    results_table,
    run_experiment,
    save_experiment,
)
from .runconfig import load_run_config

DEMO_VARIANTS = {"baseline": TABLE1_VARIANTS["baseline"], "sst": TABLE1_VARIANTS["sst"]}
SHOTS = (1, 5)
# Evaluation episodes per seed: the 1-shot protocol's 1000; fewer 5-shot ones keep the demo within minutes.
EPISODES = {1: 1000, 5: 300}
SEEDS = (0, 1, 2)
FIGURE_EPISODES = 6
# A smoke-test size (seconds, not minutes): the whole pipeline, numbers meaningless.
QUICK = [
    "optim.epochs=1",
    "optim.episodes_per_epoch=32",
    "data.val_episodes=16",
    "model.channels=16",
    "model.image_size=[64, 64]",
    "data.options.image_size=64",
    "data.options.train_images=240",
    "data.options.val_images=80",
    "run.log_every=1",
]


def demo(
    out_dir="runs/demo",
    quick: bool = False,
    overrides=(),
    episodes: int | None = None,
    seeds=None,
    progress: bool = True,
    log=print,
) -> Path:
    """Run the demo into ``out_dir``; returns the path of ``report.md``."""
    out_dir = Path(out_dir)
    config = load_run_config("synthetic", [*(QUICK if quick else []), *overrides])
    episodes = episodes or (40 if quick else EPISODES)
    episodes = {k: episodes for k in SHOTS} if isinstance(episodes, int) else episodes
    seeds = tuple(seeds or ((0,) if quick else SEEDS))
    experiment = run_experiment(
        config, out_dir, DEMO_VARIANTS, shots=SHOTS, episodes=episodes, seeds=seeds, progress=progress, log=log
    )
    unfinished = [name for name, run in experiment.runs.items() if run.status != "finished"]
    if unfinished:
        raise ExperimentInterrupted(f"training of {unfinished[0]} stopped; run the demo again to continue")
    save_experiment(experiment, "results")
    untuned = _without_tuning(experiment, config, progress, log)
    figures = _figures(experiment, config, out_dir / "figures")
    report = write_text_atomic(out_dir / "report.md", _report(experiment, config, figures, untuned, quick))
    log("")
    log(results_table(experiment, SHOTS))
    log(f"\nreport: {report}")
    return report


def _without_tuning(experiment: ExperimentResult, config, progress: bool, log) -> EvaluationResult:
    """The SST weights evaluated 1-shot on the same episodes without the tuning step (prototype p, not p'):
    what the test-time tuning itself adds, apart from what training with it and the auxiliary loss did."""
    log("== evaluating sst, 1-shot, without the tuning step at test time")
    tuned = experiment.find("sst", 1).result
    model = model_from_checkpoint(best_or_last(experiment.runs["sst"]), device=run_device(config), ssm=False)
    result = evaluate(
        model,
        experiment.dataset,
        config.data.fold,
        size=config.model.image_size,
        batch_size=config.optim.batch_size,
        manifests=tuned.manifests,
        checkpoint=tuned.card.checkpoint,
        progress=progress,
    )
    result.save(experiment.out_dir / "eval" / "sst-1shot-untuned")
    return result


def _figures(experiment: ExperimentResult, config, folder: Path) -> dict[str, Path]:
    from .. import viz

    histories = {}
    for name, run in experiment.runs.items():
        lines = (run.run_dir / "metrics.jsonl").read_text().splitlines()
        histories[name] = [json.loads(line) for line in lines if line.strip()]
    figures = {"curves": viz.figure_curves(histories, folder / "curves.png", title="training on the base classes")}

    dataset = experiment.dataset
    model = model_from_checkpoint(best_or_last(experiment.runs["sst"]), device=run_device(config))
    one_shot = experiment.find("sst", 1).result.manifests[0].episodes[:FIGURE_EPISODES]
    batch = _batch(dataset, one_shot, config.model.image_size, run_device(config))
    explanations = viz.explain(
        model, batch["query"], batch["support_images"], batch["support_masks"], batch["query_mask"]
    )
    figures["tuning"] = viz.figure_tuning(
        explanations, folder / "tuning.png", title="SST, 1-shot, novel classes: before and after self-supervised tuning"
    )
    five_shot = experiment.find("sst", 5).result.manifests[0].episodes[:1]
    batch = _batch(dataset, five_shot, config.model.image_size, run_device(config))
    (explanation,) = viz.explain(
        model, batch["query"], batch["support_images"], batch["support_masks"], batch["query_mask"]
    )
    figures["shots"] = viz.figure_shots(
        explanation, folder / "shots.png", title="SST, 5-shot: each shot's self-segmentation and fusion weight"
    )
    return figures


def _batch(dataset, episodes, size, device) -> dict:
    items = EpisodeDataset(dataset, episodes, size)
    batch = collate_episodes([items[i] for i in range(len(items))])
    return {key: value.to(device) if hasattr(value, "to") else value for key, value in batch.items()}


def _report(
    experiment: ExperimentResult, config, figures: dict[str, Path], untuned: EvaluationResult, quick: bool
) -> str:
    card = experiment.find("sst", 1).result.card
    lines = [
        "# sst_fast demo: SST vs. its baseline on the synthetic data set",
        "",
        f"Both models are trained on the base classes of fold {card.fold} and tested on its "
        f"{len(card.test_classes)} novel classes, "
        "on the same episodes. *baseline*: no self-supervised tuning, no auxiliary loss (the paper's Table 1, "
        f"first row). *sst*: tuning (α = {config.model.tune_step:g}) and the auxiliary loss.",
        "",
    ]
    if quick:
        lines += ["**Quick mode: a smoke test of the pipeline; these numbers mean nothing.**", ""]
    lines += [
        "## Results: mIoU and FB-IoU (%), mean ± 95% CI over seeds",
        "",
        "Episodes per seed: "
        + ", ".join(f"{k}-shot {experiment.find('sst', k).result.card.episodes}" for k in SHOTS)
        + f"; seeds {list(card.seeds)}.",
        "",
        results_table(experiment, SHOTS),
        "",
        "Paired difference sst − baseline (same episodes), mIoU points:",
        "",
    ]
    for k in SHOTS:
        difference = paired_difference(experiment.find("sst", k).result, experiment.find("baseline", k).result)
        lines.append(f"- {k}-shot: {format_points(*difference, signed=True)}")
    gain = paired_difference(experiment.find("sst", 1).result, untuned)
    lines += [
        "",
        "The tuning step's own share: the *sst* weights evaluated 1-shot on the same episodes without the tuning "
        f"step (prototype p instead of p') score mIoU {format_points(*untuned.summary()['miou'])}; tuned − untuned: "
        f"{format_points(*gain, digits=2, signed=True)} points.",
    ]
    lines += ["", "Training (base-class validation mIoU of the chosen checkpoint, time):", ""]
    for name, run in experiment.runs.items():
        seconds = experiment.train_seconds.get(name, math.nan)
        best = "-" if run.best_miou is None else f"{100 * run.best_miou:.1f}% at step {run.best_step}"
        lines.append(f"- {name}: {run.step} steps, validation {best}, {seconds:.0f} s")
    lines += [
        "",
        "## Figures",
        "",
        "Before/after tuning and the feature gradient |∂Lsup/∂Rs| (the paper's Fig. 3):",
        "",
        f"![tuning]({figures['tuning'].relative_to(experiment.out_dir)})",
        "",
        "5-shot: each support's self-segmentation, its IoU and fusion weight (the paper's Fig. 6):",
        "",
        f"![shots]({figures['shots'].relative_to(experiment.out_dir)})",
        "",
        f"![curves]({figures['curves'].relative_to(experiment.out_dir)})",
        "",
        "## Protocol (1-shot, sst)",
        "",
        "```",
        str(card),
        "```",
        "",
        "Configuration: `" + json.dumps(config.to_dict()) + "`",
        "",
    ]
    return "\n".join(lines)
