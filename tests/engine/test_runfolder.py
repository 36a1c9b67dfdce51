"""A run folder has one writer at a time, and a resume takes only checkpoints of its own run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from sst_fast.engine.checkpoint import load_checkpoint, save_checkpoint
from sst_fast.engine.runconfig import ConfigError
from sst_fast.engine.runfolder import RunFolderBusy, RunLock, folder_run_id
from sst_fast.engine.train import Trainer, train

from .tiny import tiny_config

HOLD = textwrap.dedent(
    """
    import sys, time
    from sst_fast.engine.runfolder import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(600)
    """
)


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path / "run" (killed at the end)."""
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield run_dir, process
    process.kill()
    process.wait()


def test_a_second_writer_is_refused_and_the_first_runs_keep_their_files(tmp_path):
    first = Trainer(tiny_config(), tmp_path, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(RunFolderBusy, match=rf"in use by another process \(pid {os.getpid()} "):
        Trainer(tiny_config("run.seed=1"), tmp_path, progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    result = first.fit()
    assert result.status == "finished"
    # Once the first run has finished the folder is free, and holds a run.
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(tiny_config(), tmp_path, progress=False)
    assert Trainer.resume(tmp_path, progress=False).fit().step == 6


def test_another_process_holding_the_folder_is_named_and_nothing_is_touched(holder):
    run_dir, process = holder
    with pytest.raises(RunFolderBusy, match=rf"pid {process.pid} on "):
        Trainer(tiny_config(), run_dir, progress=False)
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]


def test_the_lock_of_a_killed_process_is_not_stale(holder):
    run_dir, process = holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert train(tiny_config(), run_dir, progress=False).status == "finished"


def test_the_lock_is_released_when_fit_returns_and_on_failure(tmp_path):
    train(tiny_config(), tmp_path / "a", max_steps=2, progress=False)
    with RunLock(tmp_path / "a"):  # free again
        pass
    with pytest.raises(ValueError, match="fold"):
        Trainer(tiny_config("data.fold=7"), tmp_path / "b", progress=False)
    assert not (tmp_path / "b").exists()
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match="fold"):
        Trainer(tiny_config("data.fold=7"), tmp_path / "c", progress=False)
    assert list((tmp_path / "c").iterdir()) == []


def test_two_cli_trainings_into_one_folder_the_second_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    from .tiny import TINY

    command = [sys.executable, "-m", "sst_fast", "train", "--no-progress", "--config", "synthetic", *TINY]
    # A long first epoch: no checkpoint yet while the second starts, so that only the lock can refuse it.
    command += ["optim.epochs=1", "optim.episodes_per_epoch=4000", "--run-dir", str(run_dir)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "config.yaml").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        config = (run_dir / "config.yaml").read_text()
        assert not (run_dir / "checkpoints" / "last.pt").exists()
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert "in use by another process" in second.stderr and f"pid {first.pid}" in second.stderr
        assert (run_dir / "config.yaml").read_text() == config
    finally:
        first.send_signal(signal.SIGINT)  # stops after the step, with a checkpoint
        first.wait(timeout=120)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["config"]["optim"]["episodes_per_epoch"] == 4000


# --- run ids --------------------------------------------------------------------------------------


def test_a_run_id_is_kept_in_the_folder_and_every_checkpoint_across_resumes(tmp_path):
    train(tiny_config(), tmp_path, max_steps=2, progress=False)
    run_id = folder_run_id(tmp_path)
    assert run_id and load_checkpoint(tmp_path / "checkpoints" / "last.pt")["run_id"] == run_id
    Trainer.resume(tmp_path, ["optim.epochs=3"], progress=False).fit()
    assert folder_run_id(tmp_path) == run_id
    for name in ("last.pt", "best.pt"):
        assert load_checkpoint(tmp_path / "checkpoints" / name)["run_id"] == run_id


def test_a_checkpoint_copied_in_from_another_run_is_refused(tmp_path):
    mine, other = tmp_path / "mine", tmp_path / "other"
    train(tiny_config(), mine, max_steps=4, progress=False)  # past the first validation: best.pt exists
    train(tiny_config("optim.lr=0.5", "model.ssm=false"), other, max_steps=4, progress=False)
    best, config = (mine / "checkpoints" / "best.pt").read_bytes(), (mine / "config.yaml").read_text()
    shutil.copy(other / "checkpoints" / "last.pt", mine / "checkpoints" / "last.pt")
    with pytest.raises(ConfigError, match="belongs to another run"):
        Trainer.resume(mine, progress=False)
    assert (mine / "checkpoints" / "best.pt").read_bytes() == best
    assert (mine / "config.yaml").read_text() == config


def _strip_run_id(run_dir, name="last.pt"):
    state = load_checkpoint(run_dir / "checkpoints" / name)
    for key in ("run_id", "sha256", "path", "kind", "format"):
        state.pop(key, None)
    save_checkpoint(run_dir / "checkpoints" / name, state)
    version = json.loads((run_dir / "version.json").read_text())
    version.pop("run_id")
    (run_dir / "version.json").write_text(json.dumps(version))


def test_a_checkpoint_from_before_run_ids_resumes_when_its_config_is_the_folders(tmp_path):
    train(tiny_config(), tmp_path, max_steps=2, progress=False)
    _strip_run_id(tmp_path)
    assert Trainer.resume(tmp_path, progress=False).fit().step == 6
    run_id = folder_run_id(tmp_path)  # adopted by the folder and every later checkpoint
    assert run_id and load_checkpoint(tmp_path / "checkpoints" / "last.pt")["run_id"] == run_id


def test_a_checkpoint_from_before_run_ids_with_another_config_is_refused(tmp_path):
    mine, other = tmp_path / "mine", tmp_path / "other"
    train(tiny_config(), mine, max_steps=2, progress=False)
    train(tiny_config("optim.lr=0.5"), other, max_steps=2, progress=False)
    _strip_run_id(other)
    shutil.copy(other / "checkpoints" / "last.pt", mine / "checkpoints" / "last.pt")
    (mine / "version.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"not trained with .*config.yaml .*optim.lr"):
        Trainer.resume(mine, progress=False)
