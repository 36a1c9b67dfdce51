"""Multi-run experiments: the paper's ablations (Table 1, Table 2) and the embedded demo, with a report.

Each variant is an ordinary training run in its own folder, so an experiment that is stopped picks
up where it was: finished runs are reused, unfinished ones resumed. All variants are evaluated on
the same episodes (one manifest per seed), so their differences are paired.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from pathlib import Path

from ..config import positive_int
from ..data import FewShotDataset, open_dataset
from ..files import write_json_atomic, write_text_atomic
from ..metrics import mean_ci
from .checkpoint import load_checkpoint, model_from_checkpoint, saved_config
from ..protocol import check_protocol_data, protocol_for
from .evaluate import EvaluationResult, check_seeds, evaluate
from .runconfig import RunConfig
from .train import TrainingError, TrainResult, Trainer

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
    train_seed: int = 0


@dataclasses.dataclass
class ExperimentResult:
    """Every variant trained once per training seed (``runs[variant, seed]``) and evaluated on shared manifests."""

    out_dir: Path
    dataset: FewShotDataset
    runs: dict[tuple[str, int], GridRun]
    evaluations: list[Evaluation]
    train_seeds: tuple[int, ...] = (0,)

    @property
    def variants(self) -> list[str]:
        return list(dict.fromkeys(name for name, _ in self.runs))

    def find(self, variant: str, shots: int, fusion: str | None = None, train_seed: int | None = None) -> Evaluation:
        """The evaluation of ``variant`` (of training seed ``train_seed``, default the first)."""
        seed = self.train_seeds[0] if train_seed is None else train_seed
        for evaluation in self.evaluations:
            if (evaluation.variant, evaluation.shots, evaluation.train_seed) == (variant, shots, seed) and fusion in (
                None,
                evaluation.fusion,
            ):
                return evaluation
        raise KeyError((variant, shots, fusion, seed))

    def per_seed(self, variant: str, shots: int, fusion: str | None = None) -> list[EvaluationResult]:
        """The evaluations of ``variant`` in training-seed order."""
        return [self.find(variant, shots, fusion, seed).result for seed in self.train_seeds]

    def score(self, variant: str, shots: int, metric: str = "miou", fusion: str | None = None) -> tuple[float, float]:
        """Mean ± 95% CI of ``metric``: over training seeds (each the mean over its evaluation seeds) when
        there are several, else over evaluation seeds."""
        results = self.per_seed(variant, shots, fusion)
        if len(results) == 1:
            return results[0].summary()[metric]
        return mean_ci([result.summary()[metric][0] for result in results])

    def difference(self, better: str, worse: str, shots: int, metric: str = "miou", fusion=None):
        """``better - worse`` on the same episodes: paired per training seed, mean ± 95% CI over training seeds
        (over evaluation seeds with one training seed)."""
        return paired_difference(self.per_seed(better, shots, fusion), self.per_seed(worse, shots, fusion), metric)

    @property
    def spread(self) -> str:
        """What the ± of this experiment's tables is over."""
        if len(self.train_seeds) > 1:
            return f"over {len(self.train_seeds)} training seeds {list(self.train_seeds)}"
        return "over evaluation seeds, one training run per variant"


def train_variant(
    config: RunConfig, run_dir: Path, progress: bool = True, log=print, label: str | None = None
) -> TrainResult:
    """Train ``config`` in ``run_dir``, resuming an unfinished run there and reusing a finished one;
    ``label`` names the run in the log (default: the folder's name)."""
    label = label or run_dir.name
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists():
        state = load_checkpoint(last)
        saved = RunConfig.from_dict(saved_config(state))
        if saved.to_dict() != config.to_dict():
            raise ValueError(
                f"{run_dir} holds a run with another configuration; remove it or choose another output folder"
            )
        if state["epoch"] >= saved.optim.epochs:
            log(f"{label}: already trained ({state['step']} steps), reusing it")
            best = state["best"]
            return TrainResult(run_dir, "finished", state["step"], state["epoch"], best["miou"], best["step"])
        log(f"{label}: resuming at step {state['step']}")
        return Trainer.resume(run_dir, progress=progress).fit()
    return Trainer(config, run_dir, progress=progress).fit()


@dataclasses.dataclass(frozen=True)
class Variant:
    """One setting of a study: changes to the ``model`` and ``optim`` sections of the base configuration.

    ``family`` groups the settings one choice is made among (on base-class validation); ``seeds`` limits
    a setting to the grid's first training seeds (e.g. one that is known to fail)."""

    name: str
    model: dict = dataclasses.field(default_factory=dict)
    optim: dict = dataclasses.field(default_factory=dict)
    family: str = ""
    seeds: int | None = None  # train only the first ``seeds`` training seeds of the grid (None: all)

    def config(self, base: RunConfig, train_seed: int) -> RunConfig:
        values = base.to_dict()
        values["model"] = {**values["model"], **self.model}
        values["optim"] = {**values["optim"], **self.optim}
        values["run"] = {**values["run"], "seed": train_seed}
        return RunConfig.from_dict(values)

    @property
    def ssm(self) -> bool:
        return self.model.get("ssm", True)


def run_folder(out_dir, variant: str, train_seed: int) -> Path:
    return Path(out_dir) / "runs" / _folder(variant) / f"seed-{train_seed}"


@dataclasses.dataclass
class GridRun:
    """One training run of a grid: its result, or ``diverged`` (the loss stopped being finite)."""

    variant: Variant
    seed: int
    result: TrainResult | None
    diverged: str | None = None

    @property
    def finished(self) -> bool:
        return self.result is not None and self.result.status == "finished"


def train_grid(
    base: RunConfig,
    out_dir,
    variants: Sequence[Variant],
    train_seeds: Sequence[int],
    progress: bool = True,
    log=print,
) -> dict[tuple[str, int], GridRun]:
    """Train each variant for each training seed (reusing finished runs, resuming stopped ones);
    ``{(variant, seed): GridRun}``. A run whose loss stops being finite is recorded as diverged; a
    stopped run (Ctrl-C) ends the grid early, the runs so far returned."""
    runs = {}
    for variant in variants:
        for seed in train_seeds[: variant.seeds]:
            folder = run_folder(out_dir, variant.name, seed)
            diverged = folder / "diverged.txt"
            if diverged.exists():
                runs[variant.name, seed] = GridRun(variant, seed, None, diverged.read_text().strip())
                continue
            log(f"== training {variant.name}, training seed {seed}")
            try:
                result = train_variant(variant.config(base, seed), folder, progress, log, f"{variant.name}/seed-{seed}")
            except TrainingError as error:
                write_text_atomic(diverged, f"{error}\n")
                runs[variant.name, seed] = GridRun(variant, seed, None, str(error))
                continue
            runs[variant.name, seed] = GridRun(variant, seed, result)
            if result.status != "finished":
                return runs
    return runs


def run_experiment(
    config: RunConfig,
    out_dir,
    variants: dict[str, dict],
    shots: Sequence[int] = (1,),
    fusions: Sequence[str] | None = None,
    episodes: int | dict[int, int] | None = None,
    shots_for: dict[str, Sequence[int]] | None = None,
    seeds: Sequence[int] | None = None,
    train_seeds: Sequence[int] = (0,),
    progress: bool = True,
    log=print,
    protocol: str = "sst",
) -> ExperimentResult:
    """Train each variant (``config`` with the variant's model settings) once per training seed
    (``run.seed``) in ``out_dir/runs/<variant>/seed-<s>``, then evaluate each run's best checkpoint on the
    fold's novel classes for every K in ``shots``, every run on the same manifests. ``fusions`` (for K > 1)
    evaluates the same checkpoint with each fusion; by default each model's own fusion. ``episodes``: per
    evaluation seed, one number for every K or ``{K: episodes}``. ``shots_for``: other K for some variants
    (``{name: Ks}``). ``protocol``: how the test episodes are drawn and scored (:mod:`sst_fast.protocol`;
    ``episodes`` or ``seeds`` None: the protocol's). A stopped training (Ctrl-C) returns early: see
    :attr:`GridRun.finished`."""
    out_dir = Path(out_dir)
    # What the evaluations will refuse, refused before hours of training.
    dataset = open_dataset(config.data.dataset, config.data.root, **config.data.options)
    rules = protocol_for(protocol, dataset.name)
    check_protocol_data(rules, dataset.describe())
    seeds = check_seeds((rules.seed,) if seeds is None else seeds)
    train_seeds = tuple(check_seeds(train_seeds))
    for count in episodes.values() if isinstance(episodes, dict) else (episodes,):
        if count is not None and rules.episodes is None:
            raise ValueError(f"episodes: protocol {protocol} queries every test image once; pass episodes=None")
        if count is not None:
            positive_int(count, "episodes")
    grid = [Variant(name, changes) for name, changes in variants.items()]
    runs = train_grid(config, out_dir, grid, train_seeds, progress, log)
    experiment = ExperimentResult(out_dir, dataset, runs, [], train_seeds)
    if len(runs) < len(grid) * len(train_seeds) or not all(run.finished for run in runs.values()):
        return experiment  # interrupted (or diverged): resumable, nothing to score
    manifests = {}  # (shots) -> manifests shared by every variant and training seed: paired comparisons
    for (name, train_seed), run in runs.items():
        checkpoint = best_or_last(run.result)
        for k in (shots_for or {}).get(name, shots):
            for fusion in fusions if (fusions and k > 1) else (None,):
                overrides = {"fusion": fusion} if fusion else {}
                model = model_from_checkpoint(checkpoint, device=run_device(config), **overrides)
                label = f"{name}, training seed {train_seed}, {k}-shot" + (f", {fusion}" if fusion else "")
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
                    protocol=protocol,
                )
                manifests[k] = result.manifests
                folder = f"{_folder(name)}-seed{train_seed}-{k}shot" + (f"-{fusion}" if fusion else "")
                folder += f"-{protocol}" if protocol != "sst" else ""
                result.save(out_dir / "eval" / folder)
                experiment.evaluations.append(Evaluation(name, k, model.config.fusion, result, train_seed))
    return experiment


def results_table(experiment: ExperimentResult, shots: Sequence[int], metrics=("miou", "fb_iou")) -> str:
    """A Markdown table: a row per variant, mean ± 95% CI (:meth:`ExperimentResult.score`) per (shots, metric) in %."""
    names = dict(METRICS)
    header = ["model", *[f"{k}-shot {names[m]}" for k in shots for m in metrics]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in experiment.variants:
        cells = [variant] + [format_points(*experiment.score(variant, k, m)) for k in shots for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fusion_table(experiment: ExperimentResult, variant: str, shots: int) -> str:
    """Table 2: mIoU and FB-IoU of one model's K-shot evaluation under each fusion."""
    lines = ["| fusion | mIoU | FB-IoU |", "|---|---|---|"]
    fusions = dict.fromkeys(e.fusion for e in experiment.evaluations if (e.variant, e.shots) == (variant, shots))
    for fusion in fusions:
        miou, fb_iou = (format_points(*experiment.score(variant, shots, m, fusion)) for m in ("miou", "fb_iou"))
        lines.append(f"| {fusion} | {miou} | {fb_iou} |")
    return "\n".join(lines)


def paired_difference(better, worse, metric="miou"):
    """Mean ± 95% CI of ``better - worse`` on the same manifests (a paired difference). Two evaluations: over
    their evaluation seeds. Two lists of evaluations, one per training seed: each pair's difference averaged
    over its evaluation seeds, then mean ± CI over training seeds (one pair: over its evaluation seeds)."""
    if isinstance(better, EvaluationResult):
        return mean_ci([x[metric] - y[metric] for x, y in zip(better.runs, worse.runs, strict=True)])
    if len(better) == 1:
        return paired_difference(better[0], worse[0], metric)
    return mean_ci([paired_difference(x, y, metric)[0] for x, y in zip(better, worse, strict=True)])


def save_experiment(experiment: ExperimentResult, name: str, extra: dict | None = None) -> Path:
    """``<out>/<name>.json`` (strict JSON): the runs' training state, every evaluation's summary and per-class
    IoU with its training seed, and the tables' mean ± CI and paired differences."""
    content = {
        "train_seeds": list(experiment.train_seeds),
        "spread": experiment.spread,
        "runs": [
            {
                "variant": name,
                "train_seed": seed,
                "status": "diverged" if run.diverged else run.result.status,
                "steps": run.result.step if run.result else None,
                "best_val_miou": run.result.best_miou if run.result else None,
                "best_step": run.result.best_step if run.result else None,
            }
            for (name, seed), run in experiment.runs.items()
        ],
        "evaluations": [
            {
                "variant": e.variant,
                "train_seed": e.train_seed,
                "shots": e.shots,
                "fusion": e.fusion,
                **e.result.to_dict(),
            }
            for e in experiment.evaluations
        ],
        **(extra or {}),
    }
    return write_json_atomic(experiment.out_dir / f"{name}.json", content)


def interrupted(experiment: ExperimentResult, what: str) -> ExperimentInterrupted | None:
    """The error to raise when a training run of ``experiment`` stopped or diverged, else None."""
    for (name, seed), run in experiment.runs.items():
        if run.diverged is not None:
            return ExperimentInterrupted(f"training of {name} (training seed {seed}) diverged: {run.diverged}")
        if not run.finished:
            return ExperimentInterrupted(
                f"training of {name} (training seed {seed}) stopped; run {what} again to continue"
            )
    return None


def ablation(
    config: RunConfig, out_dir, episodes=None, seeds=None, train_seeds=(0,), progress=True, log=print, protocol="sst"
) -> Path:
    """The paper's Table 1 (baseline, +SSM, +aux loss, SST; 1-shot) and Table 2 (SST, 5-shot, three fusions)
    on ``config``'s data set and fold, each variant trained once per training seed, evaluated under
    ``protocol`` (``episodes``/``seeds`` None: the protocol's; sst: 1000, seed 0). Writes ``ablation.md`` and
    ``ablation.json``; returns the Markdown path."""
    experiment = run_experiment(
        config,
        out_dir,
        TABLE1_VARIANTS,
        shots=(1,),
        shots_for={"sst": (1, 5)},
        fusions=TABLE2_FUSIONS,
        episodes=episodes,
        seeds=seeds,
        train_seeds=train_seeds,
        progress=progress,
        log=log,
        protocol=protocol,
    )
    error = interrupted(experiment, "the same command")
    if error is not None:
        raise error
    rows = [
        "| model | SSM | aux loss | 1-shot mIoU | 1-shot FB-IoU | vs baseline (mIoU) |",
        "|---|---|---|---|---|---|",
    ]
    for v in TABLE1_VARIANTS:
        gain = "" if v == "baseline" else format_points(*experiment.difference(v, "baseline", 1), signed=True)
        rows.append(
            f"| {v} | {_tick(TABLE1_VARIANTS[v]['ssm'])} | {_tick(TABLE1_VARIANTS[v]['aux_loss'])} | "
            f"{format_points(*experiment.score(v, 1, 'miou'))} | {format_points(*experiment.score(v, 1, 'fb_iou'))} | "
            f"{gain} |"
        )
    card = experiment.find("sst", 1).result.card
    text = (
        "\n\n".join(
            [
                f"# Ablation: {config.data.dataset} fold {config.data.fold}",
                f"Novel classes, {card.episodes} episodes × evaluation seeds {list(card.seeds)}; each variant trained "
                f"once per training seed {list(experiment.train_seeds)}. Mean ± 95% CI {experiment.spread} (%); "
                "*vs baseline* is the paired difference on the same episodes, per training seed.",
                "## Table 1: the self-supervised tuning module and the auxiliary loss (1-shot)",
                "\n".join(rows),
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


def train_seconds(run_dir: Path) -> float:
    """Steps over the training rate the log's last ``finished at step N/M (R steps/s)`` line reports
    (a resumed run: the rate of its last part); NaN without one."""
    path = Path(run_dir) / "train.log"
    found = re.findall(r"finished at step (\d+)/\d+ \(([\d.]+) steps/s\)", path.read_text()) if path.exists() else []
    if not found or float(found[-1][1]) <= 0:
        return math.nan
    return int(found[-1][0]) / float(found[-1][1])


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
