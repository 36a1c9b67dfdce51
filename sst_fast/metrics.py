"""Few-shot segmentation metrics: PFENet's and HSNet's definitions (docs/design.md §4).

On episodes where every class has a non-empty union and both FB-IoU terms are non-empty, the numbers
equal those peers' metric code (to float rounding). The edge cases are conventions, chosen by the
meter's options (defaults first): a class with no episode or an empty union is left out of the mean
(``empty_class="skip"``) or counts 0 (``"zero"``: PFENet and HSNet); an FB-IoU term with an empty
union leaves the other term alone (``empty_fb_term="skip"``), counts 0 (``"zero"``: PFENet) or makes
FB-IoU NaN (``"nan"``: HSNet). The evaluation protocols (:mod:`sst_fast.protocol`) set both.

- mIoU: per class c of the fold, ``IoU_c = Σ_episodes |pred ∩ gt| / Σ_episodes |pred ∪ gt|`` on the
  foreground, then the mean over the fold's classes.
- FB-IoU: foreground IoU and background IoU, each pooled over all episodes, then their mean.
- Episode-wise mean IoU: the foreground IoU of each episode, averaged over episodes.
- Pixels labelled 255 are excluded from all of them.

The meter also keeps each episode's pixel counts (five integers an episode, :meth:`FewShotMeter.counts`):
an evaluation writes them as ``episodes.jsonl``, and :func:`metrics_from_records` recomputes every
number from them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

from .config import IGNORE_LABEL
from .protocol import EMPTY_CLASS, EMPTY_FB_TERM


class FewShotMeter:
    """Accumulates episodes of the classes ``class_ids`` (the fold's novel classes) and computes the metrics.

    ``empty_class``: a class whose foreground union is empty over all its episodes (no episode, or
    nothing to find and nothing predicted) is reported as NaN and left out of the mean, with a
    warning (``"skip"``, the default), or scores 0 and counts in the mean (``"zero"``, as PFENet and
    HSNet do). ``empty_fb_term``: when the pooled background or foreground union is empty, FB-IoU is
    the other term alone (``"skip"``, the default), their mean with the empty one as 0 (``"zero"``,
    PFENet) or NaN (``"nan"``, HSNet). An episode whose foreground union is empty (for example, all
    pixels ignored) is left out of the episode-wise mean; its pixels still count in FB-IoU.
    """

    def __init__(self, class_ids: Sequence[int], empty_class: str = "skip", empty_fb_term: str = "skip"):
        class_ids = [int(c) for c in class_ids]
        if not class_ids or len(set(class_ids)) != len(class_ids):
            raise ValueError(f"class_ids must be a non-empty sequence of distinct class ids, got {class_ids!r}")
        if empty_class not in EMPTY_CLASS:
            raise ValueError(f"empty_class must be one of {sorted(EMPTY_CLASS)}, got {empty_class!r}")
        if empty_fb_term not in EMPTY_FB_TERM:
            raise ValueError(f"empty_fb_term must be one of {sorted(EMPTY_FB_TERM)}, got {empty_fb_term!r}")
        self.class_ids = tuple(class_ids)
        self.empty_class, self.empty_fb_term = empty_class, empty_fb_term
        self.reset()

    def reset(self) -> None:
        count = len(self.class_ids)
        # Integer sums: exact, and so order-independent (sharded evaluation sums to the same numbers).
        self.intersection = torch.zeros(count, dtype=torch.int64)  # foreground, per class
        self.union = torch.zeros(count, dtype=torch.int64)
        self.episodes = torch.zeros(count, dtype=torch.int64)
        self.pooled = torch.zeros(2, 2, dtype=torch.int64)  # [background, foreground] x [intersection, union]
        # Each episode's counts in the order of the updates: [E, 5] chunks of RECORD_COLUMNS (five ints an episode).
        self._counts: list[torch.Tensor] = []

    def update(self, pred: torch.Tensor, target: torch.Tensor, class_id) -> None:
        """``pred`` [B, H, W] in {0, 1}; ``target`` [B, H, W] in {0, 1, 255}; ``class_id`` [B] (or an int for B = 1)."""
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.dim() == 2:
            pred, target = pred[None], target[None]
        if pred.dim() != 3 or pred.shape != target.shape:
            raise ValueError(
                f"pred and target must both be [B, H, W], got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        class_id = torch.as_tensor(class_id).reshape(-1)
        if class_id.numel() != pred.shape[0]:
            raise ValueError(f"class_id must hold one class per episode ({pred.shape[0]}), got {class_id.numel()}")
        if not bool(((pred == 0) | (pred == 1)).all()):
            raise ValueError("pred must hold only 0 (background) and 1 (foreground)")
        if not bool(((target == 0) | (target == 1) | (target == IGNORE_LABEL)).all()):
            raise ValueError("target must hold only 0, 1 and 255 (ignore)")
        rows = []
        for c in class_id.tolist():
            if c not in self.class_ids:
                raise ValueError(f"class_id {c} is not one of the meter's classes {self.class_ids}")
            rows.append(self.class_ids.index(c))

        valid = target != IGNORE_LABEL
        pred_fg, target_fg = (pred == 1) & valid, (target == 1) & valid
        pred_bg, target_bg = (pred == 0) & valid, (target == 0) & valid
        fg_inter = (pred_fg & target_fg).flatten(1).sum(1)
        fg_union = (pred_fg | target_fg).flatten(1).sum(1)
        bg_inter = (pred_bg & target_bg).flatten(1).sum(1)
        bg_union = (pred_bg | target_bg).flatten(1).sum(1)

        rows = torch.tensor(rows)
        self.intersection.index_add_(0, rows, fg_inter)
        self.union.index_add_(0, rows, fg_union)
        self.episodes.index_add_(0, rows, torch.ones_like(rows))
        background = torch.stack([bg_inter.sum(), bg_union.sum()])
        foreground = torch.stack([fg_inter.sum(), fg_union.sum()])
        self.pooled += torch.stack([background, foreground])
        classes = class_id.to(torch.int64)
        self._counts.append(torch.stack([classes, bg_inter, bg_union, fg_inter, fg_union], 1).to(torch.int64))

    def merge(self, other: FewShotMeter) -> FewShotMeter:
        """Add another meter's episodes (same classes) to this one: evaluation sharded over processes."""
        if other.class_ids != self.class_ids:
            raise ValueError(f"cannot merge meters of different classes: {self.class_ids} vs {other.class_ids}")
        if (other.empty_class, other.empty_fb_term) != (self.empty_class, self.empty_fb_term):
            raise ValueError(
                "cannot merge meters of different conventions: "
                f"{(self.empty_class, self.empty_fb_term)} vs {(other.empty_class, other.empty_fb_term)}"
            )
        self.intersection += other.intersection
        self.union += other.union
        self.episodes += other.episodes
        self.pooled += other.pooled
        self._counts.extend(other._counts)
        return self

    def counts(self) -> torch.Tensor:
        """Each episode's counts, in the order they were added: int64 ``[episodes, 5]``, the columns
        :data:`RECORD_COLUMNS` (class id, then background and foreground intersection and union)."""
        if not self._counts:
            return torch.zeros(0, len(RECORD_COLUMNS), dtype=torch.int64)
        return torch.cat(self._counts)

    def records(self) -> list[dict]:
        """Each episode's record (:func:`episode_record`), in the order the episodes were added."""
        return [episode_record(*row) for row in self.counts().tolist()]

    @property
    def episode_ious(self) -> list[float]:
        """The foreground IoU of each episode with a non-empty foreground union, in order."""
        return [fg_inter / fg_union for _, _, _, fg_inter, fg_union in self.counts().tolist() if fg_union > 0]

    def compute(self) -> dict:
        """``{"miou", "fb_iou", "class_iou": {c: iou}, "episode_miou", "episodes", "class_episodes"}``."""
        return _scores(
            self.class_ids,
            self.intersection.tolist(),
            self.union.tolist(),
            self.episodes.tolist(),
            self.pooled.tolist(),
            self.episode_ious,
            self.empty_class,
            self.empty_fb_term,
            warn=True,
        )


# The columns of FewShotMeter.counts(): an episode's class and its pixel counts, [background, foreground].
RECORD_COLUMNS = ("class_id", "bg_intersection", "bg_union", "fg_intersection", "fg_union")


def episode_record(class_id: int, bg_inter: int, bg_union: int, fg_inter: int, fg_union: int) -> dict:
    """One episode's scores as ``episodes.jsonl`` stores them: ``{"class_id", "intersection": [background,
    foreground], "union": [background, foreground], "iou"}`` (pixel counts; ``iou``: the foreground IoU, None
    when the foreground union is empty)."""
    return {
        "class_id": int(class_id),
        "intersection": [int(bg_inter), int(fg_inter)],
        "union": [int(bg_union), int(fg_union)],
        "iou": fg_inter / fg_union if fg_union > 0 else None,
    }


def metrics_from_records(
    records, classes: Sequence[int], empty_class: str = "skip", empty_fb_term: str = "skip", warn: bool = False
) -> dict:
    """The metrics of one evaluation seed recomputed from its episode records (:func:`episode_record`, e.g. the
    lines of ``episodes.jsonl`` of that seed, in episode order): what :meth:`FewShotMeter.compute` gave for those
    episodes, to the bit. ``classes``: the fold's test classes (the card's ``test_classes``); ``empty_class`` and
    ``empty_fb_term``: the conventions the evaluation scored with (:class:`FewShotMeter`)."""
    classes = tuple(int(c) for c in classes)
    if empty_class not in EMPTY_CLASS:
        raise ValueError(f"empty_class must be one of {sorted(EMPTY_CLASS)}, got {empty_class!r}")
    if empty_fb_term not in EMPTY_FB_TERM:
        raise ValueError(f"empty_fb_term must be one of {sorted(EMPTY_FB_TERM)}, got {empty_fb_term!r}")
    row = {c: n for n, c in enumerate(classes)}
    intersection, union, episodes = [0] * len(classes), [0] * len(classes), [0] * len(classes)
    pooled = [[0, 0], [0, 0]]  # [background, foreground] x [intersection, union]
    episode_ious = []
    for number, record in enumerate(records):
        c = int(record["class_id"])
        if c not in row:
            raise ValueError(f"record {number}: class {c} is not one of the classes {classes}")
        (bg_inter, fg_inter), (bg_union, fg_union) = record["intersection"], record["union"]
        intersection[row[c]] += fg_inter
        union[row[c]] += fg_union
        episodes[row[c]] += 1
        pooled[0][0] += bg_inter
        pooled[0][1] += bg_union
        pooled[1][0] += fg_inter
        pooled[1][1] += fg_union
        if fg_union > 0:
            episode_ious.append(fg_inter / fg_union)
    return _scores(classes, intersection, union, episodes, pooled, episode_ious, empty_class, empty_fb_term, warn)


def _scores(classes, intersection, union, episodes, pooled, episode_ious, empty_class, empty_fb_term, warn) -> dict:
    """The metrics from the integer sums (per class, and pooled ``[background, foreground] x [intersection,
    union]``) and the episodes' foreground IoUs: one computation for the meter and for the records."""
    empty = math.nan if empty_class == "skip" else 0.0
    class_iou = {}
    for c, inter, total in zip(classes, intersection, union, strict=True):
        class_iou[c] = inter / total if total > 0 else empty
    missing = [c for c, iou in class_iou.items() if math.isnan(iou)]
    if missing and warn:
        reason = "no episode or an empty foreground union"
        warnings.warn(f"classes {missing} have no IoU ({reason}): left out of the mIoU", stacklevel=3)
    scored = [iou for iou in class_iou.values() if not math.isnan(iou)]
    if empty_fb_term == "skip":
        fb = [inter / total for inter, total in pooled if total > 0]
    elif empty_fb_term == "zero":
        fb = [inter / total if total > 0 else 0.0 for inter, total in pooled]
    else:
        fb = [inter / total if total > 0 else math.nan for inter, total in pooled]
    return {
        "miou": sum(scored) / len(scored) if scored else math.nan,
        "fb_iou": sum(fb) / len(fb) if fb else math.nan,
        "class_iou": class_iou,
        "episode_miou": sum(episode_ious) / len(episode_ious) if episode_ious else math.nan,
        "episodes": int(sum(episodes)),
        "class_episodes": dict(zip(classes, (int(n) for n in episodes), strict=True)),
    }


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval over independent runs (seeds).

    One value gives a half-width of NaN: a single run says nothing about the spread.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_ci needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, student_t_quantile(0.5 + confidence / 2, n - 1) * math.sqrt(variance / n)


def student_t_quantile(probability: float, dof: int) -> float:
    """Inverse CDF of Student's t with ``dof`` degrees of freedom (bisection on the CDF below)."""
    if not 0.5 <= probability < 1:
        raise ValueError(f"probability must be in [0.5, 1), got {probability!r}")
    low, high = 0.0, 1.0
    while student_t_cdf(high, dof) < probability:
        high *= 2
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if student_t_cdf(middle, dof) < probability else (low, middle)
    return (low + high) / 2


def student_t_cdf(t: float, dof: int) -> float:
    """CDF of Student's t: ``1 - I_x(dof/2, 1/2) / 2`` for t >= 0, with x = dof / (dof + t²)."""
    x = dof / (dof + t * t)
    tail = 0.5 * _regularized_incomplete_beta(x, dof / 2, 0.5)
    return 1 - tail if t >= 0 else tail


def _regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) by its continued fraction (modified Lentz), using the symmetry for fast convergence."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1 - _regularized_incomplete_beta(1 - x, b, a)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return math.exp(log_front) * fraction / a
