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
        self.episode_ious: list[float] = []

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
        for inter, union in zip(fg_inter.tolist(), fg_union.tolist(), strict=True):
            if union > 0:
                self.episode_ious.append(inter / union)

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
        self.episode_ious.extend(other.episode_ious)
        return self

    def compute(self) -> dict:
        """``{"miou", "fb_iou", "class_iou": {c: iou}, "episode_miou", "episodes", "class_episodes"}``."""
        empty = math.nan if self.empty_class == "skip" else 0.0
        class_iou = {}
        for c, inter, union in zip(self.class_ids, self.intersection.tolist(), self.union.tolist(), strict=True):
            class_iou[c] = inter / union if union > 0 else empty
        missing = [c for c, iou in class_iou.items() if math.isnan(iou)]
        if missing:
            reason = "no episode or an empty foreground union"
            warnings.warn(f"classes {missing} have no IoU ({reason}): left out of the mIoU", stacklevel=2)
        scored = [iou for iou in class_iou.values() if not math.isnan(iou)]
        terms = self.pooled.tolist()  # [background, foreground] x [intersection, union]
        if self.empty_fb_term == "skip":
            fb = [inter / union for inter, union in terms if union > 0]
        elif self.empty_fb_term == "zero":
            fb = [inter / union if union > 0 else 0.0 for inter, union in terms]
        else:
            fb = [inter / union if union > 0 else math.nan for inter, union in terms]
        return {
            "miou": sum(scored) / len(scored) if scored else math.nan,
            "fb_iou": sum(fb) / len(fb) if fb else math.nan,
            "class_iou": class_iou,
            "episode_miou": sum(self.episode_ious) / len(self.episode_ious) if self.episode_ious else math.nan,
            "episodes": int(self.episodes.sum()),
            "class_episodes": dict(zip(self.class_ids, self.episodes.tolist(), strict=True)),
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
