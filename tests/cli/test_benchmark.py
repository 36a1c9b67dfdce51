"""``sst-fast benchmark``: the command line, its errors, its agreement with ``sst-fast eval``, and torchrun."""

import json
import os
import subprocess
import sys

import pytest
import torch

from sst_fast.cli import EXIT_ERROR, EXIT_INTERRUPTED, main
from sst_fast.engine import experiments
from sst_fast.engine.train import Trainer
from tests.engine.tiny import TINY, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore:classes .* have no IoU")

# One training step per run, on one thread (two threads on a busy two-core machine are several times slower).
QUICK = [*TINY, "optim.epochs=1", "optim.episodes_per_epoch=4", "data.val_episodes=4", "run.threads=1"]


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    monkeypatch.setattr(Trainer, "_plot_curves", lambda self: None)
    torch.set_num_threads(1)  # the evaluations' threads; restored after each test (tests/conftest.py)


def test_benchmark_help(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["benchmark", "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: sst-fast benchmark")
    for option in ("--folds", "--shots", "--train-seeds", "--episodes", "--seeds", "--protocol", "torchrun"):
        assert option in text


def test_benchmark_prints_the_table_and_eval_takes_its_results_for_its_own(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["benchmark", "--config", "synthetic", *QUICK, "--out", str(out), "--folds", "2", "--shots", "1", "2"]
    assert main([*argv, "--episodes", "3", "--seeds", "0", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "# Benchmark: synthetic, folds 2" in printed and "| 2-shot | FB-IoU |" in printed
    assert (out / "benchmark.md").read_text().strip() in printed
    run = out / "runs" / "fold-2" / "seed-0"
    saved = run / "eval" / "synthetic-fold2-2shot-weighted-e3-s0"
    before = json.loads((saved / "metrics.json").read_text())
    # sst-fast eval of the same setting finds the benchmark's folder its own (no --overwrite needed) and, with the
    # same evaluate() on the same checkpoint and episodes, gets the same numbers.
    assert main(["eval", str(run), "--shots", "2", "--episodes", "3", "--seeds", "0", "--no-progress"]) == 0
    assert f"results: {saved / 'metrics.json'}" in capsys.readouterr().out
    after = json.loads((saved / "metrics.json").read_text())
    assert after["summary"] == before["summary"] and after["runs"] == before["runs"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--config", "synthetic", "--folds", "7"], "synthetic has the folds 0, 1, 2, 3, got '7'"),
        (["--config", "pascal", "--folds", "val"], "pascal has the folds 0, 1, 2, 3, got 'val'"),
        (["--config", "fss", "--folds", "0"], "fss has the folds test, val, got '0'"),
        (["--config", "synthetic", "--folds", "1", "1"], "fold 1 is named twice"),
        (["--config", "synthetic", "--shots", "1", "1"], "each K once"),
        (["--config", "synthetic", "--seeds", "0", "0"], "seeds must be distinct"),
        (["--config", "synthetic", "--train-seeds", "1", "1"], "seeds must be distinct"),
    ],
)
def test_nonsense_is_refused_before_anything_is_written(tmp_path, capsys, arguments, message):
    out = tmp_path / "bench"
    assert main(["benchmark", *arguments, "--out", str(out), "--no-progress"]) == EXIT_ERROR
    error = capsys.readouterr().err
    assert error.startswith("sst-fast benchmark: error: ") and message in error
    assert not out.exists()


def test_a_run_folder_of_another_configuration_is_refused_with_the_differing_keys(tmp_path, capsys):
    out = tmp_path / "bench"
    tiny_config(*QUICK, "optim.lr=0.5", "data.augment=false").save(out / "runs" / "fold-0" / "seed-0" / "config.yaml")
    assert main(["benchmark", "--config", "synthetic", *QUICK, "--out", str(out), "--folds", "0"]) == EXIT_ERROR
    error = capsys.readouterr().err
    assert "another configuration" in error and "data.augment, optim.lr" in error and "fold-0/seed-0" in error
    assert sorted(p.name for p in (out / "runs" / "fold-0" / "seed-0").iterdir()) == ["config.yaml"]


def test_a_stopped_training_says_how_to_continue(tmp_path, capsys, monkeypatch):
    def stopped(self, max_steps=None):
        return experiments.TrainResult(self.run_dir, "interrupted", 1, 0, None, None)

    monkeypatch.setattr(Trainer, "fit", stopped)
    argv = ["benchmark", "--config", "synthetic", *QUICK, "--out", str(tmp_path), "--folds", "3", "--no-progress"]
    assert main(argv) == EXIT_INTERRUPTED
    error = capsys.readouterr().err
    assert "training of the model (fold 3, training seed 0) stopped; run the same command again" in error


def test_benchmark_runs_under_torchrun_and_a_single_process_reuses_it(tmp_path):
    """Two CPU processes (gloo): rank 0 alone writes; then one process finds every run and evaluation done."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": root}
    argv = ["benchmark", "--config", "synthetic", *QUICK, "run.device=cpu", "model.dropout=0"]
    argv += ["--out", str(tmp_path), "--folds", "0", "--shots", "1", "--episodes", "4", "--seeds", "0", "--no-progress"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "sst_fast"]
    result = subprocess.run([*launcher, *argv], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("# Benchmark: synthetic, folds 0") == 1  # printed once, by rank 0
    distributed = json.loads((tmp_path / "benchmark.json").read_text())
    single = subprocess.run(
        [sys.executable, "-m", "sst_fast", *argv], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert "already trained" in single.stdout and "already evaluated" in single.stdout
    again = json.loads((tmp_path / "benchmark.json").read_text())
    assert again["table"] == distributed["table"]
