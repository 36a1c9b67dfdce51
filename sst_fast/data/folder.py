"""A folder of your own classes: one folder per class of images and their masks (FSS-1000's shape).

``data.dataset: folder`` with ``data.root: DIR`` reads :data:`LAYOUT`. Conventions:

- **Classes** are the sub-folders of the root (hidden ones skipped); class ids 1..N are their positions in
  the sorted list of names.
- **Image ids** are ``"<class name>/<id>"``, e.g. ``"mug/003"`` for ``DIR/mug/003.jpg`` and ``DIR/mug/003.png``.
- **Masks** are single-channel PNGs of 0/255 or 0/1 (a white-on-black RGB PNG is read as grey); any other
  value is a layout problem, as is a mask of another size than its image. Each image belongs to the class of
  its folder: its label map holds that class id on the object and 0 elsewhere (``uint16``; no ignore band).
- **Base and novel classes** come from, first match wins: the options ``novel=[...]`` and/or ``base=[...]``
  (class names; the one not given is every other class), the option ``folds=k`` (with ``seed``: the classes
  shuffled with the seed and dealt into k folds, fold i's classes are its novel ones), else ``DIR/splits.yaml``
  holding the same keys, else every class is novel (fold 0, for evaluating a model trained elsewhere).
- **Folds**: ``0..k-1`` with ``folds=k``, else only ``0``.
- **One image split**, ``"all"``: base and novel episodes draw on it by class (an image shows one class).
- **Small-object filter off by default** (``min_pixels=0``), as for FSS-1000.

Problems of the layout (an image without its mask, a mask without its image, a class with fewer than two
images, a class named in both splits or not found) are listed together by :meth:`FolderDataset.survey`
(``sst-fast data check``) and raised together by :meth:`FolderDataset.image_ids` and
:meth:`FolderDataset.fold_split`; mask values and sizes are checked when the labels are indexed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .base import (
    DataError,
    FewShotDataset,
    Sample,
    file_stats,
    layout_error,
    paired,
    read_image,
    require_paths,
)

SPLIT_FILE = "splits.yaml"
IMAGE_SUFFIXES = (".jpg", ".jpeg")
MASK_SUFFIX = ".png"
MIN_IMAGES = 2  # the query and one support: the least a class needs for any episode

LAYOUT = """\
  <root>/
    <class name>/<id>.jpg <id>.png ...   each image beside its mask: 0/255 or 0/1 grey PNG, the same size
    splits.yaml                           optional: which classes are base and novel, e.g.
                                            novel: [mug, stapler]      (base: every other class)
                                            base: [bottle, chair]      (novel: every other class)
                                          or k folds of the classes shuffled with a seed:
                                            folds: 4
                                            seed: 0
The options data.options.novel=[...], data.options.base=[...], data.options.folds=k (data.options.seed=s)
take the place of splits.yaml; with neither, every class is novel (for evaluation only)."""


def read_binary_mask(path) -> np.ndarray:
    """A mask PNG -> bool [H, W]. Grey, palette or 1-bit: the values must be 0/1 or 0/255; RGB(A) is read as
    grey first. Any other value is a :class:`DataError` naming the file and the values found."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode in ("L", "P", "1"):
                values = np.array(image, dtype=np.uint8)
            elif image.mode in ("RGB", "RGBA", "LA"):
                values = np.array(image.convert("L"))
            else:
                raise DataError(f"mask {path} must be a grey PNG of 0/255 or 0/1, got mode {image.mode}")
    except (OSError, ValueError, SyntaxError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"cannot read mask {path}: {error}") from error
    found = set(np.unique(values).tolist())
    if not (found <= {0, 1} or found <= {0, 255}):
        shown = ", ".join(map(str, sorted(found)[:8])) + (", ..." if len(found) > 8 else "")
        raise DataError(f"mask {path} holds the values {shown}: a mask must be 0/255 or 0/1 (object on background)")
    return values > 0


def check_folder_fold(fold, options: dict) -> int:
    """``fold`` if the folder data set with ``options`` can have it (0..folds-1 with ``folds``, else 0; a
    ``splits.yaml`` may hold folds, so without options any fold >= 0 passes here and is checked on opening)."""
    folds = options.get("folds")
    if isinstance(fold, bool) or not isinstance(fold, int) or fold < 0:
        raise ValueError(f"fold must be an integer >= 0 for a folder data set, got {fold!r}")
    if isinstance(folds, int) and not isinstance(folds, bool) and folds >= 2 and fold >= folds:
        raise ValueError(f"fold must be in 0..{folds - 1} (data.options.folds={folds}), got {fold}")
    if folds is None and (options.get("novel") is not None or options.get("base") is not None) and fold != 0:
        raise ValueError(f"fold must be 0 when data.options.novel/base name the classes, got {fold}")
    return fold


class FolderDataset(FewShotDataset):
    """Your own classes in class folders (:data:`LAYOUT`).

    Args:
        root: the folder of class folders.
        novel, base: class names (lists) making one fold, 0; the one not given is every other class.
        folds: k >= 2: the classes shuffled with ``seed`` and dealt into k folds (fold i's classes are novel).
        seed: the shuffle's seed (with ``folds``).
        min_pixels: the small-object filter (0, the default, keeps every image).
        cache_dir: where the class index is cached.
    """

    name = "folder"
    splits = ("all",)
    ignore_label = None
    named_folds = None  # its options or splits.yaml decide: see folds

    def __init__(self, root, novel=None, base=None, folds=None, seed=0, min_pixels: int = 0, cache_dir=None):
        super().__init__(min_pixels=min_pixels, cache_dir=cache_dir)
        self.root = Path(root).expanduser()
        require_paths("folder data set", self.root, [self.root], LAYOUT)
        if not self.root.is_dir():
            raise DataError(f"{self.root} is not a folder.\nExpected layout:\n{LAYOUT}")
        self._class_names = tuple(
            sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
        )
        if not self._class_names:
            raise DataError(f"{self.root} holds no class folder.\nExpected layout under {self.root}:\n{LAYOUT}")
        self._class_ids = {name: class_id for class_id, name in enumerate(self._class_names, start=1)}
        self.split_source, spec = self._split_spec(novel, base, folds, seed)
        self._split_problems: list[tuple[str, str]] = []
        self._folds = self._make_folds(spec)
        self._scan_result: tuple[dict[str, tuple[str, ...]], list[tuple[str, str]]] | None = None

    # -- splits ------------------------------------------------------------------------------------
    def _split_spec(self, novel, base, folds, seed) -> tuple[str, dict]:
        given = {"novel": novel, "base": base, "folds": folds}
        if any(value is not None for value in given.values()):
            return "data.options", {**{k: v for k, v in given.items() if v is not None}, "seed": seed}
        path = self.root / SPLIT_FILE
        if not path.is_file():
            return "default (every class novel)", {}
        import yaml

        try:
            spec = yaml.safe_load(path.read_text())
        except (OSError, ValueError, yaml.YAMLError) as error:
            raise DataError(f"cannot read split file {path}: {error}") from error
        spec = {} if spec is None else spec
        if not isinstance(spec, dict) or set(spec) - {"novel", "base", "folds", "seed"}:
            raise DataError(f"split file {path} must be a mapping of novel, base, folds and seed.\n{LAYOUT}")
        return str(path), spec

    def _make_folds(self, spec: dict) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Each fold's (base class ids, novel class ids); wrong names become :attr:`_split_problems`."""
        where = self.split_source
        folds, seed = spec.get("folds"), spec.get("seed", 0)
        if folds is not None:
            if spec.get("novel") is not None or spec.get("base") is not None:
                raise DataError(f"{where}: give folds, or novel/base, not both")
            if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= len(self._class_names):
                raise DataError(
                    f"{where}: folds must be an integer from 2 to the {len(self._class_names)} classes, got {folds!r}"
                )
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise DataError(f"{where}: seed must be an integer, got {seed!r}")
            order = np.random.default_rng(seed).permutation(len(self._class_names)) + 1
            dealt = [tuple(sorted(int(c) for c in order[i::folds])) for i in range(folds)]
            every = set(self._class_ids.values())
            return [(tuple(sorted(every - set(novel))), novel) for novel in dealt]
        named = {side: self._names(spec.get(side), side) for side in ("novel", "base")}
        for name in sorted(set(named["novel"] or ()) & set(named["base"] or ())):
            self._split_problems.append((name, f"class {name!r} is named both base and novel in {where}"))
        every = set(self._class_ids.values())
        novel = {self._class_ids[n] for n in named["novel"] or () if n in self._class_ids}
        base = {self._class_ids[n] for n in named["base"] or () if n in self._class_ids}
        if named["novel"] is None and named["base"] is None:
            novel = every
        elif named["novel"] is None:
            novel = every - base
        elif named["base"] is None:
            base = every - novel
        return [(tuple(sorted(base)), tuple(sorted(novel - base)))]

    def _names(self, names, side: str) -> list[str] | None:
        if names is None:
            return None
        if isinstance(names, str) or not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{self.split_source}: {side} must be a list of class folder names, got {names!r}")
        for name in names:
            if name not in self._class_ids:
                self._split_problems.append(
                    (name, f"{side} class {name!r} in {self.split_source} has no folder {self.root / name}")
                )
        return list(names)

    @property
    def folds(self) -> tuple[int, ...]:
        """The folds this folder has: 0..k-1."""
        return tuple(range(len(self._folds)))

    # -- FewShotDataset ------------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    def class_id(self, name: str) -> int:
        try:
            return self._class_ids[name]
        except KeyError:
            raise ValueError(f"{name!r} is not a class folder of {self.root}") from None

    def survey(self, split: str) -> tuple[list[str], list[tuple[str, str]]]:
        """Every image with its mask, and every problem of the layout and of the split (:data:`LAYOUT`)."""
        self.check_split(split)
        images, problems = self._scan()
        ids = [f"{name}/{stem}" for name, stems in images.items() for stem in stems]
        return sorted(ids), sorted(problems + self._split_problems)

    def image_ids(self, split: str) -> list[str]:
        ids, problems = self.survey(split)
        if problems:
            raise layout_error("folder data set", self.root, LAYOUT, problems)
        return ids

    def load(self, image_id: str) -> Sample:
        name, stem = self._locate(image_id)
        path = self._image_path(name, stem)
        mask = self.root / name / f"{stem}{MASK_SUFFIX}"
        return paired(read_image(path), self.load_label(image_id), path, f"its mask {mask}")

    def load_label(self, image_id: str) -> np.ndarray:
        name, stem = self._locate(image_id)
        mask = read_binary_mask(self.root / name / f"{stem}{MASK_SUFFIX}")
        return mask.astype(np.uint16) * np.uint16(self._class_ids[name])

    def class_pixels(self, image_id: str) -> dict[int, int]:
        """The mask's object pixels, after checking its values and that its image (header only) has its size."""
        from PIL import Image

        name, stem = self._locate(image_id)
        label = self.load_label(image_id)
        path = self._image_path(name, stem)
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, ValueError, SyntaxError) as error:
            raise DataError(f"cannot read image {path}: {error}") from error
        if (height, width) != label.shape:
            raise DataError(
                f"image {path} is {width}x{height} pixels but its mask {path.with_suffix(MASK_SUFFIX)} is "
                f"{label.shape[1]}x{label.shape[0]}: they must match"
            )
        pixels = int(np.count_nonzero(label))
        return {self._class_ids[name]: pixels} if pixels else {}

    def fold_split(self, fold=0):
        from .splits import FoldSplit

        if isinstance(fold, bool) or fold not in self.folds:
            raise ValueError(
                f"fold must be one of {', '.join(map(str, self.folds))} for the folder data set at {self.root} "
                f"(its split: {self.split_source}), got {fold!r}"
            )
        if self._split_problems:
            raise layout_error("folder data set", self.root, LAYOUT, self._split_problems)
        base, novel = self._folds[fold]
        return FoldSplit(base, novel, "all", "all")

    def fingerprint(self, split: str) -> dict:
        images, _ = self._scan()
        files = [self.root / name / f"{stem}{MASK_SUFFIX}" for name, stems in images.items() for stem in stems]
        files += [self._image_path(name, stem) for name, stems in images.items() for stem in stems]
        return {"root": str(self.root.resolve()), "files": file_stats(files)}

    def describe(self) -> dict:
        """With the classes and folds' identity, so that results drawn with another split never pass for these."""
        text = ";".join(f"{','.join(map(str, b))}|{','.join(map(str, n))}" for b, n in self._folds)
        text = ",".join(self._class_names) + "#" + text
        return {**super().describe(), "splits": hashlib.sha256(text.encode()).hexdigest()[:16]}

    # -- files -----------------------------------------------------------------------------------------
    def _scan(self) -> tuple[dict[str, tuple[str, ...]], list[tuple[str, str]]]:
        if self._scan_result is None:
            images, problems = {}, []
            for name in self._class_names:
                images[name], found = self._list_folder(name)
                problems.extend(found)
            self._scan_result = images, problems
        return self._scan_result

    def _list_folder(self, name: str) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
        folder = self.root / name
        pictures = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
        masks = {p.stem: p for p in folder.iterdir() if p.suffix == MASK_SUFFIX and p.is_file()}
        problems = []
        for stem in sorted(set(pictures) - set(masks)):
            image = pictures[stem]
            problems.append((f"{name}/{stem}", f"image {image} has no mask {image.with_suffix(MASK_SUFFIX)}"))
        for stem in sorted(set(masks) - set(pictures)):
            problems.append((f"{name}/{stem}", f"mask {masks[stem]} has no image {folder / stem}.jpg"))
        stems = tuple(sorted(set(pictures) & set(masks)))
        if len(stems) < MIN_IMAGES:
            problems.append(
                (name, f"class folder {folder} has {len(stems)} image(s) with masks: an episode needs {MIN_IMAGES}")
            )
        return stems, problems

    def _image_path(self, name: str, stem: str) -> Path:
        for suffix in (*IMAGE_SUFFIXES, *(s.upper() for s in IMAGE_SUFFIXES)):
            path = self.root / name / f"{stem}{suffix}"
            if path.is_file():
                return path
        return self.root / name / f"{stem}.jpg"

    def _locate(self, image_id: str) -> tuple[str, str]:
        name, separator, stem = str(image_id).partition("/")
        if not separator or name not in self._class_ids:
            raise ValueError(f"image_id must be '<class name>/<id>' with a class of {self.root}, got {image_id!r}")
        if stem not in self._scan()[0][name]:
            raise ValueError(f"image {image_id!r}: no {stem}.jpg with its {stem}.png in {self.root / name}")
        return name, stem
