"""Evaluation protocols and the protocol card.

A :class:`Protocol` is how one paper's test code draws and scores episodes on one data set: the
sampling, the episode count and seed, the scoring resolution, the support draw and the metric's
edge conventions (docs/design.md §4.3, which cites the peers' code line by line). ``sst`` is this
project's own (the paper's 1000 class-uniform episodes per seed, five seeds on PASCAL-5i and ten on COCO-20i,
scored at the model's input size);
``pfenet`` and ``hsnet`` reproduce PFENet's and HSNet's test protocols, so that a number sits in
their tables. A protocol changes how episodes are drawn and scored, never the model's input.

The protocol card records every choice behind a number; it is printed and saved with every result.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ._version import __version__

PROTOCOLS = ("sst", "pfenet", "hsnet")

SAMPLINGS = {
    "class-first": "a class uniformly among the test classes, then the query uniformly among its images",
    "image-first": (
        "the test images that hold a test class (past the small-object filter), in the data set's order, "
        "wrapping around; the class uniformly among the test classes present in the query"
    ),
    "pair-list": "every (test image, test class) pair past the small-object filter, in the data set's order, wrapping",
    "every-image": "every test image once as the query, class by class",
}
SUPPORT_DRAWS = {
    "distinct": "K distinct images of the class, none the query",
    "independent": "K independent uniform draws among the class's other images (repeats possible)",
}
EMPTY_CLASS = {"skip": "no IoU (NaN), left out of the mIoU", "zero": "IoU 0, counted in the mIoU"}
EMPTY_FB_TERM = {
    "skip": "FB-IoU is the other term alone",
    "zero": "the empty term counts 0",
    "nan": "FB-IoU is NaN",
}

METRIC_DEFINITION = (
    "class-wise mIoU (per class: sum of intersections / sum of unions over its episodes; mean over classes), "
    "FB-IoU (foreground and background IoU pooled over episodes, mean of the two), episode-wise mean IoU; "
    "label 255 excluded"
)
CLASS_SAMPLING = "class uniform over the test classes, then K+1 distinct images of it (query first)"

PFENET = "PFENet (github.com/dvlab-research/PFENet, commit a505675)"
HSNET = "HSNet (github.com/juhongm999/hsnet, commit 6b1bc12)"
PEERS = {"pfenet": "PFENet", "hsnet": "HSNet"}
BENCHMARKS = {"pascal": "PASCAL-5i", "coco": "COCO-20i", "fss": "FSS-1000"}  # the tables' names of the data sets


@dataclass(frozen=True)
class Protocol:
    """One peer's test protocol on one data set (see the module docstring and docs/design.md §4.3)."""

    name: str  # sst | pfenet | hsnet
    dataset: str  # the data set whose rules these are ("pascal" rules also serve data sets the peer never used)
    sampling: str  # a key of SAMPLINGS
    episodes: int | None  # per seed; None: one per test image (every-image)
    seed: int  # the default episode seed (the first of them: runs)
    resolution: str = "input"  # "input": the model's input size; "original": each label's size; "fixed": score_size
    score_size: tuple[int, int] | None = None
    supports: str = "distinct"  # a key of SUPPORT_DRAWS
    empty_class: str = "skip"  # a key of EMPTY_CLASS
    empty_fb_term: str = "skip"  # a key of EMPTY_FB_TERM
    align_corners: bool = False  # how logits are resized to the scored labels (bilinear)
    requires: tuple[tuple[str, object], ...] = ()  # (describe() key, value) the data set must have
    pair_lists: str | None = None  # pair-list: the peer's own (image, class) lists shipped in sst_fast.data
    source: str = ""  # the code the rules come from
    comparable: str = ""  # the published tables a number under this protocol sits in
    runs: int = 1  # the default number of seeds: seed, seed + 1, ... (the mean's 95% CI is over them)

    @property
    def seeds(self) -> tuple[int, ...]:
        """The default episode seeds: ``runs`` consecutive seeds from ``seed``."""
        return tuple(range(self.seed, self.seed + self.runs))

    def sampling_rule(self) -> str:
        """How the queries and their classes are drawn (SAMPLINGS, or the peer's shipped pair lists)."""
        if self.pair_lists and self.sampling == "class-first":
            return (
                "a class uniformly among the test classes, then the query uniformly among the peer's listed "
                f"images of it ({self.pair_lists}); supports among the list's images of the class"
            )
        if self.pair_lists:
            return (
                f"the peer's (test image, test class) pairs of the fold ({self.pair_lists}), in order, wrapping; "
                "supports among the list's images of the class"
            )
        return SAMPLINGS[self.sampling]

    def filter_rule(self, min_pixels: int) -> str:
        """How the small-object filter applies: the card's line."""
        if self.pair_lists:
            return "as the peer's pair lists were built (their filter is not stated); the data set's is not applied"
        return small_object_rule(self.sampling, min_pixels)


_SST = Protocol(
    "sst", "any", "class-first", 1000, 0,
    source="the paper (1000 episodes per run); this project's conventions",
)  # fmt: skip
_SST_TABLES = ("pascal", "coco")  # the data sets of the SST paper's (IJCAI 2020) tables
# sst's default seeds per data set, 1000 episodes each: enough for a 95% CI of the mIoU within +-1 point
# (benchmarks/eval_precision.py; docs/design.md §4.3, "Episodes and seeds"). Elsewhere one seed.
SST_RUNS = {"pascal": 5, "coco": 10}
_PFENET_PASCAL = Protocol(
    "pfenet", "pascal", "image-first", 5000, 321, resolution="original",
    empty_class="zero", empty_fb_term="zero", align_corners=True,
    source=f"{PFENET}: util/dataset.py:39-69 and :162-197, test.py:163-246",
    comparable="PFENet (TPAMI 2020)'s PASCAL-5i tables and work scored with PFENet's test.py",
)  # fmt: skip
_HSNET_PASCAL = Protocol(
    "hsnet", "pascal", "pair-list", 1000, 0, resolution="fixed", score_size=(400, 400),
    supports="independent", empty_class="zero", empty_fb_term="nan", align_corners=True,
    pair_lists="sst_fast/data/hsnet_pairs/pascal_val_fold<f>.txt, HSNet's data/splits/pascal/val",
    source=f"{HSNET}: data/pascal.py:30-148, data/dataset.py:26-35, common/logger.py:24-43, test.py:20",
    comparable="HSNet (ICCV 2021)'s PASCAL-5i tables and work scored with HSNet's test.py",
)  # fmt: skip

_BUNDLES: dict[tuple[str, str], Protocol] = {
    ("pfenet", "pascal"): _PFENET_PASCAL,
    ("pfenet", "coco"): Protocol(
        "pfenet", "coco", "image-first", 20000, 321, resolution="original",
        empty_class="zero", empty_fb_term="zero", align_corners=True, requires=(("style", "interleaved"),),
        source=f"{PFENET}: util/dataset.py:39-115 (use_split_coco), test.py:163-246",
        comparable="PFENet (TPAMI 2020)'s COCO-20i tables and work scored with PFENet's test.py",
    ),
    ("hsnet", "pascal"): _HSNET_PASCAL,
    ("hsnet", "coco"): Protocol(
        "hsnet", "coco", "class-first", 1000, 0, resolution="fixed", score_size=(400, 400),
        supports="independent", empty_class="zero", empty_fb_term="nan", align_corners=True,
        requires=(("style", "interleaved"),),
        pair_lists="sst_fast/data/hsnet_pairs/coco_val_fold<f>.txt, HSNet's data/splits/coco/val/fold<f>.pkl",
        source=f"{HSNET}: data/coco.py:30-107, common/logger.py:24-43, test.py:20",
        comparable="HSNet (ICCV 2021)'s COCO-20i tables and work scored with HSNet's test.py",
    ),
    ("hsnet", "fss"): Protocol(
        "hsnet", "fss", "every-image", None, 0, resolution="fixed", score_size=(400, 400),
        supports="independent", empty_class="zero", empty_fb_term="nan", align_corners=True,
        source=f"{HSNET}: data/fss.py:22-114, common/logger.py:24-43, test.py:20",
        comparable="HSNet (ICCV 2021)'s FSS-1000 table and work scored with HSNet's test.py",
    ),
}  # fmt: skip


def protocol_for(name: str, dataset: str) -> Protocol:
    """The protocol ``name`` (sst, pfenet, hsnet) on the data set called ``dataset``.

    A peer's rules for a data set it never used (the synthetic one, say) are its PASCAL rules; PFENet
    has no FSS-1000 protocol. A ValueError names ``protocol`` for anything else. ``comparable`` names a
    published table only where the paper has one for ``dataset``: elsewhere a number compares only with
    others under the same protocol on the same data set.
    """
    if name not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {name!r}")
    if name == "sst":
        if dataset in _SST_TABLES:
            comparable = (
                f"results under sst on {BENCHMARKS[dataset]}; the SST paper (IJCAI 2020)'s {BENCHMARKS[dataset]} "
                "tables come from 1000 episodes, but their scoring resolution and checkpoint selection are not "
                "stated, so a match with them cannot be shown"
            )
        else:
            comparable = _no_table(f"this project's own rules applied to {dataset}", name, dataset)
        return replace(_SST, dataset=dataset, comparable=comparable, runs=SST_RUNS.get(dataset, 1))
    if name == "pfenet" and dataset == "fss":
        raise ValueError("protocol: PFENet defines no FSS-1000 protocol (its code has no FSS-1000 loader): use hsnet")
    if (name, dataset) in _BUNDLES:
        return _BUNDLES[name, dataset]
    rules = f"{PEERS[name]}'s PASCAL-5i rules applied to {dataset}"
    return replace(  # no peer's list for it, and no peer's table
        _BUNDLES[name, "pascal"], dataset=dataset, pair_lists=None, comparable=_no_table(rules, name, dataset)
    )


def _no_table(rules: str, name: str, dataset: str) -> str:
    """The comparability of a protocol on a data set its paper publishes no table of."""
    return f"no published table ({rules}): only results under {name} on {dataset}"


# What a number can and cannot be compared with beyond the episodes and the scoring (docs/design.md §4.3,
# "What the protocols do not copy", which cites the peers' code): how the checkpoint was picked, what it was
# trained on, where the masks come from, the input size.
_SELECTION = (
    "checkpoint selection: sst_fast picks the checkpoint on base-class episodes of training images held out "
    "from training (data.val_fraction, 5%), never on the test fold"
)
_SELECTION_PEERS = (
    "; PFENet's train.py and HSNet's train.py pick theirs on the test fold's own novel-class episodes, which "
    "biases their numbers upwards"
)
_TRAINING = {
    "pascal": (
        "training list: sst_fast trains on ImageSets/SegmentationAug/train_aug.txt (10,582 ids in the usual "
        "SBD-augmented release; without it, every label) minus the VOC val images and the 5% hold-out; PFENet "
        "on its 5,953 ids (lists/pascal/voc_sbd_merge_noduplicate.txt: data.options.train_list takes it), "
        "HSNet on its (image, class) pairs of data/splits/pascal/trn"
    ),
    "coco": (
        "training list: sst_fast trains on the train2014 images holding a base class past the small-object "
        "filter, minus the 5% hold-out; PFENet on its list of 82,081 train2014 images, HSNet on its pairs of "
        "data/splits/coco/trn"
    ),
    "fss": (
        "training list: sst_fast trains on the 520 training classes of HSNet's FSS-1000 split minus the 5% "
        "hold-out; HSNet on all of them"
    ),
}
_MASKS = (
    "masks: sst_fast rasterises COCO's masks from the instance annotations (JSON, pycocotools); PFENet and "
    "HSNet read label PNGs made from them beforehand, which may settle overlaps and crowd regions differently"
)
_INPUT = {
    "pfenet": "input size: the model sees its own training size; PFENet's network sees 473x473 (COCO-20i: 641x641)",
    "hsnet": "input size: the model sees its own training size; HSNet's network sees 400x400",
}


def protocol_caveats(name: str, dataset: str) -> tuple[str, ...]:
    """What a number under protocol ``name`` on ``dataset`` cannot be compared with as it stands: checkpoint
    selection, training list, mask source, resolution (the card's ``caveats``). Never raises: a card of an
    unknown protocol or data set gets the general lines."""
    peer_tables = (name in ("pfenet", "hsnet") and dataset in ("pascal", "coco")) or (name, dataset) == (
        "hsnet",
        "fss",
    )
    selection = _SELECTION
    if (name, dataset) == ("hsnet", "fss"):
        selection += "; HSNet's train.py picks on FSS-1000's 240 validation classes (not the test classes)"
    elif peer_tables or (name == "sst" and dataset in _SST_TABLES):
        selection += _SELECTION_PEERS
        if name == "sst":
            selection += "; the SST paper does not say how it picked its checkpoint"
    training = _TRAINING.get(dataset, f"training list: sst_fast trains on {dataset}'s training images minus the "
                             "5% hold-out; no peer list exists for it")  # fmt: skip
    lines = [selection, training]
    if dataset == "coco":
        lines.append(_MASKS)
    if name == "sst":
        if dataset in _SST_TABLES:
            lines.append(
                "resolution: scored at the model's input size; the SST paper does not state its scoring "
                "resolution, so agreement with its tables cannot be shown"
            )
    elif name in _INPUT:
        lines.append(_INPUT[name])
    return tuple(lines)


def small_object_rule(sampling: str, min_pixels: int) -> str:
    """How the small-object filter of ``min_pixels`` pixels applies under ``sampling``: the card's line."""
    if not min_pixels:
        return "off"
    at = f">= {min_pixels} px"
    if sampling == "image-first":
        return f"{at}: a query holds a test class past it, each support the episode's class; the query's class any size"
    if sampling == "pair-list":
        return f"{at}: the class of each (image, class) pair and of each support"
    return f"{at}: the episode's class in the query and in each support"


def check_protocol_data(protocol: Protocol, described: dict) -> None:
    """Refuse a data set whose configuration the protocol's peer never used (COCO-20i in the contiguous style)."""
    for key, value in protocol.requires:
        if described.get(key) != value:
            raise ValueError(
                f"protocol {protocol.name}: {protocol.dataset} must have {key}={value} (the peer's class split), "
                f"got {key}={described.get(key)!r}"
            )


@dataclass(frozen=True)
class ProtocolCard:
    """What was evaluated and how. ``str(card)`` is the printed card; ``to_dict``/``from_dict`` round-trip."""

    dataset: str
    fold: int | str
    shots: int
    episodes: int
    seeds: tuple[int, ...]
    test_classes: tuple[int, ...]
    data: dict = field(default_factory=dict)  # the data set's description: its parameters and filter
    split_style: str | None = None  # COCO-20i: interleaved | contiguous
    test_split: str = "val"
    resolution: str = "input"  # "input": metrics at the network's input size; "original": at the label's size
    input_size: tuple[int, int] = (321, 321)
    min_pixels: int = 0
    class_sampling: str = CLASS_SAMPLING
    metric: str = METRIC_DEFINITION
    protocol: str = "sst"
    protocol_source: str = ""
    comparable: str = ""  # the published tables a number under this protocol sits in
    score_size: tuple[int, int] | None = None  # resolution "fixed": the size labels and logits are scored at
    small_objects: str = ""  # how the small-object filter applies (small_object_rule)
    align_corners: bool = False  # resolution "original" / "fixed": how logits are resized to the labels
    checkpoint: str | None = None
    model: dict = field(default_factory=dict)
    # What the model trained on, when known: {"dataset", "fold", "seen_test_classes"}: test classes that were
    # training classes (scored only when the evaluation allowed it: then not a few-shot result).
    trained_on: dict | None = None
    manifests: tuple[str, ...] = ()  # SHA-256 of each seed's episode manifest
    code_version: str = ""
    # What the numbers cannot be compared with as they stand (protocol_caveats); None: the protocol's and data
    # set's own, filled in (a metrics.json written before this field existed reads back with them).
    caveats: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.caveats is None:
            object.__setattr__(self, "caveats", protocol_caveats(self.protocol, self.dataset))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> ProtocolCard:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown protocol card fields {unknown}")
        values = dict(data)
        for name in ("seeds", "test_classes", "input_size", "manifests", "score_size", "caveats"):
            if name in values and values[name] is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    def __str__(self) -> str:
        size = f"{self.input_size[0]}x{self.input_size[1]}"
        corners = ", logits align_corners=True" if self.align_corners else ""
        if self.resolution == "fixed":
            scored = f"{self.score_size[0]}x{self.score_size[1]}"
            resolution = f"labels resized (nearest) to {scored} (input {size}{corners})"
        elif self.resolution == "original":
            resolution = f"original label size (input {size}{corners})"
        else:
            resolution = f"network input {size}"
        style = f" ({self.split_style})" if self.split_style else ""
        small = self.small_objects or (f">= {self.min_pixels} px per class per image" if self.min_pixels else "off")
        rows = [
            ("protocol", self.protocol + (f" ({self.protocol_source})" if self.protocol_source else "")),
            ("comparable with", self.comparable or "-"),
            ("data set", f"{self.dataset}{style}, fold {self.fold}, test images: {self.test_split}"),
            ("data", ", ".join(f"{k}={v}" for k, v in self.data.items() if k != "dataset") or "-"),
            ("test classes", ", ".join(str(c) for c in self.test_classes)),
            ("shots", str(self.shots)),
            ("episodes", f"{self.episodes} per seed, seeds {', '.join(str(s) for s in self.seeds)}"),
            ("sampling", self.class_sampling),
            ("resolution", resolution),
            ("small-object filter", small),
            ("metrics", self.metric),
            ("checkpoint", self.checkpoint or "(in memory)"),
            ("trained on", _trained_on_text(self.trained_on)),
            ("model", ", ".join(f"{k}={v}" for k, v in self.model.items()) or "-"),
            ("manifests", ", ".join(h[:16] for h in self.manifests) or "-"),
            ("code", self.code_version or "-"),
        ]
        rows[2:2] = [("caveats" if i == 0 else "", caveat) for i, caveat in enumerate(self.caveats)]
        width = max(len(name) for name, _ in rows)
        return "\n".join(["Protocol", *(f"  {name:<{width}}  {value}" for name, value in rows)])


def _trained_on_text(trained_on: dict | None) -> str:
    if not trained_on:
        return "not known"
    text = f"{trained_on['dataset']}, fold {trained_on['fold']}"
    seen = trained_on.get("seen_test_classes")
    if seen is None:
        return text + " (another class space: no class checked)"
    if not seen:
        return text + " (no test class among its training classes)"
    return text + f" (TEST CLASSES {', '.join(map(str, seen))} WERE TRAINING CLASSES: not a few-shot result)"


def code_version() -> str:
    """``sst_fast <version>`` plus the git commit (and ``+dirty``) when running from a checkout."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").exists():  # an installed copy, not a checkout
        return f"sst_fast {__version__}"
    try:
        commit = _git(root, "rev-parse", "--short=12", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return f"sst_fast {__version__}"
    return f"sst_fast {__version__} ({commit}{'+dirty' if dirty else ''})"


def _git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5, check=True)
    return result.stdout.strip()
