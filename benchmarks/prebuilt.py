"""A kernel library built ahead of a GPU run (benchmarks/gpu_prepare.sh), and whether it fits a tree and a machine.

    python benchmarks/prebuilt.py describe CARRY     # CARRY/BUILD.json: what CARRY/_C.so was built from and for
    python benchmarks/prebuilt.py check CARRY        # exit 0 when CARRY/_C.so fits this tree and this torch,
                                                     # else exit 1 and say why
    python benchmarks/prebuilt.py wheels DIR         # exit 0 when the wheels in DIR are exactly what the GPU
                                                     # image (gpu_image_packages.txt) lacks for sst_fast's tests
    python benchmarks/prebuilt.py imports            # exit 0 when this Python imports every package the suite
                                                     # needs, else exit 1 and name each missing one
    python benchmarks/prebuilt.py cuda-home          # the CUDA toolkit to build with: a folder with bin/nvcc
                                                     # and the runtime library to link (for CUDA_HOME)
    python benchmarks/prebuilt.py requirements       # sst_fast's requirements and its test extra's, one a line
                                                     # (for pip install -r)

The library fits when it was built from the same sources (csrc/ and setup.py, by SHA-256), for the same
Python (major.minor), the same torch release and the same CUDA version. torch's local version tag is left
out of the comparison: the package index's torch 2.11.0 is the CUDA 13.0 build that a CUDA image calls
2.11.0+cu130, and torch.version.cuda tells the two CUDA builds apart.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
import re
import shutil
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = "_C.so"
RECORD = "BUILD.json"


def sources_digest(root: Path = ROOT) -> str:
    """SHA-256 over the paths and contents of every file the library is built from."""
    digest = hashlib.sha256()
    files = sorted(path for path in (root / "csrc").rglob("*") if path.is_file()) + [root / "setup.py"]
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def machine() -> dict:
    import torch

    return {
        "python": ".".join(platform.python_version_tuple()[:2]),
        "torch": torch.__version__.split("+")[0],
        "cuda": torch.version.cuda,
    }


def describe(carry: Path) -> dict:
    library = carry / LIBRARY
    if not library.is_file():
        raise SystemExit(f"prebuilt: no {library}")
    record = {
        **machine(),
        "sources": sources_digest(),
        "library_sha256": hashlib.sha256(library.read_bytes()).hexdigest(),
    }
    (carry / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


def mismatches(carry: Path) -> list[str]:
    """Why CARRY's library cannot serve this tree on this machine; empty when it can."""
    library, record_path = carry / LIBRARY, carry / RECORD
    if not library.is_file() or not record_path.is_file():
        return [f"{carry} holds no {LIBRARY} with its {RECORD}"]
    record = json.loads(record_path.read_text())
    found = []
    if hashlib.sha256(library.read_bytes()).hexdigest() != record.get("library_sha256"):
        found.append(f"{library} is not the library {RECORD} describes")
    if record.get("sources") != sources_digest():
        found.append("it was built from other sources than this tree's csrc/ and setup.py")
    for key, value in machine().items():
        if record.get(key) != value:
            found.append(f"it was built for {key} {record.get(key)}, this machine has {value}")
    return found


def _name(requirement: str) -> str:
    """The normalised project name of a requirement string ('PyYAML>=6' -> 'pyyaml')."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)).lower()


def image_packages() -> set[str]:
    lines = (ROOT / "benchmarks" / "gpu_image_packages.txt").read_text().splitlines()
    return {_name(line) for line in lines if line.strip() and not line.startswith("#")}


def needed_requirements() -> list[str]:
    """sst_fast's requirements and its test extra's, less the linter (the GPU runs no lint)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    return [requirement for requirement in wanted if _name(requirement) != "ruff"]


def needed_packages() -> set[str]:
    return {_name(requirement) for requirement in needed_requirements()}


def wheel_requirements(wheel: Path) -> tuple[str, set[str]]:
    """A wheel's project name and the names it requires unconditionally (no extra, no marker)."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    project = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Name:"))
    requires = {_name(line.split(":", 1)[1]) for line in lines if line.startswith("Requires-Dist:") and ";" not in line}
    return _name(project), requires


def wheel_gaps(folder: Path) -> list[str]:
    """How the wheels in ``folder`` differ from what the image lacks: each missing or superfluous package."""
    image = image_packages()
    carried = dict(wheel_requirements(wheel) for wheel in sorted(folder.glob("*.whl")))
    available = image | set(carried)
    found = [f"{name} is needed and neither in the image nor carried" for name in sorted(needed_packages() - available)]
    for name, requires in carried.items():
        found += [f"{name} requires {need}, neither in the image nor carried" for need in sorted(requires - available)]
        if name in image:
            found.append(f"{name} is carried but the image has it")
    return found


# The module each package of needed_packages() is imported as, where the two names differ.
MODULES = {"pillow": "PIL", "pyyaml": "yaml", "pytest-benchmark": "pytest_benchmark"}


def missing_imports() -> list[str]:
    """The packages sst_fast and its tests need that this Python cannot import, each with the error."""
    missing = []
    for package in sorted(needed_packages()):
        module = MODULES.get(package, package.replace("-", "_"))
        try:
            importlib.import_module(module)
        except Exception as error:  # ImportError, or a package broken on import
            missing.append(f"{package} (import {module}: {type(error).__name__}: {error})")
    return missing


def cuda_home() -> Path | None:
    """The first of $CUDA_HOME, $CUDA_PATH, the folder above the nvcc on PATH and /usr/local/cuda that holds both
    bin/nvcc and libcudart.so. torch takes the folder above the nvcc on PATH, which is wrong where that nvcc is a
    wrapper script (/usr/local/bin/nvcc on some machines), and the link then fails to find -lcudart."""
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    candidates += [str(Path(nvcc).resolve().parents[1]) if nvcc else None, "/usr/local/cuda"]
    for candidate in filter(None, candidates):
        root = Path(candidate)
        runtime = [root / lib / "libcudart.so" for lib in ("lib64", "lib", "targets/x86_64-linux/lib")]
        if (root / "bin" / "nvcc").is_file() and any(path.exists() for path in runtime):
            return root
    return None


def main(argv: list[str]) -> int:
    if argv == ["requirements"]:
        print(*needed_requirements(), sep="\n")
        return 0
    if argv == ["cuda-home"]:
        root = cuda_home()
        if root is None:
            print("prebuilt: no CUDA toolkit with bin/nvcc and libcudart.so found (set CUDA_HOME)", file=sys.stderr)
            return 1
        print(root)
        return 0
    if argv == ["imports"]:
        missing = missing_imports()
        for package in missing:
            print(f"missing: {package}")
        if missing:
            print("carry their wheels: benchmarks/gpu_prepare.sh writes gpu-carry/wheels, or set SST_FAST_WHEELS")
            return 1
        print(f"every package the suite needs is importable: {', '.join(sorted(needed_packages()))}")
        return 0
    if len(argv) != 2 or argv[0] not in ("describe", "check", "wheels"):
        print(__doc__, file=sys.stderr)
        return 2
    carry = Path(argv[1])
    if argv[0] == "describe":
        print(json.dumps(describe(carry)))
        return 0
    if argv[0] == "wheels":
        gaps = wheel_gaps(carry)
        for gap in gaps:
            print(f"wheels: {gap}")
        return 1 if gaps else 0
    found = mismatches(carry)
    for reason in found:
        print(f"prebuilt library not used: {reason}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
