"""One-episode inference from images as users hold them, and reading photos the way a viewer shows them."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import as_size
from .data.transforms import image_to_tensor, mask_to_tensor, normalize, resize_image, resize_mask
from .files import first_line


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
    support_images, support_masks = support_lists(support_images, support_masks)
    size = input_size(model, image_size)
    query_batch, original_size = prepare_query(query_image, "query_image", size)
    support_batch, mask_batch = prepare_supports(model, support_images, support_masks, size)
    device, dtype = _placement(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(query_batch[None].to(device, dtype), support_batch, mask_batch).logits  # [1, 2, H, W]
    finally:
        model.train(was_training)
    return mask_at(logits, original_size)


def support_lists(support_images, support_masks) -> tuple[list, list]:
    """One support or a sequence of K -> two lists of K, or a ``ValueError`` naming the argument."""
    support_images = _as_list(support_images)
    support_masks = _as_list(support_masks)
    if len(support_masks) != len(support_images):
        raise ValueError(
            f"support_masks: expected one mask per support image ({len(support_images)}), got {len(support_masks)}"
        )
    if not support_images:
        raise ValueError("support_images: at least one support image is needed")
    return support_images, support_masks


def input_size(model: nn.Module, image_size) -> tuple[int, int]:
    """The network input size (H, W): ``image_size``, else ``model.config.image_size``."""
    return as_size(image_size if image_size is not None else model.config.image_size, "image_size")


def prepare_supports(model: nn.Module, support_images: list, support_masks: list, size, stacklevel: int = 3):
    """:func:`predict`'s supports (from :func:`support_lists`) as the network takes them at ``size``:
    [1, K, 3, H, W] normalised images and [1, K, H, W] labels, on the model's device. Errors name the
    argument; a mask without an object pixel is a warning (at ``stacklevel``: the public function's caller)."""
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
                stacklevel=stacklevel,
            )
        shots_images.append(resize_image(image, size))
        shots_masks.append(resize_mask(mask, size))
    device, dtype = _placement(model)
    support_batch = normalize(torch.stack(shots_images))[None].to(device, dtype)  # [1, K, 3, H, W]
    mask_batch = torch.stack(shots_masks)[None].to(device)  # [1, K, H, W]
    return support_batch, mask_batch


def prepare_query(image, name: str, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """A query as :func:`predict` takes it -> ([3, H, W] normalised at the network input ``size``, on the CPU;
    its own size (H, W)). Errors name ``name``."""
    query = image_to_tensor(image, name)
    return normalize(resize_image(query, size)), tuple(query.shape[-2:])


def mask_at(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """One query's logits [1, 2, h, w] -> its uint8 mask {0, 1} at ``size`` (H, W), the query's own."""
    # The inverse of resize_image's mapping (pixel centres), back to the query's own size.
    logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def _placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def _as_list(value) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return list(value)
    return [value]


# --- photos ---------------------------------------------------------------------------------------

# The most pixels a photo may have unless the caller allows more (``sst-fast predict --max-pixels``): 100
# megapixels is well above any camera's, and a PNG that claims more is more likely a decompression bomb.
DEFAULT_MAX_PIXELS = 100_000_000


class PhotoError(ValueError):
    """A photo that cannot be read: not an image, damaged, or over the pixel limit."""


@contextlib.contextmanager
def open_photo(path, name: str = "image", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Iterator:
    """The PIL image of ``path`` as a photo viewer shows it: its EXIF orientation applied (a phone's portrait
    photo is stored landscape with a rotation tag). ``max_pixels`` (None: no limit) is checked from the file's
    header, before any pixel is decoded; every failure is a :class:`PhotoError` naming ``name`` and the file.

    The data set readers (:mod:`sst_fast.data`) do not use it: their images are read as stored, so that
    training data, caches and manifests stay what they are."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # PIL's own check runs in open(); ours, below, has its own message
    try:
        image = Image.open(path)
    except (UnidentifiedImageError, OSError) as error:
        raise PhotoError(f"{name} {path} is not a readable image ({first_line(error)})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    with image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise PhotoError(
                f"{name} {path} is {width}x{height} ({width * height / 1e6:.1f} megapixels), over the limit of "
                f"{max_pixels / 1e6:g} megapixels: raise it (--max-pixels) to read it"
            )
        try:
            image.load()
            shown = ImageOps.exif_transpose(image)
        except (OSError, ValueError, SyntaxError) as error:  # truncated or damaged data, a bad EXIF block
            raise PhotoError(f"{name} {path} is not a readable image ({first_line(error)})") from None
        yield shown


EXIF_ORIENTATION = 0x0112


def stored_size_and_orientation(path) -> tuple[tuple[int, int] | None, int | None]:
    """A photo's size as stored in its file, ``(H, W)``, and its EXIF orientation tag (1 upright, 3 turned
    180°, 6 and 8 turned 90°, 2/4/5/7 mirrored; None without one); ``(None, None)`` for an unreadable file.
    What :func:`open_photo` turns the photo by, for messages about it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return (image.height, image.width), image.getexif().get(EXIF_ORIENTATION)
    except (OSError, ValueError, SyntaxError):
        return None, None


def read_photo(path, name: str = "image", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A photo file -> uint8 [H, W, 3] RGB, as a viewer shows it (:func:`open_photo`): 16-bit and 32-bit grey
    scaled to 8 bits (not clipped to white), palette and grey images expanded, transparency over white."""
    with open_photo(path, name, max_pixels) as image:
        return photo_rgb(image)


def photo_rgb(image) -> np.ndarray:
    """A PIL image of any mode -> uint8 [H, W, 3] (a writable copy)."""
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        grey = grey_to_uint8(np.asarray(image))
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.array(image.convert("RGB"))


def grey_to_uint8(values: np.ndarray) -> np.ndarray:
    """Grey levels of a wide type -> uint8 as a viewer maps them: 16-bit integers by their full range
    (65535 -> 255), floats in [0, 1] by 255, 8-bit values as they are."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        finite = np.nan_to_num(values.astype(np.float64), nan=0.0)
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        return np.clip(np.rint(finite * scale), 0, 255).astype(np.uint8)
    if values.dtype.itemsize == 1:
        return values.astype(np.uint8)
    sixteen_bit = values.dtype.kind == "u" and values.dtype.itemsize == 2
    if not sixteen_bit and values.size and values.max() <= 255:  # a 32-bit "I" image holding 8-bit levels
        return np.clip(values, 0, 255).astype(np.uint8)
    return np.clip(np.rint(values.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
