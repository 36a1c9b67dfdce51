"""The configuration of a training run: YAML file + ``section.key=value`` overrides -> :class:`RunConfig`.

A run is described by four sections::

    data:  which data set and fold, its options, augmentation, loader workers, the validation hold-out
    model: the :class:`~sst_fast.SSTConfig` (backbone, channels, ssm, aux_loss, shots, image_size, ...)
    optim: SGD and the schedule (the paper's recipe by default)
    run:   seed, device, how often to log, validate and checkpoint

Packaged configurations (``pascal``, ``coco``, ``fss``, ``synthetic``) are found by name; any other
``--config`` is a path to a YAML file. Every key is checked: an unknown or ill-typed one is an error
that names it, and so is a key given twice in one mapping (YAML would keep the last). Counts that no run
can mean are refused too: episodes, epochs and the batch are at most :data:`MAX_COUNT` (ten million), a
batch at most an epoch, loader workers and threads at most :data:`MAX_THREADS`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import MAX_COUNT, SSTConfig
from ..data import DATASETS
from ..data.folder import check_folder_fold
from ..data.splits import check_fold

CONFIG_PACKAGE = "sst_fast.configs"

# The most loader worker processes (data.workers) and torch threads (run.threads).
MAX_THREADS = 1024


class ConfigError(ValueError):
    """A configuration file or override that cannot be used, with the key that is wrong."""


@dataclasses.dataclass
class DataConfig:
    """Attributes:
    dataset: ``pascal``, ``coco``, ``fss``, ``folder`` (your own class folders) or ``synthetic``.
    root: the data folder (none for ``synthetic``).
    fold: the benchmark fold whose base classes are trained on (FSS-1000: ``test`` or ``val``; a folder data
        set: 0..k-1 with ``options.folds=k``, else 0).
    options: keyword options of the data set class (``min_pixels``, ``style`` for COCO, ``seed``,
        ``train_images``, ... for synthetic).
    exclude_novel: drop training images that show a novel class at all (BAM); off keeps them with
        the novel pixels as background (PFENet).
    augment: random scale, rotation and flip of training images (:class:`~sst_fast.data.Augment`).
    workers: data loader worker processes.
    val_fraction: share of the training images held out for validation on base-class episodes
        (the best checkpoint is chosen on them, never on the test fold).
    val_episodes: episodes of each validation.
    feature_cache: train on the frozen backbone's features of the un-augmented images, computed once
        and kept on disk in float16 (:mod:`sst_fast.engine.features`); needs ``augment: false`` and
        ``model.freeze_backbone: true``.
    """

    dataset: str = "pascal"
    root: str | None = None
    fold: int | str = 0
    options: dict = dataclasses.field(default_factory=dict)
    exclude_novel: bool = False
    augment: bool = True
    workers: int = 2
    val_fraction: float = 0.05
    val_episodes: int = 1000
    feature_cache: bool = False

    def __post_init__(self) -> None:
        _check(self.dataset in DATASETS, "data.dataset", f"one of {sorted(DATASETS)}", self.dataset)
        _check(self.root is None or isinstance(self.root, str), "data.root", "a path", self.root)
        try:  # the same check as the data sets' (so --print-config refuses what train would)
            if self.dataset == "folder":  # its folds come from its options (or its splits.yaml)
                check_folder_fold(self.fold, self.options if isinstance(self.options, dict) else {})
            else:
                check_fold(self.dataset, self.fold)
        except ValueError as error:
            raise ConfigError(f"data.fold: {error}") from None
        _check(isinstance(self.options, dict), "data.options", "a mapping", self.options)
        _check(isinstance(self.exclude_novel, bool), "data.exclude_novel", "true or false", self.exclude_novel)
        _check(isinstance(self.augment, bool), "data.augment", "true or false", self.augment)
        _check(isinstance(self.feature_cache, bool), "data.feature_cache", "true or false", self.feature_cache)
        if self.feature_cache and self.augment:
            raise ConfigError("data.feature_cache caches un-augmented images: set data.augment=false with it")
        workers = f"an integer from 0 to {MAX_THREADS}"
        _check(_in_range(self.workers, 0, MAX_THREADS), "data.workers", workers, self.workers)
        _check(
            _is_number(self.val_fraction) and 0 < self.val_fraction < 1,
            "data.val_fraction",
            "a number in (0, 1)",
            self.val_fraction,
        )
        _check(
            _in_range(self.val_episodes, 1, MAX_COUNT),
            "data.val_episodes",
            f"an integer from 1 to {MAX_COUNT}",
            self.val_episodes,
        )


@dataclasses.dataclass
class OptimConfig:
    """SGD as in the paper (lr 5e-4, momentum 0.9, weight decay 5e-4, batch 16, 200 epochs).

    Attributes:
        optimizer: ``sgd`` (the paper) or ``adamw`` (``momentum`` is then unused; decoupled weight decay).
        episodes_per_epoch: training episodes per epoch; ``None`` means as many as there are training
            images (one query per image in expectation, PFENet's epoch).
        schedule: ``constant`` (the paper states no decay) or ``poly`` (``lr * (1 - t/T)^0.9``, PFENet).
        grad_clip: clip the gradient's global norm to this value; ``None`` does not clip.
        step_lr: learning rate of the learnable tuning step (``model.learnable_step``), without weight
            decay; ``None``: the step is an ordinary parameter (``lr``, ``weight_decay``).
    """

    optimizer: str = "sgd"
    lr: float = 5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 16
    epochs: int = 200
    episodes_per_epoch: int | None = None
    schedule: str = "constant"
    grad_clip: float | None = None
    step_lr: float | None = None

    def __post_init__(self) -> None:
        _check(self.optimizer in ("sgd", "adamw"), "optim.optimizer", "'sgd' or 'adamw'", self.optimizer)
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            _check(_is_number(value) and value >= 0, f"optim.{name}", "a finite number >= 0", value)
        _check(self.lr > 0, "optim.lr", "> 0", self.lr)
        counts = f"an integer from 1 to {MAX_COUNT}"
        _check(_in_range(self.batch_size, 1, MAX_COUNT), "optim.batch_size", counts, self.batch_size)
        _check(_in_range(self.epochs, 1, MAX_COUNT), "optim.epochs", counts, self.epochs)
        _check(
            self.episodes_per_epoch is None or _in_range(self.episodes_per_epoch, 1, MAX_COUNT),
            "optim.episodes_per_epoch",
            f"{counts} or null",
            self.episodes_per_epoch,
        )
        if self.episodes_per_epoch is not None and self.batch_size > self.episodes_per_epoch:
            raise ConfigError(
                f"optim.batch_size={self.batch_size} is more than an epoch "
                f"(optim.episodes_per_epoch={self.episodes_per_epoch}): every epoch would be one step of "
                f"{self.episodes_per_epoch} episodes; lower optim.batch_size or raise optim.episodes_per_epoch"
            )
        _check(
            self.step_lr is None or (_is_number(self.step_lr) and self.step_lr > 0),
            "optim.step_lr",
            "a number > 0 or null",
            self.step_lr,
        )
        _check(self.schedule in ("constant", "poly"), "optim.schedule", "'constant' or 'poly'", self.schedule)
        _check(
            self.grad_clip is None or (_is_number(self.grad_clip) and self.grad_clip > 0),
            "optim.grad_clip",
            "a number > 0 or null",
            self.grad_clip,
        )


@dataclasses.dataclass
class RunSettings:
    """Attributes:
    seed: seeds the initial weights, the episodes of each epoch, augmentation and dropout.
    device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    threads: CPU threads for torch (``None``: torch's default).
    log_every: steps between training-loss records.
    checkpoint_every: steps between checkpoints (one is also written after every epoch).
    val_every: epochs between validations.
    amp: mixed precision, ``off``, ``bf16`` or ``fp16`` (autocast; :mod:`sst_fast.engine.speed`).
    channels_last: keep weights and feature maps in the channels-last layout.
    progress_seconds: without a terminal (batch jobs), seconds between plain progress lines (step, loss, speed,
        time left); on a terminal a progress bar shows the same.
    allow_random_backbone: train even though the backbone starts (partly) random: a frozen ResNet/VGG without
        ``model.backbone_weights``, or a weights file that fills only part of it. Without it ``train``
        refuses such a run, which can only learn on noise features.
    """

    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    log_every: int = 20
    checkpoint_every: int = 500
    val_every: int = 1
    amp: str = "off"
    channels_last: bool = False
    allow_random_backbone: bool = False
    progress_seconds: float = 30.0

    def __post_init__(self) -> None:
        _check(
            isinstance(self.allow_random_backbone, bool),
            "run.allow_random_backbone",
            "true or false",
            self.allow_random_backbone,
        )
        _check(
            _is_number(self.progress_seconds) and self.progress_seconds > 0,
            "run.progress_seconds",
            "a number > 0",
            self.progress_seconds,
        )
        # torch seeds are 64-bit
        _check(_in_range(self.seed, 0, 2**64 - 1), "run.seed", "an integer from 0 to 2**64 - 1", self.seed)
        _check(self.amp in ("off", "bf16", "fp16"), "run.amp", "'off', 'bf16' or 'fp16'", self.amp)
        _check(isinstance(self.channels_last, bool), "run.channels_last", "true or false", self.channels_last)
        _check(
            isinstance(self.device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
            "run.device",
            "'auto', 'cpu', 'cuda' or 'cuda:N'",
            self.device,
        )
        _check(
            self.threads is None or _in_range(self.threads, 1, MAX_THREADS),
            "run.threads",
            f"an integer from 1 to {MAX_THREADS} or null",
            self.threads,
        )
        for name in ("log_every", "checkpoint_every", "val_every"):
            value = getattr(self, name)
            _check(_is_int(value) and value >= 1, f"run.{name}", "an integer >= 1", value)


SECTIONS = {"data": DataConfig, "model": SSTConfig, "optim": OptimConfig, "run": RunSettings}


@dataclasses.dataclass
class RunConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: SSTConfig = dataclasses.field(default_factory=SSTConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunSettings = dataclasses.field(default_factory=RunSettings)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        values = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        values["model"] = self.model.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: Any) -> RunConfig:
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"a configuration must be a mapping of sections {sorted(SECTIONS)}, got {values!r}")
        unknown = sorted(set(values) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown section(s) {unknown}; the sections are {sorted(SECTIONS)}")
        sections = {}
        for name, section_class in SECTIONS.items():
            section = values.get(name) or {}
            if not isinstance(section, dict):
                raise ConfigError(f"section {name!r} must be a mapping, got {section!r}")
            known = {f.name for f in dataclasses.fields(section_class)}
            strangers = sorted(set(section) - known)
            if strangers:
                raise ConfigError(f"unknown key(s) {[f'{name}.{k}' for k in strangers]}; {name} has {sorted(known)}")
            try:
                sections[name] = section_class(**section)
            except ConfigError:
                raise
            except (TypeError, ValueError) as error:  # SSTConfig's own messages name the field
                raise ConfigError(f"{name}: {error}") from None
        return cls(**sections)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path) -> Path:
        from ..files import write_text_atomic

        return write_text_atomic(Path(path), self.to_yaml())


def packaged_configs() -> list[str]:
    """Names of the configurations shipped with the package (``--config NAME``)."""
    folder = resources.files(CONFIG_PACKAGE)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_config_file(config) -> dict:
    """The mapping in a YAML file, or in the packaged configuration of that name."""
    text = None
    if config in packaged_configs():
        text = resources.files(CONFIG_PACKAGE).joinpath(f"{config}.yaml").read_text()
    else:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(
                f"config: {config!r} is neither a file nor a packaged configuration ({', '.join(packaged_configs())})"
            )
        text = path.read_text()
    try:
        values = _load_yaml(text)
    except _KeyTwice as error:
        raise ConfigError(
            f"config: {config} sets {error.key} twice (lines {error.lines[0]} and {error.lines[1]}): "
            "a key may appear once in a mapping"
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config: {config} is not valid YAML: {str(error).splitlines()[0]}") from None
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"config: {config} must hold a mapping of sections, got {type(values).__name__}")
    return values or {}


def apply_overrides(values: dict, overrides) -> dict:
    """``["optim.lr=1e-3", "model.image_size=[96, 96]", "data.options.min_pixels=0"]`` applied to a copy of
    ``values``. Values are read as YAML (numbers, true/false, null, lists); the key path must have at least
    a section and a key."""
    import copy

    values = copy.deepcopy(values)
    for override in overrides:
        key, sep, text = str(override).partition("=")
        path = key.strip().split(".")
        if not sep or len(path) < 2 or not all(path):
            raise ConfigError(f"override {override!r} must look like section.key=value (e.g. optim.lr=0.001)")
        if path[0] not in SECTIONS:
            raise ConfigError(
                f"override {override!r}: unknown section {path[0]!r}; the sections are {sorted(SECTIONS)}"
            )
        try:
            value = _load_yaml(text, within=".".join(path)) if text.strip() else None
        except _KeyTwice as error:
            raise ConfigError(f"override {override!r} sets {error.key} twice: a key may appear once") from None
        except yaml.YAMLError:
            raise ConfigError(f"override {override!r}: cannot read the value {text!r}") from None
        node = values
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return values


def load_run_config(config=None, overrides=()) -> RunConfig:
    """The run configuration from a file or packaged name (or the defaults), with overrides applied."""
    values = read_config_file(config) if config is not None else {}
    return RunConfig.from_dict(apply_overrides(values, overrides))


class _Loader(yaml.SafeLoader):
    """The safe loader, reading ``5e-4`` as a number too (YAML 1.1 wants ``5.0e-4``; people write both)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _KeyTwice(yaml.YAMLError):
    """A mapping of a YAML document holds a key twice."""

    def __init__(self, key: str, first: yaml.Mark, second: yaml.Mark) -> None:
        self.key, self.lines = key, (first.line + 1, second.line + 1)
        super().__init__(f"{key} twice (lines {self.lines[0]} and {self.lines[1]})")


def _load_yaml(text: str, within: str = ""):
    """The YAML document in ``text``; a key given twice in any of its mappings is a :class:`_KeyTwice` naming
    it by its path (``optim.lr``, under ``within``), where plain YAML loading would keep the last silently."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_keys_twice(loader, node, within, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _refuse_keys_twice(loader: _Loader, node: yaml.Node, path: str, seen_nodes: set) -> None:
    if id(node) in seen_nodes:  # an alias of a node already checked (or of one that holds itself)
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_keys_twice(loader, item, f"{path}[{index}]", seen_nodes)
    elif isinstance(node, yaml.MappingNode):
        keys: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base": the mapping's own keys override these
                _refuse_keys_twice(loader, value_node, path, seen_nodes)
                continue
            scalar = isinstance(key_node, yaml.ScalarNode)
            key = loader.construct_object(key_node) if scalar else key_node.tag
            name = f"{path}.{key}" if path else str(key)
            if scalar:  # a mapping or list as a key: unhashable, the loader itself refuses it
                first = keys.setdefault(key, key_node)
                if first is not key_node:
                    raise _KeyTwice(name, first.start_mark, key_node.start_mark)
            _refuse_keys_twice(loader, value_node, name, seen_nodes)


def _check(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {got!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _in_range(value: Any, low: int, high: int) -> bool:
    return _is_int(value) and low <= value <= high


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
