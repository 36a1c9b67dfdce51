"""The benchmark: the field's table over folds, as one command (``sst-fast benchmark``).

``benchmark(config, out, folds=(0, 1, 2, 3), shots=(1, 5))`` trains the configuration once per fold and
training seed (``<out>/runs/fold-<f>/seed-<s>``, each fold's run on its base classes), evaluates every run
on its fold's novel classes for each K under the chosen protocol with the same :func:`~.evaluate.evaluate`
as ``sst-fast eval`` (saved in the run folder's ``eval/`` as ``eval`` saves it), and writes
``benchmark.md`` and ``benchmark.json``: mIoU and FB-IoU per fold and their mean over folds, 1- and 5-shot,
mean ± 95% CI over training seeds and over evaluation seeds, the protocol card and every manifest's SHA-256.

It is built on :func:`~.experiments.run_folds`: finished runs and saved evaluations are reused, so a stopped
benchmark run again continues where it was, and a run folder trained with another configuration is refused
(naming the settings that differ) before anything trains. Under torchrun every rank takes part in each
training and evaluation; rank 0 writes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..config import positive_int
from ..files import strict_json, write_text_atomic
from ..protocol import code_version
from . import distributed
from .experiments import (
    FoldsResult,
    fold_score,
    format_points,
    format_score,
    interrupted,
    run_folds,
    save_experiment,
)
from .runconfig import RunConfig

# The configuration as it is (no variant's changes): its runs are <out>/runs/fold-<f>/seed-<s>.
MODEL = ""
SHOTS = (1, 5)
METRICS = (("miou", "mIoU"), ("fb_iou", "FB-IoU"))


def benchmark(
    config: RunConfig,
    out_dir,
    folds: Sequence | None = None,
    shots: Sequence[int] = SHOTS,
    episodes: int | None = None,
    seeds: Sequence[int] | None = None,
    train_seeds: Sequence[int] = (0,),
    progress: bool = True,
    log=print,
    protocol: str = "sst",
    config_name: str | None = None,
) -> Path:
    """Train ``config`` on each of ``folds`` (None: every fold of its data set; FSS-1000: ``test``) once
    per training seed, evaluate each run for every K in ``shots`` under ``protocol`` (``episodes`` per evaluation
    seed and ``seeds`` None: the protocol's; sst: 1000, seed 0), and write ``<out>/benchmark.md`` and
    ``<out>/benchmark.json``; returns the Markdown path. ``config_name`` names the configuration in the report.
    A stopped training raises :class:`~.experiments.ExperimentInterrupted` (run it again to continue)."""
    shots = _check_shots(shots)
    result = run_folds(
        config,
        out_dir,
        {MODEL: {}},
        folds,
        shots=shots,
        episodes=episodes,
        seeds=seeds,
        train_seeds=train_seeds,
        progress=progress,
        log=log,
        protocol=protocol,
    )
    error = interrupted(result, "the same command")
    if error is not None:
        raise error
    name = config_name or config.data.dataset
    table = benchmark_table(result, shots)
    manifests = manifest_records(result)
    first = result.experiments[result.folds[0]].evaluations[0]
    extra = {
        "benchmark": {
            "config": name,
            "dataset": config.data.dataset,
            "folds": list(result.folds),
            "shots": list(shots),
            "train_seeds": list(result.train_seeds),
            "eval_seeds": list(first.result.card.seeds),
            "episodes": first.result.card.episodes,
            "protocol": first.result.card.protocol,
            "trained_shots": config.model.shots,
        },
        "spread": spread_text(len(result.train_seeds), len(first.result.card.seeds)),
        "table": table,
        "protocol": first.result.card.to_dict(),
        "manifests": manifests,
        "config": config.to_dict(),
        "code_version": code_version(),
    }
    save_experiment(result, "benchmark", extra)
    path = Path(out_dir) / "benchmark.md"
    if not distributed.current().main:
        return path
    return write_text_atomic(path, benchmark_markdown(result, shots, table, manifests, config, name))


def benchmark_table(result: FoldsResult, shots: Sequence[int]) -> list[dict]:
    """A row per (K, metric): each fold's :func:`~.experiments.fold_score` and the mean over folds."""
    rows = []
    for k in shots:
        for metric, _ in METRICS:
            rows.append(
                {
                    "shots": k,
                    "metric": metric,
                    "folds": {str(f): fold_score(result.cells(MODEL, k, fold=f), metric) for f in result.folds},
                    "mean": fold_score(result.cells(MODEL, k), metric),
                }
            )
    return rows


def manifest_records(result: FoldsResult) -> list[dict]:
    """Every episode manifest the evaluations used, once each (every training seed of a fold shares them):
    fold, K, evaluation seed, SHA-256 and the file (in the first training seed's evaluation folder)."""
    records, seen = [], set()
    for fold, experiment in result.experiments.items():
        for evaluation in experiment.evaluations:
            for manifest in evaluation.result.manifests:
                key = (str(fold), evaluation.shots, manifest.seed)
                if key in seen:
                    continue
                seen.add(key)
                file = evaluation.folder / "manifests" / f"seed-{manifest.seed}.json" if evaluation.folder else None
                records.append(
                    {
                        "fold": fold,
                        "shots": evaluation.shots,
                        "seed": manifest.seed,
                        "sha256": manifest.sha256,
                        "file": str(file) if file else None,
                    }
                )
    return records


def spread_text(train_seeds: int, eval_seeds: int) -> str:
    """What the tables' ± is over."""
    if train_seeds > 1 and eval_seeds > 1:
        return (
            f"mean ± 95% CI over the {train_seeds} training seeds (in parentheses: over the {eval_seeds} "
            "evaluation seeds)"
        )
    if train_seeds > 1:
        return f"mean ± 95% CI over the {train_seeds} training seeds (one evaluation seed)"
    if eval_seeds > 1:
        return f"mean ± 95% CI over the {eval_seeds} evaluation seeds (one training run per fold)"
    return "one training run per fold and one evaluation seed: no spread to show (pass --seeds and --train-seeds)"


def benchmark_markdown(
    result: FoldsResult, shots: Sequence[int], table: list[dict], manifests: list[dict], config, name: str
) -> str:
    folds = result.folds
    first = result.experiments[folds[0]].evaluations[0].result.card
    train_seeds = list(result.train_seeds)
    names = dict(METRICS)
    header = ["shots", "metric", *[f"fold {f}" for f in folds], "mean"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        cells = [format_score(row["folds"][str(f)], both=True) for f in folds]
        rows.append(
            f"| {row['shots']}-shot | {names[row['metric']]} | " + " | ".join(cells)
            + f" | {format_score(row['mean'], both=True)} |"
        )  # fmt: skip
    episodes = "every test image once" if first.episodes is None else f"{first.episodes} episodes"
    lines = [
        f"# Benchmark: {name}"
        + (f" ({config.data.dataset})" if name != config.data.dataset else "")
        + f", folds {', '.join(map(str, folds))}",
        "",
        f"The configuration `{name}` trained on each fold's base classes (model.shots = {config.model.shots}), once "
        f"per fold and training seed {train_seeds}, and tested on the fold's novel classes with "
        f"{', '.join(f'{k}' for k in shots)} support image(s) (one trained model for every K), under protocol "
        f"{first.protocol}: {episodes} per evaluation seed, seeds {list(first.seeds)}. mIoU and FB-IoU in %, "
        f"{spread_text(len(train_seeds), len(first.seeds))}; *mean*: the mean over the folds.",
        "",
        *rows,
        "",
        "## Runs",
        "",
        "| fold | training seed | steps | best validation mIoU (base classes) | run folder |",
        "|---|---|---|---|---|",
    ]
    for fold, experiment in result.experiments.items():
        for (_, seed), run in experiment.runs.items():
            best = run.result.best_miou
            shown = "-" if best is None or math.isnan(best) else format_points(best, math.nan)
            lines.append(f"| {fold} | {seed} | {run.result.step} | {shown} | `{run.result.run_dir}` |")
    lines += [
        "",
        f"## Protocol (fold {first.fold}, {first.shots}-shot)",
        "",
        "Every evaluation's own card (the other folds differ in fold, test classes, checkpoint and manifests; "
        "the other K in shots) is in `benchmark.json` and in its evaluation folder (`protocol.txt`).",
        "",
        "```",
        str(first),
        "```",
        "",
        "## Episode manifests (SHA-256)",
        "",
        "| fold | shots | seed | SHA-256 | file |",
        "|---|---|---|---|---|",
        *(f"| {m['fold']} | {m['shots']} | {m['seed']} | `{m['sha256']}` | `{m['file']}` |" for m in manifests),
        "",
        "Configuration (data.fold and run.seed set per run): `" + strict_json(config.to_dict(), indent=None) + "`",
        "",
    ]
    return "\n".join(lines)


def _check_shots(shots: Sequence[int]) -> tuple[int, ...]:
    shots = tuple(positive_int(k, "shots") for k in shots)
    if not shots:
        raise ValueError("shots (--shots): name at least one K")
    if len(set(shots)) != len(shots):
        raise ValueError(f"shots (--shots): each K once, got {list(shots)}")
    return shots
