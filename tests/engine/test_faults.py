"""Faults: training killed with SIGKILL and resumed, checkpoints killed mid-write, damaged checkpoint files."""

import itertools
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from sst_fast.engine.checkpoint import CheckpointError, content_digest, load_checkpoint, save_checkpoint

from .test_train import assert_same_state
from .tiny import TINY

# A checkpoint after every step: a kill lands before, during or after a save, and resume starts from the latest.
SETTINGS = [*TINY, "optim.epochs=3", "run.checkpoint_every=1", "run.threads=1", "run.device=cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def start_training(run_dir, resume: bool) -> subprocess.Popen:
    args = ["--resume", run_dir] if resume else ["--config", "synthetic", "--run-dir", run_dir, *SETTINGS]
    command = [sys.executable, "-m", "sst_fast", "train", "--no-progress", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)


def logged_step(run_dir) -> int:
    log = run_dir / "metrics.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return max((int(line.split('"step": ')[1].split(",")[0]) for line in lines if '"step": ' in line), default=0)


def wait_for_step(process, run_dir, target, seen: dict) -> None:
    """Polls the log until it reaches ``target`` (or the process ends), noting when each step first appears."""
    while process.poll() is None and (step := logged_step(run_dir)) < (target or 10**9):
        seen.setdefault(step, time.monotonic())
        time.sleep(0.005)


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    """The run without faults: its final state, and the time a step takes on this machine (the median interval
    between logged steps, validations aside), which places the kills of the test below within a step."""
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    process = start_training(run_dir, resume=False)
    seen = {}
    wait_for_step(process, run_dir, None, seen)
    assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    times = [seen[step] for step in sorted(seen) if step > 0]
    intervals = sorted(later - earlier for earlier, later in itertools.pairwise(times))
    step_seconds = intervals[len(intervals) // 2] if intervals else 0.3
    return load_checkpoint(run_dir / "checkpoints" / "last.pt"), step_seconds


@pytest.mark.parametrize("seed", [0, 1])
def test_training_killed_at_random_steps_resumes_to_the_uninterrupted_run(uninterrupted_run, tmp_path, seed):
    uninterrupted, step_seconds = uninterrupted_run
    run_dir = tmp_path / "run"
    rng = random.Random(seed)
    targets = sorted(rng.sample(range(1, 9), 3))  # 9 steps in all; kill once the log reaches these steps
    kills = 0
    for target in [*targets, None]:
        process = start_training(run_dir, resume=(run_dir / "checkpoints" / "last.pt").exists())
        if target is not None:
            wait_for_step(process, run_dir, target, {})
            # somewhere in the next step, its checkpoint or a validation: at least one step is left after any
            # target, so the process is still running unless this machine's speed changed since the fixture
            time.sleep(rng.uniform(0, step_seconds))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
        code = process.wait(timeout=600)
        assert code in ((-signal.SIGKILL, 0) if target is not None else (0,)), process.stderr.read()[-3000:]
    assert kills >= 2
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == uninterrupted["step"] == 9
    assert_same_state(state, uninterrupted)
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))  # what a killed save left was cleared on resume


SAVER = """
import sys, torch
from sst_fast.engine.checkpoint import save_checkpoint
path, weights = sys.argv[1], torch.randn(8, 2**20)  # 32 MiB: a save takes long enough to be caught in it
for counter in range(10**6):
    weights[0, 0] = counter
    config = {section: {} for section in ("data", "model", "optim", "run")}
    save_checkpoint(path, {"counter": counter, "model": {"weights": weights}, "config": config})
    print(counter, flush=True)
"""


def test_a_kill_during_saving_leaves_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / "last.pt"
    rng = random.Random(0)
    for _ in range(5):
        process = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True, env=ENV)
        completed = int(process.stdout.readline())  # one save is whole; the next ones are under way
        time.sleep(rng.uniform(0, 0.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        state = load_checkpoint(path)
        assert state["counter"] >= completed
        assert state["model"]["weights"][0, 0].item() == state["counter"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "state.pt"
    generator = torch.Generator().manual_seed(0)
    state = {
        "model": {"w": torch.randn(64, 64, generator=generator), "b": torch.randn(64, dtype=torch.float64)},
        "step": 7,
        "history": [{"loss": 0.5}, {"val_miou": float("nan")}],
        "config": {section: {} for section in ("data", "model", "optim", "run")},
    }
    save_checkpoint(path, state)
    return path, state


def test_every_changed_byte_is_refused_or_harmless(saved, tmp_path):
    """A changed byte is either refused with a CheckpointError or in a part of the file that carries nothing
    (zip header fields): the content read back is then exactly what was saved; never silently different."""
    path, _ = saved
    data = path.read_bytes()
    saved_digest = load_checkpoint(path)["sha256"]
    rng = random.Random(0)
    refused = 0
    for position in rng.sample(range(len(data)), 200):
        damaged = bytearray(data)
        damaged[position] ^= 1 << rng.randrange(8)
        target = tmp_path / "damaged.pt"
        target.write_bytes(damaged)
        try:
            loaded = load_checkpoint(target)
        except CheckpointError as error:
            assert str(target) in str(error)
            refused += 1
        else:
            del loaded["path"]
            assert content_digest(loaded) == saved_digest
    assert refused >= 150  # the tensor bytes are most of the file


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_a_truncated_checkpoint_is_refused(saved, tmp_path, fraction):
    path, _ = saved
    data = path.read_bytes()
    target = tmp_path / "truncated.pt"
    target.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(target)


def test_a_changed_tensor_value_is_reported_as_damage(saved, tmp_path):
    path, _ = saved
    state = torch.load(path, weights_only=True)
    state["model"]["w"][3, 3] += 1  # as a bit flip on disk would: the file reads, its content is wrong
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "edited.pt")


def test_resuming_from_a_damaged_checkpoint_names_the_file(tmp_path):
    from sst_fast.engine.train import Trainer
    from sst_fast.engine.runconfig import load_run_config

    run_dir = tmp_path / "run"
    Trainer(load_run_config("synthetic", SETTINGS), run_dir, progress=False).fit(max_steps=1)
    last = run_dir / "checkpoints" / "last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(data)
    with pytest.raises(CheckpointError, match=f"{last}.*damaged"):
        Trainer.resume(run_dir, progress=False)


def test_format_1_checkpoints_without_a_digest_still_load(saved, tmp_path):
    path, _ = saved
    state = torch.load(path, weights_only=True)
    state["format"] = 1
    del state["sha256"]
    torch.save(state, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["step"] == 7
