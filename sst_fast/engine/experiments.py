"""Multi-run experiments: the paper's ablations (Table 1, Table 2), the benchmark over folds and the
embedded demo, with a report.

Each variant is an ordinary training run in its own folder (``runs/<variant>/seed-<s>``, or
``runs/<variant>/fold-<f>/seed-<s>`` when the experiment spans folds), so an experiment that is stopped
picks up where it was: finished runs are reused, unfinished ones resumed, and a folder trained with
another configuration is refused with the settings that differ. Each evaluation is saved in its run
folder's ``eval/`` as ``sst-fast eval`` saves it (same folder name, same ``setting.json``) and reused
when it is there. Within a fold, all variants and training seeds are evaluated on the same episodes (one
manifest per seed), so their differences are paired.

Under torchrun (:mod:`sst_fast.engine.distributed`) every rank takes part in each training and
evaluation, rank 0 decides what is reused and alone writes files and logs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

from ..config import positive_int
from ..data import DATASETS, EpisodeManifest, FewShotDataset, open_dataset
from ..data.episodes import protocol_sampler
from ..files import write_json_atomic, write_text_atomic
from ..metrics import mean_ci
from ..protocol import ProtocolCard, check_protocol_data, protocol_for
from . import distributed
from .checkpoint import load_checkpoint, model_from_checkpoint, saved_config
from .evaluate import EvaluationResult, check_seeds, evaluate
from .runconfig import RunConfig, load_run_config
from .train import RESUMABLE_OVERRIDES, TrainingError, TrainResult, Trainer

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
    folder: Path | None = None  # where it is saved: <run folder>/eval/<the name sst-fast eval gives it>
    reused: bool = False  # read back from ``folder`` (an earlier invocation computed it)


@dataclasses.dataclass
class ExperimentResult:
    """Every variant trained once per training seed (``runs[variant, seed]``) on the base classes of ``fold``
    and evaluated on its novel classes, on shared manifests."""

    out_dir: Path
    dataset: FewShotDataset
    runs: dict[tuple[str, int], GridRun]
    evaluations: list[Evaluation]
    train_seeds: tuple[int, ...] = (0,)
    fold: int | str | None = None

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


# Settings that change where and how a run is computed and logged, not what it learns: a run folder trained
# with other values of them is the same run (a resume takes this invocation's). optim.epochs is not among
# them: a run trained for fewer epochs is another run.
MACHINE_KEYS = tuple(key for key in RESUMABLE_OVERRIDES if key != "optim.epochs")


def train_variant(
    config: RunConfig, run_dir: Path, progress: bool = True, log=print, label: str | None = None
) -> TrainResult:
    """Train ``config`` in ``run_dir``, resuming an unfinished run there and reusing a finished one;
    ``label`` names the run in the log (default: the folder's name). A folder whose run (its last checkpoint,
    else its ``config.yaml``) has another configuration is refused: a ValueError naming the settings that
    differ (:data:`MACHINE_KEYS` may differ). Under torchrun, rank 0 decides and every rank follows."""
    run_dir = Path(run_dir)
    label = label or run_dir.name
    plan = decided_by_rank0(lambda: _plan_run(config, run_dir))
    if plan[0] == "refuse":
        raise ValueError(plan[1])
    if plan[0] == "reuse":
        log(f"{label}: already trained ({plan[1].step} steps), reusing it")
        return plan[1]
    if plan[0] == "resume":
        log(f"{label}: resuming at step {plan[1]}")
        return Trainer.resume(run_dir, plan[2], progress=progress).fit()
    return Trainer(config, run_dir, progress=progress).fit()


def decided_by_rank0(decide):
    """``decide()`` (what to do with files: reuse, resume, refuse) computed by rank 0 and given to every rank, so
    that the ranks act alike; a single process just calls it. A failure on rank 0 is a ValueError on every rank."""
    world = distributed.current()
    if not world.distributed:
        return decide()
    answer = None
    if world.main:
        try:
            answer = ("ok", decide())
        except Exception as error:  # the other ranks must not wait for an answer that never comes
            answer = ("failed", f"{error}")
    answer = distributed.broadcast(answer, world)
    if answer[0] == "failed":
        raise ValueError(answer[1])
    return answer[1]


def _plan_run(config: RunConfig, run_dir: Path) -> tuple:
    """What :func:`train_variant` does with ``run_dir``: ``("new",)``, ``("reuse", TrainResult)``,
    ``("resume", step, overrides)`` or ``("refuse", message)``."""
    last = run_dir / "checkpoints" / "last.pt"
    state = None
    if last.exists():
        state = load_checkpoint(last)
        trained, source = RunConfig.from_dict(saved_config(state)), last
    elif (run_dir / "config.yaml").exists():  # a run stopped before its first checkpoint
        trained, source = load_run_config(run_dir / "config.yaml"), run_dir / "config.yaml"
    else:
        return ("new",)
    differ = config_differences(trained, config)
    if differ:
        shown = "; ".join(f"{key}: {there!r} there, {here!r} here" for key, there, here in differ[:8])
        more = f"; and {len(differ) - 8} more" if len(differ) > 8 else ""
        return (
            "refuse",
            f"{run_dir} holds a run with another configuration ({source} differs in "
            f"{', '.join(key for key, _, _ in differ)}: {shown}{more}); remove that folder or choose another "
            "output folder",
        )
    if state is None:
        return ("new",)
    if state["epoch"] >= trained.optim.epochs:
        best = state["best"]
        return ("reuse", TrainResult(run_dir, "finished", state["step"], state["epoch"], best["miou"], best["step"]))
    wanted = _flatten(config.to_dict())
    overrides = [
        f"{key}={json.dumps(wanted[key])}"
        for key in MACHINE_KEYS
        if key in wanted and wanted[key] != _flatten(trained.to_dict()).get(key)
    ]
    return ("resume", state["step"], overrides)


def config_differences(trained: RunConfig, wanted: RunConfig, ignored=MACHINE_KEYS) -> list[tuple[str, object, object]]:
    """``(key, trained value, wanted value)`` for each setting (``section.key``, ``data.options.name`` inside a
    mapping) in which two configurations differ, ``ignored`` keys left out."""
    left, right = _flatten(trained.to_dict()), _flatten(wanted.to_dict())
    missing = object()
    return [
        (key, left.get(key), right.get(key))
        for key in sorted(set(left) | set(right))
        if key not in ignored and left.get(key, missing) != right.get(key, missing)
    ]


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


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

    def config(self, base: RunConfig, train_seed: int, fold=None) -> RunConfig:
        """``base`` with this variant's settings, ``run.seed`` = ``train_seed`` and ``data.fold`` = ``fold``
        (None: the base's fold)."""
        values = base.to_dict()
        values["model"] = {**values["model"], **self.model}
        values["optim"] = {**values["optim"], **self.optim}
        values["run"] = {**values["run"], "seed": train_seed}
        if fold is not None:
            values["data"] = {**values["data"], "fold": fold}
        return RunConfig.from_dict(values)

    @property
    def ssm(self) -> bool:
        return self.model.get("ssm", True)


def run_folder(out_dir, variant: str, train_seed: int, fold=None) -> Path:
    """``<out>/runs/<variant>/seed-<s>``; with a ``fold``, ``<out>/runs/<variant>/fold-<f>/seed-<s>`` (the
    variant ``""``, the configuration as it is: ``<out>/runs/fold-<f>/seed-<s>``)."""
    folder = Path(out_dir) / "runs" / _folder(variant)
    if fold is not None:
        folder = folder / f"fold-{fold}"
    return folder / f"seed-{train_seed}"


def run_label(variant: str, train_seed: int, fold=None) -> str:
    """How the log names a run: ``sst/seed-0``, ``sst/fold-1/seed-0``, ``fold-1/seed-0``."""
    parts = [variant, *([f"fold-{fold}"] if fold is not None else []), f"seed-{train_seed}"]
    return "/".join(part for part in parts if part)


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
    fold=None,
) -> dict[tuple[str, int], GridRun]:
    """Train each variant for each training seed (reusing finished runs, resuming stopped ones);
    ``{(variant, seed): GridRun}``. ``fold``: train on that fold's base classes, in the fold's run folders
    (:func:`run_folder`); None: the base configuration's fold. A run whose loss stops being finite is recorded
    as diverged; a stopped run (Ctrl-C) ends the grid early, the runs so far returned."""
    world = distributed.current()
    runs = {}
    for variant in variants:
        for seed in train_seeds[: variant.seeds]:
            folder = run_folder(out_dir, variant.name, seed, fold)
            label = run_label(variant.name, seed, fold)
            diverged = folder / "diverged.txt"
            message = decided_by_rank0(lambda path=diverged: path.read_text().strip() if path.exists() else None)
            if message is not None:
                runs[variant.name, seed] = GridRun(variant, seed, None, message)
                continue
            log(f"== training {label}" if fold is not None else f"== training {variant.name}, training seed {seed}")
            try:
                result = train_variant(variant.config(base, seed, fold), folder, progress, log, label)
            except TrainingError as error:
                if world.main:
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
    fold=None,
) -> ExperimentResult:
    """Train each variant (``config`` with the variant's model settings) once per training seed
    (``run.seed``) in ``out_dir/runs/<variant>/seed-<s>``, then evaluate each run's best checkpoint on the
    fold's novel classes for every K in ``shots``, every run on the same manifests. ``fusions`` (for K > 1)
    evaluates the same checkpoint with each fusion; by default each model's own fusion. ``episodes``: per
    evaluation seed, one number for every K or ``{K: episodes}``. ``shots_for``: other K for some variants
    (``{name: Ks}``). ``protocol``: how the test episodes are drawn and scored (:mod:`sst_fast.protocol`;
    ``episodes`` or ``seeds`` None: the protocol's). ``fold``: train and test on that fold (``data.fold``),
    the runs in ``out_dir/runs/<variant>/fold-<f>/seed-<s>``; None: ``config``'s fold. Each evaluation is saved
    in its run folder as ``sst-fast eval`` saves it (:func:`eval_setting`) and reused from there when it is
    already saved. A stopped training (Ctrl-C) returns early: see :attr:`GridRun.finished`."""
    out_dir = Path(out_dir)
    world = distributed.current()
    log = log if world.main else _quiet
    if fold is not None:
        config = with_fold(config, fold)
    # What the evaluations will refuse, refused before hours of training.
    dataset = open_dataset(config.data.dataset, config.data.root, **config.data.options)
    rules = protocol_for(protocol, dataset.name)
    check_protocol_data(rules, dataset.describe())
    seeds = check_seeds(rules.seeds if seeds is None else seeds)
    train_seeds = tuple(check_seeds(train_seeds))
    for count in episodes.values() if isinstance(episodes, dict) else (episodes,):
        if count is not None and rules.episodes is None:
            raise ValueError(f"episodes: protocol {protocol} queries every test image once; pass episodes=None")
        if count is not None:
            positive_int(count, "episodes")
    every_k = set(shots).union(*(shots_for or {}).values())
    check_test_episodes(dataset, config.data.fold, every_k, rules)
    grid = [Variant(name, changes) for name, changes in variants.items()]
    runs = train_grid(config, out_dir, grid, train_seeds, progress, log, fold)
    experiment = ExperimentResult(out_dir, dataset, runs, [], train_seeds, config.data.fold)
    if len(runs) < len(grid) * len(train_seeds) or not all(run.finished for run in runs.values()):
        return experiment  # interrupted (or diverged): resumable, nothing to score
    manifests = {}  # (shots) -> manifests shared by every variant and training seed: paired comparisons
    where = "" if fold is None else f"fold {fold}, "
    for (name, train_seed), run in runs.items():
        checkpoint = best_or_last(run.result)
        for k in (shots_for or {}).get(name, shots):
            for fusion in fusions if (fusions and k > 1) else (None,):
                overrides = {"fusion": fusion} if fusion else {}
                model = model_from_checkpoint(checkpoint, device=run_device(config), **overrides)
                count = episodes[k] if isinstance(episodes, dict) else episodes
                setting = eval_setting(checkpoint, config, rules, k, count, seeds, model.config.fusion)
                folder = run.result.run_dir / "eval" / eval_folder_name(setting)
                label = f"{name or 'model'}, {where}training seed {train_seed}, {k}-shot" + (
                    f", {fusion}" if fusion else ""
                )
                result = decided_by_rank0(lambda folder=folder, setting=setting: saved_evaluation(folder, setting))
                reused = result is not None
                if reused:
                    log(f"== {label}: already evaluated, reusing {folder}")
                else:
                    log(f"== evaluating {label}")
                    result = evaluate(
                        model,
                        dataset,
                        config.data.fold,
                        shots=k,
                        episodes=count,
                        seeds=seeds,
                        size=config.model.image_size,
                        batch_size=config.optim.batch_size,
                        num_workers=config.data.workers,
                        manifests=manifests.get(k),
                        checkpoint=str(checkpoint),
                        progress=progress,
                        protocol=protocol,
                    )
                    if world.main:  # as sst-fast eval leaves it: the results, then the setting they belong to
                        result.save(folder)
                        write_json_atomic(folder / SETTING_FILE, setting)
                manifests[k] = result.manifests
                experiment.evaluations.append(
                    Evaluation(name, k, model.config.fusion, result, train_seed, folder, reused)
                )
    return experiment


def check_test_episodes(dataset: FewShotDataset, fold, shots, rules) -> None:
    """Refuse now, before any training, what the evaluations would refuse after it: a test class of ``fold``
    with too few images for a K-shot episode (for each K in ``shots``) under the protocol ``rules``."""
    for k in sorted(shots):
        protocol_sampler(dataset, fold, k, rules)


def with_fold(config: RunConfig, fold) -> RunConfig:
    """``config`` with ``data.fold`` = ``fold`` (checked as the configuration checks it)."""
    values = config.to_dict()
    values["data"] = {**values["data"], "fold": fold}
    return RunConfig.from_dict(values)


# --- evaluations saved as sst-fast eval saves them ------------------------------------------------------------

SETTING_FILE = "setting.json"  # what decides an evaluation's numbers, next to its metrics.json (as sst-fast eval)


def eval_setting(checkpoint, config: RunConfig, rules, shots: int, episodes: int | None, seeds, fusion) -> dict:
    """The ``setting.json`` that ``sst-fast eval <checkpoint> --shots K --episodes N --seeds S...`` (with
    ``--protocol``) writes for the same evaluation, key for key: so the benchmark's results and eval's share a
    folder and each recognises the other's as its own."""
    return {
        "checkpoint": str(checkpoint),
        "model": None,
        "protocol": rules.name,
        "dataset": config.data.dataset,
        "fold": config.data.fold,
        "shots": shots,
        "episodes": episodes if episodes is not None else rules.episodes,
        "seeds": list(seeds),
        "manifests": None,
        "input_size": list(config.model.image_size),
        "original_size": False,
        "fusion": fusion,
        "amp": "off",
        "reference": False,
    }


def eval_folder_name(setting: dict) -> str:
    """The folder ``sst-fast eval`` gives an evaluation of a run folder's checkpoint by default (under the run
    folder's ``eval/``): ``<dataset>-fold<f>-<K>shot[-fusion][-protocol]-e<episodes>-s<seeds>``."""
    name = f"{setting['dataset']}-fold{setting['fold']}-{setting['shots']}shot"
    if setting["shots"] > 1 and setting["fusion"]:
        name += f"-{setting['fusion']}"
    if setting["protocol"] != "sst":
        name += f"-{setting['protocol']}"
    if setting["episodes"] is not None:  # None: every test image once
        name += f"-e{setting['episodes']}"
    return name + "-s" + "-".join(str(s) for s in setting["seeds"])


def saved_evaluation(folder: Path, setting: dict) -> EvaluationResult | None:
    """The evaluation saved in ``folder`` when it is the one ``setting`` describes and is still current, else
    None (then it is computed again and replaces what is there). Current: same setting (the checkpoint the same
    file of the run folder, however its path was spelled), its ``metrics.json`` written after that checkpoint
    (a retrained run's results are stale) and every manifest file matching the SHA-256 its card records."""
    folder = Path(folder)
    metrics_file, setting_file = folder / "metrics.json", folder / SETTING_FILE
    checkpoint = Path(setting["checkpoint"])
    try:
        previous = json.loads(setting_file.read_text())
        saved = json.loads(metrics_file.read_text())
        if metrics_file.stat().st_mtime_ns < checkpoint.stat().st_mtime_ns:
            return None
    except (OSError, ValueError):
        return None
    ours = json.loads(json.dumps(setting))
    if not isinstance(previous, dict) or Path(str(previous.get("checkpoint"))).name != checkpoint.name:
        return None
    if {**previous, "checkpoint": None} != {**ours, "checkpoint": None}:
        return None
    try:
        return load_evaluation(folder, saved)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_evaluation(folder, saved: dict | None = None) -> EvaluationResult:
    """The :class:`EvaluationResult` that :meth:`EvaluationResult.save` wrote to ``folder`` (its card, each seed's
    metrics, its manifests); a ValueError when a manifest is missing or not the one the card records."""
    folder = Path(folder)
    saved = json.loads((folder / "metrics.json").read_text()) if saved is None else saved
    card = ProtocolCard.from_dict(saved["protocol"])
    manifests = [EpisodeManifest.load(folder / "manifests" / f"seed-{seed}.json") for seed in card.seeds]
    if tuple(m.sha256 for m in manifests) != tuple(card.manifests):
        raise ValueError(f"{folder}: its manifests are not the ones its protocol card records")
    runs = [_from_json(run) for run in saved["runs"]]
    if len(runs) != len(manifests):
        raise ValueError(f"{folder}: {len(runs)} runs for {len(manifests)} seeds")
    return EvaluationResult(card=card, runs=runs, manifests=manifests)


def _from_json(run: dict) -> dict:
    """A seed's metrics as JSON holds them back as :meth:`FewShotMeter.compute` gives them: class ids as ints,
    null (a NaN written as strict JSON) as NaN."""

    def number(value):
        return math.nan if value is None else value

    return {
        key: {int(c): number(v) for c, v in value.items()} if isinstance(value, dict) else number(value)
        for key, value in run.items()
    }


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


def save_experiment(experiment, name: str, extra: dict | None = None) -> Path:
    """``<out>/<name>.json`` (strict JSON): the runs' training state, every evaluation's summary and per-class
    IoU with its training seed (and fold), and ``extra`` (the tables' mean ± CI and paired differences).
    ``experiment``: an :class:`ExperimentResult` or a :class:`FoldsResult`. Under torchrun, rank 0 writes."""
    experiments = experiment.experiments.values() if isinstance(experiment, FoldsResult) else [experiment]
    content = {
        "train_seeds": list(experiment.train_seeds),
        "spread": experiment.spread,
        "runs": [run_record(e, name, seed) for e in experiments for name, seed in e.runs],
        "evaluations": [evaluation_record(e, evaluation) for e in experiments for evaluation in e.evaluations],
        **(extra or {}),
    }
    if not distributed.current().main:
        return experiment.out_dir / f"{name}.json"
    return write_json_atomic(experiment.out_dir / f"{name}.json", content)


def run_record(experiment: ExperimentResult, variant: str, seed: int) -> dict:
    """One training run as the JSON reports list it."""
    run = experiment.runs[variant, seed]
    return {
        "variant": variant,
        "fold": experiment.fold,
        "train_seed": seed,
        "run_dir": str(run.result.run_dir) if run.result else None,
        "status": "diverged" if run.diverged else run.result.status,
        "steps": run.result.step if run.result else None,
        "best_val_miou": run.result.best_miou if run.result else None,
        "best_step": run.result.best_step if run.result else None,
    }


def evaluation_record(experiment: ExperimentResult, evaluation: Evaluation) -> dict:
    """One evaluation as the JSON reports list it: what was evaluated, where it is saved, its results."""
    return {
        "variant": evaluation.variant,
        "fold": experiment.fold,
        "train_seed": evaluation.train_seed,
        "shots": evaluation.shots,
        "fusion": evaluation.fusion,
        "folder": str(evaluation.folder) if evaluation.folder is not None else None,
        "reused": evaluation.reused,
        **evaluation.result.to_dict(),
    }


def interrupted(experiment, what: str) -> ExperimentInterrupted | None:
    """The error to raise when a training run of ``experiment`` (an :class:`ExperimentResult` or a
    :class:`FoldsResult`) stopped or diverged, else None."""
    experiments = experiment.experiments.values() if isinstance(experiment, FoldsResult) else [experiment]
    for each in experiments:
        where = "" if each.fold is None or not isinstance(experiment, FoldsResult) else f"fold {each.fold}, "
        for (name, seed), run in each.runs.items():
            which = f"{name or 'the model'} ({where}training seed {seed})"
            if run.diverged is not None:
                return ExperimentInterrupted(f"training of {which} diverged: {run.diverged}")
            if not run.finished:
                return ExperimentInterrupted(f"training of {which} stopped; run {what} again to continue")
    return None


# --- experiments over folds ---------------------------------------------------------------------------------


def check_folds(dataset: str, folds=None, available: tuple | None = None) -> tuple:
    """``folds`` of ``dataset`` as the configuration names them: 0..3 (the texts "0".."3" read as numbers),
    FSS-1000's ``test`` and ``val``, or ``available`` (an opened data set's :attr:`~FewShotDataset.folds`, needed
    where its data decides them: the folder data set's); None: the folds a benchmark reports (FSS-1000:
    ``test``; the others: every fold). A ValueError naming the data set's folds for anything else, for a fold
    named twice, or for none."""
    kind = DATASETS[dataset]
    if available is None:
        available = kind.named_folds
    if folds is None:
        return kind.reported_folds or available
    names = ", ".join(map(str, available))
    numbered = all(isinstance(fold, int) for fold in available)
    chosen = []
    for fold in folds:
        value = fold
        if isinstance(fold, str) and numbered and fold.strip().isdigit():
            value = int(fold)
        if isinstance(value, bool) or value not in available:
            hint = " (FSS-1000 has no numbered folds: its test classes are 'test', its validation classes 'val')"
            raise ValueError(
                f"folds (--folds): {dataset} has the folds {names}, got {fold!r}" + (hint if dataset == "fss" else "")
            )
        if value in chosen:
            raise ValueError(f"folds (--folds): fold {value} is named twice")
        chosen.append(value)
    if not chosen:
        raise ValueError(f"folds (--folds): name at least one fold of {dataset} ({names})")
    return tuple(chosen)


@dataclasses.dataclass
class FoldsResult:
    """An experiment on each of several folds (``experiments[fold]``): each fold's runs trained on its base
    classes and evaluated on its novel classes. A score over folds is the mean of the folds' scores, as the
    field reports it, with a 95% CI over training seeds (each seed's mean over folds) and over evaluation seeds
    (each seed's mean over folds and training seeds): see :func:`fold_score`."""

    out_dir: Path
    experiments: dict

    @property
    def folds(self) -> tuple:
        return tuple(self.experiments)

    @property
    def train_seeds(self) -> tuple[int, ...]:
        return next(iter(self.experiments.values())).train_seeds

    @property
    def variants(self) -> list[str]:
        return next(iter(self.experiments.values())).variants

    @property
    def spread(self) -> str:
        return next(iter(self.experiments.values())).spread

    def cells(self, variant: str, shots: int, fusion: str | None = None, fold=None) -> list[list[EvaluationResult]]:
        """``[fold][training seed]`` evaluations of ``variant`` (one fold, or every fold when ``fold`` is None)."""
        folds = self.folds if fold is None else (fold,)
        return [self.experiments[f].per_seed(variant, shots, fusion) for f in folds]

    def score(self, variant: str, shots: int, metric: str = "miou", fusion=None, fold=None) -> dict:
        """:func:`fold_score` of ``variant`` on ``fold`` (None: the mean over folds)."""
        return fold_score(self.cells(variant, shots, fusion, fold), metric)

    def difference(self, better: str, worse: str, shots: int, metric: str = "miou", fold=None) -> dict:
        """:func:`fold_score` of ``better - worse`` on the same episodes (paired per fold, training seed and
        evaluation seed)."""
        return fold_score(self.cells(better, shots, None, fold), metric, self.cells(worse, shots, None, fold))


def fold_score(cells: list[list[EvaluationResult]], metric: str = "miou", minus=None) -> dict:
    """Mean of ``metric`` over ``cells[fold][training seed]`` (each an evaluation over the same evaluation
    seeds; ``minus``: the same shape, subtracted pairwise) with its 95% CI half-widths: ``ci95_train_seeds``
    over training seeds (each one's mean over folds and evaluation seeds; NaN with one), ``ci95_eval_seeds``
    over evaluation seeds (each one's mean over folds and training seeds; NaN with one), and ``ci95`` the
    first when there are several training seeds, else the second (one fold: :meth:`ExperimentResult.score`)."""

    def value(f: int, t: int, s: int) -> float:
        own = cells[f][t].runs[s][metric]
        return own - minus[f][t].runs[s][metric] if minus is not None else own

    folds, train, evals = len(cells), len(cells[0]), len(cells[0][0].runs)
    by_train = [sum(value(f, t, s) for f in range(folds) for s in range(evals)) / (folds * evals) for t in range(train)]
    by_eval = [sum(value(f, t, s) for f in range(folds) for t in range(train)) / (folds * train) for s in range(evals)]
    mean, over_train = mean_ci(by_train)
    over_eval = mean_ci(by_eval)[1]
    return {
        "mean": mean,
        "ci95": over_train if train > 1 else over_eval,
        "ci95_train_seeds": over_train,
        "ci95_eval_seeds": over_eval,
    }


def run_folds(config: RunConfig, out_dir, variants: dict[str, dict], folds, **options) -> FoldsResult:
    """:func:`run_experiment` on each fold of ``folds`` (checked by :func:`check_folds`) in turn, into the same
    ``out_dir`` (runs in ``runs/<variant>/fold-<f>/seed-<s>``); ``options`` as :func:`run_experiment` takes
    them. A fold whose training stopped ends it early, the folds so far returned (see :func:`interrupted`)."""
    if DATASETS[config.data.dataset].named_folds is None:  # its folds are known once its data is read
        dataset = open_dataset(config.data.dataset, config.data.root, **config.data.options)
        folds = check_folds(config.data.dataset, folds, dataset.folds)
    else:  # a fold the data set cannot have is refused before its folder is read
        folds = check_folds(config.data.dataset, folds)
        dataset = open_dataset(config.data.dataset, config.data.root, **config.data.options)
    train_seeds = tuple(check_seeds(options.get("train_seeds", (0,))))
    # Every fold's test episodes and run folders are checked before the first run trains: a refusal comes now,
    # not hours later.
    rules = protocol_for(options.get("protocol", "sst"), dataset.name)
    every_k = set(options.get("shots", (1,))).union(*(options.get("shots_for") or {}).values())
    for fold in folds:
        check_test_episodes(dataset, fold, every_k, rules)
    for fold in folds:
        for name, changes in variants.items():
            for seed in train_seeds:
                wanted = Variant(name, changes).config(config, seed, fold)
                folder = run_folder(out_dir, name, seed, fold)
                plan = decided_by_rank0(lambda wanted=wanted, folder=folder: _plan_run(wanted, folder))
                if plan[0] == "refuse":
                    raise ValueError(plan[1])
    result = FoldsResult(Path(out_dir), {})
    for fold in folds:
        experiment = run_experiment(config, out_dir, variants, fold=fold, **options)
        result.experiments[fold] = experiment
        if interrupted(experiment, "") is not None:
            break
    return result


def ablation(
    config: RunConfig,
    out_dir,
    episodes=None,
    seeds=None,
    train_seeds=(0,),
    progress=True,
    log=print,
    protocol="sst",
    folds=None,
) -> Path:
    """The paper's Table 1 (baseline, +SSM, +aux loss, SST; 1-shot) and Table 2 (SST, 5-shot, three fusions)
    on ``config``'s data set and fold, each variant trained once per training seed, evaluated under
    ``protocol`` (``episodes``/``seeds`` None: the protocol's; sst: 1000, seed 0). ``folds``: on each of these
    folds instead (:func:`check_folds`), every fold's column and their mean. Writes ``ablation.md`` and
    ``ablation.json``; returns the Markdown path."""
    options = dict(
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
    if folds is not None:
        return _ablation_over_folds(config, out_dir, folds, options)
    experiment = run_experiment(config, out_dir, TABLE1_VARIANTS, **options)
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


def _ablation_over_folds(config: RunConfig, out_dir, folds, options: dict) -> Path:
    """:func:`ablation` on several folds: Table 1 and Table 2 with a column per fold, then the mean over folds."""
    result = run_folds(config, out_dir, TABLE1_VARIANTS, folds, **options)
    error = interrupted(result, "the same command")
    if error is not None:
        raise error
    folds = result.folds
    per_fold = [f"fold {f} mIoU" for f in folds]
    rows = [
        "| model | SSM | aux loss | " + " | ".join(per_fold) + " | mean mIoU | mean FB-IoU | vs baseline (mean mIoU) |",
        "|" + "---|" * (len(folds) + 6),
    ]
    table1 = {}
    for v in TABLE1_VARIANTS:
        scores = {f: result.score(v, 1, fold=f) for f in folds}
        mean, fb_iou = result.score(v, 1), result.score(v, 1, "fb_iou")
        gain = None if v == "baseline" else result.difference(v, "baseline", 1)
        table1[v] = {"folds": {str(f): scores[f] for f in folds}, "mean": mean, "fb_iou": fb_iou, "vs_baseline": gain}
        rows.append(
            f"| {v} | {_tick(TABLE1_VARIANTS[v]['ssm'])} | {_tick(TABLE1_VARIANTS[v]['aux_loss'])} | "
            + " | ".join(format_score(scores[f]) for f in folds)
            + f" | {format_score(mean)} | {format_score(fb_iou)} | "
            + ("" if gain is None else format_score(gain, signed=True))
            + " |"
        )
    first = result.experiments[folds[0]]
    fusions = list(dict.fromkeys(e.fusion for e in first.evaluations if (e.variant, e.shots) == ("sst", 5)))
    rows2 = ["| fusion | " + " | ".join(per_fold) + " | mean mIoU | mean FB-IoU |", "|" + "---|" * (len(folds) + 3)]
    table2 = {}
    for fusion in fusions:
        scores = {f: fold_score(result.cells("sst", 5, fusion, f)) for f in folds}
        mean, fb_iou = fold_score(result.cells("sst", 5, fusion)), fold_score(result.cells("sst", 5, fusion), "fb_iou")
        table2[fusion] = {"folds": {str(f): scores[f] for f in folds}, "mean": mean, "fb_iou": fb_iou}
        rows2.append(
            f"| {fusion} | " + " | ".join(format_score(scores[f]) for f in folds)
            + f" | {format_score(mean)} | {format_score(fb_iou)} |"
        )  # fmt: skip
    card = first.find("sst", 1).result.card
    text = "\n\n".join(
        [
            f"# Ablation: {config.data.dataset}, folds {', '.join(map(str, folds))}",
            f"Each fold's variants trained on its base classes and tested on its novel classes, {card.episodes} "
            f"episodes × evaluation seeds {list(card.seeds)}; each variant trained once per fold and training seed "
            f"{list(result.train_seeds)}. Mean ± 95% CI {result.spread} (%); *mean*: over the folds. *vs baseline* "
            "is the paired difference on the same episodes, per fold and training seed.",
            "## Table 1: the self-supervised tuning module and the auxiliary loss (1-shot)",
            "\n".join(rows),
            "## Table 2: 5-shot fusion of the SST model",
            "\n".join(rows2),
            f"## Protocol (fold {folds[0]}; the other folds differ in fold, test classes, checkpoints and manifests)",
            "```\n" + str(card) + "\n```",
        ]
    )
    save_experiment(result, "ablation", {"folds": list(folds), "table1": table1, "table2": table2})
    path = Path(out_dir) / "ablation.md"
    return write_text_atomic(path, text + "\n") if distributed.current().main else path


def format_score(score: dict, signed: bool = False, both: bool = False) -> str:
    """A :func:`fold_score` in percentage points: ``mean ± ci95``; ``both``: with several training and
    evaluation seeds, the evaluation seeds' CI after it in parentheses (``40.7 ± 3.2 (1.4)``)."""
    text = format_points(score["mean"], score["ci95"], signed=signed)
    if both and not math.isnan(score["ci95_train_seeds"]) and not math.isnan(score["ci95_eval_seeds"]):
        text += f" ({100 * score['ci95_eval_seeds']:.1f})"
    return text


def _quiet(*_args, **_kwargs) -> None:
    """The log of ranks other than 0: rank 0 speaks for all."""


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
