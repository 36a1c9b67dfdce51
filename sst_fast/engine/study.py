"""Studies: grids of training runs replicated over training seeds, evaluated on shared episodes.

A study trains every variant once per training seed (``run.seed``) in ``<out>/runs/<variant>/seed-<s>``
(finished runs are reused and unfinished ones resumed, so a stopped study continues where it was),
chooses settings on base-class validation only, and evaluates every model on the novel classes on the
same episode manifests, so that every comparison is paired per training seed and summarised as a mean
± 95% CI over training seeds.

The step study (``sst-fast ablation --study step``, :func:`step_study`) asks whether the tuning step
of Eq. 11 matters: the step's scale (fixed alpha over four decades, learnable alpha, the scale-free
``relative`` form), first vs second order, and a baseline whose learning rate is chosen as carefully as
SST's. For every model it measures what the step does on test episodes: how far the prototype moves
(``|p' - p| / |p|``), whether the tuned prototype segments its own support better (the mechanism's
direct check), and the query mIoU with the step on and off for the same weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data import EpisodeDataset, collate_episodes, open_dataset
from ..files import write_json_atomic, write_text_atomic
from ..data.episodes import EpisodeManifest, fold_sampler
from ..metrics import mean_ci
from ..models.functional import downsample_mask, foreground_iou
from .checkpoint import load_checkpoint, model_from_checkpoint
from .evaluate import check_seeds, evaluate
from .experiments import (
    ExperimentInterrupted,
    GridRun,
    Variant,
    best_or_last,
    format_points,
    run_device,
    train_grid,
    train_seconds,
)
from .runconfig import RunConfig

BASELINE = {"ssm": False, "aux_loss": False}
# A run "collapsed" when it still segments nothing of the validation classes after this many steps.
COLLAPSE_STEPS = 200
COLLAPSE_MIOU = 0.01


def step_variants(lr: float = 0.02) -> list[Variant]:
    """The step study's grid on the synthetic configuration (``lr``: its learning rate). Every variant pins
    the step's settings (the paper's where it does not vary them), so the grid does not move when a
    configuration's defaults do."""
    paper = {"ssm": True, "aux_loss": True, "first_order": False, "tune_form": "paper", "tune_step": 1.0,
             "learnable_step": False}  # fmt: skip

    relative_default = {"tune_form": "relative", "tune_step": 0.1}

    def variant(name, family, model=None, optim=None, seeds=None):
        return Variant(name, {**paper, **(model or {})}, {"lr": lr, **(optim or {})}, family, seeds)

    return [
        *(variant(f"baseline-lr{r:g}", "baseline", BASELINE, {"lr": r}) for r in (lr / 2, lr, lr * 2.5)),
        # The auxiliary loss without the tuning module: what training on the self-segmentation alone does.
        variant(f"aux-lr{lr:g}", "aux", {"ssm": False, "aux_loss": True}),
        # The tuning module without the auxiliary loss (Table 1's "+SSM"), at the default step.
        variant(f"ssm-lr{lr:g}", "ssm", {"ssm": True, "aux_loss": False, **relative_default}),
        *(variant(f"sst-alpha{a:g}", "paper", {"tune_step": float(a)}) for a in (1, 10, 100, 1000, 10000)),
        *(
            variant(f"sst-relative{a:g}", "relative", {"tune_form": "relative", "tune_step": a})
            for a in (0.01, 0.03, 0.1, 0.3)
        ),
        variant("sst-learnable", "learnable", {"learnable_step": True}, {"step_lr": 1.0}),
        # First order at the setting that validated best above (the default): the inner gradient a constant.
        variant("sst-relative0.1-first", "first order", {**relative_default, "first_order": True}),
    ]


def validation_summary(runs: dict[tuple[str, int], GridRun]) -> dict[str, dict]:
    """Per variant over its training seeds: best base-class validation mIoU (a diverged run counts as 0),
    collapsed and diverged runs, training time."""
    summary = {}
    for (name, _seed), run in runs.items():
        entry = summary.setdefault(
            name, {"val": [], "collapsed": 0, "diverged": 0, "seconds": [], "alpha": [], "escape": []}
        )
        if run.diverged is not None:
            entry["val"].append(0.0)
            entry["diverged"] += 1
            continue
        history = _history(run.result.run_dir)
        entry["val"].append(run.result.best_miou or 0.0)
        entry["collapsed"] += int(collapsed(history))
        entry["escape"].append(escape_step(history))
        entry["seconds"].append(train_seconds(run.result.run_dir))
        steps = [r["tune_step"] for r in history if "tune_step" in r]
        if steps:
            entry["alpha"].append((steps[0], steps[len(steps) // 2], steps[-1]))
    return summary


def collapsed(history: Sequence[dict]) -> bool:
    """True when every validation up to :data:`COLLAPSE_STEPS` steps scored below :data:`COLLAPSE_MIOU`
    (the model segments nothing: it predicts background everywhere)."""
    early = [r["val_miou"] for r in history if "val_miou" in r and r["step"] <= COLLAPSE_STEPS]
    return bool(early) and all(v is not None and v < COLLAPSE_MIOU for v in early)


def escape_step(history: Sequence[dict], level: float = 0.05) -> float:
    """The first step whose validation mIoU reached ``level`` (NaN if none did): when the run stopped
    predicting background everywhere."""
    for record in history:
        if record.get("val_miou") is not None and record["val_miou"] >= level:
            return float(record["step"])
    return math.nan


def choose(summary: dict[str, dict], variants: Sequence[Variant]) -> dict[str, str]:
    """Per family, the variant with the highest mean best validation mIoU over its training seeds."""
    chosen = {}
    for variant in variants:
        if variant.name not in summary:
            continue
        best = chosen.get(variant.family)
        score = _mean(summary[variant.name]["val"])
        if best is None or score > _mean(summary[best]["val"]):
            chosen[variant.family] = variant.name
    return chosen


@torch.no_grad()
def probe_step(model, batch: dict) -> dict[str, list[float]]:
    """What the tuning step does to each support of ``batch`` (eval mode): ``move`` = |p' - p| / |p|, and the
    support's self-segmentation IoU with p (``iou_before``) and with p' (``iou_after``)."""
    device = next(model.parameters()).device
    images = batch["support_images"].to(device).flatten(0, 1)
    labels = batch["support_masks"].to(device).flatten(0, 1).long()
    model.eval()
    rs = model.encode(images)
    mask = downsample_mask(labels, rs.shape[-2:], rs.dtype)
    tuning = model.tune(rs, mask, labels)
    p, tuned = tuning.prototypes, tuning.tuned_prototypes
    after = model.decoder(model.relation_map(rs, tuned), labels.shape[-2:])
    norm = p.norm(dim=1)
    keep = norm > 0  # an empty mask has no prototype to move
    return {
        "move": ((tuned - p).norm(dim=1)[keep] / norm[keep]).tolist(),
        "iou_before": foreground_iou(tuning.support_logits.argmax(1), labels)[keep].tolist(),
        "iou_after": foreground_iou(after.argmax(1), labels)[keep].tolist(),
    }


def evaluate_run(run: GridRun, dataset, config: RunConfig, manifest: EpisodeManifest, probes: int, log=print) -> dict:
    """A trained run on the novel classes: query mIoU (and FB-IoU) on ``manifest`` with the step and, for a
    model with the tuning module, without it (same weights); the step's probe on the first ``probes``
    episodes. Cached in the run folder (``study-eval.json``, keyed by the manifest) for a resumed study."""
    state = load_checkpoint(best_or_last(run.result))  # read (and its digest checked) once for every model below
    cache = run.result.run_dir / "study-eval.json"
    key = {"manifest": manifest.sha256, "probes": probes, "checkpoint": state["sha256"]}
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["result"]
    log(f"== evaluating {run.variant.name}, training seed {run.seed}")
    device = run_device(config)
    size = config.model.image_size
    result = {}
    model = model_from_checkpoint(state, device=device)
    models = {"on": model}
    if model.config.ssm:  # the same weights without the step
        models["off"] = model_from_checkpoint(state, device=device, ssm=False)
    for label, scored_model in models.items():
        scored = evaluate(
            scored_model,
            dataset,
            config.data.fold,
            size=size,
            batch_size=config.optim.batch_size,
            manifests=[manifest],
        )
        result[label] = {"miou": scored.runs[0]["miou"], "fb_iou": scored.runs[0]["fb_iou"]}
    if model.config.ssm:
        items = EpisodeDataset(dataset, manifest.episodes[:probes], size)
        probe = {"move": [], "iou_before": [], "iou_after": []}
        for first in range(0, len(items), config.optim.batch_size):
            batch = collate_episodes([items[i] for i in range(first, min(first + config.optim.batch_size, len(items)))])
            for name, values in probe_step(model, batch).items():
                probe[name] += values
        result["probe"] = {name: _mean(values) for name, values in probe.items()}
    write_json_atomic(cache, {"key": key, "result": result})
    return result


def step_study(
    config: RunConfig,
    out_dir,
    train_seeds: Sequence[int] = (0, 1, 2),
    episodes: int = 1000,
    seed: int = 0,
    probes: int = 200,
    variants: Sequence[Variant] | None = None,
    progress: bool = True,
    log=print,
) -> Path:
    """The step study (module docstring) on ``config``'s data set and fold; writes ``step-study.md`` and
    ``step-study.json`` into ``out_dir`` and returns the Markdown path. ``episodes`` 1-shot test episodes
    (evaluation seed ``seed``), the same for every model; ``probes``: episodes of the step's probe."""
    out_dir = Path(out_dir)
    train_seeds = check_seeds(train_seeds)
    variants = list(variants or step_variants(config.optim.lr))
    runs = train_grid(config, out_dir, variants, train_seeds, progress, log)
    stopped = [key for key, run in runs.items() if run.result is not None and not run.finished]
    if stopped or len(runs) < sum(len(train_seeds[: v.seeds]) for v in variants):
        raise ExperimentInterrupted("a training run of the study stopped; run the same command again to continue")
    summary = validation_summary(runs)
    chosen = choose(summary, variants)

    dataset = open_dataset(config.data.dataset, config.data.root, **config.data.options)
    split = dataset.fold_split(config.data.fold)
    sampler = fold_sampler(dataset, config.data.fold, 1, stage="test")
    manifest = EpisodeManifest(
        dataset.describe(), split.test_split, config.data.fold, 1, seed, sampler.sample(episodes, seed)
    )
    manifest.save(out_dir / "manifests" / f"seed-{seed}.json")
    tests = {}
    for (name, train_seed), run in runs.items():
        if run.diverged is None:
            tests[name, train_seed] = evaluate_run(run, dataset, config, manifest, probes, log)
    content = _study_content(variants, train_seeds, summary, chosen, tests, manifest, config)
    write_json_atomic(out_dir / "step-study.json", content)
    text = _study_report(content, config, episodes, probes)
    log(text)
    return write_text_atomic(out_dir / "step-study.md", text)


def _study_content(variants, train_seeds, summary, chosen, tests, manifest, config) -> dict:
    baseline = chosen.get("baseline")
    rows = []
    for variant in variants:
        per_seed = {s: tests.get((variant.name, s)) for s in train_seeds[: variant.seeds]}
        scored = {s: t for s, t in per_seed.items() if t is not None}
        row = {
            "variant": variant.name,
            "runs": len(per_seed),
            "family": variant.family,
            "model": variant.model,
            "optim": variant.optim,
            "val_miou": mean_ci(summary[variant.name]["val"]),
            "collapsed": summary[variant.name]["collapsed"],
            "escape_step": summary[variant.name]["escape"],
            "diverged": summary[variant.name]["diverged"],
            "train_seconds": _mean(summary[variant.name]["seconds"]),
            "alpha_trajectory": summary[variant.name]["alpha"],
            "test_miou": _ci([t["on"]["miou"] for t in scored.values()]),
            "per_seed": {str(s): t for s, t in per_seed.items()},
        }
        if variant.ssm and scored:
            row["step_gain"] = _ci([t["on"]["miou"] - t["off"]["miou"] for t in scored.values()])
            for name in ("move", "iou_before", "iou_after"):
                row[name] = _ci([t["probe"][name] for t in scored.values()])
            row["iou_gain"] = _ci([t["probe"]["iou_after"] - t["probe"]["iou_before"] for t in scored.values()])
        if baseline is not None and variant.name != baseline:
            pairs = [
                tests[variant.name, s]["on"]["miou"] - tests[baseline, s]["on"]["miou"]
                for s in train_seeds
                if (variant.name, s) in tests and (baseline, s) in tests
            ]
            row["vs_baseline"] = _ci(pairs)
        rows.append(row)
    return {
        "train_seeds": list(train_seeds),
        "chosen": chosen,
        "baseline": baseline,
        "manifest": {"seed": manifest.seed, "episodes": len(manifest.episodes), "sha256": manifest.sha256},
        "config": config.to_dict(),
        "variants": rows,
    }


def _study_report(content: dict, config: RunConfig, episodes: int, probes: int) -> str:
    seeds = content["train_seeds"]
    chosen = content["chosen"]
    lines = [
        f"# The tuning step's scale: {config.data.dataset} fold {config.data.fold}",
        "",
        f"Each variant trained once per training seed {seeds} (*runs*: fewer where the grid limits a setting to the "
        "first seeds); every model evaluated "
        f"1-shot on the same {episodes} novel-class episodes (evaluation seed {content['manifest']['seed']}). "
        "Mean ± 95% CI over training seeds (Student t), in points; differences are paired per training seed. "
        "Settings are chosen on base-class validation (the best checkpoint's validation mIoU), never on "
        f"the test fold: chosen {', '.join(f'{k}: {v}' for k, v in chosen.items())}.",
        "",
        "| variant | runs | val mIoU | collapsed | val ≥ 5% at step | test mIoU | vs baseline | step on − off | "
        "move ‖p′−p‖/‖p‖ | support IoU p → p′ | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in content["variants"]:
        mark = " ◀" if row["variant"] in chosen.values() else ""
        failed = row["collapsed"] + row["diverged"]
        lines.append(
            "| "
            + " | ".join(
                [
                    row["variant"] + mark,
                    str(row["runs"]),
                    _points(row["val_miou"]),
                    f"{failed}/{row['runs']}" + (" (diverged)" if row["diverged"] else ""),
                    ", ".join("-" if math.isnan(step) else f"{step:.0f}" for step in row["escape_step"]),
                    _points(row["test_miou"]),
                    _points(row.get("vs_baseline"), signed=True),
                    _points(row.get("step_gain"), signed=True, digits=2),
                    _percent(row.get("move")),
                    f"{_points(row.get('iou_before'))} → {_points(row.get('iou_after'))}" if "move" in row else "",
                    f"{row['train_seconds']:.0f}" if not math.isnan(row["train_seconds"]) else "-",
                ]
            )
            + " |"
        )
    learned = [row for row in content["variants"] if row["alpha_trajectory"]]
    for row in learned:
        trajectory = "; ".join(" → ".join(f"{a:.3g}" for a in t) for t in row["alpha_trajectory"])
        lines += ["", f"Learned α of {row['variant']} (start → middle → end, per training seed): {trajectory}."]
    lines += [
        "",
        f"*collapsed*: runs whose every validation up to step {COLLAPSE_STEPS} scored below "
        f"{100 * COLLAPSE_MIOU:g}% mIoU (background everywhere). *step on − off*: the same weights evaluated with "
        f"p′ and with p. *move* and *support IoU*: the step's probe on the first {probes} test episodes.",
        "",
    ]
    return "\n".join(lines)


def _ci(values: Sequence[float]) -> tuple[float, float]:
    return mean_ci(values) if values else (math.nan, math.nan)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _points(pair, signed: bool = False, digits: int = 1) -> str:
    if pair is None:
        return ""
    return format_points(pair[0], pair[1], digits=digits, signed=signed)


def _percent(pair) -> str:
    if pair is None:
        return ""
    mean, ci = (100 * value for value in pair)
    digits = 0 if abs(mean) >= 10 else 1 if abs(mean) >= 1 else 2
    return f"{mean:.{digits}f}%" + (f" ± {ci:.{digits}f}" if not math.isnan(ci) else "")


def _history(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
