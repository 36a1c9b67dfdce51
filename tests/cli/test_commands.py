"""``sst-fast info``, ``eval`` (sampled and replayed episodes, K-shot fusion), ``train --print-config``, ``--help``."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from sst_fast.cli import main
from sst_fast.engine.runconfig import RunConfig, load_run_config
from tests.engine.tiny import TINY


def test_info_prints_versions_backends_and_device(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "sst_fast 0.1.0" in out
    assert f"torch      {torch.__version__}" in out
    assert "numpy" in out and "python" in out
    assert "op backends built:" in out and "in use:" in out
    if torch.cuda.is_available():
        assert "cuda:0" in out
    else:
        assert "device     cpu" in out


@pytest.fixture(scope="module")
def evaluation(tiny_checkpoint, tmp_path_factory):
    """``sst-fast eval`` of the tiny checkpoint, 8 episodes for each of seeds 0 and 1: (output folder, stdout)."""
    out = tmp_path_factory.mktemp("eval") / "out"
    argv = ["eval", str(tiny_checkpoint), "--episodes", "8", "--seeds", "0", "1", "--out", str(out), "--no-progress"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return out, printed.getvalue()


def test_eval_prints_card_and_table_and_writes_results(evaluation):
    out, printed = evaluation
    assert printed.startswith("Protocol\n")
    assert "synthetic, fold 0" in printed and "episodes             8 per seed, seeds 0, 1" in printed
    assert "\nmIoU " in printed and "\nFB-IoU " in printed
    assert f"results: {out / 'metrics.json'}" in printed
    for name in ("metrics.json", "protocol.txt", "manifests/seed-0.json", "manifests/seed-1.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"]["shots"] == 1 and metrics["protocol"]["episodes"] == 8
    assert metrics["protocol"]["seeds"] == [0, 1]
    assert len(metrics["runs"]) == 2
    assert set(metrics["summary"]) == {"miou", "fb_iou", "episode_miou"}
    assert (out / "protocol.txt").read_text().startswith("Protocol\n")
    for seed, sha256 in zip((0, 1), metrics["protocol"]["manifests"], strict=True):
        assert f"manifest seed {seed}: sha256 {sha256}\n" in printed


def test_eval_replaying_the_manifests_gives_identical_metrics(evaluation, tiny_checkpoint, tmp_path, capsys):
    out, _ = evaluation
    manifests = [str(out / "manifests" / f"seed-{seed}.json") for seed in (0, 1)]
    replay = tmp_path / "replay"
    code = main(["eval", str(tiny_checkpoint), "--manifest", *manifests, "--out", str(replay), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    first = json.loads((out / "metrics.json").read_text())
    again = json.loads((replay / "metrics.json").read_text())
    assert again["summary"] == first["summary"]
    assert again["runs"] == first["runs"]
    assert again["protocol"]["manifests"] == first["protocol"]["manifests"]
    for seed in (0, 1):
        name = f"manifests/seed-{seed}.json"
        assert (replay / name).read_text() == (out / name).read_text()


@pytest.mark.parametrize(
    ("flags", "refused"),
    [
        pytest.param(["--shots", "5"], "shots (--shots): the manifests decide it (1), got 5", id="shots"),
        pytest.param(["--episodes", "7"], "episodes (--episodes): the manifests decide it (8), got 7", id="episodes"),
        pytest.param(
            ["--seeds", "3", "4"], "seeds (--seeds): the manifests decide it ([0, 1]), got [3, 4]", id="seeds"
        ),
        pytest.param(["--seeds", "1", "0"], "seeds (--seeds): the manifests decide it ([0, 1])", id="seed-order"),
    ],
)
def test_eval_refuses_a_flag_that_the_manifests_decide(evaluation, tiny_checkpoint, tmp_path, capsys, flags, refused):
    out, _ = evaluation
    manifests = [str(out / "manifests" / f"seed-{seed}.json") for seed in (0, 1)]
    argv = ["eval", str(tiny_checkpoint), "--manifest", *manifests, "--out", str(tmp_path / "r"), "--no-progress"]
    assert main([*argv, *flags]) == 2
    assert refused in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    # The manifests' own values are what a replay runs anyway: given again, they are accepted.
    same = ["--shots", "1", "--episodes", "8", "--seeds", "0", "1"]
    assert main([*argv, *same]) == 0, capsys.readouterr().err


def test_eval_on_another_fold_refuses_the_classes_the_checkpoint_trained_on(tiny_checkpoint, tmp_path, capsys):
    """Trained on fold 0, fold 1's test classes were training classes: refused, or scored with the card saying so."""
    argv = ["eval", str(tiny_checkpoint), "--fold", "1", "--episodes", "3", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "the model was trained on synthetic fold 0" in err and "--allow-seen-classes" in err, err
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "allowed"
    assert main([*argv, "--out", str(out), "--allow-seen-classes"]) == 0, capsys.readouterr().err
    assert "WERE TRAINING CLASSES: not a few-shot result" in capsys.readouterr().out
    trained_on = json.loads((out / "metrics.json").read_text())["protocol"]["trained_on"]
    assert trained_on["dataset"] == "synthetic" and trained_on["fold"] == 0 and trained_on["seen_test_classes"]


def test_eval_card_records_the_training_fold(evaluation):
    out, printed = evaluation
    trained_on = json.loads((out / "metrics.json").read_text())["protocol"]["trained_on"]
    assert trained_on == {"dataset": "synthetic", "fold": 0, "seen_test_classes": []}
    assert "trained on           synthetic, fold 0 (no test class among its training classes)" in printed


def test_eval_of_a_model_with_nan_logits_is_an_error_naming_the_episode(tmp_path, capsys):
    factory = tmp_path / "nan_model.py"
    factory.write_text(
        "import torch\n"
        "def build():\n"
        "    return lambda q, s, m: torch.full((q.shape[0], 2, *q.shape[-2:]), float('nan'))\n"
    )
    argv = ["eval", "--model", f"{factory}:build", "--dataset", "synthetic", "--fold", "0", "--size", "32"]
    assert main([*argv, "--episodes", "3", "--no-progress", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "non-finite logits (NaN or inf) for episode 0 (class " in err, err
    assert not (tmp_path / "e").exists()


def test_eval_two_shots_with_max_fusion(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["eval", str(tiny_checkpoint), "--shots", "2", "--fusion", "max", "--episodes", "4", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "shots                2" in printed and "fusion=max" in printed
    protocol = json.loads((out / "metrics.json").read_text())["protocol"]
    assert protocol["shots"] == 2 and protocol["model"]["fusion"] == "max"
    manifest = json.loads((out / "manifests" / "seed-0.json").read_text())
    assert manifest["shots"] == 2


def test_eval_of_a_run_folder_writes_beside_the_run(run_copy, capsys):
    assert main(["eval", str(run_copy), "--episodes", "4", "--no-progress"]) == 0
    results = run_copy / "eval" / "synthetic-fold0-1shot-e4-s0"
    assert f"results: {results / 'metrics.json'}" in capsys.readouterr().out
    protocol = json.loads((results / "metrics.json").read_text())["protocol"]
    assert protocol["checkpoint"] == str(run_copy / "checkpoints" / "best.pt")


def test_eval_of_a_run_folder_without_best_checkpoint_says_it_uses_the_last(run_copy, capsys):
    (run_copy / "checkpoints" / "best.pt").unlink()
    assert main(["eval", str(run_copy), "--episodes", "4", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"sst-fast eval: warning: {run_copy} has no checkpoints/best.pt"), err
    assert "using its latest state, checkpoints/last.pt (step " in err


def test_eval_with_own_model_takes_a_run_folder_as_its_checkpoint(run_copy, tmp_path, monkeypatch, capsys):
    """The factory gets the run folder's checkpoint file, as SST's own evaluation would read it; the results go
    under runs/eval/ in the working folder."""
    factory = tmp_path / "factory.py"
    factory.write_text(
        "import torch\n"
        "class Constant(torch.nn.Module):\n"
        "    def forward(self, query, support_images, support_masks):\n"
        "        return torch.zeros(query.shape[0], 2, *query.shape[-2:])\n"
        "def build(checkpoint):\n"
        "    assert torch.load(checkpoint, weights_only=True)['kind'] == 'sst_fast-checkpoint'\n"
        "    return Constant()\n"
    )
    monkeypatch.chdir(tmp_path)
    argv = ["eval", str(run_copy), "--model", f"{factory}:build", "--size", "32", "--episodes", "3", "--no-progress"]
    assert main([*argv, "--dataset", "synthetic", "--fold", "0"]) == 0, capsys.readouterr().err
    (metrics,) = (tmp_path / "runs" / "eval").rglob("metrics.json")
    assert json.loads(metrics.read_text())["protocol"]["checkpoint"] == str(run_copy / "checkpoints" / "best.pt")
    assert metrics.parent.parent.name.endswith("-best")


def test_print_config_round_trips_through_yaml(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    overrides = [*TINY, "optim.lr=5e-4", "data.fold=2", "model.ssm=false", "optim.grad_clip=null"]
    assert main(["train", "--config", "synthetic", *overrides, "--print-config"]) == 0
    printed = capsys.readouterr().out
    config = RunConfig.from_dict(yaml.safe_load(printed))
    assert config == load_run_config("synthetic", overrides)
    assert config.optim.lr == 5e-4 and config.data.fold == 2 and config.model.ssm is False
    assert list(tmp_path.iterdir()) == [], "--print-config must not start a run"


def test_print_config_of_the_defaults(capsys):
    assert main(["train", "--print-config"]) == 0
    assert RunConfig.from_dict(yaml.safe_load(capsys.readouterr().out)) == RunConfig()


def test_module_help_lists_the_subcommands(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sst_fast", "--help"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: sst-fast")
    for command in ("train", "eval", "predict", "demo", "ablation", "benchmark", "compare", "data", "info"):
        assert command in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("command", ["train", "eval", "predict", "demo", "ablation", "benchmark", "compare", "info"])
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: sst-fast {command}")


def test_eval_into_another_evaluations_folder_needs_overwrite(evaluation, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(evaluation[0], out)
    before = (out / "metrics.json").read_text()
    argv = ["eval", str(tiny_checkpoint), "--episodes", "4", "--seeds", "0", "--out", str(out), "--no-progress"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "holds the results of another evaluation" in error and "episodes, manifests, seeds" not in error
    assert "episodes" in error and "seeds" in error and "--overwrite" in error
    assert (out / "metrics.json").read_text() == before
    assert main([*argv, "--overwrite"]) == 0
    # The replaced evaluation's files do not linger.
    assert sorted(p.name for p in (out / "manifests").iterdir()) == ["seed-0.json"]
    # The same setting again is a rerun: it may replace its own results without --overwrite.
    assert main(argv) == 0


def test_default_eval_folders_name_their_setting(tiny_run, capsys):
    argv = ["eval", str(tiny_run), "--episodes", "4", "--shots", "2", "--fusion", "max", "--no-progress"]
    assert main([*argv, "--original-size"]) == 0
    assert (tiny_run / "eval" / "synthetic-fold0-2shot-max-e4-s0-original-size" / "metrics.json").is_file()


def test_evaluations_with_other_episodes_seeds_amp_or_manifests_keep_their_own_folders(run_copy, capsys):
    base = ["eval", str(run_copy), "--no-progress"]
    shutil.rmtree(run_copy / "eval", ignore_errors=True)  # other tests' evaluations of the shared run
    assert main([*base, "--episodes", "4"]) == 0
    assert main([*base, "--episodes", "6"]) == 0
    assert main([*base, "--episodes", "4", "--seeds", "1", "2"]) == 0
    assert main([*base, "--episodes", "4", "--amp", "bf16"]) == 0
    manifest = run_copy / "eval" / "synthetic-fold0-1shot-e4-s0" / "manifests" / "seed-0.json"
    assert main([*base, "--manifest", str(manifest)]) == 0
    folders = sorted(p.name for p in (run_copy / "eval").iterdir())
    assert len(folders) == 5 and folders[:4] == [
        "synthetic-fold0-1shot-e4-s0",
        "synthetic-fold0-1shot-e4-s0-bf16",
        "synthetic-fold0-1shot-e4-s1-2",
        "synthetic-fold0-1shot-e6-s0",
    ]
    assert folders[4].startswith("synthetic-fold0-1shot-manifest-")
    for folder in folders:
        assert (run_copy / "eval" / folder / "metrics.json").is_file()


def test_an_unwritable_output_is_refused_before_the_work(tiny_checkpoint, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    argv = ["eval", str(tiny_checkpoint), "--episodes", "4", "--out", str(blocker / "eval"), "--no-progress"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "--out" in captured.err and "not writable" in captured.err
    assert "Protocol" not in captured.out  # refused before evaluating, not after
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        if os.access(read_only, os.W_OK):  # root writes anywhere: only the file case applies
            return
        assert main([*argv[:-3], "--out", str(read_only / "eval"), "--no-progress"]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        read_only.chmod(0o755)


def test_a_failing_write_after_the_work_still_prints_the_result(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from sst_fast.engine.evaluate import EvaluationResult

    def full_disk(self, directory):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(EvaluationResult, "save", full_disk)
    argv = ["eval", str(tiny_checkpoint), "--episodes", "4", "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "\nmIoU " in captured.out and "No space left" in captured.err


def test_overrides_may_come_anywhere_on_the_line_later_ones_winning(capsys):
    argv = ["train", "optim.lr=0.1", "--config", "synthetic", "data.fold=2", "--print-config", "optim.lr=0.3"]
    assert main(argv) == 0
    config = RunConfig.from_dict(yaml.safe_load(capsys.readouterr().out))
    assert config.optim.lr == 0.3 and config.data.fold == 2
    assert config == load_run_config("synthetic", ["optim.lr=0.1", "data.fold=2", "optim.lr=0.3"])


@pytest.mark.parametrize(
    ("argv", "stray"),
    [
        (["train", "--config", "synthetic", "--print-config", "--no-such-flag"], "--no-such-flag"),
        (["train", "--config", "synthetic", "a=1", "--print-config", "notanoverride"], "notanoverride"),
        (["eval", "x.pt", "optim.lr=1"], "optim.lr=1"),  # eval takes no overrides
    ],
)
def test_a_stray_argument_is_one_error_line(argv, stray, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"unrecognized arguments: {stray}" in error


def test_print_config_refuses_a_fold_that_train_refuses(capsys):
    for fold, dataset in (("9", "synthetic"), ("9", "pascal"), ("test", "coco"), ("0", "fss")):
        overrides = [f"data.dataset={dataset}", f"data.fold={fold}"]
        code = main(["train", "--config", "synthetic", *overrides, "--print-config"])
        assert code == 2
        assert "data.fold" in capsys.readouterr().err
    assert main(["train", "--config", "fss", "data.fold=val", "--print-config"]) == 0


def test_version(capsys):
    from sst_fast import __version__

    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith(f"sst-fast {__version__}")
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == __version__


@pytest.mark.parametrize("command", ["train", "eval", "predict", "demo", "ablation", "benchmark", "compare"])
def test_help_shows_every_default(command, capsys):
    import argparse

    from sst_fast.cli import build_parser

    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = subcommands.choices[command]
    flags = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction)
    with pytest.raises(SystemExit):
        main([command, "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for action in parser._actions:
        if not action.option_strings or action.required or isinstance(action, flags):
            continue
        help_text = " ".join(parser.formatter_class(command)._get_help_string(action).split())
        assert "default" in help_text and help_text in shown, action.option_strings
