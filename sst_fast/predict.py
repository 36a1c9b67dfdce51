"""One-episode inference from images as users hold them."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import as_size
from .data.transforms import image_to_tensor, mask_to_tensor, normalize, resize_image, resize_mask


def predict(
    model: nn.Module,
    query_image,
    support_images,
    support_masks,
    image_size: int | tuple[int, int] | None = None,
) -> np.ndarray:
    """Segment ``query_image`` given K annotated support images; returns a uint8 mask {0, 1}.

    Args:
        model: an :class:`sst_fast.SST` (or :class:`~sst_fast.reference.SSTReference`).
        query_image: PIL image or [H, W, 3] array (uint8, or float in [0, 1]).
        support_images: one image or a sequence of K images.
        support_masks: one mask or a sequence of K masks, labels 0/1/255 (or bool).
        image_size: network input size; defaults to ``model.config.image_size``.

    Returns:
        [H, W] uint8 mask at the query's original size (1 = object).
    """
    support_images = _as_list(support_images)
    support_masks = _as_list(support_masks)
    if len(support_masks) != len(support_images):
        raise ValueError(
            f"support_masks: expected one mask per support image ({len(support_images)}), got {len(support_masks)}"
        )
    if not support_images:
        raise ValueError("support_images: at least one support image is needed")
    size = as_size(image_size if image_size is not None else model.config.image_size, "image_size")

    query = image_to_tensor(query_image, "query_image")
    original_size = tuple(query.shape[-2:])
    shots_images, shots_masks = [], []
    for index, (image, mask) in enumerate(zip(support_images, support_masks, strict=True)):
        image = image_to_tensor(image, f"support_images[{index}]")
        mask = mask_to_tensor(mask, f"support_masks[{index}]")
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise ValueError(
                f"support_masks[{index}] has size {tuple(mask.shape)} but its image is {tuple(image.shape[-2:])}"
            )
        if not (mask == 1).any():
            warnings.warn(
                f"support_masks[{index}] has no object pixel (label 1): its prototype is zero. "
                "Labels are 0 background, 1 object, 255 ignore; a binary mask stored as 0/255 must be "
                "divided by 255 first.",
                stacklevel=2,
            )
        shots_images.append(resize_image(image, size))
        shots_masks.append(resize_mask(mask, size))

    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    query_batch = normalize(resize_image(query, size))[None].to(device, dtype)  # [1, 3, H, W]
    support_batch = normalize(torch.stack(shots_images))[None].to(device, dtype)  # [1, K, 3, H, W]
    mask_batch = torch.stack(shots_masks)[None].to(device)  # [1, K, H, W]

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(query_batch, support_batch, mask_batch).logits  # [1, 2, H, W]
            # The inverse of resize_image's mapping (pixel centres), back to the query's own size.
            logits = F.interpolate(logits.float(), size=original_size, mode="bilinear", align_corners=False)
    finally:
        model.train(was_training)
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def _as_list(value) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return list(value)
    return [value]
