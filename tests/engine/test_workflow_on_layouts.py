"""The researcher's workflow on generated PASCAL VOC and COCO 2014 folders (not only the synthetic set): the
four-fold benchmark, then another model's evaluation on the same manifests, a paired comparison and a gallery."""

import json

import pytest
import torch

from sst_fast.cli import main
from tests.data.layouts import make_voc, voc_images

pytestmark = [
    pytest.mark.filterwarnings("ignore:classes .* have no IoU"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.mask"),  # numpy 2 copy keyword
]

QUICK = [
    "model.backbone=tiny",
    "model.freeze_backbone=false",
    "model.image_size=[64, 64]",
    "model.channels=8",
    "data.val_fraction=0.25",
    "data.val_episodes=4",
    "optim.batch_size=2",
    "optim.episodes_per_epoch=2",
    "optim.epochs=1",
    "run.threads=1",
    "run.device=cpu",
]

CONSTANT = """import torch
def build():
    return lambda q, s, m: torch.stack([torch.ones_like(q[:, 0]), torch.zeros_like(q[:, 0])], 1)
"""


def pascal_layout(tmp_path):
    images = voc_images(per_class=8)
    ids = sorted(images)
    return make_voc(tmp_path / "VOC2012", images, val=[i for k, i in enumerate(ids) if k % 8 < 3], train_aug=ids)


def coco_layout(tmp_path):
    """Every one of the 80 categories: 6 training and 3 test images, each a 64x64 photo with one 64x48 object."""
    from tests.data.test_coco import CATEGORIES, rectangle, write_split

    root = tmp_path / "coco"
    for split, count, first in (("train", 6, 10_000), ("val", 3, 50_000)):
        images, annotations = {}, []
        for index, category in enumerate(CATEGORIES):
            for n in range(count):
                image_id = first + count * index + n
                images[image_id] = (64, 64)
                box = [rectangle(0, 0, 64, 48)]
                annotations.append({"image_id": image_id, "category_id": category, "segmentation": box})
        write_split(root, split, images, annotations)
    return root


@pytest.mark.parametrize(("config", "layout"), [("pascal", pascal_layout), ("coco", coco_layout)])
def test_benchmark_compare_and_gallery_on_a_generated_layout(config, layout, tmp_path, capsys):
    torch.set_num_threads(1)  # the evaluations' threads (restored after the test)
    root = layout(tmp_path)
    out = tmp_path / "bench"
    argv = ["benchmark", "--config", config, f"data.root={root}", *QUICK, "--shots", "1", "--episodes", "4"]
    assert main([*argv, "--seeds", "0", "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    table = json.loads((out / "benchmark.json").read_text())
    assert table["benchmark"]["folds"] == [0, 1, 2, 3]
    (record,) = [m for m in table["manifests"] if m["fold"] == 0]
    evaluation = [e for e in table["evaluations"] if e["fold"] == 0][0]
    ours = out / evaluation["folder"] if not evaluation["folder"].startswith("/") else evaluation["folder"]

    # Another model on fold 0's very episodes, with a gallery; then B (SST) against A (a constant).
    factory = tmp_path / "constant.py"
    factory.write_text(CONSTANT)
    theirs = tmp_path / "constant-eval"
    argv = ["eval", "--model", f"{factory}:build", "--dataset", config, "--root", str(root), "--size", "64"]
    argv += ["--manifest", record["file"], "--out", str(theirs), "--save-predictions", "2", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    assert (theirs / "predictions" / "index.html").is_file()
    capsys.readouterr()
    assert main(["compare", str(theirs), str(ours), "--bootstrap", "200", "--out", str(tmp_path / "c.json")]) == 0
    comparison = json.loads((tmp_path / "c.json").read_text())
    assert comparison  # strict JSON with the differences
    assert "B − A" in capsys.readouterr().out
