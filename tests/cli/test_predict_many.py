"""``sst-fast predict --query`` with many queries: files and folders, one support set encoded once."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from sst_fast.cli import main
from sst_fast.engine.checkpoint import model_from_checkpoint
from sst_fast.predict import read_photo
from tests.test_segmenter import _assert_same_mask, _reference_logits, query_branch_tolerance

from .test_predict import read_array


def run(checkpoint, queries, episode, out, *extra) -> int:
    argv = ["predict", str(checkpoint), "--query", *map(str, queries)]
    argv += ["--support", str(episode.supports[0]), "--mask", str(episode.masks_255[0])]
    return main([*argv, "--out", str(out), *extra])


@pytest.fixture
def query_folder(voc_episode, tmp_path):
    """Three queries of different sizes and formats: the VOC query, the second support, the query mirrored."""
    folder = tmp_path / "queries"
    folder.mkdir()
    shutil.copy(voc_episode.query, folder / "a.jpg")
    shutil.copy(voc_episode.supports[1], folder / "b.png")
    Image.fromarray(voc_episode.read_query()[:, ::-1].copy()).save(folder / "c.PNG")
    (folder / "notes.txt").write_text("not an image: not a query")
    return folder


def test_a_folder_of_queries_gives_each_the_single_query_mask(
    balanced_checkpoint, voc_episode, query_folder, tmp_path, capsys
):
    out = tmp_path / "many"
    assert run(balanced_checkpoint, [query_folder], voc_episode, out, "--batch-size", "1") == 0, capsys.readouterr()
    assert "queries: 3 of 3" in capsys.readouterr().out  # no terminal: a plain progress line
    names = ["a", "b", "c"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}.png" for n in names] + [f"{n}-overlay.png" for n in names] + ["predictions.json"]
    )
    index = json.loads((out / "predictions.json").read_text())
    assert index["complete"] and index["skipped"] == []
    assert [q["mask"] for q in index["queries"]] == ["a.png", "b.png", "c.png"]

    batched = tmp_path / "batched"
    assert run(balanced_checkpoint, [query_folder], voc_episode, batched, "--batch-size", "2") == 0
    model = model_from_checkpoint(balanced_checkpoint)
    support, mask = voc_episode.read_supports()[:1], voc_episode.labels[:1]
    tol = query_branch_tolerance(model, shots=1)
    for name, path in zip(names, sorted(p for p in query_folder.iterdir() if p.suffix != ".txt"), strict=True):
        single = tmp_path / f"single-{name}"
        assert run(balanced_checkpoint, [path], voc_episode, single) == 0
        expected = read_array(single / "mask.png")
        assert expected.shape == read_photo(path).shape[:2] and 0 < expected.mean() < 255
        # batches of one: the single query's computation, bit for bit
        np.testing.assert_array_equal(read_array(out / f"{name}.png"), expected)
        np.testing.assert_array_equal(read_array(out / f"{name}-overlay.png"), read_array(single / "overlay.png"))
        # batches of two: within the query branch's rounding (tests/test_segmenter.py)
        logits = _reference_logits(model, read_photo(path), support, mask)
        _assert_same_mask(read_array(batched / f"{name}.png") // 255, expected // 255, logits, tol, name)


def test_an_unreadable_query_is_skipped_and_the_others_written(
    balanced_checkpoint, voc_episode, query_folder, tmp_path, capsys
):
    (query_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "out"
    code = run(balanced_checkpoint, [query_folder, missing], voc_episode, out, "--batch-size", "2")
    assert code == 2
    err = capsys.readouterr().err
    assert f"sst-fast predict: warning: skipped: --query {query_folder / 'broken.png'} is not a readable image" in err
    assert f"skipped: --query {missing} is not a readable image" in err
    assert "2 of 5 queries could not be read" in err
    for name in ["a", "b", "c"]:
        assert (
            read_array(out / f"{name}.png").shape
            == read_photo(query_folder / next(p.name for p in query_folder.iterdir() if p.stem == name)).shape[:2]
        )
    assert not (out / "broken.png").exists()
    index = json.loads((out / "predictions.json").read_text())
    assert [s["query"] for s in index["skipped"]] == [str(query_folder / "broken.png"), str(missing)]
    assert len(index["queries"]) == 3


def test_one_prediction_per_folder_between_single_and_many(balanced_checkpoint, voc_episode, query_folder, tmp_path):
    out = tmp_path / "out"
    assert run(balanced_checkpoint, [voc_episode.query], voc_episode, out) == 0
    assert run(balanced_checkpoint, [query_folder / "a.jpg", query_folder / "b.png"], voc_episode, out) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "a-overlay.png",
        "a.png",
        "b-overlay.png",
        "b.png",
        "predictions.json",
    ]
    assert run(balanced_checkpoint, [query_folder / "c.PNG", query_folder], voc_episode, out) == 0  # c once
    index = json.loads((out / "predictions.json").read_text())
    assert [q["mask"] for q in index["queries"]] == ["c.png", "a.png", "b.png"]  # named first, then its folder's
    assert run(balanced_checkpoint, [voc_episode.query], voc_episode, out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["mask.png", "overlay.png", "prediction.json"]


@pytest.mark.parametrize(
    "make, extra, message",
    [
        (lambda f: [f / "a.jpg", f / "a.png"], [], "would both write a.png"),
        (lambda f: [f / "a.jpg", f / "a-overlay.png"], [], "would both write a-overlay.png"),
        (lambda f: [f / "empty"], [], "holds no image"),
        (lambda f: [f / "a.jpg", f / "b.png"], ["--figure"], "--figure"),
    ],
    ids=["same-stem", "overlay-name", "empty-folder", "figure"],
)
def test_queries_that_cannot_be_written_apart_are_an_error(
    tiny_checkpoint, voc_episode, query_folder, tmp_path, capsys, make, extra, message
):
    shutil.copy(query_folder / "b.png", query_folder / "a.png")
    shutil.copy(query_folder / "b.png", query_folder / "a-overlay.png")
    (query_folder / "empty").mkdir()
    assert run(tiny_checkpoint, make(query_folder), voc_episode, tmp_path / "out", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
