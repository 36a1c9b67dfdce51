"""The package's layers (README, Layout): a module imports only from its own layer or below, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sst_fast"
# Bottom to top. A subpackage or module of sst_fast by its first name under the package.
LAYERS = (
    {"_version", "config", "files", "protocol", "configs"},
    {"ops"},
    {"models", "reference"},
    {"data"},
    {"metrics"},
    {"viz", "predict", "segmenter", "export"},
    {"engine"},
    {"cli", "__main__"},
    {"__init__"},
)
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def _imported(path: Path) -> list[str]:
    """The sst_fast modules ``path`` imports (absolute names), wherever in the file the import stands."""
    package = ["sst_fast", *path.relative_to(PACKAGE).parent.parts]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names if alias.name.startswith("sst_fast")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                if node.module:
                    names.append(f"{base}.{node.module}")
                else:
                    names += [f"{base}.{alias.name}" for alias in node.names]
            elif node.module and node.module.startswith("sst_fast"):
                names.append(node.module)
    return names


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        assert path.relative_to(PACKAGE).parts[0].removesuffix(".py") in LEVEL, path


def test_no_import_runs_up_the_layers():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for module in _imported(path):
            if _layer(module) in LEVEL and LEVEL[_layer(module)] > LEVEL[own]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    assert not upward, "\n".join(upward)
