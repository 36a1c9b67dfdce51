"""``sst-fast eval --save-predictions N``: the first episodes drawn as figures with an index page, their IoUs as
scored, nothing drawn (and no forward pass added) without it, an earlier gallery replaced whole."""

import json
import re

import pytest
from PIL import Image

from sst_fast.cli import main

# A model with SST's call signature whose prediction is not trivial (the brighter half of the query), logging
# the batch size of each call next to its file.
COUNTING_MODEL = """
import pathlib

import torch

CALLS = pathlib.Path(__file__).with_suffix(".calls")


class Brighter(torch.nn.Module):
    def forward(self, query, support_images, support_masks):
        with CALLS.open("a") as log:
            log.write(f"{query.shape[0]}\\n")
        grey = query.mean(1, keepdim=True)
        score = grey - grey.mean((2, 3), keepdim=True)
        return torch.cat([-score, score], 1)


def build():
    return Brighter()
"""


@pytest.fixture
def own_model(tmp_path):
    """``--model`` arguments of the counting model, and a function giving the batch sizes it was called with."""
    factory = tmp_path / "brighter.py"
    factory.write_text(COUNTING_MODEL)
    calls = factory.with_suffix(".calls")
    argv = ["--model", f"{factory}:build", "--dataset", "synthetic", "--fold", "0", "--size", "32", "--no-progress"]
    return argv, lambda: [int(line) for line in calls.read_text().split()] if calls.exists() else []


def run_main(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exit:
        return exit.code


def gallery(out):
    """(gallery.json's episodes, index.html's text) of the evaluation in ``out``."""
    folder = out / "predictions"
    return json.loads((folder / "gallery.json").read_text())["episodes"], (folder / "index.html").read_text()


def shown(iou) -> str:
    return "n/a" if iou is None else f"{100 * iou:.1f}%"


def test_save_predictions_draws_the_first_episodes_of_an_sst_model(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", str(tiny_checkpoint), "--shots", "2", "--episodes", "4", "--batch-size", "3"]
    assert main([*argv, "--save-predictions", "3", "--out", str(out), "--no-progress"]) == 0
    assert f"predictions: {out / 'predictions' / 'index.html'}" in capsys.readouterr().out
    episodes, page = gallery(out)
    manifest = json.loads((out / "manifests" / "seed-0.json").read_text())["episodes"]
    assert [e["episode"] for e in episodes] == [0, 1, 2]
    for drawn, listed in zip(episodes, manifest, strict=False):
        assert (drawn["class_id"], drawn["query"], drawn["supports"]) == (
            listed["class_id"], listed["query"], listed["supports"]
        )  # fmt: skip
        assert "iou_before_tuning" in drawn  # SST with its tuning step: the prediction before it too
    names = sorted(path.name for path in (out / "predictions").glob("*.png"))
    assert names == ["episode-000.png", "episode-001.png", "episode-002.png"]
    linked = set(re.findall(r'(?:href|src)="([^"]+\.png)"', page))
    assert linked == {f"episode-00{n}.png" for n in range(3)} | {f"thumbs/episode-00{n}.png" for n in range(3)}
    for name in linked:
        with Image.open(out / "predictions" / name) as image:
            assert image.format == "PNG" and min(image.size) > 32
    assert "IoU before tuning" in page
    for drawn in episodes:
        assert shown(drawn["iou"]) in page and shown(drawn["iou_before_tuning"]) in page


@pytest.mark.parametrize("protocol", ["sst", "pfenet", "hsnet"])  # scored at input, original and fixed size
def test_the_gallery_shows_each_episodes_iou_as_scored(protocol, own_model, tmp_path, capsys):
    argv, _ = own_model
    out = tmp_path / "eval"
    options = ["--protocol", protocol, "--episodes", "5", "--batch-size", "2", "--save-predictions", "5"]
    assert main(["eval", *argv, *options, "--out", str(out)]) == 0, capsys.readouterr().err
    episodes, page = gallery(out)
    ious = [drawn["iou"] for drawn in episodes]
    assert len(ious) == 5 and any(iou for iou in ious), ious  # a test of something: not all 0 or n/a
    scored = [iou for iou in ious if iou is not None]
    # The episode-wise mean of the evaluation is the mean of these, in order: the same floats.
    assert sum(scored) / len(scored) == json.loads((out / "metrics.json").read_text())["runs"][0]["episode_miou"]
    records = out / "episodes.jsonl"
    if records.exists():  # each episode's own record, where the evaluation writes them
        assert [json.loads(line)["iou"] for line in records.read_text().splitlines()] == ious
    for iou in ious:
        assert f'<td class="number">{shown(iou)}</td>' in page
    assert "IoU before tuning" not in page and all("iou_before_tuning" not in drawn for drawn in episodes)


def test_one_episode_evaluation_shows_its_episode_iou(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", str(tiny_checkpoint), "--episodes", "1", "--original-size", "--save-predictions", "1"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    ((drawn,), _) = gallery(out)
    episode_miou = json.loads((out / "metrics.json").read_text())["runs"][0]["episode_miou"]
    if drawn["iou"] is None:
        assert episode_miou is None  # no IoU counted: an empty foreground union
    else:
        assert drawn["iou"] == episode_miou


def test_save_predictions_is_off_by_default_and_runs_no_extra_forward(own_model, tmp_path, capsys):
    argv, calls = own_model
    out = tmp_path / "eval"
    assert main(["eval", *argv, "--episodes", "4", "--batch-size", "2", "--out", str(out)]) == 0
    assert calls() == [2, 2]  # the scoring's two batches, nothing else
    assert not (out / "predictions").exists() and "predictions:" not in capsys.readouterr().out
    # On, the drawing pass runs the batches that hold its episodes, whole: here the first one.
    options = ["--episodes", "4", "--batch-size", "2", "--save-predictions", "1"]
    assert main(["eval", *argv, *options, "--out", str(out)]) == 0
    assert calls() == [2, 2, 2, 2, 2]


def test_a_new_evaluation_replaces_the_earlier_gallery(own_model, tmp_path, capsys):
    argv, _ = own_model
    out = tmp_path / "eval"
    base = ["eval", *argv, "--episodes", "3", "--out", str(out)]
    assert main([*base, "--save-predictions", "3"]) == 0
    (out / "predictions" / "notes.txt").write_text("an earlier gallery's file")
    assert main([*base, "--save-predictions", "10"]) == 0  # bounded by the 3 episodes
    assert len(gallery(out)[0]) == 3 and not (out / "predictions" / "notes.txt").exists()
    assert main([*base, "--save-predictions", "1"]) == 0
    files = sorted(str(path.relative_to(out / "predictions")) for path in (out / "predictions").rglob("*"))
    assert files == ["episode-000.png", "gallery.json", "index.html", "thumbs", "thumbs/episode-000.png"]
    assert main(base) == 0  # without it, no gallery of an earlier evaluation stays beside the new results
    assert not (out / "predictions").exists()
    assert not [path.name for path in out.iterdir() if path.name.startswith(".")]  # no staging folder left
    capsys.readouterr()


def test_a_predictions_folder_that_is_no_gallery_is_never_deleted(own_model, tmp_path, capsys):
    argv, calls = own_model
    out = tmp_path / "eval"
    mine = out / "predictions" / "mine.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("not a gallery")
    base = ["eval", *argv, "--episodes", "2", "--out", str(out)]
    assert run_main([*base, "--save-predictions", "2"]) == 2
    err = capsys.readouterr().err
    assert "--save-predictions" in err and "is not a gallery" in err, err
    assert calls() == [] and not (out / "metrics.json").exists()  # refused before the work
    assert main(base) == 0  # without it, the folder is left alone too
    assert mine.read_text() == "not a gallery"


@pytest.mark.parametrize("count", ["0", "-1", "two"])
def test_save_predictions_refuses_a_count_below_one(count, own_model, tmp_path, capsys):
    argv, calls = own_model
    out = tmp_path / "eval"
    assert run_main(["eval", *argv, "--episodes", "2", "--save-predictions", count, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--save-predictions" in err and "positive integer" in err, err
    assert not out.exists() and calls() == []


def test_help_describes_save_predictions(capsys):
    assert run_main(["eval", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--save-predictions N" in text and "index.html" in text
