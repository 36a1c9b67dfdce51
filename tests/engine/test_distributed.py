"""Training and evaluation on several processes (torchrun, gloo on the CPU) against a single process."""

import json
import os
import subprocess
import sys

import pytest
import torch

from sst_fast import cli
from sst_fast.engine import distributed
from sst_fast.engine.checkpoint import load_checkpoint
from sst_fast.engine.runconfig import load_run_config

from .float64 import FLOAT64_DRIVER, training_tolerance
from .test_train import assert_same_state
from .tiny import TINY

# Dropout off and a frozen backbone (BatchNorm in eval mode): nothing random or batch-dependent is left that
# several processes could do differently. A global batch of 5 over 12 episodes: batches of 5, 5 and 2, so the
# ranks' shares are uneven (3 + 2) and the loss weighting is exercised; augmentation on (seeded per episode).
SETTINGS = [
    *TINY,
    "model.dropout=0",
    "model.freeze_backbone=true",
    "optim.batch_size=5",
    "run.device=cpu",
    "run.threads=1",
    "run.checkpoint_every=2",
]


def sst_fast(*args, processes: int = 1, timeout: float = 600, script=None) -> subprocess.CompletedProcess:
    """``sst-fast ARGS`` as one process or under torchrun on ``processes`` local CPU processes; one thread each.
    ``script``: a file that runs instead of ``python -m sst_fast`` (FLOAT64_DRIVER)."""
    program = ["-m", "sst_fast"] if script is None else [str(script)]
    launcher = [sys.executable, *program]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        launcher += program
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [*launcher, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def train(run_dir, *overrides, processes: int = 1, resume: bool = False, max_steps: int | None = None, float64=False):
    args = ["train", "--no-progress"]
    args += ["--resume", run_dir] if resume else ["--config", "synthetic", "--run-dir", run_dir, *SETTINGS]
    args += list(overrides)
    if max_steps is not None:
        args += ["--max-steps", max_steps]
    script = None
    if float64:
        script = run_dir.parent / f"{run_dir.name}-float64.py"
        script.write_text(FLOAT64_DRIVER)
    sst_fast(*args, processes=processes, script=script)
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single") / "run"
    return run_dir, train(run_dir)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("two") / "run"
    return run_dir, train(run_dir, processes=2)


@pytest.fixture(scope="module")
def single64(tmp_path_factory):
    return train(tmp_path_factory.mktemp("single64") / "run", float64=True)


@pytest.fixture(scope="module")
def two64(tmp_path_factory):
    return train(tmp_path_factory.mktemp("two64") / "run", processes=2, float64=True)


def close(a: torch.Tensor, b: torch.Tensor, tolerance: float) -> bool:
    return bool((a - b).abs().max() <= tolerance * max(b.abs().max().item(), 1e-12))


def assert_same_training(one: dict, many: dict, dtype: torch.dtype, *overrides: str) -> None:
    """The weights, momentum buffers and logged losses of two runs' checkpoints, within :func:`training_tolerance`
    of each other: each step adds its rounding (tests/tolerance.py: stages that do not amplify a relative error;
    SGD at lr 0.02 with momentum 0.9 moves the weights by a fraction of themselves over these few steps, so a
    perturbation's effect on the next gradients stays below the perturbation), the loss at step s that of s - 1
    steps and its forward."""
    forward, step = training_tolerance(dtype, load_run_config("synthetic", [*SETTINGS, *overrides]))
    tol = one["step"] * step
    for key, value in one["model"].items():
        assert close(many["model"][key].double(), value.double(), tol), key
    for index, state in one["optimizer"]["state"].items():
        assert close(many["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"], tol), index
    losses = [(r["step"], r["loss"], r["main_loss"], r["aux_loss"]) for r in one["history"] if "loss" in r]
    logged = [(r["step"], r["loss"], r["main_loss"], r["aux_loss"]) for r in many["history"] if "loss" in r]
    assert [r[0] for r in logged] == [r[0] for r in losses]
    for mine, theirs in zip(logged, losses, strict=True):
        assert mine[1:] == pytest.approx(theirs[1:], rel=forward + (mine[0] - 1) * step), mine[0]


def test_two_processes_train_the_same_run_as_one(single, two, single64, two64):
    """float32 runs within float32's rounding of each other (a loose bound over six steps); float64 runs, whose
    rounding is 2^-29 of it, sharply: the same training, up to the order of the sums."""
    (_, one), (two_dir, many) = single, two
    assert (many["step"], many["epoch"]) == (one["step"], one["epoch"]) == (6, 2)
    assert_same_training(one, many, torch.float32)
    assert_same_training(single64, two64, torch.float64)
    # Every step's loss is the global batch's loss, logged once (rank 0 alone writes the log).
    assert [r["step"] for r in many["history"] if "loss" in r] == [1, 2, 3, 4, 5, 6]
    records = [json.loads(line) for line in (two_dir / "metrics.jsonl").read_text().splitlines()]
    assert records == many["history"]
    assert len(many["rng"]["ranks"]) == 2
    validations = [r["val_miou"] for r in many["history"] if "val_miou" in r]
    assert validations == pytest.approx([r["val_miou"] for r in one["history"] if "val_miou" in r], abs=2e-3)


def test_training_on_cached_features_on_two_processes_equals_one(tmp_path, monkeypatch):
    """The head-only step of data.feature_cache under DistributedDataParallel; rank 0 builds the cache."""
    monkeypatch.setenv("SST_FAST_CACHE", str(tmp_path / "cache"))  # a cache of its own, not the session's
    cached = ["data.feature_cache=true", "data.augment=false", "optim.epochs=1"]
    one = train(tmp_path / "one", *cached)
    two = train(tmp_path / "two", *cached, processes=2)
    assert two["step"] == one["step"] == 3
    assert_same_training(one, two, torch.float32, *cached)
    # In float64 (a cache of the float64 backbone's features): the same training, up to the order of the sums.
    one64, two64 = (train(tmp_path / f"float64-{n}", *cached, processes=n, float64=True) for n in (1, 2))
    assert_same_training(one64, two64, torch.float64, *cached)


def test_a_distributed_run_stopped_and_resumed_equals_it_uninterrupted(two, tmp_path):
    run_dir = tmp_path / "run"
    stopped = train(run_dir, processes=2, max_steps=4)
    assert stopped["step"] == 4
    assert_same_state(train(run_dir, processes=2, resume=True), two[1])


def test_sharded_evaluation_equals_one_process_exactly(single, tmp_path):
    run_dir, _ = single
    checkpoint = run_dir / "checkpoints" / "last.pt"
    results = []
    for processes in (1, 3):
        out = tmp_path / f"eval-{processes}"
        # 23 episodes in batches of 3: 8 batches dealt to 3 ranks (3 + 3 + 2), the last batch smaller.
        arguments = ["eval", checkpoint, "--episodes", 23, "--seeds", 0, 1, "--batch-size", 3, "--device", "cpu"]
        printed = sst_fast(*arguments, "--out", out, "--no-progress", processes=processes).stdout
        assert printed.count("results: ") == 1  # rank 0 alone prints
        results.append(json.loads((out / "metrics.json").read_text()))
    one, three = results
    assert three["runs"] == one["runs"] and three["summary"] == one["summary"]
    assert three["protocol"]["manifests"] == one["protocol"]["manifests"]


@pytest.mark.parametrize("count", [0, 1, 5, 12, 13])
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_shares_and_deals_cover_every_item_once(count, size):
    worlds = [distributed.World(rank, size) for rank in range(size)]
    shares = [list(distributed.split(count, world)) for world in worlds]
    assert sum(shares, []) == list(range(count))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    dealt = sorted(sum((list(distributed.deal(count, world)) for world in worlds), []))
    assert dealt == list(range(count))


def test_rank_seeds_differ_by_rank_and_by_seed():
    seeds = {distributed.rank_seed(seed, rank) for seed in range(4) for rank in range(8)}
    assert len(seeds) == 32 and all(0 <= s < 2**56 for s in seeds)


def test_a_single_process_is_a_world_of_one():
    world = distributed.current()
    assert (world.rank, world.size, world.main, world.distributed) == (0, 1, True, False)
    assert distributed.all_gather({"a": 1}, world) == [{"a": 1}]
    assert distributed.broadcast("x", world) == "x"


@pytest.mark.parametrize("command", ["demo", "ablation", "predict", "info"])
def test_only_train_and_eval_run_under_torchrun(monkeypatch, capsys, command):
    monkeypatch.setenv("WORLD_SIZE", "2")
    arguments = {
        "demo": ["demo", "--quick"],
        "ablation": ["ablation", "--out", "x"],
        "predict": ["predict", "c.pt", "--query", "q.png", "--support", "s.png", "--mask", "m.png"],
        "info": ["info"],
    }[command]
    assert cli.main(arguments) == cli.EXIT_ERROR
    error = capsys.readouterr().err
    assert f"{command} runs as one process" in error and "torchrun" in error


def test_a_torchrun_environment_without_its_rank_is_named(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    assert cli.main(["eval", str(tmp_path / "missing.pt")]) == cli.EXIT_ERROR
    assert "RANK is not" in capsys.readouterr().err


def test_a_global_batch_smaller_than_the_processes_is_refused(tmp_path):
    script = f"""
import sys
import torch.distributed as dist
from sst_fast.engine.runconfig import ConfigError
from sst_fast.engine.train import Trainer
sys.path.insert(0, {str(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))!r})
from tests.engine.tiny import tiny_config
dist.init_process_group("gloo")
try:
    Trainer(tiny_config("optim.batch_size=1", "run.device=cpu"), {str(tmp_path / "run")!r}, progress=False)
except ConfigError as error:
    assert "optim.batch_size=1" in str(error) and "2 processes" in str(error), error
else:
    raise AssertionError("accepted")
dist.destroy_process_group()
"""
    (tmp_path / "refuse.py").write_text(script)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    result = subprocess.run(
        [*launcher, tmp_path / "refuse.py"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "run").exists()
