"""Conversions from what users hold (PIL images, numpy arrays) to the model's tensors."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# ImageNet statistics: every backbone here is ImageNet-pretrained in torchvision's convention.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_to_tensor(image, name: str = "image") -> torch.Tensor:
    """A PIL image, or an [H, W, 3] / [H, W] numpy array (uint8, or float in [0, 1]) -> float [3, H, W] in [0, 1]."""
    array = _as_array(image, name, rgb=True)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"{name} must be an RGB image [H, W, 3] (or grayscale [H, W]), got shape {array.shape}")
    array = array[:, :, :3]
    if min(array.shape[:2]) < 1:
        raise ValueError(f"{name} is empty: shape {array.shape}")
    if array.dtype == np.uint8:
        tensor = torch.from_numpy(_writable(array)).float().div_(255)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(f"{name}: a floating-point image must hold finite values in [0, 1]")
        tensor = torch.from_numpy(_writable(array.astype(np.float32, copy=False)))
    else:
        raise ValueError(f"{name} must be uint8 or floating point, got {array.dtype}")
    return tensor.permute(2, 0, 1).contiguous()


def mask_to_tensor(mask, name: str = "mask") -> torch.Tensor:
    """A PIL mask or [H, W] array with labels 0/1/255 (or bool) -> uint8 [H, W]."""
    array = _as_array(mask, name, rgb=False)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a single-channel mask [H, W], got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    invalid = ~np.isin(array, (0, 1, 255))
    if invalid.any():
        raise ValueError(
            f"{name} must hold only 0 (background), 1 (object) and 255 (ignore), found {array[invalid][0]!r}"
        )
    return torch.from_numpy(_writable(array.astype(np.uint8, copy=False)))


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] in [0, 1] -> ImageNet-normalised."""
    mean = images.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = images.new_tensor(IMAGENET_STD)[:, None, None]
    return (images - mean) / std


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[3, H, W] -> [3, *size], bilinear."""
    return F.interpolate(image[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


def resize_mask(mask: torch.Tensor, size: tuple[int, int], mode: str = "nearest-exact") -> torch.Tensor:
    """[H, W] labels -> [*size], nearest on pixel centres like :func:`resize_image` (labels are never blended).
    ``mode="nearest"``: PyTorch's older rule (source index floor(i * in / out)), which HSNet scores with."""
    return F.interpolate(mask[None, None].float(), size=tuple(size), mode=mode)[0, 0].to(mask.dtype)


def _writable(array: np.ndarray) -> np.ndarray:
    """A contiguous array torch can wrap without warning: read-only arrays (np.asarray of a PIL image) are copied."""
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()


def _as_array(value, name: str, rgb: bool) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if Image is not None and isinstance(value, Image.Image):
        # np.array (not asarray): a writable copy, which torch.from_numpy accepts without a warning.
        if rgb:
            return np.array(value.convert("RGB"))
        if value.mode not in ("L", "P", "1", "I", "I;16"):
            raise ValueError(f"{name} must be a single-channel PIL image (mode L or P), got mode {value.mode}")
        return np.array(value)
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: pass a PIL image or a numpy array (tensors go to the model directly)")
    raise TypeError(f"{name} must be a PIL image or a numpy array, got {type(value).__name__}")
