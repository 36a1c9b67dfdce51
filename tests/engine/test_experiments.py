import json

import pytest
import torch

from sst_fast.cli import main
from sst_fast.engine.checkpoint import load_checkpoint
from sst_fast.engine.demo import demo
from sst_fast.engine.experiments import TABLE1_VARIANTS, ablation

from .tiny import TINY, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore:classes .* have no IoU")


def test_cli_train_stop_and_resume_equal_one_straight_run(tmp_path, capsys):
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    assert main(["train", "--config", "synthetic", *TINY, "--run-dir", str(straight), "--no-progress"]) == 0
    assert (
        main(["train", "--config", "synthetic", *TINY, "--run-dir", str(pieces), "--max-steps", "4", "--no-progress"])
        == 0
    )
    assert "stopped at step 4" in capsys.readouterr().out
    assert main(["train", "--resume", str(pieces), "--no-progress"]) == 0
    assert "finished at step 6" in capsys.readouterr().out
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(pieces / "checkpoints" / "last.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["history"] == b["history"]


def test_cli_train_refuses_resume_with_a_new_config(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--config", "synthetic"]) == 2
    assert "--resume" in capsys.readouterr().err


def run_checkpoint(out, variant, train_seed=0):
    folder = out / "runs" / variant.replace("+", "plus-") / f"seed-{train_seed}"
    return load_checkpoint(folder / "checkpoints" / "last.pt")


def test_ablation_trains_the_four_variants_and_writes_both_tables(tmp_path):
    config = tiny_config("optim.epochs=1")
    report = ablation(config, tmp_path, episodes={1: 6, 5: 4}, seeds=(0, 1), progress=False, log=lambda *_: None)
    text = report.read_text()
    assert "Table 1" in text and "Table 2" in text
    assert "over evaluation seeds, one training run per variant" in text
    for variant in TABLE1_VARIANTS:
        assert f"| {variant} |" in text
        saved = run_checkpoint(tmp_path, variant)
        assert saved["config"]["model"]["ssm"] == TABLE1_VARIANTS[variant]["ssm"]
        assert saved["config"]["model"]["aux_loss"] == TABLE1_VARIANTS[variant]["aux_loss"]
    for fusion in ("max", "average", "weighted"):
        assert f"| {fusion} |" in text
    results = json.loads((tmp_path / "ablation.json").read_text())
    assert len(results["evaluations"]) == 4 + 3  # 1-shot per variant, then the SST model 5-shot with each fusion
    assert {e["variant"] for e in results["evaluations"] if e["shots"] == 5} == {"sst"}
    # Every variant was scored on the same episodes (paired comparison).
    hashes = {tuple(e["protocol"]["manifests"]) for e in results["evaluations"] if e["shots"] == 1}
    assert len(hashes) == 1
    assert {(e["shots"], e["protocol"]["episodes"]) for e in results["evaluations"]} == {(1, 6), (5, 4)}


def test_ablation_over_training_seeds_pairs_every_run_on_the_same_episodes(tmp_path):
    """Each variant trained once per training seed (run.seed), all runs on one manifest; the table's ± is over
    training seeds and the paired differences are the mean of the per-seed differences."""
    from sst_fast.engine.experiments import Variant, run_experiment
    from sst_fast.metrics import mean_ci

    config = tiny_config("optim.epochs=1")
    variants = {"baseline": TABLE1_VARIANTS["baseline"], "sst": TABLE1_VARIANTS["sst"]}
    experiment = run_experiment(
        config, tmp_path, variants, episodes=6, seeds=(0,), train_seeds=(3, 5), progress=False, log=lambda *_: None
    )
    assert experiment.train_seeds == (3, 5)
    assert sorted(experiment.runs) == [("baseline", 3), ("baseline", 5), ("sst", 3), ("sst", 5)]
    for name in variants:
        first, second = (run_checkpoint(tmp_path, name, s) for s in (3, 5))
        assert (first["config"]["run"]["seed"], second["config"]["run"]["seed"]) == (3, 5)
        assert not all(torch.equal(first["model"][k], second["model"][k]) for k in first["model"]), "other weights"
    assert len({e.result.manifests[0].sha256 for e in experiment.evaluations}) == 1
    sst, base = experiment.per_seed("sst", 1), experiment.per_seed("baseline", 1)
    expected = mean_ci([a.runs[0]["miou"] - b.runs[0]["miou"] for a, b in zip(sst, base, strict=True)])
    assert experiment.difference("sst", "baseline", 1) == pytest.approx(expected, nan_ok=True)
    assert experiment.score("sst", 1) == pytest.approx(mean_ci([r.runs[0]["miou"] for r in sst]), nan_ok=True)
    assert "2 training seeds" in experiment.spread
    assert Variant("sst", TABLE1_VARIANTS["sst"]).config(config, 5).run.seed == 5


def test_an_interrupted_ablation_says_how_to_continue(tmp_path, monkeypatch):
    from sst_fast.engine import experiments

    def stopped_fit(self, max_steps=None):
        return experiments.TrainResult(self.run_dir, "interrupted", 1, 0, None, None)

    monkeypatch.setattr(experiments.Trainer, "fit", stopped_fit)
    with pytest.raises(experiments.ExperimentInterrupted, match="run the same command again"):
        ablation(tiny_config("optim.epochs=1"), tmp_path, episodes=4, progress=False, log=lambda *_: None)


def test_an_experiment_reuses_finished_runs_and_refuses_a_changed_one(tmp_path):
    config = tiny_config("optim.epochs=1")
    messages = []
    ablation(config, tmp_path, episodes=4, progress=False, log=messages.append)
    messages.clear()
    ablation(config, tmp_path, episodes=4, progress=False, log=messages.append)
    assert sum("already trained" in m for m in messages) == 4
    assert any("+ssm/seed-0: already trained" in m for m in messages)
    with pytest.raises(ValueError, match="another configuration"):
        ablation(
            tiny_config("optim.epochs=1", "optim.lr=0.1"), tmp_path, episodes=4, progress=False, log=messages.append
        )


def test_quick_demo_writes_the_report_with_table_card_and_figures(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--episodes", "6", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| baseline |" in printed and "| sst |" in printed
    report = (tmp_path / "report.md").read_text()
    for needle in (
        "1-shot mIoU",
        "5-shot mIoU",
        "Paired difference",
        "without the tuning step",
        "Protocol",
        "figures/tuning.png",
        "figures/shots.png",
        "figures/curves.png",
    ):
        assert needle in report, needle
    for figure in ("tuning.png", "shots.png", "curves.png"):
        assert (tmp_path / "figures" / figure).stat().st_size > 1000


def test_demo_resumes_an_interrupted_training(tmp_path):
    config_overrides = ["optim.episodes_per_epoch=16"]
    # A first demo stopped after baseline's first steps: simulate by training baseline partly by hand.
    from sst_fast.engine.demo import QUICK
    from sst_fast.engine.experiments import TABLE1_VARIANTS as variants
    from sst_fast.engine.runconfig import RunConfig, load_run_config
    from sst_fast.engine.train import train

    config = load_run_config("synthetic", [*QUICK, *config_overrides])
    baseline = RunConfig.from_dict({**config.to_dict(), "model": {**config.model.to_dict(), **variants["baseline"]}})
    train(baseline, tmp_path / "runs" / "baseline" / "seed-0", max_steps=1, progress=False)
    messages = []
    demo(tmp_path, quick=True, overrides=config_overrides, episodes=4, progress=False, log=messages.append)
    assert any("baseline/seed-0: resuming at step 1" in m for m in messages)
    assert run_checkpoint(tmp_path, "baseline")["step"] == 2


def test_cli_ablation_prints_both_tables(tmp_path, capsys):
    argv = ["ablation", *TINY, "optim.epochs=1", "--out", str(tmp_path), "--episodes", "4", "--no-progress"]
    assert main([*argv, "--protocol", "pfenet"]) == 0
    printed = capsys.readouterr().out
    assert "Table 1" in printed and "Table 2" in printed and "| +ssm |" in printed
    # Each evaluation in its run folder, named as sst-fast eval names it: 4 variants 1-shot, sst 5-shot × 3 fusions.
    folders = sorted(tmp_path.glob("runs/*/seed-0/eval/*"))
    assert len(folders) == 4 + 3 and all("-pfenet-e4-s321" in folder.name for folder in folders)
    card = json.loads((folders[0] / "metrics.json").read_text())["protocol"]
    assert card["protocol"] == "pfenet" and card["seeds"] == [321] and card["resolution"] == "original"
    assert main(["ablation", "--study", "step", "--protocol", "hsnet", "--out", str(tmp_path / "step")]) == 2
    assert "step study draws its episodes under sst" in capsys.readouterr().err


def test_cli_ablation_over_folds_has_a_column_per_fold_and_their_mean(tmp_path, capsys, monkeypatch):
    """``ablation --folds``: each variant trained on each fold (its own run folder), Table 1 and Table 2 with a
    column per fold and the mean over folds (two of the four variants here, to keep it short)."""
    from sst_fast.engine import experiments
    from sst_fast.engine.train import Trainer

    monkeypatch.setattr(experiments, "TABLE1_VARIANTS", {v: TABLE1_VARIANTS[v] for v in ("baseline", "sst")})
    monkeypatch.setattr(Trainer, "_plot_curves", lambda self: None)
    torch.set_num_threads(1)  # restored after the test (conftest); run.threads=1 for the training
    quick = ["optim.epochs=1", "optim.episodes_per_epoch=4", "data.val_episodes=4", "run.threads=1"]
    argv = ["ablation", *TINY, *quick, "--episodes", "3", "--seeds", "0", "1", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path), "--folds", "0", "3"]) == 0
    text = capsys.readouterr().out
    assert "# Ablation: synthetic, folds 0, 3" in text
    assert "| model | SSM | aux loss | fold 0 mIoU | fold 3 mIoU | mean mIoU | mean FB-IoU | vs baseline" in text
    assert "| fusion | fold 0 mIoU | fold 3 mIoU | mean mIoU | mean FB-IoU |" in text
    assert all(f"| {fusion} |" in text for fusion in ("max", "average", "weighted"))
    content = json.loads((tmp_path / "ablation.json").read_text())
    assert content["folds"] == [0, 3]
    assert [(r["variant"], r["fold"]) for r in content["runs"]] == [
        ("baseline", 0), ("sst", 0), ("baseline", 3), ("sst", 3)
    ]  # fmt: skip
    for variant in ("baseline", "sst"):
        for fold in (0, 3):
            folder = tmp_path / "runs" / variant / f"fold-{fold}" / "seed-0"
            assert load_checkpoint(folder / "checkpoints" / "last.pt")["config"]["data"]["fold"] == fold
    # The mean column is the folds' mean; vs baseline is the paired difference averaged over the folds.
    sst, gain = content["table1"]["sst"], content["table1"]["sst"]["vs_baseline"]
    assert sst["mean"]["mean"] == pytest.approx((sst["folds"]["0"]["mean"] + sst["folds"]["3"]["mean"]) / 2)
    baseline = content["table1"]["baseline"]
    assert gain["mean"] == pytest.approx(sst["mean"]["mean"] - baseline["mean"]["mean"])
    # What an evaluation would refuse is refused before anything trains: fold 1's class 7 has too few
    # test images for a 5-shot episode (Table 2) in this small data set; and nonsense folds.
    assert main([*argv, "--out", str(tmp_path / "thin"), "--folds", "0", "1"]) == 2
    assert "a 5-shot episode needs 6" in capsys.readouterr().err
    assert not (tmp_path / "thin").exists()
    assert main(["ablation", "--out", str(tmp_path / "other"), "--folds", "4"]) == 2
    assert "synthetic has the folds 0, 1, 2, 3, got '4'" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    assert main(["ablation", "--study", "step", "--out", str(tmp_path / "step"), "--folds", "0"]) == 2
    assert "--folds is for --study tables" in capsys.readouterr().err
