"""``sst-fast compare``: two models evaluated on the same episodes, the report on stdout and in files, and the
refusal of evaluations of other episodes."""

import json

import pytest

from sst_fast.cli import main

MODELS = """
import torch

def _left(fraction):
    def model(query, support_images, support_masks):
        logits = torch.zeros(query.shape[0], 2, *query.shape[-2:])
        logits[:, 1] = -1.0
        logits[:, 1, :, : int(query.shape[-1] * fraction)] = 1.0
        return logits
    return model

def quarter():
    return _left(0.25)

def half():
    return _left(0.5)
"""
COMMON = ["--dataset", "synthetic", "--fold", "0", "--size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory):
    """Two models evaluated on the same 6 episodes (seed 0), and one on other episodes (seed 1)."""
    root = tmp_path_factory.mktemp("compare-cli")
    (root / "models.py").write_text(MODELS)
    runs = {"a": ("quarter", "0"), "b": ("half", "0"), "other": ("half", "1")}
    for name, (factory, seed) in runs.items():
        argv = ["eval", "--model", f"{root / 'models.py'}:{factory}", *COMMON, "--episodes", "6", "--seeds", seed]
        assert main([*argv, "--out", str(root / name)]) == 0
    return root


def test_compare_prints_markdown_and_writes_strict_json_reproducibly(evaluations, capsys):
    capsys.readouterr()
    out, report = evaluations / "c.json", evaluations / "c.md"
    argv = ["compare", str(evaluations / "a"), str(evaluations / "b"), "--bootstrap", "300", "--seed", "4"]
    assert main([*argv, "--out", str(out), "--markdown", str(report)]) == 0
    printed = capsys.readouterr().out
    assert printed == report.read_text()
    assert "# Paired comparison: B − A" in printed and "| mIoU |" in printed and "| FB-IoU |" in printed
    assert "positive: B is better" in printed and "## Per class" in printed
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    comparison = json.loads(text)
    assert comparison["direction"] == "B - A" and comparison["bootstrap"]["replicates"] == 300
    a = json.loads((evaluations / "a" / "metrics.json").read_text())["summary"]["miou"]["mean"]
    b = json.loads((evaluations / "b" / "metrics.json").read_text())["summary"]["miou"]["mean"]
    assert comparison["metrics"]["miou"]["difference"] == b - a
    assert main([*argv, "--out", str(evaluations / "again.json")]) == 0
    assert (evaluations / "again.json").read_text() == text  # the same seed, the same numbers
    # --a and --b (with a glob pattern) name the same comparison.
    assert main(["compare", "--a", str(evaluations / "[a]"), "--b", str(evaluations / "b"), "--bootstrap", "300",
                 "--seed", "4", "--out", str(evaluations / "glob.json")]) == 0  # fmt: skip
    assert (evaluations / "glob.json").read_text() == text


def test_compare_refuses_evaluations_of_other_manifests_naming_them(evaluations, capsys):
    capsys.readouterr()
    assert main(["compare", str(evaluations / "a"), str(evaluations / "other")]) == 2
    err = capsys.readouterr().err
    assert "sst-fast compare: error: cannot compare" in err
    assert "manifests (sha256 " in err and "seeds ([0] vs [1])" in err
    assert main(["compare", str(evaluations / "a")]) == 2
    assert "needs two evaluations" in capsys.readouterr().err
    assert main(["compare", str(evaluations / "a"), str(evaluations / "missing")]) == 2
    assert "is not an evaluation folder" in capsys.readouterr().err
