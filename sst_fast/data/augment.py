"""Training augmentation on tensors (CANet/PFENet style): random scale, rotation, flip, crop.

Works on one ImageNet-normalised image [3, H, W] and its mask [H, W] (0, 1, 255) at a time and
keeps the ignore label honest: masks are only ever sampled with nearest neighbour (no label is
blended into another), and every output pixel that comes from outside the source image (rotation
corners, crop padding) is 255 in the mask and 0 in the normalised image (the ImageNet mean colour).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import as_size
from ..config import IGNORE_LABEL


@dataclass(frozen=True)
class Augment:
    """``size``: output (H, W). The image is first resized to ``size`` times a factor drawn from
    ``scale`` (per image), rotated by an angle in ``[-rotate, rotate]`` degrees, flipped left-right
    with probability 1/2 when ``flip``, then cropped at a random offset (padded where smaller) to ``size``.
    """

    size: tuple[int, int]
    scale: tuple[float, float] = (0.9, 1.1)
    rotate: float = 10.0
    flip: bool = True

    def __post_init__(self):
        object.__setattr__(self, "size", as_size(self.size, "Augment.size"))
        low, high = self.scale
        if not 0 < low <= high:
            raise ValueError(f"Augment.scale must be (low, high) with 0 < low <= high, got {self.scale!r}")
        if not 0 <= self.rotate <= 180:
            raise ValueError(f"Augment.rotate must be in [0, 180] degrees, got {self.rotate!r}")

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None):
        """[3, H, W] float, [H, W] long -> [3, *size], [*size]."""
        if image.dim() != 3 or mask.shape != image.shape[1:]:
            shapes = f"{tuple(image.shape)} and {tuple(mask.shape)}"
            raise ValueError(f"Augment: image must be [3, H, W] and mask [H, W] of the same size, got {shapes}")
        low, high = self.scale
        factor = low + (high - low) * _uniform(generator)
        scaled = (max(1, round(self.size[0] * factor)), max(1, round(self.size[1] * factor)))
        image = F.interpolate(image[None], size=scaled, mode="bilinear", align_corners=False)[0]
        mask = F.interpolate(mask[None, None].float(), size=scaled, mode="nearest-exact")[0, 0]

        if self.rotate > 0:
            angle = math.radians(self.rotate * (2 * _uniform(generator) - 1))
            image, mask = _rotate(image, mask, angle)
        if self.flip and _uniform(generator) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        image, mask = _crop(image, mask, self.size, generator)
        return image.contiguous(), mask.long().contiguous()


def _uniform(generator) -> float:
    return float(torch.rand((), generator=generator))


def _rotate(image: torch.Tensor, mask: torch.Tensor, angle: float):
    """Rotate about the centre; pixels from outside the source get image 0 and mask 255."""
    height, width = image.shape[1:]
    cos, sin = math.cos(angle), math.sin(angle)
    # affine_grid works in normalised coordinates: correct for the aspect ratio so the rotation is rigid.
    theta = torch.tensor([[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]], dtype=image.dtype)
    grid = F.affine_grid(theta[None], [1, 1, height, width], align_corners=False)
    image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    inside = F.grid_sample(torch.ones(1, 1, height, width), grid.float(), mode="nearest", align_corners=False)[0, 0]
    mask = F.grid_sample(mask[None, None], grid.float(), mode="nearest", align_corners=False)[0, 0]
    mask = torch.where(inside > 0.5, mask, torch.full_like(mask, IGNORE_LABEL))
    return image, mask


def _crop(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int], generator):
    """Random crop to ``size``; where the source is smaller it is padded (image 0, mask 255) at a random offset."""
    out_image = image.new_zeros((image.shape[0], *size))
    out_mask = mask.new_full(size, IGNORE_LABEL)
    spans = []
    for source, target in zip(image.shape[1:], size, strict=True):
        offset = int(torch.randint(abs(source - target) + 1, (), generator=generator))
        if source >= target:  # crop: take target pixels starting at offset
            spans.append((slice(offset, offset + target), slice(0, target)))
        else:  # pad: place the whole source at offset
            spans.append((slice(0, source), slice(offset, offset + source)))
    (src_rows, dst_rows), (src_cols, dst_cols) = spans
    out_image[:, dst_rows, dst_cols] = image[:, src_rows, src_cols]
    out_mask[dst_rows, dst_cols] = mask[src_rows, src_cols]
    return out_image, out_mask
