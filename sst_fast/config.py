"""One dataclass configures the model: every stage reads what it needs from it."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

BACKBONES = ("resnet50", "resnet50_deep", "vgg16", "tiny")
FUSIONS = ("weighted", "average", "max")
TUNE_FORMS = ("paper", "relative")
# The label of pixels that count nowhere (object borders in VOC labels, padding): the losses ignore them, the
# metrics leave them out, augmentation fills with it. One constant for the data, the model and the metrics.
IGNORE_LABEL = 255


@dataclasses.dataclass
class SSTConfig:
    """Configuration of :class:`sst_fast.SST` and :class:`sst_fast.reference.SSTReference`.

    Attributes:
        backbone: ``"resnet50"`` (the paper's main setting), ``"resnet50_deep"`` (the deep-stem ResNet-50 of
            PSPNet/PFENet's ``resnet50_v2.pth``), ``"vgg16"`` or ``"tiny"`` (CPU-sized).
        backbone_weights: local path of a torchvision-format state dict, or ``None`` (random init).
        freeze_backbone: freeze the backbone and keep its BatchNorm in eval mode. ``None`` means
            frozen for ``resnet50``/``vgg16`` (pretrained features) and trained for ``tiny``.
        shots: K, the number of support images per episode used for training and sampling. The
            model itself accepts any K at call time.
        channels: width of the embedding, relation and decoder (256: PFENet's; the paper states none).
        ssm: the self-supervised tuning module (paper Table 1 "+SSM"); off means ``M = fm(Rq, p)``.
        aux_loss: add the self-segmentation loss to the training loss (paper §4.4, "+SS Loss").
        aux_weight: lambda, the weight of the auxiliary loss.
        fusion: K-shot fusion of the relation maps: ``"weighted"`` (IoU, Eq. 14), ``"average"``, ``"max"``.
        tune_step: alpha of Eq. 11, ``R's = Rs - alpha * dLsup/dRs``. The default is the paper's, 1.0
            with ``tune_form="paper"`` (docs/design.md §2); this project's variant is 0.1 ``"relative"``
            (the synthetic configuration's, chosen on synthetic data only: docs/step-study.md).
        tune_form: how ``tune_step`` sets the step (:mod:`sst_fast.models.tuning`): ``"paper"`` (default),
            alpha as written; ``"relative"``, a per-shot step that moves the prototype by the fraction
            ``tune_step`` of its norm (``p' = p - alpha |p| g / |g|``, ``g = pool(dLsup/dRs)``),
            independent of the image size and the feature scale. A checkpoint saved before this
            setting existed loads as ``"paper"``.
        learnable_step: learn alpha as a positive scalar initialised at ``tune_step``.
        first_order: do not back-propagate through the inner gradient (cheaper, approximate).
        dropout: Dropout2d probability in the encoder, relation and decoder (CANet: 0.5).
        eps: the pooling epsilon, ``p = sum(F m) / (sum(m) + eps)``.
        image_size: network input size (H, W) used by :func:`sst_fast.predict` and the data pipeline.
        check_inputs: validate shapes, dtypes and label values on every forward (costs a device sync;
            turn off for captured/compiled training loops once the data pipeline is trusted).
    """

    backbone: str = "resnet50"
    backbone_weights: str | None = None
    freeze_backbone: bool | None = None
    shots: int = 1
    channels: int = 256
    ssm: bool = True
    aux_loss: bool = True
    aux_weight: float = 1.0
    fusion: str = "weighted"
    tune_step: float = 1.0
    tune_form: str = "paper"
    learnable_step: bool = False
    first_order: bool = False
    dropout: float = 0.5
    eps: float = 5e-4
    image_size: tuple[int, int] | int = (321, 321)
    check_inputs: bool = True

    def __post_init__(self) -> None:
        self.image_size = as_size(self.image_size, "SSTConfig.image_size")
        _require(self.backbone in BACKBONES, "backbone", f"one of {BACKBONES}", self.backbone)
        _require(self.fusion in FUSIONS, "fusion", f"one of {FUSIONS}", self.fusion)
        _require(self.tune_form in TUNE_FORMS, "tune_form", f"one of {TUNE_FORMS}", self.tune_form)
        _require(_is_int(self.shots) and self.shots >= 1, "shots", "an integer >= 1", self.shots)
        _require(_is_int(self.channels) and self.channels >= 1, "channels", "an integer >= 1", self.channels)
        _require(_finite(self.aux_weight) and self.aux_weight >= 0, "aux_weight", "a finite number >= 0",
                 self.aux_weight)
        if self.learnable_step:
            _require(_finite(self.tune_step) and self.tune_step > 0, "tune_step",
                     "a finite number > 0 when learnable_step=True", self.tune_step)
        else:
            _require(_finite(self.tune_step) and self.tune_step >= 0, "tune_step", "a finite number >= 0",
                     self.tune_step)
        _require(_finite(self.dropout) and 0 <= self.dropout < 1, "dropout", "a number in [0, 1)", self.dropout)
        _require(_finite(self.eps) and self.eps > 0, "eps", "a finite number > 0", self.eps)
        for flag in ("ssm", "aux_loss", "learnable_step", "first_order", "check_inputs"):
            _require(isinstance(getattr(self, flag), bool), flag, "True or False", getattr(self, flag))
        _require(self.freeze_backbone is None or isinstance(self.freeze_backbone, bool), "freeze_backbone",
                 "True, False or None", self.freeze_backbone)
        _require(self.backbone_weights is None or isinstance(self.backbone_weights, (str, os.PathLike)),
                 "backbone_weights", "a path or None", self.backbone_weights)
        if self.freeze_backbone is None:
            self.freeze_backbone = self.backbone != "tiny"

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON/YAML-serialisable dict (``image_size`` as a list)."""
        values = dataclasses.asdict(self)
        values["image_size"] = list(self.image_size)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SSTConfig:
        """The inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"SSTConfig: unknown field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**values)


def as_size(value: Any, name: str) -> tuple[int, int]:
    """An image size given as ``n`` or ``(h, w)`` -> ``(h, w)``; anything else is an error naming ``name``."""
    if _is_int(value):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(_is_int(s) and s >= 1 for s in value):
        raise ValueError(f"{name} must be an integer or a pair of integers >= 1, got {value!r}")
    return tuple(value)


# The most episodes (per epoch, per validation, per evaluation seed, per batch) and epochs anything may ask for:
# ten thousand times the paper's 1,000 test episodes, over a hundred times COCO's ~80,000 training images per
# epoch. A larger number is a typo, and would hang drawing episodes while the memory grows.
MAX_COUNT = 10**7


def positive_int(value: Any, name: str) -> int:
    """``value`` if it is an integer >= 1 (not a bool); anything else is an error naming ``name``."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(ok: bool, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise ValueError(f"SSTConfig.{name} must be {expected}, got {got!r}")
