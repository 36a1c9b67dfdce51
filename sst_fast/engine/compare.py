"""Paired comparison of two models evaluated on the same episodes: ``sst-fast compare``.

Each side (A, B) is one evaluation folder (``metrics.json``, ``manifests/``, ``episodes.jsonl``), or
several: one per training seed of the same model, paired with the other side's by training seed.
Evaluations are compared only when they scored the same episodes (the manifests' SHA-256 on their
protocol cards) under the same protocol and scoring conventions; anything else is refused, naming
what differs.

The differences are B − A. Their 95% confidence interval comes from a paired, stratified bootstrap over
episodes: within each evaluation seed and each test class, that class's episodes are resampled with
replacement (as many as it had), the same draws for A and B and for every training seed, and every metric
is recomputed from the resampled pixel counts under the evaluations' own conventions; the interval is the
2.5th and 97.5th percentiles of the replicated differences (docs/design.md §4.4). With several training
seeds, a t-interval over the per-training-seed differences is reported beside it: the spread from training
again, which the episode bootstrap (the trained models held fixed) does not see.
"""

from __future__ import annotations

import glob
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import write_json_atomic, write_text_atomic
from ..metrics import metrics_from_records
from ..protocol import EMPTY_CLASS, EMPTY_FB_TERM, ProtocolCard
from .evaluate import EPISODES_FILE, EvaluationResult

METRICS_FILE = "metrics.json"
COMPARED = (("miou", "mIoU"), ("fb_iou", "FB-IoU"))
# What two evaluations must share to be compared (card fields), besides the scoring conventions.
SAME_EPISODES = ("dataset", "fold", "test_classes", "shots", "episodes", "seeds", "manifests")
SAME_SCORING = ("protocol", "resolution", "score_size", "align_corners")


@dataclass
class Evaluation:
    """One evaluation folder read back: its card, its metrics, and each seed's episode counts."""

    folder: Path
    card: ProtocolCard
    metrics: dict  # metrics.json
    # Evaluation seed -> int64 [episodes, 5]: class, background intersection and union, foreground's.
    counts: dict[int, np.ndarray]
    queries: dict[int, list[str]]  # evaluation seed -> each episode's query id
    empty_class: str
    empty_fb_term: str
    runs: list[dict]  # each seed's metrics, recomputed from the records (equal to metrics.json's)
    train_seed: int | None = None

    def result(self) -> EvaluationResult:
        return EvaluationResult(self.card, self.runs, [])


def load_evaluation(folder) -> Evaluation:
    """Read an evaluation folder; a ValueError when it is not one, has no ``episodes.jsonl``, or its records do not
    reproduce its ``metrics.json``."""
    folder = Path(folder)
    try:
        metrics = json.loads((folder / METRICS_FILE).read_text())
        card = ProtocolCard.from_dict(metrics["protocol"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{folder} is not an evaluation folder (no readable {METRICS_FILE}: {error})") from None
    path = folder / EPISODES_FILE
    if not path.exists():
        raise ValueError(
            f"{folder} has no {EPISODES_FILE} (an evaluation from before per-episode records): evaluate the model "
            f"again on the same episodes (sst-fast eval ... --manifest {folder}/manifests/seed-*.json)"
        )
    empty_class, empty_fb_term = conventions(card)
    rows: dict[int, list] = {seed: [] for seed in card.seeds}
    queries: dict[int, list[str]] = {seed: [] for seed in card.seeds}
    with open(path) as lines:
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                seed, episode = record["seed"], record["episode"]
                (bg_inter, fg_inter), (bg_union, fg_union) = record["intersection"], record["union"]
                row = [int(record["class_id"]), bg_inter, bg_union, fg_inter, fg_union]
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}, line {number}: not an episode record ({error})") from None
            if seed not in rows or episode != len(rows[seed]):
                raise ValueError(f"{path}, line {number}: seed {seed} episode {episode} out of order")
            rows[seed].append(row)
            queries[seed].append(record.get("query"))
    counts = {seed: np.array(r, dtype=np.int64).reshape(-1, 5) for seed, r in rows.items()}
    runs = []
    for number, seed in enumerate(card.seeds):
        if len(counts[seed]) != card.episodes:
            raise ValueError(f"{path}: seed {seed} has {len(counts[seed])} episodes, the card says {card.episodes}")
        run = metrics_from_records(_records(counts[seed]), card.test_classes, empty_class, empty_fb_term)
        saved = metrics["runs"][number]
        for key in ("miou", "fb_iou", "episode_miou"):
            if not _same(run[key], saved.get(key)):
                raise ValueError(f"{path} does not reproduce {METRICS_FILE} ({key} of seed {seed}): a damaged folder")
        runs.append(run)
    evaluation = Evaluation(folder, card, metrics, counts, queries, empty_class, empty_fb_term, runs)
    evaluation.train_seed = training_seed(evaluation)
    return evaluation


def conventions(card: ProtocolCard) -> tuple[str, str]:
    """The empty-class and empty-FB-term conventions the card's metric line names."""
    found = []
    for label, options in (("empty class", EMPTY_CLASS), ("empty FB-IoU term", EMPTY_FB_TERM)):
        keys = [key for key, text in options.items() if f"{label}: {text}" in card.metric]
        if len(keys) != 1:
            raise ValueError(f"the protocol card's metric line names no {label} convention: {card.metric!r}")
        found.append(keys[0])
    return found[0], found[1]


def training_seed(evaluation: Evaluation) -> int | None:
    """``run.seed`` of the training run the evaluated checkpoint came from (its run folder's config.yaml: next
    to the card's checkpoint, or above the evaluation folder), None when not found."""
    candidates = []
    if evaluation.card.checkpoint:
        checkpoint = Path(evaluation.card.checkpoint)
        candidates += [checkpoint.parent.parent, checkpoint.parent] if checkpoint.suffix else [checkpoint]
    candidates += list(evaluation.folder.resolve().parents)[:2]
    import yaml

    for run_dir in candidates:
        try:
            seed = yaml.safe_load((run_dir / "config.yaml").read_text())["run"]["seed"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):  # not a run folder's configuration
            continue
        if isinstance(seed, int) and not isinstance(seed, bool):
            return seed
    return None


def find_evaluations(arguments: Sequence) -> list[Path]:
    """The evaluation folders ``arguments`` name: folders holding ``metrics.json``, glob patterns, or folders
    searched for evaluations below them (e.g. one model's run folders, one per training seed)."""
    found = []
    for argument in arguments:
        text = str(argument)
        paths = [Path(argument)]
        if not paths[0].exists() and glob.has_magic(text):
            paths = [Path(p) for p in sorted(glob.glob(text))]
            if not paths:
                raise ValueError(f"{text} matches no folder")
        for path in paths:
            if (path / METRICS_FILE).exists():
                found.append(path)
            elif path.is_dir():
                below = sorted(p.parent for p in path.rglob(METRICS_FILE))
                if not below:
                    raise ValueError(f"{path} holds no evaluation ({METRICS_FILE})")
                found += below
            else:
                raise ValueError(f"{path} is not an evaluation folder (no {METRICS_FILE})")
    return found


def pair(a: list[Evaluation], b: list[Evaluation]) -> list[tuple[Evaluation, Evaluation]]:
    """A's and B's evaluations paired by training seed (when every one's is known and distinct), else in order."""
    if len(a) != len(b):
        raise ValueError(f"A has {len(a)} evaluation(s) and B {len(b)}: one each per training seed is needed")
    seeds_a, seeds_b = [e.train_seed for e in a], [e.train_seed for e in b]
    known = None not in seeds_a + seeds_b and len(set(seeds_a)) == len(a) and len(set(seeds_b)) == len(b)
    if len(a) == 1 or not known:
        return list(zip(a, b, strict=True))
    if set(seeds_a) != set(seeds_b):
        raise ValueError(f"A's training seeds {sorted(seeds_a)} are not B's {sorted(seeds_b)}: nothing to pair")
    by_seed = {e.train_seed: e for e in b}
    return sorted(((e, by_seed[e.train_seed]) for e in a), key=lambda p: p[0].train_seed)


def check_comparable(evaluations: Sequence[Evaluation]) -> None:
    """A ValueError naming what differs when the evaluations did not score the same episodes the same way."""
    first = evaluations[0]
    for other in evaluations[1:]:
        differ = []
        for name in (*SAME_EPISODES, *SAME_SCORING):
            mine, theirs = getattr(first.card, name), getattr(other.card, name)
            if mine != theirs:
                differ.append(f"{name} ({_short(mine)} vs {_short(theirs)})")
        sizes = first.card.input_size, other.card.input_size
        if first.card.resolution == other.card.resolution == "input" and sizes[0] != sizes[1]:
            differ.append(f"input_size, the size scored at ({_short(sizes[0])} vs {_short(sizes[1])})")
        scoring = (first.empty_class, first.empty_fb_term), (other.empty_class, other.empty_fb_term)
        if scoring[0] != scoring[1]:
            differ.append(f"metric conventions (empty class, empty FB term: {scoring[0]} vs {scoring[1]})")
        if not differ:
            for seed in first.card.seeds:
                if first.queries[seed] != other.queries[seed] or not np.array_equal(
                    first.counts[seed][:, 0], other.counts[seed][:, 0]
                ):
                    differ.append(f"the episodes of seed {seed} in {EPISODES_FILE}")
        if differ:
            raise ValueError(
                f"cannot compare {other.folder} with {first.folder}: they differ in "
                + "; ".join(differ)
                + ". Compare evaluations of the same episodes (sst-fast eval --manifest <folder>/manifests/seed-*.json)"
            )


def paired_bootstrap(
    a: Sequence[dict[int, np.ndarray]],
    b: Sequence[dict[int, np.ndarray]],
    classes: Sequence[int],
    empty_class: str = "skip",
    empty_fb_term: str = "skip",
    replicates: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Percentile intervals of B − A from a paired bootstrap stratified by evaluation seed and class.

    ``a``, ``b``: one entry per training seed (paired in order), each ``{evaluation seed: counts}`` with counts
    int ``[episodes, 5]`` (class, background intersection and union, foreground intersection and union; A's and
    B's of the same episodes, in the same order). Each replicate resamples, within each evaluation seed and
    class, that class's episodes with replacement, the same draws for every side; recomputes each side's per-seed
    mIoU, FB-IoU and class IoU under ``empty_class``/``empty_fb_term``; averages over evaluation seeds (class
    IoU: over the seeds that scored it) and over training seeds; and takes B − A. Returns ``{"miou": (low,
    high), "fb_iou": (low, high), "class_iou": {c: (low, high)}, "replicates": [...]}`` (NaN when no replicate
    has a number), ``replicates`` holding the replicated mIoU differences (for checks)."""
    if empty_class not in EMPTY_CLASS or empty_fb_term not in EMPTY_FB_TERM:
        raise ValueError(f"unknown conventions {empty_class!r}, {empty_fb_term!r}")
    if not a or len(a) != len(b):
        raise ValueError("a and b must hold the same number (at least one) of training seeds' counts")
    if replicates < 1 or not 0 < confidence < 1:
        raise ValueError("replicates must be positive and confidence in (0, 1)")
    sides = [*a, *b]
    seeds = list(sides[0])
    classes = [int(c) for c in classes]
    rng = np.random.default_rng(seed)
    per_seed = {"miou": [], "fb_iou": [], "class_iou": []}  # each [R, sides] (class_iou: [R, sides, C])
    for eval_seed in seeds:
        tables = [np.asarray(side[eval_seed], dtype=np.int64) for side in sides]
        labels = tables[0][:, 0]
        if any(len(t) != len(labels) or not np.array_equal(t[:, 0], labels) for t in tables):
            raise ValueError(f"evaluation seed {eval_seed}: the sides' episodes differ (paired counts are needed)")
        stacked = np.concatenate([t[:, 1:5] for t in tables], axis=1).astype(np.float64)  # [E, 4 * sides]
        fg_inter = np.zeros((replicates, len(sides), len(classes)))
        fg_union = np.zeros_like(fg_inter)
        pooled = np.zeros((replicates, len(sides), 4))
        for column, c in enumerate(classes):
            rows = np.flatnonzero(labels == c)
            if len(rows) == 0:
                continue
            # How often each of the class's episodes is drawn in each replicate: the same draws for all sides.
            weights = rng.multinomial(len(rows), np.full(len(rows), 1 / len(rows)), size=replicates)
            sums = (weights.astype(np.float64) @ stacked[rows]).reshape(replicates, len(sides), 4)  # exact: integers
            fg_inter[:, :, column], fg_union[:, :, column] = sums[:, :, 2], sums[:, :, 3]
            pooled += sums
        class_iou, miou, fb_iou = _vector_scores(fg_inter, fg_union, pooled, empty_class, empty_fb_term)
        per_seed["miou"].append(miou)
        per_seed["fb_iou"].append(fb_iou)
        per_seed["class_iou"].append(class_iou)
    pairs = len(a)
    result = {}
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # means of all-NaN slices: NaN, as intended
        for key in ("miou", "fb_iou"):
            values = np.mean(per_seed[key], axis=0)  # over evaluation seeds: [R, sides]
            difference = values[:, pairs:].mean(1) - values[:, :pairs].mean(1)
            result[key] = _percentiles(difference, confidence)
            if key == "miou":
                result["replicates"] = difference
        class_values = np.nanmean(per_seed["class_iou"], axis=0)  # [R, sides, C]: over the seeds that scored it
        class_difference = class_values[:, pairs:].mean(1) - class_values[:, :pairs].mean(1)
        result["class_iou"] = {c: _percentiles(class_difference[:, n], confidence) for n, c in enumerate(classes)}
    return result


def _vector_scores(fg_inter, fg_union, pooled, empty_class, empty_fb_term):
    """Class IoU ``[R, S, C]``, mIoU and FB-IoU ``[R, S]`` from the replicated sums, as FewShotMeter scores them."""
    empty = math.nan if empty_class == "skip" else 0.0
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        class_iou = np.where(fg_union > 0, fg_inter / np.where(fg_union > 0, fg_union, 1), empty)
        miou = np.nanmean(class_iou, axis=-1)
        terms = []
        for inter, union in ((pooled[..., 0], pooled[..., 1]), (pooled[..., 2], pooled[..., 3])):
            fallback = {"skip": math.nan, "zero": 0.0, "nan": math.nan}[empty_fb_term]
            terms.append(np.where(union > 0, inter / np.where(union > 0, union, 1), fallback))
        terms = np.stack(terms, -1)
        fb_iou = np.nanmean(terms, axis=-1) if empty_fb_term == "skip" else terms.mean(-1)
    return class_iou, miou, fb_iou


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if not len(values):
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def compare(a_folders, b_folders, replicates: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict:
    """B − A of the evaluations in ``a_folders`` and ``b_folders`` (folders, globs, or folders holding several
    training seeds' evaluations): point differences, the episode bootstrap's interval and, with several training
    seeds, the t-interval over them; per class. A strict-JSON-able dict (see :func:`markdown`)."""
    from ..metrics import mean_ci
    from .experiments import paired_difference

    side_a = [load_evaluation(f) for f in find_evaluations(a_folders)]
    side_b = [load_evaluation(f) for f in find_evaluations(b_folders)]
    pairs = pair(side_a, side_b)
    check_comparable([e for p in pairs for e in p])
    first = pairs[0][0]
    card = first.card
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    interval = paired_bootstrap(
        [e.counts for e in a], [e.counts for e in b], card.test_classes, first.empty_class, first.empty_fb_term,
        replicates, seed, confidence,
    )  # fmt: skip
    metrics = {}
    for key, _ in COMPARED:
        value_a = _mean([e.result().summary()[key][0] for e in a])
        value_b = _mean([e.result().summary()[key][0] for e in b])
        entry = {"a": value_a, "b": value_b, "difference": value_b - value_a, "ci95_episodes": list(interval[key])}
        if len(pairs) > 1:
            mean, half = paired_difference([e.result() for e in b], [e.result() for e in a], key)
            entry["ci95_training_seeds"] = [mean - half, mean + half]
        metrics[key] = entry
    classes = []
    for c in card.test_classes:
        value_a = _mean([_class_mean(e, c) for e in a])
        value_b = _mean([_class_mean(e, c) for e in b])
        entry = {
            "class_id": c,
            "episodes": int(sum(run["class_episodes"][c] for run in first.runs)),
            "a": value_a,
            "b": value_b,
            "difference": value_b - value_a,
            "ci95_episodes": list(interval["class_iou"][c]),
        }
        if len(pairs) > 1:
            differences = [_class_mean(y, c) - _class_mean(x, c) for x, y in pairs]
            if not any(math.isnan(d) for d in differences):
                mean, half = mean_ci(differences, confidence)
                entry["ci95_training_seeds"] = [mean - half, mean + half]
        classes.append(entry)
    return {
        "direction": "B - A",
        "a": [str(e.folder) for e in a],
        "b": [str(e.folder) for e in b],
        "pairs": [
            {
                "train_seed": x.train_seed if x.train_seed == y.train_seed else None,
                "a": str(x.folder),
                "b": str(y.folder),
                **{key: {"a": x.result().summary()[key][0], "b": y.result().summary()[key][0]} for key, _ in COMPARED},
            }
            for x, y in pairs
        ],
        "episodes": {
            "protocol": card.protocol,
            "dataset": card.dataset,
            "fold": card.fold,
            "shots": card.shots,
            "episodes": card.episodes,
            "seeds": list(card.seeds),
            "manifests": list(card.manifests),
            "empty_class": first.empty_class,
            "empty_fb_term": first.empty_fb_term,
        },
        "bootstrap": {
            "replicates": replicates,
            "seed": seed,
            "confidence": confidence,
            "method": "paired percentile bootstrap: each evaluation seed's episodes resampled with replacement "
            "within each class, the same draws for A and B and for every training seed",
        },
        "metrics": metrics,
        "classes": classes,
    }


def markdown(comparison: dict) -> str:
    """The comparison as a Markdown report: the metrics' B − A with their intervals, then per class."""
    setting = comparison["episodes"]
    boot = comparison["bootstrap"]
    several = len(comparison["pairs"]) > 1
    lines = [
        "# Paired comparison: B − A",
        "",
        *(f"- A: {folder}" for folder in comparison["a"]),
        *(f"- B: {folder}" for folder in comparison["b"]),
        "",
        f"Same episodes: {setting['dataset']} fold {setting['fold']}, {setting['shots']}-shot, {setting['episodes']} "
        f"episodes × evaluation seeds {setting['seeds']}, protocol {setting['protocol']} (manifests "
        + ", ".join(h[:12] for h in setting["manifests"])
        + ").",
        "",
        f"Differences are B − A in percentage points (positive: B is better). 95% CI (episodes): paired bootstrap, "
        f"{boot['replicates']} replicates (seed {boot['seed']}), episodes resampled within each class and evaluation "
        "seed, the same draws for A and B."
        + (
            f" 95% CI (training seeds): t-interval over the {len(comparison['pairs'])} training seeds' differences."
            if several
            else ""
        ),
        "",
    ]
    header = ["metric", "A", "B", "B − A", "95% CI (episodes)"] + (["95% CI (training seeds)"] if several else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, label in COMPARED:
        entry = comparison["metrics"][key]
        cells = [label, _points(entry["a"]), _points(entry["b"]), _points(entry["difference"], True)]
        cells.append(_interval(entry["ci95_episodes"]))
        if several:
            cells.append(_interval(entry.get("ci95_training_seeds")))
        lines.append("| " + " | ".join(cells) + " |")
    if several:
        lines += [
            "",
            "## Training seeds",
            "",
            "| training seed | A mIoU | B mIoU | B − A | A FB-IoU | B FB-IoU | B − A |",
        ]
        lines.append("|---|---|---|---|---|---|---|")
        for p in comparison["pairs"]:
            cells = ["-" if p["train_seed"] is None else str(p["train_seed"])]
            for key, _ in COMPARED:
                cells += [_points(p[key]["a"]), _points(p[key]["b"]), _points(p[key]["b"] - p[key]["a"], True)]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Per class (IoU)", ""]
    header = ["class", "episodes (all seeds)", "A", "B", "B − A", "95% CI (episodes)"] + (
        ["95% CI (training seeds)"] if several else []
    )
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in comparison["classes"]:
        cells = [str(entry["class_id"]), str(entry["episodes"]), _points(entry["a"]), _points(entry["b"])]
        cells += [_points(entry["difference"], True), _interval(entry["ci95_episodes"])]
        if several:
            cells.append(_interval(entry.get("ci95_training_seeds")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(comparison: dict, out: Path | None = None, markdown_file: Path | None = None) -> None:
    """Write the comparison as strict JSON to ``out`` and as Markdown to ``markdown_file`` (each when given)."""
    if out is not None:
        write_json_atomic(Path(out), comparison)
    if markdown_file is not None:
        write_text_atomic(Path(markdown_file), markdown(comparison))


def _records(counts: np.ndarray) -> list[dict]:
    return [{"class_id": c, "intersection": [bi, fi], "union": [bu, fu]} for c, bi, bu, fi, fu in counts.tolist()]


def _class_mean(evaluation: Evaluation, c: int) -> float:
    return evaluation.result().class_iou()[c]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _same(mine: float, saved) -> bool:
    if saved is None:  # strict JSON writes NaN as null
        return math.isnan(mine)
    return math.isclose(mine, float(saved), rel_tol=1e-12, abs_tol=1e-15)


def _short(value) -> str:
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], str) and len(value[0]) == 64:
        return "sha256 " + ", ".join(h[:12] for h in value)
    return str(list(value) if isinstance(value, tuple) else value)


def _points(value: float, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{100 * value:{'+' if signed else ''}.2f}"


def _interval(bounds) -> str:
    if not bounds or any(v is None or math.isnan(v) for v in bounds):
        return "-"
    return f"[{100 * bounds[0]:+.2f}, {100 * bounds[1]:+.2f}]"
