import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from sst_fast import SST
from sst_fast.data import open_dataset
from sst_fast.data.episodes import holdout
from sst_fast.engine.checkpoint import load_checkpoint, model_from_checkpoint
from sst_fast.engine.runconfig import ConfigError, load_run_config
from sst_fast.engine.train import Trainer, TrainingError, train

from tests.models.helpers import model_tolerance

from .tiny import tiny_config


def assert_same_state(a: dict, b: dict) -> None:
    """Two checkpoints hold bit-identical parameters, optimiser state, counters and RNG state."""
    assert (a["step"], a["epoch"], a["batch_in_epoch"]) == (b["step"], b["epoch"], b["batch_in_epoch"])
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"]), index
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert a["best"] == b["best"]
    assert a["history"] == b["history"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The reference run: 2 epochs of 3 steps in one go."""
    run_dir = tmp_path_factory.mktemp("straight")
    result = train(tiny_config(), run_dir, progress=False)
    return result, load_checkpoint(run_dir / "checkpoints" / "last.pt")


def test_a_run_folder_holds_config_logs_scalars_checkpoints_and_curves(straight):
    result, state = straight
    run_dir = result.run_dir
    assert result.status == "finished" and result.step == 6 and result.epoch == 2
    for name in (
        "config.yaml",
        "version.json",
        "train.log",
        "metrics.jsonl",
        "curves.png",
        "validation/manifest.json",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").iterdir())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "val_miou" in r] == [3, 6]
    assert records == state["history"]
    assert "sst_fast" in json.loads((run_dir / "version.json").read_text())["code_version"]


def test_the_best_checkpoint_is_the_best_validation_step(straight):
    result, state = straight
    validations = [r for r in state["history"] if "val_miou" in r]
    best = max(validations, key=lambda r: r["val_miou"])  # first of equal maxima, as training keeps it
    assert result.best_step == best["step"] and result.best_miou == best["val_miou"]
    assert load_checkpoint(result.best_checkpoint)["step"] == best["step"]


def test_validation_uses_held_out_training_images_of_base_classes_only(straight):
    result, _ = straight
    manifest = json.loads((result.run_dir / "validation" / "manifest.json").read_text())
    config = tiny_config()
    dataset = open_dataset("synthetic", None, **config.data.options)
    split = dataset.fold_split(0)
    held = holdout(dataset.image_ids(split.train_split), config.data.val_fraction, "validation")
    episodes = manifest["episodes"]
    assert manifest["split"] == split.train_split
    for episode in episodes:
        assert episode["class_id"] in split.train_classes
        assert {episode["query"], *episode["supports"]} <= held


@pytest.mark.parametrize("stop_at", [2, 3, 4])  # mid-epoch, at an epoch's end (before validation), mid-epoch 2
def test_stopping_and_resuming_equals_training_straight(straight, tmp_path, stop_at):
    first = train(tiny_config(), tmp_path, max_steps=stop_at, progress=False)
    assert first.status == "stopped" and first.step == stop_at
    resumed = Trainer.resume(tmp_path, progress=False).fit()
    assert resumed.status == "finished" and resumed.step == 6
    assert_same_state(load_checkpoint(tmp_path / "checkpoints" / "last.pt"), straight[1])
    # The log on disk is the same as well.
    assert (tmp_path / "metrics.jsonl").read_text() == (straight[0].run_dir / "metrics.jsonl").read_text()


def test_max_steps_at_or_below_the_current_step_stops_at_once(tmp_path):
    train(tiny_config(), tmp_path, max_steps=2, progress=False)
    result = Trainer.resume(tmp_path, progress=False).fit(max_steps=2)
    assert result.status == "stopped" and result.step == 2
    assert "max_steps=2 is not beyond the step this run has reached (2): nothing to train" in (
        tmp_path / "train.log"
    ).read_text()


def test_resume_is_exact_with_loader_workers(tmp_path):
    # Workers run the augmentation single-threaded: the data may differ from workers=0 in the last bits
    # (CPU kernels split work by thread count), so the comparison is between two runs with one worker.
    straight = train(tiny_config("data.workers=1"), tmp_path / "straight", progress=False)
    train(tiny_config("data.workers=1"), tmp_path / "pieces", max_steps=2, progress=False)
    Trainer.resume(tmp_path / "pieces", progress=False).fit()
    assert_same_state(
        load_checkpoint(tmp_path / "pieces" / "checkpoints" / "last.pt"), load_checkpoint(straight.last_checkpoint)
    )


def test_resume_drops_log_records_written_after_the_checkpoint(straight, tmp_path):
    train(tiny_config(), tmp_path, max_steps=2, progress=False)
    with open(tmp_path / "metrics.jsonl", "a") as file:  # a crash after step 2 had logged step 3
        file.write(json.dumps({"step": 3, "epoch": 0, "loss": 123.0}) + "\n")
    Trainer.resume(tmp_path, progress=False).fit()
    assert (tmp_path / "metrics.jsonl").read_text() == (straight[0].run_dir / "metrics.jsonl").read_text()


def test_resume_may_extend_training_but_not_change_it(tmp_path):
    train(tiny_config(), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="optim.lr"):
        Trainer.resume(tmp_path, ["optim.lr=0.1"], progress=False)
    result = Trainer.resume(tmp_path, ["optim.epochs=3"], progress=False).fit()
    assert result.step == 9 and result.epoch == 3
    assert "epochs: 3" in (tmp_path / "config.yaml").read_text()


def test_a_new_run_refuses_a_folder_that_holds_one(straight):
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(tiny_config(), straight[0].run_dir, progress=False)


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="last.pt"):
        Trainer.resume(tmp_path, progress=False)


def test_a_run_that_cannot_start_leaves_no_folder(tmp_path):
    with pytest.raises(ValueError, match="fold"):
        Trainer(tiny_config("data.fold=7"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_diverging_loss_stops_with_a_clear_error(tmp_path):
    with pytest.raises(TrainingError, match="optim.lr"):
        train(tiny_config("optim.lr=1.0e+12", "optim.momentum=0"), tmp_path, progress=False)


def test_adamw_poly_schedule_and_clipping_train(tmp_path):
    config = tiny_config("optim.optimizer=adamw", "optim.lr=0.001", "optim.schedule=poly", "optim.grad_clip=1.0")
    result = train(config, tmp_path, progress=False)
    lrs = [r["lr"] for r in load_checkpoint(result.last_checkpoint)["history"] if "lr" in r]
    assert lrs[0] == pytest.approx(0.001) and all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


def test_a_learnable_step_gets_its_own_learning_rate_and_a_logged_trajectory(tmp_path):
    config = tiny_config("model.learnable_step=true", "optim.step_lr=0.5", "optim.epochs=1")
    trainer = Trainer(config, tmp_path / "own", progress=False)
    main, step = trainer.optimizer.param_groups
    assert step["params"] == [trainer.model.tuning.log_step] and (step["lr"], step["weight_decay"]) == (0.5, 0.0)
    assert all(p is not trainer.model.tuning.log_step for p in main["params"])
    trainer.fit()
    steps = [r["tune_step"] for r in load_checkpoint(trainer.last_path)["history"] if "tune_step" in r]
    assert len(steps) == 3 and steps[-1] != 1.0, "alpha is recorded at every logged step and moves"
    # Without optim.step_lr the step is an ordinary parameter of the one group (as before the setting existed).
    plain = Trainer(tiny_config("model.learnable_step=true"), tmp_path / "plain", progress=False)
    (group,) = plain.optimizer.param_groups
    assert any(p is plain.model.tuning.log_step for p in group["params"])


def test_a_checkpoint_from_before_tune_form_loads_as_the_papers_step(straight, tmp_path):
    from sst_fast.engine.checkpoint import save_checkpoint, saved_config
    from sst_fast.engine.runconfig import RunConfig

    state = load_checkpoint(straight[0].last_checkpoint)
    state["config"]["model"]["tune_form"] = "relative"
    del state["config"]["model"]["tune_form"]  # as every checkpoint saved before the setting existed
    for key in ("kind", "format", "sha256", "path"):
        state.pop(key)
    old = save_checkpoint(tmp_path / "old.pt", state)
    assert model_from_checkpoint(old).config.tune_form == "paper"
    assert RunConfig.from_dict(saved_config(load_checkpoint(old))).model.tune_form == "paper"
    assert "tune_form" not in load_checkpoint(old)["config"]["model"], "the state itself stays as saved"


def test_frozen_backbone_stays_unchanged(tmp_path):
    result = train(tiny_config("model.freeze_backbone=true"), tmp_path, progress=False)
    torch.manual_seed(0)  # the run's seed: the same initial weights
    fresh = SST(tiny_config("model.freeze_backbone=true").model).state_dict()
    trained = load_checkpoint(result.last_checkpoint)["model"]
    for key, value in fresh.items():
        if key.startswith("backbone."):
            assert torch.equal(value, trained[key]), key
        elif key == "embed.conv.weight":
            assert not torch.equal(value, trained[key])


def test_model_from_checkpoint_predicts_like_the_trained_model(straight):
    model = model_from_checkpoint(straight[0].last_checkpoint)
    assert not model.training and model.config.channels == 8
    query = torch.randn(1, 3, 64, 64)
    supports = torch.randn(1, 1, 3, 64, 64)
    masks = torch.zeros(1, 1, 64, 64, dtype=torch.long)
    masks[..., 10:40, 10:40] = 1
    reference = model_from_checkpoint(straight[0].last_checkpoint, fast=False)
    tol = model_tolerance(reference, (query, supports, masks), torch.float32)  # other kernels: rounding apart
    expected = reference(query, supports, masks).logits
    actual = model(query, supports, masks).logits
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * expected.abs().max().item())


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_checkpoints_after_the_step_and_resume_finishes_the_same_run(straight, tmp_path):
    """A real process receives SIGINT during step 3: it finishes the step, writes a checkpoint and exits
    130 without a traceback; resuming ends bit-identical to the uninterrupted run."""
    run_dir = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        from tests.engine.tiny import tiny_config
        from sst_fast.engine.train import Trainer

        trainer = Trainer(tiny_config(), {str(run_dir)!r}, progress=False)
        step = trainer.train_step
        def interrupted_step(batch):
            if trainer.step == 2:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives while step 3 runs
            return step(batch)
        trainer.train_step = interrupted_step
        result = trainer.fit()
        sys.exit(130 if result.status == "interrupted" else 0)
    """)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert process.returncode == 130, process.stderr
    assert "Traceback" not in process.stderr and "resume with" in process.stderr
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 3
    Trainer.resume(run_dir, progress=False).fit()
    assert_same_state(load_checkpoint(run_dir / "checkpoints" / "last.pt"), straight[1])


def test_training_config_knobs_are_named_in_errors():
    with pytest.raises(ConfigError, match="optim.batch_size"):
        tiny_config("optim.batch_size=0")
    with pytest.raises(ConfigError, match="run.device"):
        tiny_config("run.device=tpu")


def test_a_stop_request_during_validation_stops_at_the_epoch_boundary(straight, tmp_path):
    trainer = Trainer(tiny_config(), tmp_path, progress=False)
    validate = trainer.validate

    def interrupted_validation(writer=None):
        trainer._request_stop("interrupted")  # Ctrl-C arrives while the epoch's validation runs
        return validate(writer)

    trainer.validate = interrupted_validation
    result = trainer.fit()
    assert result.status == "interrupted" and result.step == 3 and result.epoch == 1
    Trainer.resume(tmp_path, progress=False).fit()
    assert_same_state(load_checkpoint(tmp_path / "checkpoints" / "last.pt"), straight[1])


def test_tensorboard_keeps_the_checkpoint_steps_scalars_after_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_config(), tmp_path, max_steps=3, progress=False)  # epoch 1 ends at step 3: validated there
    Trainer.resume(tmp_path, progress=False).fit()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events.Scalars("val/val_miou")] == [3, 6]


def test_a_new_run_in_a_folder_without_checkpoint_starts_its_logs_afresh(straight, tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 99.0}) + "\n")
    train(tiny_config(), tmp_path, progress=False)
    assert (tmp_path / "metrics.jsonl").read_text() == (straight[0].run_dir / "metrics.jsonl").read_text()


def test_a_run_that_cannot_start_leaves_an_existing_folder_as_it_was(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="fold"):
        Trainer(tiny_config("data.fold=7"), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_resume_does_not_reread_the_backbone_weights_file(tmp_path):
    weights = tmp_path / "backbone.pt"
    torch.manual_seed(0)
    torch.save(SST(tiny_config().model).backbone.state_dict(), weights)
    run_dir = tmp_path / "run"
    train(tiny_config(f"model.backbone_weights={weights}"), run_dir, max_steps=2, progress=False)
    weights.unlink()  # moved away after training started
    assert Trainer.resume(run_dir, progress=False).fit().step == 6


def test_resume_refuses_a_checkpoint_without_training_state(straight, tmp_path):
    from sst_fast.engine.checkpoint import save_checkpoint

    state = load_checkpoint(straight[0].last_checkpoint)
    save_checkpoint(tmp_path / "checkpoints" / "last.pt", {"config": state["config"], "model": state["model"]})
    with pytest.raises(ConfigError, match="not a training checkpoint"):
        Trainer.resume(tmp_path, progress=False)


def test_resume_cannot_lengthen_a_poly_schedule(tmp_path):
    train(tiny_config("optim.schedule=poly"), tmp_path, max_steps=2, progress=False)
    with pytest.raises(ConfigError, match="poly"):
        Trainer.resume(tmp_path, ["optim.epochs=3"], progress=False)


def test_run_files_get_the_usual_permissions(straight):
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.yaml", "checkpoints/last.pt", "validation/manifest.json"):
        assert (straight[0].run_dir / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_channels_last_training_resumes_exactly(tmp_path, amp):
    """run.amp and run.channels_last train, and the loss scaler's state survives a resume (4 steps in 2 epochs,
    stopped in the first: half precision is emulated, and slow, on a CPU without it)."""
    settings = (f"run.amp={amp}", "run.channels_last=true", "optim.grad_clip=5.0")
    settings += ("optim.episodes_per_epoch=8", "data.val_episodes=4")
    straight = train(tiny_config(*settings), tmp_path / "straight", progress=False)
    train(tiny_config(*settings), tmp_path / "pieces", max_steps=1, progress=False)
    Trainer.resume(tmp_path / "pieces", progress=False).fit()
    state = load_checkpoint(straight.last_checkpoint)
    assert all(math.isfinite(r["loss"]) for r in state["history"] if "loss" in r)
    assert bool(state["scaler"]) == (amp == "fp16"), "the scaler is on for float16 only"
    assert_same_state(load_checkpoint(tmp_path / "pieces" / "checkpoints" / "last.pt"), state)


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_every_json_file_of_a_run_is_strict_json_nan_as_null(tmp_path, monkeypatch):
    training = sys.modules[Trainer.__module__]
    nan = {"miou": math.nan, "fb_iou": math.nan}
    monkeypatch.setattr(training, "score_episodes", lambda *args, **kwargs: dict(nan))
    train(tiny_config(), tmp_path, max_steps=4, progress=False)
    Trainer.resume(tmp_path, progress=False).fit()  # the resume rewrites metrics.jsonl from the state
    files = [*tmp_path.rglob("*.json"), tmp_path / "metrics.jsonl"]
    assert len(files) >= 3
    for path in files:
        lines = path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
        for line in lines:
            _strict(line)
    validations = [_strict(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    validations = [r for r in validations if "val_miou" in r]
    assert len(validations) == 2 and all(r["val_miou"] is None for r in validations)


def test_a_frozen_random_or_partly_loaded_backbone_is_refused_unless_allowed(tmp_path, caplog):
    from sst_fast.models.backbones import build_backbone

    resnet = ("model.backbone=resnet50", "model.freeze_backbone=true", "model.channels=8")
    with pytest.raises(ConfigError, match="model.backbone_weights is not set.*run.allow_random_backbone"):
        Trainer(tiny_config(*resnet), tmp_path / "random", progress=False)
    assert not (tmp_path / "random").exists()
    Trainer(tiny_config(*resnet, "run.allow_random_backbone=true"), tmp_path / "allowed", progress=False).close()

    state = build_backbone("resnet50").state_dict()
    dropped = [key for key in state if key.startswith("layer3.5.")]
    partial = tmp_path / "partial.pth"
    torch.save({key: value for key, value in state.items() if key not in dropped}, partial)
    weights = f"model.backbone_weights={partial}"
    with pytest.raises(ConfigError, match=r"fills only part .*layer3\.5\.conv1\.weight"):
        Trainer(tiny_config(*resnet, weights), tmp_path / "partial", progress=False)
    trainer = Trainer(tiny_config(*resnet, weights, "run.allow_random_backbone=true"), tmp_path / "ok", progress=False)
    trainer.close()
    assert "fills only part of the backbone" in (tmp_path / "ok" / "train.log").read_text()
    # A complete file trains without the setting.
    complete = tmp_path / "complete.pth"
    torch.save(state, complete)
    Trainer(tiny_config(*resnet, f"model.backbone_weights={complete}"), tmp_path / "full", progress=False).close()


def test_without_a_terminal_progress_is_plain_lines_with_speed_and_eta(tmp_path):
    """A batch job's log: no carriage returns, a line per interval with the step, loss, speed and time left."""
    script = textwrap.dedent(
        f"""
        from tests.engine.tiny import tiny_config
        from sst_fast.engine.train import train
        train(tiny_config("run.progress_seconds=0.001"), {str(tmp_path / "run")!r}, progress=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=os.getcwd(), timeout=300
    )
    assert "\r" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("step ")]
    assert len(lines) == 6  # every step, at this interval
    assert lines[0].startswith("step 1/6 (17%), loss ") and "steps/s, ETA " in lines[0]
    assert lines[-1].startswith("step 6/6 (100%)") and lines[-1].endswith("ETA 0m00s")
    assert "step 6/6 (100%)" in (tmp_path / "run" / "train.log").read_text()


def test_on_a_terminal_progress_is_a_bar_and_off_is_nothing(monkeypatch):
    from tqdm import tqdm

    from sst_fast.engine import runlog

    monkeypatch.setattr(runlog, "is_terminal", lambda stream: True)
    bar = runlog.progress_bar(10, 0, True)
    assert isinstance(bar, tqdm)
    bar.close()
    assert isinstance(runlog.progress_bar(10, 0, False), runlog.NoBar)
    monkeypatch.setattr(runlog, "is_terminal", lambda stream: False)
    assert isinstance(runlog.progress_bar(10, 0, True), runlog.ProgressLines)


def test_training_on_fss_logs_every_line_without_a_logging_error(tmp_path, capsys):
    """FSS-1000's folds are names ('test', 'val'), not numbers: the training's first info line formats them."""
    from tests.data.test_fss import gray_mask, write_image, write_splits

    root = tmp_path / "fss"
    classes = ("ant", "bee", "cat", "dog")
    write_splits(root, train=classes, val=("eel",), test=("fox",))
    for name in (*classes, "eel", "fox"):
        for number in range(1, 9):
            write_image(root, name, number, gray_mask(rows=slice(0, 4 + number)))
    overrides = [
        f"data.root={root}", "data.workers=0", "data.val_episodes=4", "data.val_fraction=0.5",
        "model.backbone=tiny", "model.freeze_backbone=false", "model.channels=8", "model.image_size=[32, 32]",
        "optim.batch_size=2", "optim.episodes_per_epoch=4", "optim.epochs=1", "run.log_every=1",
    ]  # fmt: skip
    config = load_run_config("fss", overrides)
    train(config, tmp_path / "run", progress=False)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "fss fold test:" in log
    assert "Logging error" not in capsys.readouterr().err


# --- fatal errors: a clear message, and the run's log keeps it ---------------------------------------------


def _nan_losses(trainer) -> None:
    """From now on every training step of ``trainer`` computes a NaN loss."""
    forward = trainer.network.forward

    def nan_forward(batch):
        out = forward(batch)
        out.loss = out.loss * float("nan")
        return out

    trainer.network.forward = nan_forward


def test_a_loss_that_diverges_before_any_checkpoint_names_none_and_is_logged(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError, match="optim.lr") as raised:
        train(tiny_config("optim.lr=1.0e+12", "optim.momentum=0"), run_dir, progress=False)
    message = str(raised.value)
    assert not (run_dir / "checkpoints" / "last.pt").exists()
    assert "last.pt" not in message and "no checkpoint was written" in message
    log = (run_dir / "train.log").read_text()
    assert "ERROR" in log and message in log


def test_a_loss_that_diverges_after_a_checkpoint_names_it_and_its_step(tmp_path):
    trainer = Trainer(tiny_config(), tmp_path / "run", progress=False)
    trainer.fit(max_steps=2)
    _nan_losses(trainer)
    with pytest.raises(TrainingError) as raised:
        trainer.fit()
    message = str(raised.value)
    assert "the loss is nan at step 3" in message
    assert f"the last checkpoint is {trainer.last_path} (step 2)" in message
    assert message in (tmp_path / "run" / "train.log").read_text()


def test_an_error_that_ends_a_run_goes_to_its_log_with_the_traceback(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(), tmp_path / "run", progress=False)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer.data, "loader", full_disk)
    with pytest.raises(OSError, match="No space left"):
        trainer.fit()
    log = (tmp_path / "run" / "train.log").read_text()
    assert "ERROR" in log and "No space left on device" in log and "Traceback" in log and "full_disk" in log
    assert (tmp_path / "run" / "config.yaml").is_file()  # a run that started keeps its folder


def test_a_ctrl_c_abort_is_not_logged_as_an_error(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(), tmp_path / "run", progress=False)

    def abort(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.data, "loader", abort)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert "ERROR" not in (tmp_path / "run" / "train.log").read_text()


def test_a_resume_that_cannot_start_logs_why_in_the_runs_log(tmp_path, monkeypatch):
    training = sys.modules[Trainer.__module__]
    train(tiny_config(), tmp_path, max_steps=1, progress=False)
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))

    def unreadable(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(training, "TrainingData", unreadable)
    with pytest.raises(OSError, match="Input/output error"):
        Trainer.resume(tmp_path, progress=False)
    assert "Input/output error" in (tmp_path / "train.log").read_text()
    assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*")) == before


def test_the_command_line_reports_a_diverged_run_once_and_its_log_keeps_it(tmp_path, monkeypatch, capsys):
    from sst_fast.cli import main
    from tests.engine.tiny import TINY

    monkeypatch.delenv("SST_FAST_DEBUG", raising=False)
    run_dir = tmp_path / "run"
    argv = ["train", "--config", "synthetic", *TINY, "optim.lr=1.0e+12", "optim.momentum=0", "--no-progress"]
    assert main([*argv, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "the loss is" in line]
    assert len(errors) == 1 and errors[0].startswith("sst-fast train: error: ") and "no checkpoint" in errors[0]
    assert errors[0].removeprefix("sst-fast train: error: ") in (run_dir / "train.log").read_text()


def test_a_fatal_error_the_log_file_cannot_take_adds_nothing_on_the_console(tmp_path, capsys):
    import io
    import logging

    from sst_fast.engine import runlog

    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(28, "No space left on device")

    log = runlog.run_logger(tmp_path / "train.log")
    (handler,) = [h for h in log.handlers if isinstance(h, logging.FileHandler)]
    handler.stream.close()
    handler.stream = FullDisk()
    runlog.log_fatal(log, OSError(28, "No space left on device"), "after step 3")
    runlog.close_logger()
    assert capsys.readouterr().err == ""


def test_a_batch_larger_than_an_epoch_of_every_training_image_is_refused(tmp_path):
    config = tiny_config("optim.episodes_per_epoch=null", "optim.batch_size=500")
    with pytest.raises(ConfigError, match=r"optim\.batch_size=500 is more than an epoch \(.*116 training images"):
        Trainer(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
