"""The protocol card: every choice behind a number, printed and saved with every result."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ._version import __version__

METRIC_DEFINITION = (
    "class-wise mIoU (per class: sum of intersections / sum of unions over its episodes; mean over classes), "
    "FB-IoU (foreground and background IoU pooled over episodes, mean of the two), episode-wise mean IoU; "
    "label 255 excluded"
)
CLASS_SAMPLING = "class uniform over the test classes, then K+1 distinct images of it (query first)"


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
    checkpoint: str | None = None
    model: dict = field(default_factory=dict)
    manifests: tuple[str, ...] = ()  # SHA-256 of each seed's episode manifest
    code_version: str = ""

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> ProtocolCard:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown protocol card fields {unknown}")
        values = dict(data)
        for name in ("seeds", "test_classes", "input_size", "manifests"):
            if name in values and values[name] is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    def __str__(self) -> str:
        size = f"{self.input_size[0]}x{self.input_size[1]}"
        resolution = f"network input {size}" if self.resolution == "input" else f"original label size (input {size})"
        style = f" ({self.split_style})" if self.split_style else ""
        small = f">= {self.min_pixels} px per class per image" if self.min_pixels else "off"
        rows = [
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
            ("model", ", ".join(f"{k}={v}" for k, v in self.model.items()) or "-"),
            ("manifests", ", ".join(h[:16] for h in self.manifests) or "-"),
            ("code", self.code_version or "-"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(["Protocol", *(f"  {name:<{width}}  {value}" for name, value in rows)])


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
