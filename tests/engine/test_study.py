"""The step study: a grid over training seeds, chosen on validation, scored on shared test episodes."""

import json
import math

import pytest
import torch

from sst_fast.cli import main
from sst_fast.data import EpisodeDataset, collate_episodes, open_dataset
from sst_fast.data.episodes import fold_sampler
from sst_fast.engine import study
from sst_fast.engine.experiments import Variant, run_folder, train_grid
from sst_fast.engine.train import TrainingError
from tests.models.helpers import tiny_config as tiny_model_config
from tests.tolerance import between, unit_roundoff

from .tiny import TINY, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore:classes .* have no IoU")
QUIET = {"progress": False, "log": lambda *_: None}


def test_the_step_study_is_a_command_that_writes_its_tables(tmp_path, capsys):
    """The miniature of `sst-fast ablation --study step`: every variant of the grid, two training seeds."""
    argv = ["ablation", "--study", "step", *TINY, "optim.epochs=1", "--out", str(tmp_path)]
    argv += ["--train-seeds", "0", "1", "--episodes", "6", "--probes", "4", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    text = (tmp_path / "step-study.md").read_text()
    assert text.strip() in printed
    variants = study.step_variants(tiny_config().optim.lr)
    for variant in variants:
        assert f"| {variant.name}" in text
        for seed in (0, 1):
            assert (run_folder(tmp_path, variant.name, seed) / "checkpoints" / "last.pt").exists()
    content = json.loads((tmp_path / "step-study.json").read_text())  # strict JSON: json.loads takes no NaN here
    assert content["train_seeds"] == [0, 1]
    # One choice per family of the grid, on validation.
    assert set(content["chosen"]) == {v.family for v in variants}
    assert {"baseline", "aux", "ssm", "paper", "relative", "learnable", "first order"} <= set(content["chosen"])
    rows = {row["variant"]: row for row in content["variants"]}
    for row in rows.values():
        assert set(row["per_seed"]) == {"0", "1"}
    relative = rows["sst-relative0.3"]
    # |p' - p| / |p| is alpha exactly; in float32: the norms |p|, |g|, |p' - p| (C squares each, one sign); alpha,
    # |p| / |g|, alpha times that and the move's division (a rounding each); p' - p cancels (s g rounded to
    # u alpha |p|, p' to u |p'| <= u (1 + alpha) |p|, their difference to u alpha |p|: (1 + 3 alpha) / alpha times
    # u of alpha |p|); then the means over the 4 probes' supports and the 2 training seeds (one sign).
    alpha, channels = 0.3, content["config"]["model"]["channels"]
    tol = between(torch.float32, same=[channels] * 3 + [4, 2])
    tol += (4 + (1 + 3 * alpha) / alpha) * unit_roundoff(torch.float32)
    assert relative["move"][0] == pytest.approx(alpha, rel=tol), "the relative step moves p by alpha |p|"
    assert "step_gain" in relative and "step_gain" not in rows["baseline-lr0.02"]
    assert len(rows["sst-learnable"]["alpha_trajectory"]) == 2
    # Every model on one manifest: the paired differences are over the same episodes.
    assert (tmp_path / "manifests" / "seed-0.json").exists()
    assert content["manifest"]["episodes"] == 6
    # A second run reuses every training run and every evaluation.
    messages = []
    study.step_study(tiny_config("optim.epochs=1"), tmp_path, (0, 1), 6, probes=4, progress=False, log=messages.append)
    assert not any(m.startswith("== evaluating") for m in messages), "the evaluations are cached"
    assert sum("already trained" in m for m in messages) == 2 * len(variants)


def test_the_step_study_takes_one_evaluation_seed(tmp_path, capsys):
    argv = ["ablation", "--study", "step", *TINY, "--out", str(tmp_path), "--seeds", "0", "1"]
    assert main(argv) == 2
    assert "--seeds" in capsys.readouterr().err


def test_a_diverged_run_is_recorded_not_fatal(tmp_path, monkeypatch):
    from sst_fast.engine import experiments

    def diverging_fit(self, max_steps=None):
        raise TrainingError("the loss is nan at step 1")

    monkeypatch.setattr(experiments.Trainer, "fit", diverging_fit)
    variant = Variant("sst-alpha10000", {"tune_step": 1e4}, family="paper")
    runs = train_grid(tiny_config("optim.epochs=1"), tmp_path, [variant], (0,), **QUIET)
    assert runs["sst-alpha10000", 0].diverged == "the loss is nan at step 1"
    # Recorded in the run folder: a resumed study does not train it again.
    monkeypatch.setattr(experiments.Trainer, "fit", lambda *_: pytest.fail("trained a diverged run again"))
    again = train_grid(tiny_config("optim.epochs=1"), tmp_path, [variant], (0,), **QUIET)
    assert again["sst-alpha10000", 0].diverged
    summary = study.validation_summary(again)
    assert summary["sst-alpha10000"]["diverged"] == 1 and summary["sst-alpha10000"]["val"] == [0.0]
    # A variant limited to the grid's first seeds trains only those.
    monkeypatch.setattr(experiments.Trainer, "fit", diverging_fit)
    limited = Variant("sst-alpha1000", {"tune_step": 1e3}, family="paper", seeds=1)
    assert list(train_grid(tiny_config("optim.epochs=1"), tmp_path, [limited], (0, 5), **QUIET)) == [
        ("sst-alpha1000", 0)
    ]


def test_collapse_is_background_everywhere_through_the_first_validations():
    early_zero = [{"step": 100, "val_miou": 0.0}, {"step": 200, "val_miou": 0.004}, {"step": 300, "val_miou": 0.4}]
    assert study.collapsed(early_zero)
    assert not study.collapsed([{"step": 100, "val_miou": 0.0}, {"step": 200, "val_miou": 0.2}])
    assert not study.collapsed([{"step": 10, "loss": 1.0}]), "no validation: nothing to call collapsed"


def test_escape_is_the_first_validation_that_segments_something():
    history = [{"step": 10, "loss": 1.0}, {"step": 100, "val_miou": 0.01}, {"step": 200, "val_miou": 0.3}]
    assert study.escape_step(history) == 200
    assert math.isnan(study.escape_step(history[:2]))


def test_choice_is_per_family_on_mean_validation():
    variants = [Variant("a", family="x"), Variant("b", family="x"), Variant("c", family="y")]
    summary = {"a": {"val": [0.5, 0.1]}, "b": {"val": [0.3, 0.4]}, "c": {"val": [0.0]}}
    assert study.choose(summary, variants) == {"x": "b", "y": "c"}


@pytest.mark.parametrize("form,step", [("paper", 50.0), ("relative", 0.2)])
def test_the_probe_measures_the_step_and_both_self_segmentations(form, step):
    import sst_fast

    dataset = open_dataset("synthetic", None, image_size=64, train_images=40, val_images=80)
    episodes = fold_sampler(dataset, 0, 2, "test").sample(3, 0)
    batch = collate_episodes([EpisodeDataset(dataset, episodes, (64, 64))[i] for i in range(3)])
    model = sst_fast.SST(tiny_model_config(tune_step=step, tune_form=form, image_size=64)).eval()
    probe = study.probe_step(model, batch)
    assert {len(v) for v in probe.values()} == {6}
    assert all(0 <= v <= 1 for v in probe["iou_before"] + probe["iou_after"])
    with torch.no_grad():
        out = model(batch["query"], batch["support_images"], batch["support_masks"])
    moves = ((out.tuned_prototypes - out.prototypes).norm(dim=-1) / out.prototypes.norm(dim=-1)).flatten()
    # p and p' are the same code's on both sides (the same modules and fused ops on the same supports; the probe's
    # gradients on only record a graph, the inner gradient stopping at y, before any op whose backward changes
    # with it): what may add in another order is the move's norms (C squares each, one sign) and its division.
    tol = between(torch.float32, same=[model.config.channels] * 2)
    assert probe["move"] == pytest.approx(moves.tolist(), rel=tol)
    assert not any(math.isnan(v) for v in probe["move"])
