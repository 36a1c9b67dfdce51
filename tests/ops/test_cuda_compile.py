"""The CUDA sources compile with nvcc against this torch's headers; no GPU needed.

Each file of the ``cuda`` pattern in csrc/build.cfg is compiled to an object file (``nvcc -c``)
with build.cfg's nvcc flags and architectures plus the flags torch's BuildExtension adds, so a
CPU-only machine still catches compile errors in the kernels. Slow by nature: nvcc builds every
kernel for every architecture (csrc/cuda/*.cu, sm_80 + sm_90: about 160 s in all on a 2-core machine,
a fifth of the suite), so it is marked ``slow`` and runs in ``make cuda-check`` (CI runs it after
``make test``) and ``make test-all``, not in ``make test``.
"""

from __future__ import annotations

import configparser
import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[2]
CONFIG = configparser.ConfigParser()
CONFIG.read(ROOT / "csrc" / "build.cfg")
CUDA_SOURCES = sorted(
    os.path.relpath(path, ROOT)
    for pattern in CONFIG["sources"]["cuda"].split()
    for path in glob.glob(str(ROOT / pattern))
)
# What torch.utils.cpp_extension.BuildExtension passes to nvcc besides the user's flags.
TORCH_NVCC_DEFINES = [
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "-DTORCH_API_INCLUDE_EXTENSION_H",
    f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
]


def _torch_defines() -> list[str]:
    # A CPU-only torch ships the c10/cuda headers without the generated cuda_cmake_macros.h
    # (it only defines C10_CUDA_BUILD_SHARED_LIBS, which matters on Windows alone); skip it there.
    generated = Path(cpp_extension.include_paths()[0]) / "c10/cuda/impl/cuda_cmake_macros.h"
    return [] if generated.exists() else ["-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE"]


def _cuda_home() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or cpp_extension.CUDA_HOME
    return home or ("/usr/local/cuda" if os.path.isdir("/usr/local/cuda") else None)


def _nvcc() -> str | None:
    home = _cuda_home()
    candidate = os.path.join(home, "bin", "nvcc") if home else None
    return shutil.which("nvcc") or (candidate if candidate and os.access(candidate, os.X_OK) else None)


def _gencode(arch: str) -> list[str]:
    number = arch.replace(".", "")  # "9.0" -> "90"
    return ["-gencode", f"arch=compute_{number},code=sm_{number}"]


def test_cuda_sources_exist():
    # An empty glob would make the compile check below vacuous.
    assert CUDA_SOURCES, f"no file matches the cuda pattern {CONFIG['sources']['cuda']!r} of csrc/build.cfg"


@pytest.mark.slow
@pytest.mark.parametrize("source", CUDA_SOURCES)
def test_cuda_source_compiles(source, tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (neither on PATH nor in $CUDA_HOME/bin)")
    includes = cpp_extension.include_paths() + ([os.path.join(_cuda_home(), "include")] if _cuda_home() else [])
    command = [
        nvcc, "-c", str(ROOT / source), "-o", str(tmp_path / (Path(source).stem + ".o")),
        *CONFIG["flags"]["nvcc"].split(),
        *(f"-I{path}" for path in includes),
        "-Xcompiler", "-fPIC",
        "--threads", "0",  # the architectures in parallel, on every core
        *TORCH_NVCC_DEFINES, *_torch_defines(),
        *(flag for arch in CONFIG["flags"]["cuda_arch"].split() for flag in _gencode(arch)),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"nvcc failed ({result.returncode}):\n{' '.join(command)}\n{result.stderr}"


@pytest.mark.slow
def test_cmake_builds_the_architectures_of_build_cfg(tmp_path, monkeypatch):
    """The LibTorch build (CMakeLists.txt) compiles real code for build.cfg's cuda_arch, as setup.py does, and for
    $TORCH_CUDA_ARCH_LIST when it is set; configured only (a CUDA torch is needed to link)."""
    cmake = shutil.which("cmake")
    if cmake is None or _nvcc() is None:
        pytest.skip("cmake or nvcc not found")

    def configure(folder, arch_list=None):
        if arch_list is None:
            monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
        else:
            monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", arch_list)
        command = [
            cmake, "-S", str(ROOT), "-B", str(folder), "-DSST_FAST_CUDA=ON",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", f"-DCMAKE_CUDA_COMPILER={_nvcc()}",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, env=os.environ)
        assert result.returncode == 0, result.stdout + result.stderr
        flags = (folder / "CMakeFiles" / "sst_fast.dir" / "flags.make").read_text()
        # CMake writes --generate-code=arch=compute_90,code=[compute_90,sm_90]; torch's CMake config, with a CUDA
        # torch, -gencode arch=compute_90,code=sm_90: the set of (architecture, machine code or PTX) either way
        codes = re.findall(r"(?:--generate-code=|-gencode )arch=compute_\w+,code=\[?([\w,]+)\]?", flags)
        return {(code.split("_")[1], code.split("_")[0]) for entry in codes for code in entry.split(",")}

    wanted = {(arch.replace(".", ""), "sm") for arch in CONFIG["flags"]["cuda_arch"].split()}
    assert configure(tmp_path / "default") == wanted
    assert configure(tmp_path / "env", "8.6 9.0+PTX") == {("86", "sm"), ("90", "sm"), ("90", "compute")}
