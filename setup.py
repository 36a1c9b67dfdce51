"""Build script: the Python package plus, when ``csrc/`` holds kernels, the ``sst_fast._C`` library.

Sources are found by one rule shared with ``CMakeLists.txt``: ``csrc/*.cpp`` and
``csrc/cpu/*.cpp`` always, ``csrc/cuda/*.cu`` when torch has CUDA and nvcc is present
(``SST_FAST_CUDA=0/1`` forces the choice). Build with ``pip install --no-build-isolation .``
so that the extension is compiled against the torch that will import it.
"""

from __future__ import annotations

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CPU_PATTERNS = ("csrc/*.cpp", "csrc/cpu/*.cpp")
CUDA_PATTERNS = ("csrc/cuda/*.cu",)


def _sources(patterns: tuple[str, ...]) -> list[str]:
    found: list[str] = []
    for pattern in patterns:
        found += sorted(glob.glob(pattern, root_dir=ROOT))
    return found


def _ext_modules_and_cmdclass():
    cpu_sources = _sources(CPU_PATTERNS)
    if not cpu_sources:
        print("sst_fast: csrc/ holds no kernels yet; building the pure-Python package")
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
    sources = cpu_sources + (_sources(CUDA_PATTERNS) if use_cuda else [])
    extension = cpp_extension.CUDAExtension if use_cuda else cpp_extension.CppExtension
    print(f"sst_fast: building sst_fast._C ({'CPU+CUDA' if use_cuda else 'CPU'}) from {len(sources)} sources")
    module = extension(
        "sst_fast._C",
        sources,
        extra_compile_args={"cxx": ["-O3", "-fopenmp"], "nvcc": ["-O3"]},
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    return [module], {"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = _ext_modules_and_cmdclass()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
