"""The embedded default few-shot data set: procedural, deterministic, no download.

:class:`SyntheticDataset` renders small RGB scenes (128×128 by default) with VOC-convention labels,
laid out like PASCAL-5i: 20 object classes in 4 folds of 5 (fold i tests classes ``5i+1 .. 5i+5``
and trains on the other 15), a ``"train"`` and a ``"val"`` image split.

**What makes a class.** A class is a combination of three appearance cues:

- a *shape family*: ellipse, box, triangle, cross or star;
- a *texture pattern* in the object's own frame: stripes, checks, dots or rings;
- a two-colour *palette*: red/yellow, blue/orange, green/magenta, cyan/purple or lime/navy
  (the texture alternates between the palette's two colours).

Class ``k = 5f + j + 1`` (``f = 0..3``, ``j = 0..4``) has shape ``j``, texture ``(f + j) mod 4`` and
palette ``(shape + texture) mod 5``. The 20 (shape, texture) pairs are all different, and any two
classes differ in at least two of the three cues: no single cue identifies a class (each shape is
shared by 4 classes, each texture by 5, each palette by 4), but any two of them do. Each fold's
novel classes use all five shapes, so no fold is "the fold of one cue".

**How instances vary.** Size (equal-area across shapes: an object covers about 2.5-11% of the
image whatever its shape, so size says nothing about the class), position, rotation (uniform), aspect
ratio (stretch up to 1.6), texture period and phase, colour (brightness and per-channel jitter of
both palette colours), partial occlusion by objects drawn later, truncation at the image border,
and per-pixel noise. Position and size are drawn the same way for every class.

**Scenes.** Every image holds objects of 2-4 different classes (one of them sometimes twice), so
any target sits among distractors of other classes, on an unlabelled, cluttered background: a
mottled low-saturation colour field with soft blobs and thin lines. The clutter is desaturated and
untextured, unlike every class, so it never looks like an object. Objects are placed so that
each keeps at least 60% of its pixels visible after later objects occlude it.

**Labels** follow VOC: 0 background, the class id 1..20 on object pixels, and 255 on a 2-pixel
ignore band straddling the outline of every object (against the background or another object,
also one of the same class), like VOC's boundary band.

**Determinism.** Image ``"<split>/<index>"`` (e.g. ``"train/000123"``) is a pure function of
``(seed, split, index, image_size)``: its random numbers come from
``np.random.default_rng([seed, split_code, index, stream])``, with one stream for the layout (which
alone determines the label, so :meth:`SyntheticDataset.load_label` skips the image) and one for the
appearance. Geometry and colours use only correctly rounded arithmetic (+, -, ×, ÷, √, floor) on
uniform draws, never platform-dependent transcendental functions, so the renders are bit-identical
on every machine with the same numpy random streams. :data:`GENERATOR_VERSION` changes whenever the
renders change, and with it the fingerprint of the cached index.

**Defaults.** 2000 train and 500 val images: each class is present in about 15% of the images,
i.e. ~300 train and ~75 val images per class (PASCAL-5i's val images per class are of the same
order), plenty for 5-shot episodes, and the whole index builds in a few seconds. The small-object
filter defaults to the PFENet threshold (2·32·32 pixels) taken as a fraction of a ~500×375 VOC
image and scaled to this image area: 179 pixels at 128×128 (:func:`default_min_pixels`); most
objects are well above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config import IGNORE_LABEL
from .base import DEFAULT_MIN_PIXELS, FewShotDataset, Sample
from .splits import FoldSplit, base_classes, fold_classes

# Bumped whenever the same parameters would render different images or labels.
GENERATOR_VERSION = 1

SPLIT_CODES = {"train": 0, "val": 1}
MAX_IMAGES = 999_999  # image ids carry a 6-digit index
MIN_IMAGE_SIZE = 64  # below this the smallest objects would be mostly ignore band
MAX_IMAGE_SIZE = 1024
# The reference image of PFENet's small-object threshold: a typical ~500×375 VOC image.
VOC_IMAGE_AREA = 500 * 375

SHAPES = ("ellipse", "box", "triangle", "cross", "star")
TEXTURES = ("stripes", "checks", "dots", "rings")
# Two colours per palette (RGB, before jitter); the texture alternates between them.
PALETTES = (
    ("red-yellow", (205, 35, 35), (245, 205, 40)),
    ("blue-orange", (35, 75, 215), (245, 140, 25)),
    ("green-magenta", (35, 165, 55), (210, 45, 195)),
    ("cyan-purple", (30, 195, 210), (115, 35, 170)),
    ("lime-navy", (165, 220, 35), (25, 35, 120)),
)

# Instance variation. Lengths are fractions of the image side, or pixels at REFERENCE_SIZE that
# scale with the image, so that a larger image_size renders the same scene at a finer resolution.
REFERENCE_SIZE = 128
RADIUS_RANGE = (0.09, 0.19)  # radius of the disc of equal area: 2.5-11% of the image area
MAX_STRETCH = 1.6  # aspect ratio of the object's frame, drawn in [1, MAX_STRETCH]
CENTRE_RANGE = (0.1, 0.9)  # object centres, per axis
PERIOD_RANGE = (5.0, 7.5)  # texture period, pixels at REFERENCE_SIZE
MIN_VISIBLE = 0.6  # every object keeps this fraction of its pixels after later objects occlude it
MIN_ON_IMAGE = 0.7  # an object keeps this fraction of its area inside the image
DUPLICATE_PROBABILITY = 0.25  # chance of a second instance of one of the image's classes
PLACEMENT_TRIES = 12  # proposals for an optional object before it is dropped
REQUIRED_TRIES = 64  # proposals for each of the two objects every image must hold
BRIGHTNESS_RANGE = (0.8, 1.1)  # one brightness factor for both palette colours of an object
COLOUR_JITTER = 18  # then each colour's channels move independently by up to this many grey levels
LINE_HALF_WIDTH_RANGE = (0.6, 1.3)  # clutter lines, pixels at REFERENCE_SIZE
NOISE = 6  # per-pixel noise amplitude (grey levels)

_LAYOUT_STREAM, _APPEARANCE_STREAM = 0, 1


@dataclass(frozen=True)
class ClassRecipe:
    """The appearance cues that define a class (indices into SHAPES, TEXTURES, PALETTES)."""

    shape: int
    texture: int
    palette: int

    @property
    def name(self) -> str:
        return f"{SHAPES[self.shape]}_{TEXTURES[self.texture]}_{PALETTES[self.palette][0]}"


def _recipe(class_id: int) -> ClassRecipe:
    """Class 5f + j + 1: shape j, texture (f + j) mod 4, palette (shape + texture) mod 5 (module docs)."""
    fold, position = divmod(class_id - 1, 5)
    shape, texture = position, (fold + position) % len(TEXTURES)
    return ClassRecipe(shape, texture, (shape + texture) % len(PALETTES))


CLASS_RECIPES = tuple(_recipe(class_id) for class_id in range(1, 21))
CLASS_NAMES = tuple(recipe.name for recipe in CLASS_RECIPES)


def default_min_pixels(image_size: int) -> int:
    """PFENet's 2·32·32-pixel threshold as a fraction of a ~500×375 image, scaled to ``image_size``²."""
    return round(DEFAULT_MIN_PIXELS * image_size * image_size / VOC_IMAGE_AREA)


# -- shapes ----------------------------------------------------------------------------------------
# Each polygonal shape is a union of convex polygons in a unit frame centred on its centroid,
# every polygon a list of half-planes (a, b, c): inside where a·x + b·y <= c. The vertices come from
# closed forms with square roots only, so they are identical on every platform.


def _half_planes(vertices) -> tuple[tuple[float, float, float], ...]:
    """Counter-clockwise vertices of a convex polygon -> its edges' half-planes."""
    planes = []
    for (x0, y0), (x1, y1) in zip(vertices, vertices[1:] + vertices[:1], strict=True):
        a, b = y1 - y0, x0 - x1  # outward normal of a counter-clockwise edge
        planes.append((a, b, a * x0 + b * y0))
    return tuple(planes)


def _polygon_area(vertices) -> float:
    pairs = zip(vertices, vertices[1:] + vertices[:1], strict=True)
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in pairs)


def _rotations_by_72_degrees() -> list[tuple[float, float]]:
    """(cos, sin) of 0°, 72°, 144°, 216°, 288°, in closed form."""
    root5 = math.sqrt(5.0)
    cos72, sin72 = (root5 - 1) / 4, math.sqrt(10 + 2 * root5) / 4
    cos144, sin144 = -(root5 + 1) / 4, math.sqrt(10 - 2 * root5) / 4
    return [(1.0, 0.0), (cos72, sin72), (cos144, sin144), (cos144, -sin144), (cos72, -sin72)]


@dataclass(frozen=True)
class _Shape:
    polygons: tuple  # convex parts (tuples of half-planes); empty for the ellipse
    area: float  # area of the unit shape
    reach: float  # largest distance of a point of the unit shape from its centre

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if not self.polygons:
            return x * x + y * y <= 1.0
        inside = np.zeros(x.shape, dtype=bool)
        for planes in self.polygons:
            part = np.ones(x.shape, dtype=bool)
            for a, b, c in planes:
                part &= a * x + b * y <= c
            inside |= part
        return inside


def _build_shapes() -> tuple[_Shape, ...]:
    root3 = math.sqrt(3.0)
    box = [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
    triangle = [(0.0, 1.0), (-root3 / 2, -0.5), (root3 / 2, -0.5)]
    arm = 0.36  # half-width of the cross's arms
    cross = [[(-1.0, -arm), (1.0, -arm), (1.0, arm), (-1.0, arm)], [(-arm, -1.0), (arm, -1.0), (arm, 1.0), (-arm, 1.0)]]
    # Star: five kites (centre, inner vertex, tip, inner vertex), tips at radius 1, inner vertices at 0.5.
    root5 = math.sqrt(5.0)
    cos36, sin36 = (1 + root5) / 4, math.sqrt(10 - 2 * root5) / 4
    kite = [(0.0, 0.0), (0.5 * sin36, 0.5 * cos36), (0.0, 1.0), (-0.5 * sin36, 0.5 * cos36)]
    kites = [[(c * x - s * y, s * x + c * y) for x, y in kite] for c, s in _rotations_by_72_degrees()]
    cross_area = 8 * arm - 4 * arm * arm
    return (
        _Shape((), math.pi, 1.0),
        _Shape((_half_planes(box),), _polygon_area(box), math.sqrt(2.0)),
        _Shape((_half_planes(triangle),), _polygon_area(triangle), 1.0),
        _Shape(tuple(_half_planes(part) for part in cross), cross_area, math.sqrt(1 + arm * arm)),
        _Shape(tuple(_half_planes(part) for part in kites), sum(_polygon_area(k) for k in kites), 1.0),
    )


_SHAPES = _build_shapes()


# -- rendering ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Object:
    """One placed object: its class and its pixels, inside its bounding box clipped to the image."""

    class_id: int
    rows: slice
    cols: slice
    mask: np.ndarray  # [h, w] bool: the object's pixels in the box
    u: np.ndarray  # [h, w] coordinates in the object's rotated frame, in pixels
    v: np.ndarray


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(rng.random())


def _random_direction(rng: np.random.Generator) -> tuple[float, float]:
    """A uniformly distributed unit vector, by rejection (no trigonometric functions)."""
    while True:
        x, y = 2 * float(rng.random()) - 1, 2 * float(rng.random()) - 1
        norm2 = x * x + y * y
        if 0.01 <= norm2 <= 1.0:
            norm = math.sqrt(norm2)
            return x / norm, y / norm


def _grey_colour(rng: np.random.Generator, low: float, high: float, tint: float) -> np.ndarray:
    """A desaturated colour: one grey level with a small per-channel tint."""
    grey = _uniform(rng, low, high)
    return grey + tint * (2 * rng.random(3) - 1)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a [g, g, C] grid to [size, size, C] (corners aligned), elementwise only."""
    g = grid.shape[0]
    position = np.arange(size) * ((g - 1) / (size - 1))
    low = np.minimum(np.floor(position).astype(np.intp), g - 2)
    weight = position - low
    rows = grid[low] * (1 - weight)[:, None, None] + grid[low + 1] * weight[:, None, None]
    return rows[:, low] * (1 - weight)[None, :, None] + rows[:, low + 1] * weight[None, :, None]


def _frame(size: int, centre, direction, reach: float):
    """The pixels within ``reach`` of ``centre`` (x, y) along both axes, clipped to the image, in a rotated frame.

    Returns the box as (rows, cols) slices and, per pixel of the box, its coordinates (u, v) in the
    frame centred on ``centre`` whose u axis points along the unit vector ``direction`` (x, y).
    """
    (centre_x, centre_y), (cos, sin) = centre, direction
    reach += 1
    rows = slice(max(int(centre_y - reach), 0), min(max(int(centre_y + reach) + 2, 0), size))
    cols = slice(max(int(centre_x - reach), 0), min(max(int(centre_x + reach) + 2, 0), size))
    dy = np.arange(rows.start, rows.stop, dtype=np.float64)[:, None] - centre_y
    dx = np.arange(cols.start, cols.stop, dtype=np.float64)[None, :] - centre_x
    return rows, cols, cos * dx + sin * dy, cos * dy - sin * dx


def _borders(regions: np.ndarray) -> np.ndarray:
    """Both pixels of every pair of 4-neighbours in different regions: a 2-pixel band along every border."""
    band = np.zeros(regions.shape, dtype=bool)
    across = regions[:, 1:] != regions[:, :-1]
    band[:, 1:] |= across
    band[:, :-1] |= across
    down = regions[1:] != regions[:-1]
    band[1:] |= down
    band[:-1] |= down
    return band


class SyntheticDataset(FewShotDataset):
    """Procedural few-shot segmentation scenes: 20 classes in 4 folds of 5, splits "train" and "val".

    Args:
        seed: non-negative integer; every image is a pure function of (seed, split, index, image_size).
        image_size: side of the square images, in pixels.
        train_images, val_images: number of images of each split.
        min_pixels: small-object filter (a class counts in an image only with at least this many
            pixels; 0 turns it off). ``None``: :func:`default_min_pixels` of ``image_size`` (179 at 128).
        cache_dir: folder for the index cache; ``None`` keeps the index in memory (it takes a few
            seconds to rebuild).

    See the module documentation for what defines a class and how scenes are generated.
    """

    name = "synthetic"
    splits = ("train", "val")
    prepare_workers = 1  # rendering is numpy-bound: threads only contend for the GIL

    def __init__(
        self,
        seed: int = 0,
        image_size: int = 128,
        train_images: int = 2000,
        val_images: int = 500,
        min_pixels: int | None = None,
        cache_dir=None,
    ):
        _check_int("seed", seed, 0, None)
        _check_int("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        _check_int("train_images", train_images, 1, MAX_IMAGES)
        _check_int("val_images", val_images, 1, MAX_IMAGES)
        if min_pixels is None:
            min_pixels = default_min_pixels(int(image_size))
        super().__init__(min_pixels=min_pixels, cache_dir=cache_dir)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.train_images = int(train_images)
        self.val_images = int(val_images)
        self._sizes = {"train": self.train_images, "val": self.val_images}

    # -- the FewShotDataset contract -------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES

    def image_ids(self, split: str) -> list[str]:
        self.check_split(split)
        return [f"{split}/{index:06d}" for index in range(self._sizes[split])]

    def load(self, image_id: str) -> Sample:
        """The image and label map of ``image_id`` ("train/000123"), rendered afresh: new arrays every call."""
        split, index = self._parse(image_id)
        objects = self._layout(self._rng(split, index, _LAYOUT_STREAM))
        image = self._paint(objects, self._rng(split, index, _APPEARANCE_STREAM))
        return Sample(image=image, label=self._label(objects))

    def load_label(self, image_id: str) -> np.ndarray:
        """The label map alone: the layout is rendered, the image is not."""
        split, index = self._parse(image_id)
        return self._label(self._layout(self._rng(split, index, _LAYOUT_STREAM)))

    def fold_split(self, fold) -> FoldSplit:
        """Fold i tests classes 5i+1..5i+5 on "val" images and trains on the other 15 on "train" images."""
        return FoldSplit(
            train_classes=tuple(base_classes(self.name, fold)),
            test_classes=tuple(fold_classes(self.name, fold)),
            train_split="train",
            test_split="val",
        )

    def fingerprint(self, split: str | None = None) -> dict:
        """The generator's parameters: they determine every image of every split, hence the index."""
        return {
            "generator": GENERATOR_VERSION,
            "seed": self.seed,
            "image_size": self.image_size,
            "train_images": self.train_images,
            "val_images": self.val_images,
        }

    def cache_path(self, split: str):
        """The index cache file under ``cache_dir``; ``None`` (in memory) when no ``cache_dir`` was given."""
        return None if self.cache_dir is None else super().cache_path(split)

    def describe(self) -> dict:
        """The protocol card's data part: the base entries and the generator's parameters."""
        return {**super().describe(), **self.fingerprint()}

    def __repr__(self) -> str:
        return (
            f"SyntheticDataset(seed={self.seed}, image_size={self.image_size}, train_images={self.train_images}, "
            f"val_images={self.val_images}, min_pixels={self.min_pixels})"
        )

    # -- ids and random streams ------------------------------------------------------------------
    def _parse(self, image_id) -> tuple[str, int]:
        if isinstance(image_id, str):
            split, slash, number = image_id.partition("/")
            if (
                slash
                and split in self._sizes
                and len(number) == 6
                and number.isascii()
                and number.isdigit()
                and int(number) < self._sizes[split]
            ):
                return split, int(number)
        sizes = ", ".join(f"{split}/000000..{count - 1:06d}" for split, count in self._sizes.items())
        raise ValueError(f"unknown image id {image_id!r} for {self.name}: expected one of {sizes}")

    def _rng(self, split: str, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLIT_CODES[split], index, stream])

    # -- layout: which objects, where (all the label depends on) ------------------------------------
    def _layout(self, rng: np.random.Generator) -> list[_Object]:
        """Choose 2-4 classes (and maybe a second instance of one) and place them, back to front."""
        classes = [int(c) + 1 for c in rng.choice(len(CLASS_RECIPES), size=int(rng.integers(2, 5)), replace=False)]
        if rng.random() < DUPLICATE_PROBABILITY:
            classes.append(classes[int(rng.integers(len(classes)))])
        size = self.image_size
        owner = np.full((size, size), -1, dtype=np.int16)  # which object shows at each pixel
        visible: list[int] = []  # pixels of each placed object still showing
        areas: list[int] = []  # pixels of each placed object when it was placed
        objects: list[_Object] = []
        for order, class_id in enumerate(classes):
            required = order < 2
            best, best_lost, best_margin = None, None, -math.inf
            for _ in range(REQUIRED_TRIES if required else PLACEMENT_TRIES):
                candidate = self._propose(rng, class_id)
                covered = owner[candidate.rows, candidate.cols][candidate.mask]
                lost = np.bincount(covered[covered >= 0], minlength=len(objects))
                # How far the worst-off earlier object stays above its visibility floor.
                margin = min((v - n - MIN_VISIBLE * a for v, n, a in zip(visible, lost, areas, strict=True)), default=0)
                if margin >= 0 or (required and margin > best_margin):
                    best, best_lost, best_margin = candidate, lost, margin
                if margin >= 0:
                    break
            if best is None:
                continue  # an optional object that found no room
            # A required object that never fitted takes the proposal that hides the least of the others.
            visible = [v - int(n) for v, n in zip(visible, best_lost, strict=True)]
            owner[best.rows, best.cols][best.mask] = len(objects)
            area = int(best.mask.sum())
            visible.append(area)
            areas.append(area)
            objects.append(best)
        return objects

    def _propose(self, rng: np.random.Generator, class_id: int) -> _Object:
        """A random instance of ``class_id`` that lies mostly inside the image."""
        shape = _SHAPES[CLASS_RECIPES[class_id - 1].shape]
        size = self.image_size
        while True:
            radius = size * _uniform(rng, *RADIUS_RANGE)
            stretch = math.sqrt(_uniform(rng, 1.0, MAX_STRETCH))
            scale = radius * math.sqrt(math.pi / shape.area)  # the unit shape scaled to area pi*radius^2
            half_x, half_y = scale * stretch, scale / stretch
            direction = _random_direction(rng)
            centre = size * _uniform(rng, *CENTRE_RANGE), size * _uniform(rng, *CENTRE_RANGE)
            rows, cols, u, v = _frame(size, centre, direction, shape.reach * half_x)
            mask = shape.contains(u / half_x, v / half_y)
            if mask.sum() >= MIN_ON_IMAGE * math.pi * radius * radius:
                return _Object(class_id, rows, cols, mask, u, v)

    def _label(self, objects: list[_Object]) -> np.ndarray:
        """Class ids painted back to front, with the ignore band around every object (instances included)."""
        instances = np.zeros((self.image_size, self.image_size), dtype=np.uint8)  # 0: background
        for number, obj in enumerate(objects, start=1):
            instances[obj.rows, obj.cols][obj.mask] = number
        label = np.array([0] + [obj.class_id for obj in objects], dtype=np.uint8)[instances]
        label[_borders(instances)] = IGNORE_LABEL
        return label

    # -- appearance: background clutter and textured objects -----------------------------------
    def _paint(self, objects: list[_Object], rng: np.random.Generator) -> np.ndarray:
        size = self.image_size
        canvas = self._background(rng)
        pixel = size / REFERENCE_SIZE
        for obj in objects:
            recipe = CLASS_RECIPES[obj.class_id - 1]
            _, first, second = PALETTES[recipe.palette]
            brightness = _uniform(rng, *BRIGHTNESS_RANGE)
            colours = [
                brightness * np.asarray(c, dtype=np.float64) + COLOUR_JITTER * (2 * rng.random(3) - 1)
                for c in (first, second)
            ]
            period = pixel * _uniform(rng, *PERIOD_RANGE)
            phase_u, phase_v = period * float(rng.random()), period * float(rng.random())
            pattern = _texture(recipe.texture, obj.u[obj.mask] + phase_u, obj.v[obj.mask] + phase_v, period)
            canvas[obj.rows, obj.cols][obj.mask] = np.where(pattern[:, None], colours[1], colours[0])
        canvas += rng.integers(-NOISE, NOISE + 1, size=canvas.shape)
        return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """Unlabelled clutter: a mottled desaturated field, soft blobs and thin lines; no texture, no saturation."""
        size = self.image_size
        coarse = 60 + 130 * rng.random((5, 5, 1)) + 14 * (2 * rng.random((5, 5, 3)) - 1)  # desaturated colours
        canvas = _upsample(coarse, size)
        canvas += _upsample(28 * rng.random((17, 17, 1)) - 14, size)  # fine grey mottling
        for _ in range(int(rng.integers(3, 8))):  # blobs: translucent flat ellipses
            centre = size * float(rng.random()), size * float(rng.random())
            half_u, half_v = size * _uniform(rng, 0.04, 0.18), size * _uniform(rng, 0.04, 0.18)
            rows, cols, u, v = _frame(size, centre, _random_direction(rng), max(half_u, half_v))
            u, v = u / half_u, v / half_v
            inside = u * u + v * v <= 1.0
            alpha = _uniform(rng, 0.4, 0.85)
            colour = _grey_colour(rng, 40, 210, 14)
            box = canvas[rows, cols]
            box[inside] = (1 - alpha) * box[inside] + alpha * colour
        for _ in range(int(rng.integers(3, 8))):  # lines: thin segments
            centre = size * float(rng.random()), size * float(rng.random())
            half_length = size * _uniform(rng, 0.1, 0.4)
            half_width = size / REFERENCE_SIZE * _uniform(rng, *LINE_HALF_WIDTH_RANGE)
            rows, cols, u, v = _frame(size, centre, _random_direction(rng), half_length + half_width)
            on_line = (np.abs(u) <= half_length) & (np.abs(v) <= half_width)
            canvas[rows, cols][on_line] = _grey_colour(rng, 30, 220, 12)
        return canvas


def _texture(texture: int, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Which object pixels take the palette's second colour, for pixels at (phase-shifted) frame coordinates."""
    half = period / 2
    if TEXTURES[texture] == "stripes":
        return np.floor(u / half) % 2 == 1
    if TEXTURES[texture] == "checks":
        return (np.floor(u / half) + np.floor(v / half)) % 2 == 1
    if TEXTURES[texture] == "dots":
        du = u - period * np.floor(u / period) - half
        dv = v - period * np.floor(v / period) - half
        return du * du + dv * dv <= (0.32 * period) * (0.32 * period)
    # rings, centred within a period of the object's centre (the phases shift the frame)
    return np.floor(np.sqrt(u * u + v * v) / half) % 2 == 1


def _check_int(name: str, value, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be {bounds}, got {value}")
