"""The predictions of an evaluation's first episodes drawn as figures, with an index page (``sst-fast eval
--save-predictions N``).

A pass of its own after the scoring, so that an evaluation without it pays nothing: the first ``N`` episodes
of the first seed's manifest are run through the model again, in the batches the scoring ran them in (the
batches that hold them, whole: the same inputs give the same logits), and their logits are resized and
scored exactly as :func:`~sst_fast.engine.evaluate.score_episodes` scores them. The IoU written on each figure
and in the index is therefore the episode's foreground IoU as the evaluation counted it.

The folder ``predictions/`` of the evaluation's output holds:

- ``episode-<n>.png``: each support with its mask, the query, its ground truth and the prediction (for SST
  with the self-supervised tuning step, also the prediction before the step), at the photos' own sizes;
- ``thumbs/episode-<n>.png``: the ground truth and the prediction on the query, side by side, small;
- ``index.html``: a table of the episodes (thumbnail, class, IoU, images) linking each figure;
- ``gallery.json``: the same table for scripts.

It is written next to the folder and swapped in whole: an earlier gallery never lingers.
"""

from __future__ import annotations

import dataclasses
import html
import math
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import viz
from ..config import as_size, positive_int
from ..data.base import FewShotDataset
from ..data.episodes import Episode, EpisodeDataset, collate_episodes
from ..files import write_json_atomic, write_text_atomic
from ..metrics import FewShotMeter
from .evaluate import EvaluationResult, Scoring, _logits, _placement, as_dataset
from .speed import autocast

GALLERY = "predictions"  # the folder, inside the evaluation's output folder
INDEX = "index.html"
RECORDS = "gallery.json"
THUMBNAIL_PIXELS = 128  # the longer side of each of a thumbnail's two pictures
THUMBNAIL_GAP = 4


@dataclasses.dataclass
class DrawnEpisode:
    """One episode of the gallery: where it is in the manifest, its IoU as scored and its files."""

    number: int  # its index in the manifest
    episode: Episode
    class_name: str
    iou: float  # the foreground IoU as scored; NaN when the foreground union is empty (no IoU counted)
    before_iou: float | None  # SST with the tuning step: the IoU the untuned prototypes would score
    figure: str  # file names, relative to the gallery folder
    thumbnail: str

    def to_dict(self) -> dict:
        record = {
            "episode": self.number,
            "class_id": self.episode.class_id,
            "class_name": self.class_name,
            "query": self.episode.query,
            "supports": list(self.episode.supports),
            "iou": None if math.isnan(self.iou) else self.iou,
            "figure": self.figure,
            "thumbnail": self.thumbnail,
        }
        if self.before_iou is not None:
            record["iou_before_tuning"] = None if math.isnan(self.before_iou) else self.before_iou
        return record


def save_predictions(
    model, dataset: FewShotDataset, result: EvaluationResult, count: int, out, batch_size: int = 8,
    amp: str = "off", device=None,
) -> Path:  # fmt: skip
    """Draw the first ``count`` episodes of ``result``'s first seed (at most its episodes) into ``out``/predictions,
    replacing any earlier gallery there; returns the index page. ``model``, ``dataset``, ``batch_size``, ``amp`` and
    ``device`` as the evaluation ran: the input size, resolution and manifest come from ``result``."""
    card = result.card
    manifest = result.manifests[0]
    scoring = Scoring(card.resolution, card.score_size, align_corners=card.align_corners)
    model_name = card.checkpoint or card.model.get("source") or card.model.get("class", "model")
    heading = {
        "model": str(model_name),
        "data": f"{card.dataset}, fold {card.fold}, {card.shots}-shot, protocol {card.protocol}",
        "episodes": f"the first {{count}} of the {len(manifest.episodes)} episodes of seed {manifest.seed} "
        f"(manifest sha256 {manifest.sha256[:16]}…)",
        "scored": _resolution_text(scoring, card.input_size),
    }
    return draw_gallery(
        model, dataset, manifest.episodes, count, card.input_size, Path(out) / GALLERY, scoring=scoring,
        batch_size=batch_size, amp=amp, device=device, heading=heading, seed=manifest.seed,
    )  # fmt: skip


def discard_predictions(out) -> None:
    """Remove the gallery of an earlier evaluation from the output folder ``out``, if there is one (a folder
    ``predictions`` that is no gallery is left alone)."""
    folder = Path(out) / GALLERY
    if is_gallery(folder):
        _remove(folder)


def check_replaceable(folder) -> None:
    """A ValueError unless ``folder`` is absent or a gallery (:func:`draw_gallery` replaces it whole): a
    folder of something else is never deleted. For the CLI to call before the evaluation's work."""
    folder = Path(folder)
    if (folder.exists() or folder.is_symlink()) and not is_gallery(folder):
        raise ValueError(
            f"--save-predictions: {folder} exists and is not a gallery of sst-fast eval (no {RECORDS}), and the "
            "gallery replaces that folder whole: move it, or choose another --out"
        )


def is_gallery(folder) -> bool:
    """Whether ``folder`` is a gallery that :func:`draw_gallery` wrote (it holds ``gallery.json``)."""
    folder = Path(folder)
    return folder.is_dir() and not folder.is_symlink() and (folder / RECORDS).is_file()


def draw_gallery(
    model,
    dataset: FewShotDataset,
    episodes: Sequence[Episode],
    count: int,
    size,
    folder,
    scoring: Scoring | None = None,
    batch_size: int = 8,
    amp: str = "off",
    device=None,
    heading: dict | None = None,
    seed=None,
) -> Path:
    """Draw the first ``count`` of ``episodes`` (all of them if fewer) into ``folder``, which is replaced whole;
    returns its ``index.html``. ``size``: the network's input size; ``scoring``: how the evaluation scored
    (default: at the input size); ``batch_size``: the evaluation's, so that the episodes run in the same batches.
    ``heading``: lines for the index page's head (``{label: text}``; ``{count}`` in a text becomes the count)."""
    count = positive_int(count, "count (--save-predictions)")
    positive_int(batch_size, "batch_size")
    dataset = as_dataset(dataset)
    episodes = list(episodes)
    if not episodes:
        raise ValueError("episodes: no episode to draw")
    count = min(count, len(episodes))
    scoring = scoring or Scoring()
    folder = Path(folder)
    check_replaceable(folder)
    drawings = list(_predictions(model, dataset, episodes, count, as_size(size, "size"), scoring, batch_size, amp,
                                 device))  # fmt: skip
    width = max(3, len(str(count - 1)))

    def build(staging: Path) -> None:
        drawn = [_draw(dataset, staging, number, width, seed, *drawing) for number, drawing in enumerate(drawings)]
        lines = {label: text.replace("{count}", str(count)) for label, text in (heading or {}).items()}
        write_text_atomic(staging / INDEX, _index_page(drawn, lines))
        records = {"heading": lines, "seed": seed, "episodes": [item.to_dict() for item in drawn]}
        write_json_atomic(staging / RECORDS, records)

    _replace_folder(folder, build)
    return folder / INDEX


# --- the forward pass, as score_episodes runs and scores it -----------------------------------------


def _predictions(model, dataset, episodes, count, size, scoring, batch_size, amp, device):
    """Per episode among the first ``count``: (episode, scored prediction, scored target, IoU, untuned prediction
    or None, its IoU or None, shot weights or None); the predictions and targets at the scoring resolution."""
    from ..models import SSTReference

    data = EpisodeDataset(
        dataset, episodes, size, keep_original=scoring.resolution == "original", score_size=scoring.score_size
    )
    device, dtype = _placement(model, device)
    tuned = isinstance(model, SSTReference) and bool(getattr(model.config, "ssm", False))
    modes = [(module, module.training) for module in model.modules()] if isinstance(model, nn.Module) else []
    if isinstance(model, nn.Module):
        model.eval()
    try:
        for first in range(0, count, batch_size):
            # The whole batch of the scoring: the logits of an episode may depend on its batch's shape.
            rows = range(first, min(first + batch_size, len(episodes)))
            batch = collate_episodes([data[index] for index in rows])
            inputs = (
                batch["query"].to(device, dtype),
                batch["support_images"].to(device, dtype),
                batch["support_masks"].to(device),
            )
            with torch.no_grad(), autocast(device, amp):
                output = model(*inputs)
            logits = _logits(output, len(rows)).float()
            kept = min(count - first, len(rows))
            predictions, targets = _scored(logits, batch, scoring)
            untuned = [None] * kept
            if tuned:  # the same episodes decoded with the prototypes before the step (SST's explain forward)
                with torch.no_grad(), autocast(device, amp):  # model.tune turns autograd on for its inner step
                    explained = model(*(tensor[:kept] for tensor in inputs), explain=True)
                untuned, _ = _scored(explained.untuned_logits.float(), _rows(batch, kept), scoring)
            weights = getattr(output, "shot_weights", None)
            if not isinstance(weights, torch.Tensor) or weights.shape != batch["support_masks"].shape[:2]:
                weights = None
            for row in range(kept):
                class_id = int(batch["class_id"][row])
                before = untuned[row]
                yield (
                    episodes[first + row],
                    predictions[row],
                    targets[row],
                    _episode_iou(predictions[row], targets[row], class_id),
                    before,
                    None if before is None else _episode_iou(before, targets[row], class_id),
                    None if weights is None else weights[row].float().cpu().numpy(),
                )
    finally:
        for module, training in modes:
            module.training = training


def _rows(batch: dict, count: int) -> dict:
    return {key: value[:count] for key, value in batch.items()}


def _scored(logits: torch.Tensor, batch: dict, scoring: Scoring) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each row's prediction and target at the scoring resolution, as score_episodes scores them."""
    predictions, targets = [], []
    for prediction, target, _ in scoring.scored(logits, batch):
        predictions += list(prediction)
        targets += list(target)
    return predictions, targets


def _episode_iou(prediction: torch.Tensor, target: torch.Tensor, class_id: int) -> float:
    """The episode's foreground IoU as the evaluation's meter counts it; NaN where it counts none (empty union)."""
    meter = FewShotMeter([class_id])
    meter.update(prediction[None], target[None], class_id)
    ious = meter.episode_ious
    return ious[0] if ious else math.nan


# --- drawing ------------------------------------------------------------------------------------------


def _draw(dataset, folder, number, width, seed, episode, prediction, target, iou, before, before_iou, weights):
    name = f"episode-{number:0{width}d}.png"
    query = dataset.load(episode.query)
    shape = query.image.shape[:2]
    supports, support_masks = [], []
    for support_id in episode.supports:
        support = dataset.load(support_id)
        supports.append(support.image)
        support_masks.append(dataset.episode_mask(support.label, episode.class_id))
    # Every panel at its photo's own size: the scored masks are resized to it by nearest neighbour.
    truth, predicted = _at(target, shape), _at(prediction, shape)
    untuned = None if before is None else _at(before, shape)
    class_name = dataset.class_name(episode.class_id)
    where = f"seed {seed}, episode {number}" if seed is not None else f"episode {number}"
    viz.figure_episode(
        folder / name, query.image, supports, support_masks, predicted, truth, iou=iou, before=untuned,
        before_iou=before_iou, shot_weights=weights,
        title=f"{where}: class {episode.class_id} ({class_name}), query {episode.query}",
    )  # fmt: skip
    viz.save_png(_thumbnail(query.image, truth, predicted), folder / "thumbs" / name)
    return DrawnEpisode(number, episode, class_name, iou, before_iou, name, f"thumbs/{name}")


def _at(mask: torch.Tensor, shape) -> np.ndarray:
    from PIL import Image

    array = mask.detach().cpu().numpy().astype(np.uint8)
    if array.shape == tuple(shape):
        return array
    return np.asarray(Image.fromarray(array).resize(tuple(shape)[::-1], Image.Resampling.NEAREST))


def _thumbnail(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """The ground truth and the prediction on the query, side by side on white."""
    left = viz.overlay_thumbnail(image, truth, viz.GROUND_TRUTH_COLOR, THUMBNAIL_PIXELS)
    right = viz.overlay_thumbnail(image, prediction, viz.PREDICTION_COLOR, THUMBNAIL_PIXELS)
    gap = np.full((left.shape[0], THUMBNAIL_GAP, 3), 255, np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def _resolution_text(scoring: Scoring, input_size) -> str:
    if scoring.resolution == "original":
        return "at each label's stored size (logits resized bilinearly)"
    if scoring.resolution == "fixed":
        return "at {}x{} (labels and logits resized)".format(*scoring.score_size[::-1])
    return "at the network's input size, {}x{}".format(*tuple(input_size)[::-1])


# --- the index page -----------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: middle; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
td.ids { font-family: monospace; font-size: 85%; }
img { display: block; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; vertical-align: middle; margin: 0 0.3em 0 0.8em;
          border: 2px solid; }
"""


def _index_page(drawn: list[DrawnEpisode], heading: dict) -> str:
    before = any(item.before_iou is not None for item in drawn)
    ious = [item.iou for item in drawn if not math.isnan(item.iou)]
    mean = f"{100 * sum(ious) / len(ious):.1f}%" if ious else "n/a"
    head = "".join(f"<li>{html.escape(label)}: {html.escape(text)}</li>" for label, text in heading.items())
    legend = "".join(
        f'<span class="swatch" style="{_swatch(color)}"></span>{html.escape(label)}'
        for label, color in (
            ("support mask", viz.SUPPORT_COLOR),
            ("ground truth", viz.GROUND_TRUTH_COLOR),
            ("prediction", viz.PREDICTION_COLOR),
        )
    )
    columns = ["episode", "ground truth | prediction", "class", "IoU"]
    columns += ["IoU before tuning"] if before else []
    columns += ["query", "supports"]
    rows = []
    for item in drawn:
        link = html.escape(item.figure, quote=True)
        cells = [
            f'<td class="number"><a href="{link}">{item.number}</a></td>',
            f'<td><a href="{link}"><img src="{html.escape(item.thumbnail, quote=True)}" '
            f'alt="episode {item.number}: ground truth and prediction" loading="lazy"></a></td>',
            f"<td>{item.episode.class_id} {html.escape(item.class_name)}</td>",
            f'<td class="number">{_percent(item.iou)}</td>',
        ]
        if before:
            cells.append(f'<td class="number">{_percent(item.before_iou)}</td>')
        cells.append(f'<td class="ids">{html.escape(item.episode.query)}</td>')
        cells.append(f'<td class="ids">{"<br>".join(html.escape(s) for s in item.episode.supports)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th>{html.escape(name)}</th>" for name in columns)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Predictions: {len(drawn)} episodes</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>Predictions: {len(drawn)} episodes</h1>
<ul>{head}</ul>
<p>IoU: each episode's foreground IoU as the evaluation scored it (n/a: an empty foreground union, which the
episode-wise mean leaves out); mean over these episodes {mean}. The numbers of the whole evaluation are in
<a href="../metrics.json">metrics.json</a>. Click an episode for its figure.</p>
<p>Masks:{legend}</p>
<table>
<thead><tr>{header}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
</body>
</html>
"""


def _swatch(color) -> str:
    red, green, blue = color
    return f"background: rgba({red}, {green}, {blue}, {viz.FILL_ALPHA}); border-color: rgb({red}, {green}, {blue});"


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


# --- the folder ---------------------------------------------------------------------------------------


def _replace_folder(folder: Path, build) -> None:
    """``build(staging)`` fills a fresh folder next to ``folder``, which then takes ``folder``'s place whole."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    staging = folder.with_name(f".{folder.name}-{token}.tmp")
    staging.mkdir()
    old = None
    try:
        build(staging)
        if folder.exists() or folder.is_symlink():
            old = folder.with_name(f".{folder.name}-{token}.old")
            folder.rename(old)
        staging.rename(folder)
    except BaseException:
        _remove(staging)
        if old is not None and not folder.exists():  # put the earlier gallery back rather than lose both
            old.rename(folder)
        raise
    if old is not None:
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)
