"""Figures of SST's predictions and training: mask overlays, the paper's Fig. 3 and Fig. 6, training curves.

:func:`explain` runs one batch of episodes through the model's own stages and keeps what the paper's
figures show: the query prediction before and after the self-supervised tuning, each support's
self-segmentation with its IoU and fusion weight, and the gradient of the self-segmentation loss.
The ``figure_*`` functions draw them (and training logs) into PNG files: masks as a light fill with a
two-tone outline (:func:`overlay`), one colour per kind of mask named in a legend, IoUs and mIoUs in percent.

matplotlib is imported lazily and only through ``Figure`` + ``FigureCanvasAgg``: no pyplot state, so
drawing is thread-safe, never opens a window and does not depend on the session's backend.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .files import write_atomic
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .models.episode import check_episode
from .config import IGNORE_LABEL
from .models.functional import foreground_iou

# One colour per kind of mask, from the Okabe-Ito palette (told apart with every common colour-vision
# deficiency): predictions orange, query ground truth sky blue, support masks bluish green. None is red, so
# no prediction takes the colour of a red object; the outline (see overlay) keeps it visible on any colour.
PREDICTION_COLOR = (230, 159, 0)
GROUND_TRUTH_COLOR = (86, 180, 233)
SUPPORT_COLOR = (0, 158, 115)
ANNOTATION_COLOR = GROUND_TRUTH_COLOR  # the former name of the annotations' colour
FILL_ALPHA = 0.3  # a light fill: the object stays visible under it
GRADIENT_CMAP = "magma"
DPI = 100
PANEL_INCHES = 2.2
# Figure panels are drawn at about the pixels they take on the page, so that a 2-px outline stays 2 px.
PANEL_PIXELS = round(PANEL_INCHES * DPI)
PANEL_EDGE = 2

# figure_curves: training losses share one panel, the validation mIoU gets its own.
TRAIN_KEYS = ("loss", "main_loss", "aux_loss")
VAL_KEY = "val_miou"
_LINESTYLES = {"loss": "-", "main_loss": "--", "aux_loss": ":"}


# --- arrays and files ---------------------------------------------------------------------------


def denormalize(images: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised float images [..., 3, H, W] -> uint8 [..., H, W, 3] (rounded, clipped to 0..255)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [..., 3, H, W], got {type(images).__name__}")
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"images must be [..., 3, H, W] with 3 colour channels, got shape {list(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point (normalised), got {images.dtype}")
    x = images.detach().to("cpu", torch.float32)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    # NaN would turn into an arbitrary byte: show it as black instead.
    x = torch.nan_to_num((x * std + mean) * 255, nan=0.0).round_().clamp_(0, 255).to(torch.uint8)
    return x.movedim(-3, -1).contiguous().numpy()


def overlay(
    image: np.ndarray, mask: np.ndarray, color=PREDICTION_COLOR, alpha: float = FILL_ALPHA, edge: int | None = None
) -> np.ndarray:
    """Draw a mask on an image: a light fill of ``color`` and a two-tone outline, legible on any background.

    The object pixels are blended with ``color`` at weight ``alpha``, so the object stays visible under its
    mask. Along its boundary, inside the object, run two lines of ``edge`` pixels each: the outer one in
    ``color`` itself, the inner one in black or white, whichever contrasts more with ``color``. Where the
    image around the object is close to ``color`` (an orange mask on a red object), the contrast line
    stands out; elsewhere the coloured line does: the outline shows on red, dark and light backgrounds
    alike. Pixels outside the object are left as they are. The result is a plain picture (no legend):
    with the default colour, orange marks a prediction.

    Args:
        image: uint8 [H, W, 3].
        mask: [H, W], bool or labels 0/1/255; only label 1 (True) is object, 255 (ignore) is not.
        color: RGB, three integers in 0..255.
        alpha: weight of ``color`` inside the object, in [0, 1].
        edge: width in pixels of each outline line (0: no outline); None: 1 px per 150 px of the longer
            side, at least 1.
    Returns:
        uint8 [H, W, 3], a new array.
    """
    _check_rgb(image, "image")
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape != image.shape[:2]:
        raise ValueError(f"mask must be [H, W] = {list(image.shape[:2])} like image, got shape {list(mask.shape)}")
    if mask.dtype == bool:
        obj = mask
    else:
        if not np.isin(mask, (0, 1, IGNORE_LABEL)).all():
            raise ValueError("mask must be bool or hold only 0 (background), 1 (object) and 255 (ignore)")
        obj = mask == 1
    rgb = _check_color(color)
    if not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if edge is None:
        edge = max(1, round(max(image.shape[:2]) / 150))
    if isinstance(edge, bool) or not isinstance(edge, (int, np.integer)) or edge < 0:
        raise ValueError(f"edge must be a width in pixels (an integer >= 0) or None, got {edge!r}")

    out = image.astype(np.float32)
    out[obj] = (1 - alpha) * out[obj] + alpha * rgb
    if edge:
        # Erosion with edge padding: an object cut by the image border is not outlined along the border (it
        # may well continue beyond the crop).
        eroded = _grow(obj, edge, shrink=True)
        out[obj & ~eroded] = rgb
        out[eroded & ~_grow(eroded, edge, shrink=True)] = _contrast_shade(rgb)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _grow(mask: np.ndarray, steps: int, shrink: bool = False) -> np.ndarray:
    """``mask`` dilated (or eroded, with edge padding) ``steps`` times by a 3x3 square."""
    height, width = mask.shape
    for _ in range(steps):
        padded = np.pad(mask, 1, mode="edge" if shrink else "constant")
        shifted = [padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)]
        mask = np.logical_and.reduce(shifted) if shrink else np.logical_or.reduce(shifted)
    return mask


def _contrast_shade(rgb: np.ndarray) -> np.ndarray:
    """Black or white, whichever has the higher contrast ratio (WCAG) with the colour ``rgb`` (0..255)."""
    linear = rgb / 255
    linear = np.where(linear <= 0.04045, linear / 12.92, ((linear + 0.055) / 1.055) ** 2.4)
    luminance = float(linear @ np.array([0.2126, 0.7152, 0.0722]))
    black_ratio, white_ratio = (luminance + 0.05) / 0.05, 1.05 / (luminance + 0.05)
    return np.full(3, 0.0 if black_ratio >= white_ratio else 255.0, np.float32)


def save_png(array: np.ndarray, path) -> pathlib.Path:
    """Write uint8 [H, W] (grey) or [H, W, 3] (RGB) as a PNG; parents are created, the write is atomic."""
    from PIL import Image

    if not isinstance(array, np.ndarray):
        raise TypeError(f"array must be a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise ValueError(f"array must be uint8, got {array.dtype} (save binary masks as 0/255)")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)) or 0 in array.shape:
        raise ValueError(f"array must be a non-empty [H, W] or [H, W, 3] image, got shape {list(array.shape)}")
    picture = Image.fromarray(np.ascontiguousarray(array))
    return write_atomic(path, lambda fh: picture.save(fh, format="PNG"))


# --- explain: everything Fig. 3 / Fig. 6 show, for a batch of episodes ---------------------------


@dataclasses.dataclass(eq=False)  # numpy fields: element-wise == would make dataclass equality ambiguous
class Explanation:
    """One episode at the network input size: images, masks, predictions before/after tuning, gradient.

    Supports are at their own input size (Hs, Ws), which is the query's unless the caller chose otherwise.
    """

    query: np.ndarray  # uint8 [H, W, 3]
    query_mask: np.ndarray | None  # uint8 [H, W] labels 0/1/255, or None
    supports: np.ndarray  # uint8 [K, Hs, Ws, 3]
    support_masks: np.ndarray  # uint8 [K, Hs, Ws] labels 0/1/255
    before: np.ndarray  # uint8 [H, W] {0,1}: prediction with the untuned prototypes p
    after: np.ndarray  # uint8 [H, W] {0,1}: prediction with the tuned prototypes p' (the model's output)
    support_predictions: np.ndarray  # uint8 [K, Hs, Ws] {0,1}: argmax of the self-segmentation Ssup
    gradient: np.ndarray | None  # float32 [K, Hs, Ws] in [0, 1]: |dLsup/dRs| per shot; None with ssm=False
    shot_weights: np.ndarray | None  # float32 [K] fusion weights; None for fusion="max"
    support_iou: np.ndarray  # float32 [K] foreground IoU of each self-segmentation vs its mask

    @property
    def shots(self) -> int:
        return int(self.supports.shape[0])


def explain(
    model,
    query: torch.Tensor,
    support_images: torch.Tensor,
    support_masks: torch.Tensor,
    query_mask: torch.Tensor | None = None,
) -> list[Explanation]:
    """Run the model's forward with its intermediates and return one :class:`Explanation` per episode.

    It is the model's own forward with ``explain=True`` (the decoder also run on the untuned prototypes,
    the full feature gradient formed), so ``after`` is exactly ``model(...).logits.argmax(1)`` in eval mode.
    The model is put in eval mode for the call and every module's mode is restored afterwards.

    Args:
        model: an :class:`sst_fast.SST` or :class:`sst_fast.reference.SSTReference`.
        query: [B, 3, H, W] normalised images.
        support_images: [B, K, 3, Hs, Ws].
        support_masks: [B, K, Hs, Ws], labels 0/1/255.
        query_mask: [B, H, W] ground truth (only shown, never used by the model), or None.
    """
    from .models import SSTReference

    if not isinstance(model, SSTReference):  # sst_fast.SST is one too
        raise TypeError(f"model must be an SST / SSTReference, got {type(model).__name__}")
    check_episode(query, support_images, support_masks, query_mask, like=next(model.parameters(), None))

    # Restore each module's own flag rather than model.train(mode): a frozen backbone keeps BN in eval.
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():  # model.tune turns autograd back on for its inner gradient
            return _explain(model, query, support_images, support_masks, query_mask)
    finally:
        for module, training in modes:
            module.training = training


def _explain(model, query, support_images, support_masks, query_mask) -> list[Explanation]:
    batch, shots = support_images.shape[:2]
    # The model's own forward, asked for its intermediates: the untuned decoding, the self-segmentations, dL/dRs.
    out = model(query, support_images, support_masks, explain=True)
    labels = support_masks.flatten(0, 1).long()
    before = out.untuned_logits.argmax(1)
    after = out.logits.argmax(1)
    weights = out.shot_weights
    support_predictions = out.support_logits.flatten(0, 1).argmax(1)  # [B*K, Hs, Ws]
    support_iou = foreground_iou(support_predictions, labels).float()
    gradient = None
    if out.feature_gradient is not None:
        norm = out.feature_gradient.flatten(0, 1).float().norm(dim=1, keepdim=True)  # [B*K, 1, h, w]
        norm = F.interpolate(norm, size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=True)[:, 0]
        # Per shot, divide by the maximum (not min-max): zero keeps meaning "no gradient here".
        peak = norm.flatten(1).amax(1)[:, None, None]
        gradient = torch.where(peak > 0, norm / peak.clamp_min(torch.finfo(norm.dtype).tiny), torch.zeros_like(norm))
        gradient = gradient.clamp_(0, 1).unflatten(0, (batch, shots))

    def numpy(tensor: torch.Tensor, dtype) -> np.ndarray:
        return tensor.detach().cpu().numpy().astype(dtype)

    queries, supports = denormalize(query), denormalize(support_images)
    explanations = []
    for b in range(batch):
        shots_of_b = slice(b * shots, (b + 1) * shots)
        explanations.append(
            Explanation(
                query=queries[b],
                query_mask=None if query_mask is None else numpy(query_mask[b], np.uint8),
                supports=supports[b],
                support_masks=numpy(support_masks[b], np.uint8),
                before=numpy(before[b], np.uint8),
                after=numpy(after[b], np.uint8),
                support_predictions=numpy(support_predictions[shots_of_b], np.uint8),
                gradient=None if gradient is None else numpy(gradient[b], np.float32),
                shot_weights=None if weights is None else numpy(weights[b], np.float32),
                support_iou=numpy(support_iou[shots_of_b], np.float32),
            )
        )
    return explanations


def at_aspect(explanation: Explanation, query_shape, support_shapes) -> Explanation:
    """``explanation`` with each panel resized to the aspect ratio of the photo it came from (``query_shape``,
    ``support_shapes``: (H, W) of the query and of each support photo), its longer side kept: the network
    sees every image at its square input size, a figure should show the photos as they are. Images are
    resized bilinearly, labels and predictions by nearest neighbour."""
    support_shapes = list(support_shapes)
    if len(support_shapes) != explanation.shots:
        raise ValueError(f"support_shapes: one (H, W) per support ({explanation.shots}), got {len(support_shapes)}")
    query_size = _display_size(explanation.query.shape[:2], query_shape, "query_shape")
    support_sizes = [
        _display_size(explanation.supports.shape[1:3], shape, f"support_shapes[{k}]")
        for k, shape in enumerate(support_shapes)
    ]

    # The supports are one array [K, ...]: supports of different shapes are all drawn at the first one's.
    support_size = support_sizes[0]

    def per_shot(stack, nearest):
        return np.stack([_resize(item, support_size, nearest) for item in stack])

    return dataclasses.replace(
        explanation,
        query=_resize(explanation.query, query_size, nearest=False),
        query_mask=None if explanation.query_mask is None else _resize(explanation.query_mask, query_size, True),
        before=_resize(explanation.before, query_size, nearest=True),
        after=_resize(explanation.after, query_size, nearest=True),
        supports=per_shot(explanation.supports, nearest=False),
        support_masks=per_shot(explanation.support_masks, nearest=True),
        support_predictions=per_shot(explanation.support_predictions, nearest=True),
        gradient=None if explanation.gradient is None else per_shot(explanation.gradient, nearest=False),
    )


def _display_size(current, photo, name: str) -> tuple[int, int]:
    """(H, W) with the photo's aspect ratio and the longer side of ``current``."""
    try:
        height, width = (int(v) for v in photo)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (H, W), got {photo!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"{name} must be positive, got {photo!r}")
    longest = max(current)
    scale = longest / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    from PIL import Image

    if tuple(array.shape[:2]) == tuple(size):
        return array
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    if array.dtype == np.float32:
        return np.asarray(Image.fromarray(array).resize(size[::-1], resample), dtype=np.float32)
    return np.asarray(Image.fromarray(array).resize(size[::-1], resample))


# --- figures ----------------------------------------------------------------------------------------


def figure_tuning(explanations: Sequence[Explanation], path, title: str | None = None) -> pathlib.Path:
    """The paper's Fig. 3: per episode (first shot), support, query, truth, before/after tuning, gradient.

    Masks are drawn as by :func:`overlay`, in one colour per kind (a legend below the panels names them);
    IoUs are in percent.
    """
    explanations = _check_explanations(explanations)
    columns = ("support + mask", "query", "ground truth", "before tuning", "after tuning", "gradient |dL/dRs|")
    fig, axes = _new_figure(len(explanations), len(columns), title)
    for row, ex in enumerate(explanations):
        panels = axes[row]
        _show(panels[0], ex.supports[0], ex.support_masks[0], SUPPORT_COLOR)
        _show(panels[1], ex.query)
        if ex.query_mask is None:
            _blank(panels[2])
        else:
            _show(panels[2], ex.query, ex.query_mask, GROUND_TRUTH_COLOR)
        for ax, prediction in ((panels[3], ex.before), (panels[4], ex.after)):
            _show(ax, ex.query, prediction, PREDICTION_COLOR)
            if ex.query_mask is not None:
                _corner_text(ax, f"IoU {_percent(_iou(prediction, ex.query_mask))}")
        if ex.gradient is None:
            _blank(panels[5])
        else:
            panels[5].imshow(_thumbnail(ex.gradient[0]), cmap=GRADIENT_CMAP, vmin=0.0, vmax=1.0)
        if row == 0:
            for ax, name in zip(panels, columns, strict=True):
                ax.set_title(name, fontsize=9)
    _mask_legend(fig, truth=any(ex.query_mask is not None for ex in explanations))
    return _save_figure(fig, path)


def figure_shots(explanation: Explanation, path, title: str | None = None) -> pathlib.Path:
    """The paper's Fig. 6 for one K-shot episode: each support, its self-segmentation (IoU, weight), the query.

    Masks are drawn as by :func:`overlay`, in one colour per kind (a legend below the panels names them);
    IoUs are in percent, fusion weights ``w`` fractions summing to 1.
    """
    (ex,) = _check_explanations([explanation], name="explanation")
    fig, axes = _new_figure(2, ex.shots + 1, title)
    for k in range(ex.shots):
        _show(axes[0][k], ex.supports[k], ex.support_masks[k], SUPPORT_COLOR)
        axes[0][k].set_title(f"support {k + 1}", fontsize=9)
        _show(axes[1][k], ex.supports[k], ex.support_predictions[k], PREDICTION_COLOR)
        caption = f"self-seg. IoU {_percent(float(ex.support_iou[k]))}"
        if ex.shot_weights is not None:
            caption += f", w {float(ex.shot_weights[k]):.2f}"
        axes[1][k].set_title(caption, fontsize=9)
    last = ex.shots
    if ex.query_mask is None:
        _show(axes[0][last], ex.query)
        axes[0][last].set_title("query", fontsize=9)
        axes[1][last].set_title("prediction", fontsize=9)
    else:
        _show(axes[0][last], ex.query, ex.query_mask, GROUND_TRUTH_COLOR)
        axes[0][last].set_title("query + ground truth", fontsize=9)
        axes[1][last].set_title(f"prediction, IoU {_percent(_iou(ex.after, ex.query_mask))}", fontsize=9)
    _show(axes[1][last], ex.query, ex.after, PREDICTION_COLOR)
    _mask_legend(fig, truth=ex.query_mask is not None)
    return _save_figure(fig, path)


def figure_episode(
    path,
    query: np.ndarray,
    supports: Sequence[np.ndarray],
    support_masks: Sequence[np.ndarray],
    prediction: np.ndarray,
    query_mask: np.ndarray | None = None,
    iou: float | None = None,
    before: np.ndarray | None = None,
    before_iou: float | None = None,
    shot_weights: Sequence[float] | None = None,
    title: str | None = None,
) -> pathlib.Path:
    """One episode of any model in a row of panels: each support with its mask, the query, its ground truth, the
    prediction before the tuning step (``before``: SST's untuned prototypes, when given) and the prediction.

    Images are uint8 [H, W, 3], each at its own size; a mask (labels 0/1/255, or bool) has its image's [H, W].
    ``iou`` / ``before_iou``: the foreground IoUs to print on the prediction panels (in percent; NaN: the
    episode has no IoU, its foreground union being empty), as the caller scored them: the figure computes none.
    ``shot_weights``: the K-shot fusion weights, written under the supports. Masks are drawn as by
    :func:`overlay`, one colour per kind, named in a legend below the panels.
    """
    _check_rgb(query, "query")
    supports, support_masks = list(supports), list(support_masks)
    if not supports or len(supports) != len(support_masks):
        raise ValueError(
            f"supports: one mask per support image, got {len(supports)} images and {len(support_masks)} masks"
        )
    if shot_weights is not None and len(shot_weights) != len(supports):
        raise ValueError(f"shot_weights: one per support ({len(supports)}), got {len(shot_weights)}")
    for k, (image, mask) in enumerate(zip(supports, support_masks, strict=True)):
        _check_rgb(image, f"supports[{k}]")
        _check_shape(mask, image, f"support_masks[{k}]")
    for name, mask in (("prediction", prediction), ("query_mask", query_mask), ("before", before)):
        if mask is not None:
            _check_shape(mask, query, name)

    shots = len(supports)
    columns = shots + 2 + (query_mask is not None) + (before is not None)
    fig, axes = _new_figure(1, columns, title)
    panels = list(axes[0])
    for k, (image, mask) in enumerate(zip(supports, support_masks, strict=True)):
        ax = panels.pop(0)
        _show(ax, image, mask, SUPPORT_COLOR)
        caption = "support + mask" if shots == 1 else f"support {k + 1}"
        if shot_weights is not None and shots > 1:
            caption += f", w {float(shot_weights[k]):.2f}"
        ax.set_title(caption, fontsize=9)
    ax = panels.pop(0)
    _show(ax, query)
    ax.set_title("query", fontsize=9)
    if query_mask is not None:
        ax = panels.pop(0)
        _show(ax, query, query_mask, GROUND_TRUTH_COLOR)
        ax.set_title("ground truth", fontsize=9)
    drawn = [(before, before_iou, "before tuning")] if before is not None else []
    drawn.append((prediction, iou, "after tuning" if before is not None else "prediction"))
    for mask, score, caption in drawn:
        ax = panels.pop(0)
        _show(ax, query, mask, PREDICTION_COLOR)
        if score is not None:
            caption += f", IoU {'n/a' if math.isnan(score) else _percent(score)}"
        ax.set_title(caption, fontsize=9)
    _mask_legend(fig, truth=query_mask is not None)
    return _save_figure(fig, path)


def overlay_thumbnail(image: np.ndarray, mask: np.ndarray, color=PREDICTION_COLOR, longest: int = 128) -> np.ndarray:
    """``image`` with ``mask`` drawn by :func:`overlay` (1-px outline), resized first so that its longer side is
    ``longest`` pixels (the image bilinearly, the mask by nearest neighbour): a thumbnail for an index page."""
    _check_rgb(image, "image")
    _check_shape(mask, image, "mask")
    if isinstance(longest, bool) or not isinstance(longest, (int, np.integer)) or longest < 1:
        raise ValueError(f"longest must be a positive number of pixels, got {longest!r}")
    height, width = image.shape[:2]
    scale = longest / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    mask = np.asarray(mask)
    small_mask = _resize(mask.astype(np.uint8) if mask.dtype == bool else mask, size, nearest=True)
    return overlay(_resize(image, size, nearest=False), small_mask, color, edge=1)


def _check_shape(mask, image: np.ndarray, name: str) -> None:
    shape = tuple(np.shape(mask))
    if shape != tuple(image.shape[:2]):
        raise ValueError(f"{name} must be [H, W] = {list(image.shape[:2])} like its image, got shape {list(shape)}")


def figure_curves(
    history: Sequence[dict] | Mapping[str, Sequence[dict]], path, title: str | None = None
) -> pathlib.Path:
    """Training curves: losses against step (one panel), validation mIoU in percent with markers (a second panel).

    ``history`` is a training log (a list of dicts with ``"step"`` and any of ``loss``, ``main_loss``,
    ``aux_loss``, ``val_miou``; other records are ignored) or a dict ``{run_name: log}``, one line per run.
    ``val_miou`` is a fraction in the log and is drawn in percent, as the logs and reports print it.
    Returns the path of the PNG.
    """
    runs = _parse_history(history)
    train_keys = [key for key in TRAIN_KEYS if any(key in series for series in runs.values())]
    has_val = any(VAL_KEY in series for series in runs.values())
    named = list(runs) != [""]  # a plain list is one unnamed run: label its lines by metric only

    fig, axes = _new_figure(1, bool(train_keys) + has_val, title, panel=(5.0, 3.6), axis=True)
    panels = list(axes[0])
    if train_keys:
        ax = panels.pop(0)
        for index, (run, series) in enumerate(runs.items()):
            for key in train_keys:
                if key in series:
                    steps, values = series[key]
                    label = f"{run} {key}" if named else key
                    ax.plot(steps, values, color=f"C{index % 10}", linestyle=_LINESTYLES[key], label=label)
        _decorate(ax, "training loss", "loss")
    if has_val:
        ax = panels.pop(0)
        for index, (run, series) in enumerate(runs.items()):
            if VAL_KEY in series:
                steps, values = series[VAL_KEY]
                percent = [100 * value for value in values]
                ax.plot(steps, percent, color=f"C{index % 10}", marker="o", label=run if named else "val mIoU")
        _decorate(ax, "validation mIoU", "mIoU (%)")
    return _save_figure(fig, path)


def _parse_history(history) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """-> {run: {metric: (steps, values)}}, points sorted by step; ValueError when nothing is plottable."""
    if isinstance(history, Mapping):
        runs = {str(name): (f"history[{name!r}]", records) for name, records in history.items()}
    elif isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
        raise TypeError(f"history must be a list of records or a dict of runs, got {type(history).__name__}")
    else:
        runs = {"": ("history", history)}
    parsed = {}
    for run, (where, records) in runs.items():
        if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Sequence):
            raise TypeError(f"{where} must be a list of records (dicts), got {type(records).__name__}")
        points: dict[str, list[tuple[float, float]]] = {}
        for i, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise TypeError(f"{where}[{i}] must be a dict, got {type(record).__name__}")
            metrics = [key for key in (*TRAIN_KEYS, VAL_KEY) if record.get(key) is not None]
            if not metrics:
                continue  # other events of the log (start, checkpoint, ...)
            if record.get("step") is None:
                raise ValueError(f"{where}[{i}]: a record with {metrics} needs a 'step'")
            step = _number(record["step"], f"{where}[{i}]['step']")
            for key in metrics:
                value = _number(record[key], f"{where}[{i}][{key!r}]")
                # A diverged loss shows as a gap rather than wrecking the axis limits.
                points.setdefault(key, []).append((step, value if math.isfinite(value) else math.nan))
        if points:
            parsed[run] = {
                key: tuple(map(list, zip(*sorted(pairs, key=lambda pair: pair[0]), strict=True)))
                for key, pairs in points.items()
            }
    if not parsed:
        raise ValueError("history: no training records to plot")
    return parsed


def _number(value, name: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


# --- drawing helpers --------------------------------------------------------------------------------


def _new_figure(rows: int, cols: int, title: str | None, panel=(PANEL_INCHES, PANEL_INCHES), axis: bool = False):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = panel
    fig = Figure(figsize=(cols * width, rows * height + (0.4 if title else 0.0)), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas: renders off-screen, no pyplot involved
    axes = fig.subplots(rows, cols, squeeze=False)
    if not axis:
        for ax in axes.flat:
            ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=11)
    return fig, axes


def _save_figure(fig, path) -> pathlib.Path:
    try:
        return write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=DPI))
    finally:
        fig.clear()  # no pyplot registry to close it from; drop the artists so memory goes at once


def _blank(ax, text: str = "n/a") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, color="0.4", transform=ax.transAxes)


def _thumbnail(array: np.ndarray, nearest: bool = False) -> np.ndarray:
    """``array`` resized so that its longer side is :data:`PANEL_PIXELS`, about its size on the page."""
    height, width = array.shape[:2]
    scale = PANEL_PIXELS / max(height, width)
    return _resize(array, (max(1, round(height * scale)), max(1, round(width * scale))), nearest)


def _show(ax, image: np.ndarray, mask: np.ndarray | None = None, color=None) -> None:
    """Show ``image`` (with ``mask`` drawn by :func:`overlay` in ``color``) at the panel's own resolution: the
    outline is drawn after resizing, so it keeps its width and contrast whatever the image size."""
    image = _thumbnail(image)
    if mask is not None:
        image = overlay(image, _thumbnail(mask, nearest=True), color, edge=PANEL_EDGE)
    ax.imshow(image, interpolation="nearest")


def _mask_legend(fig, truth: bool) -> None:
    """A legend below the panels: one swatch per kind of mask drawn, a light fill in a two-tone outline."""
    from matplotlib.patches import Patch
    from matplotlib.patheffects import Normal, Stroke

    kinds = [("support mask", SUPPORT_COLOR)]
    kinds += [("ground truth", GROUND_TRUTH_COLOR)] if truth else []
    kinds += [("prediction", PREDICTION_COLOR)]
    handles = []
    for label, color in kinds:
        rgb = np.asarray(color) / 255
        shade = _contrast_shade(np.asarray(color, np.float32)) / 255
        handles.append(
            Patch(
                facecolor=(*rgb, FILL_ALPHA),
                edgecolor=rgb,
                linewidth=2,
                label=label,
                path_effects=[Stroke(linewidth=4, foreground=shade), Normal()],
            )
        )
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, fontsize=9)


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def _corner_text(ax, text: str) -> None:
    ax.text(
        0.02,
        0.03,
        text,
        ha="left",
        va="bottom",
        fontsize=7,
        color="white",
        transform=ax.transAxes,
        bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.5, "linewidth": 0},
    )


def _decorate(ax, title: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _iou(prediction: np.ndarray, labels: np.ndarray) -> float:
    """Foreground IoU like :func:`sst_fast.models.functional.foreground_iou`, for one numpy mask."""
    return float(foreground_iou(torch.from_numpy(prediction[None]), torch.from_numpy(labels[None]))[0])


def _check_explanations(explanations, name: str = "explanations") -> list[Explanation]:
    if isinstance(explanations, Explanation):
        explanations = [explanations]
    if not isinstance(explanations, Sequence) or len(explanations) == 0:
        raise ValueError(f"{name}: expected a non-empty list of Explanation (from sst_fast.viz.explain)")
    for i, ex in enumerate(explanations):
        if not isinstance(ex, Explanation):
            where = name if name == "explanation" else f"{name}[{i}]"
            raise TypeError(f"{where} must be an Explanation (from sst_fast.viz.explain), got {type(ex).__name__}")
    return list(explanations)


def _check_rgb(image, name: str) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array [H, W, 3], got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be uint8 [H, W, 3], got {image.dtype} with shape {list(image.shape)}")


def _check_color(color) -> np.ndarray:
    values = np.asarray(color)
    if values.shape != (3,) or not np.issubdtype(values.dtype, np.number) or values.min() < 0 or values.max() > 255:
        raise ValueError(f"color must be three numbers in 0..255 (RGB), got {color!r}")
    return values.astype(np.float32)
