"""``benchmark``: every fold trained and evaluated as one resumable command, in miniature (one step per run)."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sst_fast.engine import experiments
from sst_fast.engine.benchmark import benchmark
from sst_fast.engine.checkpoint import load_checkpoint
from sst_fast.engine.experiments import check_folds, fold_score, load_evaluation, run_folder
from sst_fast.engine.train import Trainer
from sst_fast.metrics import mean_ci

from .tiny import TINY, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore:classes .* have no IoU")

# One training step per run (4 episodes of a batch of 4), validated on 4 episodes, on one thread (two threads
# on a busy two-core machine are several times slower than one).
BENCH = [*TINY, "optim.epochs=1", "optim.episodes_per_epoch=4", "data.val_episodes=4", "run.threads=1"]
QUIET = {"progress": False, "log": lambda *_: None}
EVAL = {"shots": (1, 2), "episodes": 3, "seeds": (0, 1), "train_seeds": (0, 1)}


def strict(path):
    """A JSON file read strictly: a bare NaN or Infinity (not JSON) is an error."""

    def refuse(constant):
        raise ValueError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def four_folds(tmp_path_factory):
    """A benchmark over every fold of the synthetic set, 1- and 2-shot, two training and two evaluation seeds."""
    out = tmp_path_factory.mktemp("benchmark")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the evaluations' threads (run.threads sets the training's)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Trainer, "_plot_curves", lambda self: None)  # the figure is not under test: seconds saved
            report = benchmark(tiny_config(*BENCH), out, **EVAL, config_name="synthetic", **QUIET)
    finally:
        torch.set_num_threads(threads)
    return out, report


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    monkeypatch.setattr(Trainer, "_plot_curves", lambda self: None)
    torch.set_num_threads(1)  # restored after each test (tests/conftest.py)


def test_every_fold_is_trained_on_its_base_classes_and_tested_on_its_novel_ones(four_folds):
    out, _ = four_folds
    for fold in range(4):
        for seed in (0, 1):
            folder = run_folder(out, "", seed, fold)
            assert folder == out / "runs" / f"fold-{fold}" / f"seed-{seed}"
            config = load_checkpoint(folder)["config"]
            assert (config["data"]["fold"], config["run"]["seed"]) == (fold, seed)
            for name in (f"synthetic-fold{fold}-1shot-e3-s0-1", f"synthetic-fold{fold}-2shot-weighted-e3-s0-1"):
                saved = folder / "eval" / name  # where sst-fast eval puts this setting, with its setting.json
                assert {"metrics.json", "setting.json", "protocol.txt", "manifests"} <= {
                    p.name for p in saved.iterdir()
                }
                card = load_evaluation(saved).card
                trained_on = {"dataset": "synthetic", "fold": fold, "seen_test_classes": []}  # its own fold
                assert card.fold == fold and card.trained_on == trained_on
                assert card.test_classes == tuple(range(5 * fold + 1, 5 * fold + 6))


def test_the_table_per_fold_and_mean_in_markdown_and_strict_json(four_folds):
    out, report = four_folds
    text = report.read_text()
    assert "| shots | metric | fold 0 | fold 1 | fold 2 | fold 3 | mean |" in text
    for row in ("| 1-shot | mIoU |", "| 1-shot | FB-IoU |", "| 2-shot | mIoU |", "| 2-shot | FB-IoU |"):
        assert row in text
    assert "over the 2 training seeds (in parentheses: over the 2 evaluation seeds)" in text
    assert "Protocol\n  protocol" in text
    content = strict(out / "benchmark.json")
    assert {"benchmark", "table", "protocol", "manifests", "runs", "evaluations", "spread", "config"} <= set(content)
    assert content["benchmark"]["folds"] == [0, 1, 2, 3] and content["benchmark"]["shots"] == [1, 2]
    assert content["benchmark"]["train_seeds"] == [0, 1] and content["benchmark"]["eval_seeds"] == [0, 1]
    assert [(row["shots"], row["metric"]) for row in content["table"]] == [
        (1, "miou"), (1, "fb_iou"), (2, "miou"), (2, "fb_iou")
    ]  # fmt: skip
    for row in content["table"]:
        # Each fold's cell: its two runs' evaluations as saved in their run folders, mean ± CI over the training
        # seeds; the mean column: the folds' mean.
        for fold in range(4):
            evaluations = [e for e in content["evaluations"] if (e["fold"], e["shots"]) == (fold, row["shots"])]
            assert [e["train_seed"] for e in evaluations] == [0, 1]
            assert len({tuple(e["protocol"]["manifests"]) for e in evaluations}) == 1  # the same episodes: paired
            means = [strict(Path(e["folder"]) / "metrics.json")["summary"][row["metric"]]["mean"] for e in evaluations]
            cell = row["folds"][str(fold)]
            assert (cell["mean"], cell["ci95"]) == pytest.approx(mean_ci(means))
            assert cell["ci95_train_seeds"] == cell["ci95"] and cell["ci95_eval_seeds"] is not None
        per_fold = [row["folds"][str(f)]["mean"] for f in range(4)]
        assert row["mean"]["mean"] == pytest.approx(sum(per_fold) / 4)
    # Every manifest once (each fold's training seeds share them), with the SHA-256 of its file.
    assert len(content["manifests"]) == 4 * 2 * 2
    for manifest in content["manifests"]:
        assert strict(Path(manifest["file"]))["sha256"] == manifest["sha256"]
        assert manifest["sha256"] in text


def test_a_second_invocation_reuses_every_run_and_evaluation(four_folds, monkeypatch):
    out, report = four_folds
    before = report.read_text()

    def refuse(*_args, **_kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(experiments, "Trainer", refuse)
    monkeypatch.setattr(experiments, "evaluate", refuse)
    messages = []
    benchmark(tiny_config(*BENCH), out, **EVAL, config_name="synthetic", progress=False, log=messages.append)
    assert report.read_text() == before
    assert sum("already trained" in m for m in messages) == 8
    assert sum("already evaluated" in m for m in messages) == 16
    assert all(e["reused"] for e in strict(out / "benchmark.json")["evaluations"])


def test_a_run_folder_trained_with_another_configuration_is_refused_naming_the_keys(four_folds):
    out, _ = four_folds
    last = out / "runs" / "fold-0" / "seed-0" / "checkpoints" / "last.pt"
    stamp = last.stat().st_mtime_ns
    with pytest.raises(ValueError, match=r"another configuration") as error:
        benchmark(tiny_config(*BENCH, "optim.lr=0.1", "model.channels=4"), out, **EVAL, **QUIET)
    message = str(error.value)
    assert "optim.lr" in message and "model.channels" in message and "fold-0/seed-0" in message
    assert "optim.momentum" not in message  # only the keys that differ
    assert last.stat().st_mtime_ns == stamp


def test_every_run_folder_is_checked_before_the_first_run_trains(tmp_path):
    """A folder of another configuration for fold 2 is refused before fold 0 trains (not hours later)."""
    tiny_config(*BENCH, "data.fold=2", "optim.lr=0.5").save(tmp_path / "runs" / "fold-2" / "seed-0" / "config.yaml")
    with pytest.raises(ValueError, match=r"fold-2/seed-0.*optim\.lr"):
        benchmark(tiny_config(*BENCH), tmp_path, **EVAL, **QUIET)
    assert not (tmp_path / "runs" / "fold-0").exists()


def test_a_stopped_benchmark_continues_reusing_the_finished_fold(tmp_path, monkeypatch):
    """Two folds × two training seeds; the process dies as fold 1 starts. Run again: fold 0's two runs and
    evaluations are reused (not retrained: same checkpoint files), fold 1's are trained."""
    real = experiments.train_variant
    trained = []

    def dies_after_fold_0(config, run_dir, *args, **kwargs):
        if config.data.fold == 1:
            raise KeyboardInterrupt
        trained.append(run_dir)
        return real(config, run_dir, *args, **kwargs)

    options = {"folds": [0, 1], "shots": (1,), "episodes": 3, "seeds": (0,), "train_seeds": (0, 1), **QUIET}
    monkeypatch.setattr(experiments, "train_variant", dies_after_fold_0)
    with pytest.raises(KeyboardInterrupt):
        benchmark(tiny_config(*BENCH), tmp_path, **options)
    assert [p.relative_to(tmp_path).as_posix() for p in trained] == ["runs/fold-0/seed-0", "runs/fold-0/seed-1"]
    assert not (tmp_path / "benchmark.md").exists()
    stamps = {p: (p / "checkpoints" / "last.pt").stat().st_mtime_ns for p in trained}

    constructed, evaluated = [], []
    monkeypatch.setattr(experiments, "train_variant", real)
    monkeypatch.setattr(experiments, "Trainer", _counting(experiments.Trainer, constructed))
    monkeypatch.setattr(experiments, "evaluate", _counting(experiments.evaluate, evaluated))
    report = benchmark(tiny_config(*BENCH), tmp_path, **options)
    assert len(constructed) == 2 and len(evaluated) == 2  # fold 1's two runs only
    assert {p: (p / "checkpoints" / "last.pt").stat().st_mtime_ns for p in trained} == stamps
    content = strict(tmp_path / "benchmark.json")
    assert [(r["fold"], r["train_seed"]) for r in content["runs"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert "over the 2 training seeds" in report.read_text()
    # ± over training seeds: each training seed's mean over folds.
    row = content["table"][0]
    per_seed = [
        sum(e["summary"]["miou"]["mean"] for e in content["evaluations"] if e["train_seed"] == seed) / 2
        for seed in (0, 1)
    ]
    assert row["mean"]["mean"] == pytest.approx(sum(per_seed) / 2)
    assert row["mean"]["ci95"] == pytest.approx(mean_ci(per_seed)[1])


def _counting(function, calls):
    def counted(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)

    counted.resume = getattr(function, "resume", None)
    return counted


def test_fold_score_is_the_mean_over_folds_with_both_spreads():
    def result(*values):
        return SimpleNamespace(runs=[{"miou": v} for v in values])

    # cells[fold][training seed], each over two evaluation seeds.
    cells = [[result(0.1, 0.3), result(0.2, 0.4)], [result(0.5, 0.7), result(0.6, 0.9)]]
    score = fold_score(cells)
    assert score["mean"] == pytest.approx((0.1 + 0.3 + 0.2 + 0.4 + 0.5 + 0.7 + 0.6 + 0.9) / 8)
    by_train = [(0.1 + 0.3 + 0.5 + 0.7) / 4, (0.2 + 0.4 + 0.6 + 0.9) / 4]
    by_eval = [(0.1 + 0.2 + 0.5 + 0.6) / 4, (0.3 + 0.4 + 0.7 + 0.9) / 4]
    assert score["ci95_train_seeds"] == pytest.approx(mean_ci(by_train)[1])
    assert score["ci95_eval_seeds"] == pytest.approx(mean_ci(by_eval)[1])
    assert score["ci95"] == score["ci95_train_seeds"]
    # One fold, one training seed: the evaluation's own mean ± CI over its seeds.
    single = fold_score([[result(0.1, 0.3)]])
    assert (single["mean"], single["ci95"]) == pytest.approx(mean_ci([0.1, 0.3]))
    assert math.isnan(single["ci95_train_seeds"])
    # A paired difference: per fold, training seed and evaluation seed.
    assert fold_score(cells, minus=cells)["mean"] == 0


@pytest.mark.parametrize(
    ("dataset", "folds", "expected"),
    [
        ("pascal", None, (0, 1, 2, 3)),
        ("coco", ["3", "1"], (3, 1)),
        ("synthetic", [0], (0,)),
        ("fss", None, ("test",)),
        ("fss", ["val"], ("val",)),
    ],
)
def test_folds_as_each_data_set_names_them(dataset, folds, expected):
    assert check_folds(dataset, folds) == expected


@pytest.mark.parametrize(
    ("dataset", "folds", "message"),
    [
        ("pascal", ["4"], "pascal has the folds 0, 1, 2, 3, got '4'"),
        ("pascal", ["test"], "got 'test'"),
        ("pascal", [True], "got True"),
        ("coco", ["1", "1"], "fold 1 is named twice"),
        ("fss", ["0"], "fss has the folds test, val, got '0' (FSS-1000 has no numbered folds"),
        ("synthetic", [], "at least one fold"),
    ],
)
def test_nonsense_folds_are_refused(dataset, folds, message):
    with pytest.raises(ValueError, match=r"folds \(--folds\)") as error:
        check_folds(dataset, folds)
    assert message in str(error.value)
