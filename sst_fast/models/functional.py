"""Small functions of the model shared by the reference and the fast path: init, masks, losses, fusion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import IGNORE_LABEL


def init_head(module: nn.Module) -> None:
    """Kaiming-normal (fan in, ReLU) convolutions with zero bias for the head's layers.

    PyTorch's default convolution init shrinks the signal by about 3x per layer, so through the
    ~10 layers of embed + relation + decoder an untrained head outputs almost the same logits
    everywhere; Kaiming init keeps the signal's scale from layer to layer.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def downsample_mask(labels: torch.Tensor, size: tuple[int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The object mask ``labels == 1`` [N, H, W] resized bilinearly (align_corners) to [N, 1, *size].

    Ignore pixels (255) count as background, so they never enter a prototype.
    """
    foreground = (labels == 1).to(dtype).unsqueeze(1)
    return F.interpolate(foreground, size=tuple(size), mode="bilinear", align_corners=True)


def per_image_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over each image's non-ignored pixels: [N, 2, H, W], [N, H, W] -> [N].

    An image with no valid pixel contributes 0 (not NaN). Per image, so that an episode's loss
    and its inner gradient do not depend on the other episodes in the batch.
    """
    pixel_loss = F.cross_entropy(logits, labels.long(), ignore_index=IGNORE_LABEL, reduction="none")
    valid = (labels != IGNORE_LABEL).sum((1, 2)).clamp_min(1)
    return pixel_loss.sum((1, 2)) / valid.to(pixel_loss.dtype)


def foreground_iou(prediction: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Foreground IoU per image, ignore pixels excluded: [N, H, W] {0,1}, [N, H, W] {0,1,255} -> [N].

    0 when the union is empty (an empty support mask with an empty prediction carries no evidence).
    """
    valid = labels != IGNORE_LABEL
    predicted = (prediction == 1) & valid
    target = labels == 1
    intersection = (predicted & target).sum((1, 2))
    union = (predicted | target).sum((1, 2))
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.zeros(union.shape, device=union.device))


def fusion_weights(ious: torch.Tensor) -> torch.Tensor:
    """Eq. 14's weights: IoUs [B, K] normalised to sum to 1 per episode; uniform where all are 0."""
    total = ious.sum(1, keepdim=True)
    uniform = torch.full_like(ious, 1.0 / ious.shape[1])
    return torch.where(total > 0, ious / total.clamp_min(torch.finfo(ious.dtype).tiny), uniform)


def fuse(relations: torch.Tensor, fusion: str, weights: torch.Tensor | None) -> torch.Tensor:
    """K relation maps [B, K, C, h, w] -> one [B, C, h, w]: weighted/averaged sum, or element-wise max."""
    if fusion == "max":
        return relations.amax(1)
    return (weights.to(relations.dtype)[:, :, None, None, None] * relations).sum(1)
