"""Build script: the Python package plus the ``sst_fast.ops._C`` kernel library.

Sources and flags come from ``csrc/build.cfg``, which ``CMakeLists.txt`` reads too: the CPU
sources always, the CUDA sources when torch has CUDA and nvcc is present (``SST_FAST_CUDA=0/1``
forces the choice). Build with ``pip install --no-build-isolation .`` so that the library is
compiled against the torch that will import it.
"""

from __future__ import annotations

import configparser
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def build_config() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "csrc", "build.cfg"))
    return config


def _sources(kind: str) -> list[str]:
    found: list[str] = []
    for pattern in build_config()["sources"][kind].split():
        found += sorted(glob.glob(pattern, root_dir=ROOT))
    return found


def _flags(kind: str) -> list[str]:
    return build_config()["flags"][kind].split()


def _ext_modules_and_cmdclass():
    cpu_sources = _sources("cpu")
    if not cpu_sources:
        print("sst_fast: csrc/ holds no kernels; building the pure-Python package")
        return [], {}

    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "sst_fast: building the kernels needs torch installed first; "
            "then run `pip install --no-build-isolation .`"
        ) from exc

    want_cuda = os.environ.get("SST_FAST_CUDA")
    has_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    use_cuda = has_cuda if want_cuda is None else want_cuda == "1"
    if use_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(_flags("cuda_arch"))
    sources = cpu_sources + (_sources("cuda") if use_cuda else [])
    extension = cpp_extension.CUDAExtension if use_cuda else cpp_extension.CppExtension
    what = "CPU + CUDA" if use_cuda else "CPU only"
    reason = "" if use_cuda else f" (torch CUDA: {torch.version.cuda}, nvcc home: {cpp_extension.CUDA_HOME})"
    print(f"sst_fast: building sst_fast.ops._C, {what}{reason}, from {len(sources)} sources: {' '.join(sources)}")
    module = extension(
        "sst_fast.ops._C",
        sources,
        extra_compile_args={"cxx": _flags("cxx"), "nvcc": _flags("nvcc")},
        extra_link_args=_flags("link"),
        py_limited_api=False,
    )
    return [module], {"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = _ext_modules_and_cmdclass()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
