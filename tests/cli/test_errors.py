"""Every failure a user can cause ends in its message on stderr (``sst-fast <cmd>: error: ...``, then the detail
the message has, bounded), exit code 2, no traceback, and leaves no files behind; ``SST_FAST_DEBUG=1`` shows the
traceback instead."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sst_fast.cli import MAX_ERROR_LINE, MAX_ERROR_LINES, error_text, main
from sst_fast.engine.runconfig import ConfigError
from tests.engine.tiny import TINY

EVAL = ["eval", "--no-progress", "--out", "{tmp}/eval"]
PREDICT = ["predict", "{checkpoint}", "--query", "{query}", "--out", "{tmp}/prediction"]
TRAIN = ["train", "--no-progress", "--run-dir", "{tmp}/run"]

CASES = [
    # --- train: configuration and data ---
    pytest.param(
        [*TRAIN, "--config", "pascal", "data.root={tmp}/nope", "run.allow_random_backbone=true"],
        ["PASCAL VOC", "{tmp}/nope", "Expected layout", "JPEGImages/<id>.jpg", "train_aug.txt"],
        id="train-missing-data-root",
    ),
    pytest.param([*TRAIN, "--config", "synthetic", "data.fold=7"], ["fold", "got 7"], id="train-fold-7"),
    pytest.param([*TRAIN, "--config", "synthetic", "data.fold=-1"], ["data.fold", "got -1"], id="train-fold-negative"),
    pytest.param(
        [*TRAIN, "--config", "synthetic", "model.backbone=resnet9"],
        ["backbone", "resnet9"],
        id="train-unknown-backbone",
    ),
    pytest.param([*TRAIN, "--config", "synthetic", "optim.lrr=1"], ["optim.lrr"], id="train-unknown-key"),
    pytest.param(
        [*TRAIN, "--config", "synthetic", *TINY, "model.backbone=resnet50", "model.freeze_backbone=true"],
        ["model.backbone_weights is not set", "frozen resnet50", "run.allow_random_backbone=true"],
        id="train-frozen-random-backbone",
    ),
    pytest.param([*TRAIN, "--config", "synthetic", "foo.bar=1"], ["unknown section 'foo'"], id="train-unknown-section"),
    pytest.param(
        [*TRAIN, "--config", "synthetic", "optim.lr"],
        ["'optim.lr'", "section.key=value"],
        id="train-override-without-value",
    ),
    pytest.param(
        [*TRAIN, "--config", "synthetic", "optim.lr=abc"], ["optim.lr", "'abc'"], id="train-value-of-wrong-type"
    ),
    pytest.param([*TRAIN, "--config", "synthetic", "data.options.bogus=1"], ["bogus"], id="train-unknown-data-option"),
    pytest.param([*TRAIN, "--config", "nosuchconfig"], ["'nosuchconfig'", "synthetic"], id="train-unknown-config-name"),
    pytest.param([*TRAIN, "--config", "{list_yaml}"], ["must hold a mapping"], id="train-config-not-a-mapping"),
    pytest.param([*TRAIN, "--config", "{bad_yaml}"], ["not valid YAML"], id="train-config-bad-yaml"),
    pytest.param(
        ["train", "--resume", "{tmp}"], ["resume", "holds no checkpoints/last.pt"], id="train-resume-folder-without-run"
    ),
    pytest.param(["train", "--resume", "{tmp}/missing"], ["resume", "missing"], id="train-resume-missing-folder"),
    pytest.param(
        ["train", "--resume", "{run}", "optim.lr=1"], ["'optim.lr' cannot change"], id="train-resume-changes-lr"
    ),
    pytest.param(
        [*TRAIN, "--config", "synthetic", *TINY, "--max-steps", "0"],
        ["--max-steps", "positive integer"],
        id="train-max-steps-0",
    ),
    pytest.param(
        [*TRAIN, "--config", "synthetic", "run.device=cuda:abc"],
        ["run.device", "cuda:abc"],
        id="train-bad-device-string",
    ),
    pytest.param(
        [*TRAIN, "--config", "synthetic", "data.val_episodes=99999999999999999999"],
        ["data.val_episodes", "from 1 to 10000000"],
        id="train-val-episodes-beyond-the-maximum",
    ),
    pytest.param(
        [*TRAIN, "--config", "synthetic", "optim.batch_size=100000"],
        ["optim.batch_size=100000 is more than an epoch", "optim.episodes_per_epoch=800"],
        id="train-batch-larger-than-an-epoch",
    ),
    pytest.param(
        [*TRAIN, "--config", "synthetic", "data.options={{seed: 1, seed: 2}}"],  # braces doubled: str.format
        ["data.options.seed twice"],
        id="train-override-sets-a-key-twice",
    ),
    # --- eval: checkpoints, folds, data ---
    pytest.param(
        [*EVAL, "{random_bytes}"], ["{random_bytes}", "not a readable checkpoint"], id="eval-ckpt-random-bytes"
    ),
    pytest.param([*EVAL, "{empty_file}"], ["{empty_file}", "not a readable checkpoint"], id="eval-ckpt-empty-file"),
    pytest.param([*EVAL, "{truncated}"], ["{truncated}", "not a readable checkpoint"], id="eval-ckpt-truncated"),
    pytest.param(
        [*EVAL, "{torch_list}"], ["{torch_list}", "not an sst_fast checkpoint"], id="eval-ckpt-foreign-torch-file"
    ),
    pytest.param([*EVAL, "{tmp}/missing.pt"], ["missing.pt", "does not exist"], id="eval-ckpt-missing"),
    pytest.param(
        [*EVAL, "{empty_dir}"], ["{empty_dir}", "without checkpoints"], id="eval-ckpt-folder-without-checkpoints"
    ),
    pytest.param([*EVAL, "{checkpoint}", "--fold", "9"], ["fold", "got 9"], id="eval-fold-9"),
    pytest.param(
        [*EVAL, "{checkpoint}", "--episodes", "2", "--out", "{list_yaml}/eval"],
        ["--out", "not writable"],
        id="eval-out-not-writable",
    ),
    pytest.param(
        [*EVAL, "{checkpoint}", "--dataset", "pascal", "--root", "{tmp}/nope"],
        ["PASCAL VOC", "{tmp}/nope"],
        id="eval-missing-data-root",
    ),
    pytest.param([*EVAL, "{checkpoint}", "--dataset", "fss"], ["root", "fss"], id="eval-no-data-root"),
    pytest.param([*EVAL, "{checkpoint}", "--dataset", "bogus"], ["dataset", "'bogus'"], id="eval-unknown-dataset"),
    pytest.param([*EVAL, "{checkpoint}", "--shots", "0"], ["shots"], id="eval-shots-0"),
    pytest.param([*EVAL, "{checkpoint}", "--size", "1", "2", "3"], ["--size"], id="eval-size-3-numbers"),
    pytest.param(
        [*EVAL, "{checkpoint}", "--episodes", "99999999999999999999"],
        ["--episodes", "at most 10,000,000"],
        id="eval-episodes-beyond-the-maximum",
    ),
    pytest.param([*EVAL, "{checkpoint}", "--workers", "100000"], ["--workers", "from 0 to 1024"], id="eval-workers"),
    pytest.param(
        ["data", "check", "--config", "synthetic", "--workers", "0"],
        ["--workers", "from 1 to 1024"],
        id="check-workers",
    ),
    pytest.param(
        ["ablation", "--out", "{tmp}/a", "--episodes", "10000001"], ["--episodes", "at most"], id="ablation-episodes"
    ),
    pytest.param([*EVAL, "{checkpoint}", "--manifest", "{tmp}/none.json"], ["none.json"], id="eval-missing-manifest"),
    pytest.param([*EVAL, "{checkpoint}", "--manifest", "{bad_yaml}"], ["bad.yaml"], id="eval-unreadable-manifest"),
    pytest.param(
        [*EVAL, "{checkpoint}", "--device", "bogus"],
        ["--device", "bogus"],
        id="eval-bad-device",
    ),
    pytest.param(
        [*EVAL, "{checkpoint}", "--device", "cuda"],
        ["--device"],
        id="eval-cuda-without-cuda",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA"),
    ),
    # --- predict: images and masks ---
    pytest.param(
        [*PREDICT[:3], "{tmp}/nope.jpg", *PREDICT[4:], "--support", "{support0}", "--mask", "{mask0}"],
        ["--query", "nope.jpg"],
        id="predict-missing-query",
    ),
    pytest.param(
        [*PREDICT, "--support", "{tmp}/nope.png", "--mask", "{mask0}"],
        ["--support", "nope.png"],
        id="predict-missing-support",
    ),
    pytest.param(
        [*PREDICT, "--support", "{support0}", "--mask", "{query}"],
        ["--mask", "query.jpg"],
        id="predict-mask-size-differs",
    ),
    pytest.param(
        [*PREDICT, "--support", "{support0}", "{support1}", "--mask", "{mask0}"],
        ["--mask", "one mask per support image (2), got 1"],
        id="predict-one-mask-two-supports",
    ),
    pytest.param(
        [*PREDICT, "--support", "{support0}", "--mask", "{class_map0}"],
        ["several labels", "--class-id"],
        id="predict-multi-label-mask",
    ),
    pytest.param(
        [*PREDICT, "--support", "{support0}", "--mask", "{class_map0}", "--class-id", "3"],
        ["--class-id 3"],
        id="predict-class-id-absent",
    ),
    pytest.param([*PREDICT, "--support", "{support0}", "--mask", "{colour0}"], ["colour"], id="predict-colour-mask"),
    pytest.param(
        [*PREDICT, "--support", "{support0}", "--mask", "{bad_yaml}"],
        ["not a readable image"],
        id="predict-text-file-mask",
    ),
    pytest.param(
        [*PREDICT, "--support", "{support0}", "--mask", "{mask0}", "--size", "0"], ["--size"], id="predict-size-0"
    ),
    pytest.param(
        [*PREDICT, "--support", "{support0}", "--mask", "{empty_mask0}"],
        ["no object"],
        id="predict-all-background-mask",
    ),
    pytest.param(
        [*PREDICT, "--support", "{support0}", "--mask", "{mask0}", "--device", "bogus"],
        ["--device", "bogus"],
        id="predict-bad-device",
    ),
    # --- demo, ablation, info ---
    pytest.param(
        ["demo", "--quick", "--out", "{tmp}/demo", "optim.nope=1"], ["optim.nope"], id="demo-unknown-override"
    ),
    pytest.param(
        ["demo", "--quick", "--out", "{tmp}/demo", "--seeds", "1", "1"], ["seeds", "distinct"], id="demo-dup-seeds"
    ),
    pytest.param(["demo", "--episodes", "0"], ["--episodes", "'0'"], id="argparse-demo-episodes-0"),
    pytest.param(["ablation", "--config", "nope", "--out", "{tmp}/ablation"], ["'nope'"], id="ablation-unknown-config"),
    pytest.param(["ablation", "--config", "synthetic"], ["--out"], id="argparse-ablation-no-out"),
    pytest.param(["info", "--verbose"], ["unrecognized arguments: --verbose"], id="argparse-info-extra-argument"),
    pytest.param([*EVAL, "{damaged}"], ["{damaged}", "damaged"], id="eval-ckpt-damaged"),
    # --- argparse ---
    pytest.param(["frobnicate"], ["invalid choice: 'frobnicate'"], id="argparse-unknown-subcommand"),
    pytest.param([], ["COMMAND"], id="argparse-no-subcommand"),
    pytest.param(["eval", "{checkpoint}", "--fusion", "bogus"], ["--fusion", "'bogus'"], id="argparse-eval-bad-fusion"),
    pytest.param(["eval", "{checkpoint}", "--seeds", "x"], ["--seeds", "'x'"], id="argparse-eval-seed-not-int"),
    pytest.param(["predict", "{checkpoint}", "--support", "{support0}"], ["--query"], id="argparse-predict-no-query"),
    pytest.param(["train", "--max-steps", "many"], ["--max-steps"], id="argparse-train-max-steps-not-int"),
]


@pytest.fixture
def places(tmp_path, tiny_run, tiny_checkpoint, voc_episode) -> dict[str, str]:
    """The paths the argument templates name; bad files are written into ``tmp_path``."""
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "truncated.pt").write_bytes(tiny_checkpoint.read_bytes()[:100_000])
    damaged = bytearray(tiny_checkpoint.read_bytes())
    damaged[len(damaged) // 2] ^= 0x40  # inside the weights: the file still reads, its content is wrong
    (tmp_path / "damaged.pt").write_bytes(damaged)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    (tmp_path / "empty-dir").mkdir()
    (tmp_path / "list.yaml").write_text("- data\n- model\n")
    (tmp_path / "bad.yaml").write_text("data: [\n")
    support_size = Image.open(voc_episode.supports[0]).size
    Image.new("L", support_size, 0).save(tmp_path / "empty-mask.png")
    return {
        "tmp": str(tmp_path),
        "run": str(tiny_run),
        "checkpoint": str(tiny_checkpoint),
        "random_bytes": str(tmp_path / "random.pt"),
        "empty_file": str(tmp_path / "empty.pt"),
        "truncated": str(tmp_path / "truncated.pt"),
        "damaged": str(tmp_path / "damaged.pt"),
        "torch_list": str(tmp_path / "list.pt"),
        "empty_dir": str(tmp_path / "empty-dir"),
        "list_yaml": str(tmp_path / "list.yaml"),
        "bad_yaml": str(tmp_path / "bad.yaml"),
        "query": str(voc_episode.query),
        "support0": str(voc_episode.supports[0]),
        "support1": str(voc_episode.supports[1]),
        "mask0": str(voc_episode.masks_255[0]),
        "class_map0": str(voc_episode.class_maps[0]),
        "colour0": str(voc_episode.colour_masks[0]),
        "empty_mask0": str(tmp_path / "empty-mask.png"),
    }


def run_main(argv) -> int:
    """``main(argv)``'s exit code, argparse's SystemExit included."""
    try:
        return main(argv)
    except SystemExit as exit:
        return exit.code


def snapshot(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def assert_one_line_error(stderr: str, *expected: str) -> None:
    """One error, in the CLI's voice: its first line ``sst-fast <cmd>: error: ...``, its detail (if any) after it,
    at most MAX_ERROR_LINES lines; no traceback. ``expected`` fragments are looked for in the whole message."""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert 1 <= len(lines) <= MAX_ERROR_LINES, f"expected one bounded message on stderr, got:\n{stderr}"
    assert lines[0].startswith("sst-fast"), lines[0]
    assert ": error: " in lines[0]
    assert sum(": error: " in line for line in lines) == 1, stderr
    for text in expected:
        assert text in stderr, f"{text!r} not in {stderr!r}"


@pytest.mark.parametrize(("argv", "expected"), CASES)
def test_user_error_is_one_line_and_exit_2(argv, expected, places, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a default run or output folder would land here
    monkeypatch.delenv("SST_FAST_DEBUG", raising=False)
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = run_main([part.format(**places) for part in argv])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert_one_line_error(captured.err, *(text.format(**places) for text in expected))
    assert snapshot(tmp_path) == before, "the failed command left files behind"


def test_train_into_a_folder_holding_a_run_refuses_and_leaves_it_alone(run_copy, capsys):
    before = {path: path.read_bytes() for path in run_copy.rglob("*") if path.is_file()}
    code = run_main(["train", "--config", "synthetic", *TINY, "--run-dir", str(run_copy), "--no-progress"])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "already holds a run", "--resume")
    assert {path: path.read_bytes() for path in run_copy.rglob("*") if path.is_file()} == before


def test_failed_train_removes_the_run_folder_it_created(tmp_path, capsys):
    """The data fails after the run folder was made (logger, manifest folder): it goes again."""
    run_dir = tmp_path / "new" / "run"
    code = run_main(["train", "--config", "synthetic", *TINY, "data.fold=7", "--run-dir", str(run_dir)])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "fold")
    assert not run_dir.exists()


def test_failed_train_keeps_a_folder_that_existed_before(tmp_path, capsys):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("keep me")
    code = run_main(["train", "--config", "synthetic", *TINY, "data.fold=7", "--run-dir", str(run_dir)])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "fold")
    assert (run_dir / "notes.txt").read_text() == "keep me"
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "checkpoints").exists()


def test_failed_train_with_the_default_run_folder_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = run_main(["train", "--config", "synthetic", *TINY, "data.fold=7"])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "fold")
    assert snapshot(tmp_path) == set()


def test_debug_environment_raises_instead(tmp_path, monkeypatch):
    monkeypatch.setenv("SST_FAST_DEBUG", "1")
    with pytest.raises(ConfigError, match="optim.lrr"):
        main(["train", "--config", "synthetic", "optim.lrr=1", "--run-dir", str(tmp_path / "run")])


def run_process(*args, cwd, debug=False) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "SST_FAST_DEBUG"}
    if debug:
        env["SST_FAST_DEBUG"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "sst_fast", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_process_exits_2_without_traceback_on_a_damaged_checkpoint(tmp_path, places):
    result = run_process("eval", places["truncated"], "--no-progress", cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "sst-fast eval: error: checkpoint:", "truncated.pt")
    assert result.stdout == ""


def test_process_exits_2_without_traceback_on_a_bad_override(tmp_path):
    result = run_process("train", "--config", "synthetic", "optim.lr=abc", cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "sst-fast train: error: optim.lr")
    assert list(tmp_path.iterdir()) == []


def test_process_argparse_error_exits_2_in_one_line(tmp_path):
    result = run_process("eval", cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "sst-fast eval: error:", "checkpoint")


def test_debug_environment_shows_the_traceback(tmp_path):
    result = run_process("train", "--config", "synthetic", "optim.lr=abc", cwd=tmp_path, debug=True)
    assert result.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in result.stderr
    assert "ConfigError: optim.lr must be" in result.stderr


def test_an_unreadable_label_is_named_in_the_error_without_debug(tmp_path, monkeypatch, capsys):
    """The detail of a multi-line message (which files) reaches the user; the traceback does not."""
    from tests.data.layouts import make_voc, voc_images

    monkeypatch.delenv("SST_FAST_DEBUG", raising=False)
    images = voc_images(per_class=2)
    root = make_voc(tmp_path / "voc", images, val=list(images)[:10])
    broken = root / "SegmentationClassAug" / f"{list(images)[-1]}.png"
    broken.write_bytes(b"not a png")
    argv = ["train", "--config", "pascal", f"data.root={root}", *TINY[3:], "model.backbone=tiny"]
    code = run_main([*argv, "--run-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert_one_line_error(err, "1 unreadable file(s)", str(broken))


def test_error_text_is_whole_but_bounded():
    assert error_text(ValueError("first\n  detail a\n  detail b")) == "first\n  detail a\n  detail b"
    assert error_text(OSError()) == "OSError"
    long = error_text(ValueError("\n".join(f"line {n}" for n in range(1000))))
    lines = long.splitlines()
    assert len(lines) == MAX_ERROR_LINES
    assert lines[-2] == f"line {MAX_ERROR_LINES - 2}"
    assert lines[-1].startswith(f"... and {1000 - MAX_ERROR_LINES + 1} more lines")
    wide = error_text(ValueError("x" * 10_000))
    assert len(wide) == MAX_ERROR_LINE and wide.endswith("...")


def test_package_warnings_are_lines_in_the_clis_voice(tiny_checkpoint, tmp_path, capsys):
    """One episode scores one class: the others have no IoU, which the user reads as a warning line of sst-fast's,
    not as Python's ``file.py:N: UserWarning`` with the source line under it."""
    code = run_main(["eval", str(tiny_checkpoint), "--episodes", "1", "--no-progress", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.startswith("sst-fast eval: warning: classes ["), err
    assert "have no IoU" in err
    assert "UserWarning" not in err and ".py:" not in err
