"""sst_fast.viz: explain (before/after tuning, self-segmentation, gradient), overlays, PNG files, figures."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch
from PIL import Image

import sst_fast
from sst_fast import viz
from sst_fast.data.transforms import normalize
from sst_fast.models.functional import foreground_iou, fusion_weights
from tests.conftest import balance_classifier, decided
from tests.models.helpers import episode, model_tolerance, tiny_config
from tests.tolerance import between


def _model(**overrides):
    return sst_fast.SST(tiny_config(dropout=0.0, **overrides))


def _png(path, min_size=(100, 100)):
    """Open a written PNG and check it is a real, non-trivial image."""
    with Image.open(path) as picture:
        picture.load()
        assert picture.format == "PNG"
        assert picture.width >= min_size[0] and picture.height >= min_size[1]
        return picture.size


@pytest.fixture(scope="module")
def explained():
    """One K=3 batch with ssm on (gradient, weights) and one K=1 batch with ssm off and no ground truth."""
    torch.manual_seed(0)
    model = _model(fusion="weighted")
    query, supports, masks, query_mask = episode(batch=2, shots=3)
    balance_classifier(model, query, supports, masks)
    tuned = viz.explain(model, query, supports, masks, query_mask)
    model = _model(ssm=False)
    query, supports, masks, _ = episode(batch=1, shots=1, seed=1)
    plain = viz.explain(model, query, supports, masks)
    return tuned, plain


# --- explain ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ssm,fusion,shots", list(itertools.product((True, False), sst_fast.config.FUSIONS, (1, 3))))
def test_explain_after_is_the_models_prediction(ssm, fusion, shots):
    model = _model(ssm=ssm, fusion=fusion)
    query, supports, masks, query_mask = episode(batch=2, shots=shots)
    balance_classifier(model, query, supports, masks)
    model.eval()
    with torch.no_grad():
        out = model(query, supports, masks)
    explanations = viz.explain(model, query, supports, masks, query_mask)

    assert len(explanations) == 2
    # explain tunes through the reference's autograd (it forms the feature gradient): other kernels, logits a
    # rounding apart (tests.tolerance). Argmaxes are compared where rounding cannot decide them.
    tol = model_tolerance(model, (query, supports, masks), torch.float32)
    prediction = out.logits.argmax(1).numpy()
    query_decided = decided(out.logits, tol).numpy()
    assert query_decided.mean() > 0.5, "the check needs margins beyond rounding"
    support_decided = None if out.support_logits is None else decided(out.support_logits.flatten(0, 1), tol)
    for b, ex in enumerate(explanations):
        np.testing.assert_array_equal(ex.after[query_decided[b]], prediction[b][query_decided[b]])
        if not ssm:
            np.testing.assert_array_equal(ex.before, ex.after)
        assert (ex.gradient is None) == (not ssm)
        assert (ex.shot_weights is None) == (fusion == "max")
        if out.support_logits is not None:
            where = support_decided.unflatten(0, out.support_logits.shape[:2])[b].numpy()
            np.testing.assert_array_equal(ex.support_predictions[where], out.support_logits[b].argmax(1).numpy()[where])
        if fusion == "weighted" and shots > 1:  # the weights of the support predictions
            own = fusion_weights(foreground_iou(torch.from_numpy(ex.support_predictions), masks[b].long())[None])[0]
            # the same IoUs (counts, a division) normalised by their sum over the shots: roundings apart at most
            np.testing.assert_allclose(ex.shot_weights, own.numpy(), rtol=0, atol=between(torch.float32, same=[shots]))
        if out.shot_weights is not None and (support_decided is None or support_decided.all()):
            np.testing.assert_array_equal(ex.shot_weights, out.shot_weights[b].numpy())  # the same predictions
        expected_iou = foreground_iou(torch.from_numpy(ex.support_predictions), masks[b].long())
        np.testing.assert_allclose(ex.support_iou, expected_iou.numpy(), rtol=0, atol=between(torch.float32))


def test_explain_shapes_and_dtypes_with_other_support_size():
    model = _model()
    query, supports, masks, query_mask = episode(batch=2, shots=2, size=32, support_size=24)
    ex = viz.explain(model, query, supports, masks, query_mask)[1]
    expected = {
        "query": ((32, 32, 3), np.uint8),
        "query_mask": ((32, 32), np.uint8),
        "supports": ((2, 24, 24, 3), np.uint8),
        "support_masks": ((2, 24, 24), np.uint8),
        "before": ((32, 32), np.uint8),
        "after": ((32, 32), np.uint8),
        "support_predictions": ((2, 24, 24), np.uint8),
        "gradient": ((2, 24, 24), np.float32),
        "shot_weights": ((2,), np.float32),
        "support_iou": ((2,), np.float32),
    }
    for name, (shape, dtype) in expected.items():
        value = getattr(ex, name)
        assert value.shape == shape and value.dtype == dtype, name
    assert ex.shots == 2
    assert set(np.unique(ex.after)) <= {0, 1} and set(np.unique(ex.support_predictions)) <= {0, 1}
    np.testing.assert_array_equal(ex.support_masks, masks[1].numpy())
    np.testing.assert_array_equal(ex.query_mask, query_mask[1].numpy())
    np.testing.assert_array_equal(ex.query, viz.denormalize(query[1]))
    # Gradient magnitudes, scaled per shot so that each shot's peak is 1.
    assert ex.gradient.min() >= 0
    np.testing.assert_allclose(ex.gradient.reshape(2, -1).max(1), 1.0, rtol=0, atol=between(torch.float32))
    assert np.isclose(ex.shot_weights.sum(), 1.0)


def test_tuning_changes_the_prediction_with_a_large_step():
    changed = []
    for seed in range(4):
        torch.manual_seed(seed)
        model = _model(tune_step=1e4)
        query, supports, masks, _ = episode(batch=2, shots=1, seed=seed)
        balance_classifier(model, query, supports, masks)
        changed += [(ex.before != ex.after).any() for ex in viz.explain(model, query, supports, masks)]
        if any(changed):
            break
    assert any(changed)


def test_explain_restores_each_modules_mode_and_leaves_no_graph():
    model = _model(freeze_backbone=True)
    model.train()
    modes = {name: module.training for name, module in model.named_modules()}
    assert not all(modes.values())  # the frozen backbone keeps its BatchNorm in eval
    query, supports, masks, _ = episode(batch=1, shots=2)
    viz.explain(model, query, supports, masks)
    assert {name: module.training for name, module in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())

    model.eval()
    viz.explain(model, query, supports, masks)
    assert not any(module.training for module in model.modules())


def test_explain_rejects_bad_input():
    model = _model()
    query, supports, masks, query_mask = episode(batch=2, shots=1)
    with pytest.raises(ValueError, match="support_masks"):
        viz.explain(model, query, supports, masks[:, :, :16])
    with pytest.raises(ValueError, match="query_mask"):
        viz.explain(model, query, supports, masks, query_mask[:1])
    with pytest.raises(ValueError, match="support_images"):
        viz.explain(model, query, supports[:1], masks)
    with pytest.raises(TypeError, match="model"):
        viz.explain(torch.nn.Linear(2, 2), query, supports, masks)


# --- arrays and files -------------------------------------------------------------------------------


def test_denormalize_round_trip():
    pixels = torch.arange(256, dtype=torch.uint8).repeat(3, 4, 1)  # every level in every channel
    images = torch.stack([pixels, pixels.flip(-1)])  # [2, 3, 4, 256]
    restored = viz.denormalize(normalize(images.float() / 255))
    assert restored.dtype == np.uint8 and restored.shape == (2, 4, 256, 3)
    difference = np.abs(restored.astype(int) - images.permute(0, 2, 3, 1).numpy().astype(int))
    assert difference.max() <= 1
    # Out-of-range values are clipped, not wrapped.
    assert viz.denormalize(torch.full((3, 2, 2), 50.0)).min() == 255
    assert viz.denormalize(torch.full((3, 2, 2), -50.0)).max() == 0
    with pytest.raises(ValueError, match="images"):
        viz.denormalize(torch.zeros(4, 8, 8))
    with pytest.raises(ValueError, match="images"):
        viz.denormalize(torch.zeros(3, 8, 8, dtype=torch.uint8))


def test_overlay_colours_object_contour_background_and_ignore():
    image = np.full((10, 10, 3), 100, np.uint8)
    mask = np.zeros((10, 10), np.uint8)
    mask[2:8, 2:8] = 1
    mask[0, 0:3] = 255
    color = (200, 0, 50)
    out = viz.overlay(image, mask, color=color, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out[4, 4], [150, 50, 75])  # inside: blended
    for contour in ((2, 4), (7, 5), (4, 2), (5, 7), (2, 2)):
        np.testing.assert_array_equal(out[contour], color)  # the 1-px outline in full colour
    for inside in ((3, 4), (6, 5), (4, 3), (5, 6), (3, 3)):
        np.testing.assert_array_equal(out[inside], [255, 255, 255])  # the inner line: white contrasts with color
    assert (out[mask != 1] == image[mask != 1]).all()  # the background is untouched, the outline included
    np.testing.assert_array_equal(out[0, 0:3], image[0, 0:3])  # ignore is not object
    np.testing.assert_array_equal(out[9, 9], image[9, 9])  # background untouched
    assert (image == 100).all()  # the input is not modified
    # bool masks mean the same; an object filling the image has no outline along the image border.
    np.testing.assert_array_equal(viz.overlay(image, mask == 1, color=color, alpha=0.5), out)
    full = viz.overlay(image, np.ones((10, 10), bool), color=color, alpha=0.5)
    assert (full == [150, 50, 75]).all()
    # edge=0: the fill alone; a light colour's outer line is black; edge=2: lines 2 px wide.
    np.testing.assert_array_equal(viz.overlay(image, mask, color=color, alpha=0.5, edge=0)[2, 4], [150, 50, 75])
    light = viz.overlay(image, mask, color=(250, 220, 120), edge=2)
    np.testing.assert_array_equal(light[2:8, 4], [[250, 220, 120]] * 2 + [[0, 0, 0]] * 2 + [[250, 220, 120]] * 2)


def _square(size=40, low=10, high=30):
    mask = np.zeros((size, size), np.uint8)
    mask[low:high, low:high] = 1
    return mask


def _grow(mask, steps=1):
    for _ in range(steps):
        padded = np.pad(mask, 1)
        height, width = mask.shape
        mask = np.logical_or.reduce([padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)])
    return mask


def _distance(image, colour):
    return np.linalg.norm(image.astype(float) - np.asarray(colour, float), axis=-1)


@pytest.mark.parametrize("background", [(255, 0, 0), (200, 30, 30), (12, 12, 12), (128, 128, 128), (245, 245, 245)])
@pytest.mark.parametrize("color", ["PREDICTION_COLOR", "GROUND_TRUTH_COLOR", "SUPPORT_COLOR", (255, 0, 0)])
def test_overlay_outline_shows_on_any_background(background, color):
    """An object of the background's own colour (a red object on red, a dark one on dark): next to every
    boundary pixel, the outline has a pixel far in colour from both the background and the object's fill."""
    color = getattr(viz, color) if isinstance(color, str) else color
    image = np.empty((40, 40, 3), np.uint8)
    image[...] = background
    mask = _square()
    out = viz.overlay(image, mask, color=color)
    far = (_distance(out, background) >= 100) & (_distance(out, out[20, 20]) >= 100)
    obj = mask == 1
    boundary = obj & _grow(~obj)
    assert boundary.sum() == 4 * 19
    assert _grow(far)[boundary].all()
    assert (out[~obj] == background).all()  # the picture around the object is untouched


def test_overlay_fill_is_light_the_object_shows_through():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    mask = _square()
    interior = _grow(mask == 0, 3) == 0  # object pixels away from the outline
    for color in (viz.PREDICTION_COLOR, viz.GROUND_TRUTH_COLOR, viz.SUPPORT_COLOR):
        out = viz.overlay(image, mask, color=color)
        # The default fill moves a pixel at most 35% of the way to the colour: most of the image is kept.
        moved = np.abs(out.astype(float) - image)[interior]
        assert (moved <= 0.35 * np.abs(np.asarray(color, float) - image)[interior] + 0.5).all()
        # With a known alpha, the photo under the mask is recoverable up to rounding.
        alpha = 0.3
        out = viz.overlay(image, mask, color=color, alpha=alpha).astype(float)
        recovered = (out - alpha * np.asarray(color, float)) / (1 - alpha)
        assert np.abs(recovered - image)[interior].max() <= 0.5 / (1 - alpha) + 1e-9
    # The photo's detail shows through: the filled region correlates with it.
    out = viz.overlay(image, mask)
    assert np.corrcoef(out[interior].ravel(), image[interior].ravel())[0, 1] > 0.8


def test_overlay_rejects_bad_input():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="mask"):
        viz.overlay(image, np.zeros((8, 9), np.uint8))
    with pytest.raises(ValueError, match="mask"):
        viz.overlay(image, np.full((8, 8), 7, np.uint8))
    with pytest.raises(ValueError, match="image"):
        viz.overlay(np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="image"):
        viz.overlay(np.zeros((8, 8)), np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay(image, np.zeros((8, 8), np.uint8), alpha=1.5)
    with pytest.raises(ValueError, match="color"):
        viz.overlay(image, np.zeros((8, 8), np.uint8), color=(0, 300, 0))
    for edge in (-1, 1.5, True):
        with pytest.raises(ValueError, match="edge"):
            viz.overlay(image, np.zeros((8, 8), np.uint8), edge=edge)


def test_save_png_round_trip_atomic(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    grey = (rgb[:, :, 0] > 127).astype(np.uint8) * 255
    for array in (rgb, grey):
        path = viz.save_png(array, tmp_path / "a" / "b" / "out.png")
        assert path == tmp_path / "a" / "b" / "out.png"
        np.testing.assert_array_equal(np.array(Image.open(path)), array)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.png"]  # no temporary file left
    for bad in (rgb.astype(np.float32), rgb[:, :, :2], np.zeros((0, 4), np.uint8)):
        with pytest.raises(ValueError, match="array"):
            viz.save_png(bad, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


# --- figures ----------------------------------------------------------------------------------------


def test_figure_tuning_writes_a_png(explained, tmp_path):
    tuned, plain = explained
    path = viz.figure_tuning(tuned, tmp_path / "figs" / "tuning.png", title="Fig. 3")
    _, height = _png(path, min_size=(600, 250))
    # ssm off and no ground truth: the 'n/a' panels; a single Explanation is accepted too.
    assert _png(viz.figure_tuning(plain[0], tmp_path / "plain.png"))[0] >= 600
    assert height > _png(tmp_path / "plain.png")[1]  # two rows are taller than one
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["tuning.png"]


def test_figure_shots_writes_a_png(explained, tmp_path):
    tuned, plain = explained
    width, _ = _png(viz.figure_shots(tuned[0], tmp_path / "shots.png", title="Fig. 6"), min_size=(400, 250))
    assert width > _png(viz.figure_shots(plain[0], tmp_path / "one.png"), min_size=(200, 250))[0]


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib Figures the figure_* functions draw, kept instead of written."""
    figures = []

    def keep(fig, path):
        figures.append(fig)
        return path

    monkeypatch.setattr(viz, "_save_figure", keep)
    return figures


def _texts(fig):
    """Every text of a figure: titles, axes texts, legend labels."""
    texts = [t.get_text() for ax in fig.axes for t in (ax.title, *ax.texts)]
    return texts + [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def _has_colour(ax, colour):
    picture = np.asarray(ax.images[0].get_array())
    return bool((picture[..., :3] == colour).all(-1).any())


def test_figures_have_a_mask_legend_and_iou_in_percent(explained, drawn, tmp_path):
    tuned, plain = explained
    viz.figure_tuning(tuned, tmp_path / "tuning.png")
    viz.figure_shots(tuned[0], tmp_path / "shots.png")
    viz.figure_shots(plain[0], tmp_path / "plain.png")  # no ground truth: no ground-truth swatch
    tuning, shots, no_truth = drawn
    for fig, truth in ((tuning, True), (shots, True), (no_truth, False)):
        (legend,) = fig.legends
        kinds = ["support mask", "ground truth", "prediction"] if truth else ["support mask", "prediction"]
        assert [t.get_text() for t in legend.get_texts()] == kinds
        # The legend lies outside the panels: it overlaps none of them.
        renderer = fig.canvas.get_renderer()
        box = legend.get_window_extent(renderer)
        assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
    # Every IoU is a percentage: the query's before/after tuning, each shot's self-segmentation.
    expected = [100 * viz._iou(p, ex.query_mask) for ex in tuned for p in (ex.before, ex.after)]
    expected += [100 * float(iou) for iou in tuned[0].support_iou]
    expected += [100 * viz._iou(tuned[0].after, tuned[0].query_mask)]
    shown = [float(m) for text in _texts(tuning) + _texts(shots) for m in re.findall(r"IoU (\d+\.\d)%", text)]
    assert all(re.search(r"IoU \d+\.\d%", text) for text in _texts(tuning) + _texts(shots) if "IoU" in text)
    np.testing.assert_allclose(shown, expected, rtol=0, atol=0.05)


def test_figures_draw_each_kind_of_mask_in_its_own_colour(explained, drawn, tmp_path):
    colours = [viz.PREDICTION_COLOR, viz.GROUND_TRUTH_COLOR, viz.SUPPORT_COLOR]
    assert min(np.linalg.norm(np.subtract(a, b)) for a, b in itertools.combinations(colours, 2)) > 100
    tuned, _ = explained
    viz.figure_tuning(tuned[:1], tmp_path / "tuning.png")
    (fig,) = drawn
    support, query, truth, before, after, _ = fig.axes
    assert _has_colour(support, viz.SUPPORT_COLOR) and not _has_colour(support, viz.GROUND_TRUTH_COLOR)
    assert _has_colour(truth, viz.GROUND_TRUTH_COLOR) and not _has_colour(truth, viz.SUPPORT_COLOR)
    assert _has_colour(after, viz.PREDICTION_COLOR) and not _has_colour(after, viz.GROUND_TRUTH_COLOR)
    assert not _has_colour(before, viz.GROUND_TRUTH_COLOR)
    assert not any(_has_colour(query, colour) for colour in colours)


def test_figure_curves_draws_miou_in_percent(drawn, tmp_path):
    """The log holds fractions (val_miou 0.5); the figure draws percent (50), as the logs and reports print."""
    viz.figure_curves(_log(), tmp_path / "one.png")
    viz.figure_curves({"a": _log(), "b": [{"step": 3, "val_miou": 0.25}]}, tmp_path / "runs.png")
    percent = [12.5, 25.0, 37.5, 50.0]  # _log's val_miou: 0.125 ... 0.5
    for fig, last in zip(drawn, (percent, [25.0]), strict=True):
        (ax,) = [ax for ax in fig.axes if "mIoU" in ax.get_ylabel()]
        assert "%" in ax.get_ylabel()
        lines = ax.get_lines()
        np.testing.assert_allclose(lines[0].get_ydata(), percent)
        np.testing.assert_allclose(lines[-1].get_ydata(), last)
        assert ax.get_ylim()[1] > 1


def test_figures_reject_bad_input(explained, tmp_path):
    with pytest.raises(ValueError, match="explanations"):
        viz.figure_tuning([], tmp_path / "x.png")
    with pytest.raises(TypeError, match=r"explanations\[1\]"):
        viz.figure_tuning([explained[0][0], "nope"], tmp_path / "x.png")
    with pytest.raises(TypeError, match="explanation"):
        viz.figure_shots(explained[0], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def _log(steps=20, scale=1.0, every=5):
    records = [{"event": "start"}]
    for step in range(1, steps + 1):
        records.append({"step": step, "loss": scale / step, "main_loss": 0.6 * scale / step, "aux_loss": 0.4 / step})
        if step % every == 0:
            records.append({"step": step, "val_miou": step / (2 * steps)})
    return records


def test_figure_curves_single_run_and_several(tmp_path):
    one = _png(viz.figure_curves(_log(), tmp_path / "one.png", title="run"), min_size=(400, 200))
    runs = {"ssm": _log(), "no ssm": _log(scale=2.0), "train only": [{"step": 1, "loss": 1.0}]}
    several = _png(viz.figure_curves(runs, tmp_path / "runs.png"), min_size=(400, 200))
    assert one[0] == several[0]  # two panels each
    # Only training losses (one missing key, a NaN): one panel, narrower.
    losses = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": float("nan")}, {"step": 3, "loss": 0.5, "aux_loss": 0.1}]
    assert _png(viz.figure_curves(losses, tmp_path / "loss.png"), min_size=(300, 200))[0] < one[0]
    # Only validation records.
    _png(viz.figure_curves([{"step": 5, "val_miou": 0.4}], tmp_path / "val.png"), min_size=(300, 200))


def test_figure_curves_rejects_bad_input(tmp_path):
    for empty in ([], {}, [{"event": "start"}, {"step": 3}], {"a": []}):
        with pytest.raises(ValueError, match="history: no training records to plot"):
            viz.figure_curves(empty, tmp_path / "x.png")
    with pytest.raises(ValueError, match="step"):
        viz.figure_curves([{"loss": 1.0}], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"history\[0\]\['loss'\]"):
        viz.figure_curves([{"step": 1, "loss": "high"}], tmp_path / "x.png")
    with pytest.raises(TypeError, match="history"):
        viz.figure_curves("log.jsonl", tmp_path / "x.png")
    with pytest.raises(TypeError, match=r"history\['a'\]\[0\]"):
        viz.figure_curves({"a": [3]}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
