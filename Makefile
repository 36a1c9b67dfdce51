# Two front-door targets: `make demo` and `make test`.
# Both create .venv on first use: they reuse an importable torch, or install torch 2.13.0
# (the CPU build) when there is none, then build this package against it.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install demo test test-all test-cpus cuda-check soak lint bench clean

install: $(VENV)/.installed

KERNEL_SOURCES := $(wildcard csrc/build.cfg csrc/*.h csrc/*.cpp csrc/cpu/*.h csrc/cpu/*.cpp csrc/cuda/*.h csrc/cuda/*.cuh csrc/cuda/*.cu csrc/cuda/*.cpp)

# Rebuilt when the build description or a kernel source changes (pip prints what it compiles).
$(VENV)/.installed: pyproject.toml setup.py CMakeLists.txt $(KERNEL_SOURCES)
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		echo "using the importable torch: $$($(PYTHON) -c 'import torch; print(torch.__version__)')"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV) && $(PIP) install "torch==$(TORCH_VERSION)"; \
	fi
	$(PIP) install "setuptools>=70" wheel
	$(PIP) install --no-build-isolation -e ".[test]"
	@$(PY) -c "from sst_fast import ops; print(ops.library_status())"
	@touch $@

# The embedded demo: trains SST and its baseline on the synthetic data set, writes runs/demo/report.md.
# Running it again continues an interrupted demo (finished runs are reused).
demo: install
	$(VENV)/bin/sst-fast demo --out runs/demo

test: install
	$(PY) -m pytest tests -q

test-all: install
	$(PY) -m pytest tests -q -m "not soak"

# The CUDA sources compiled with nvcc against this torch's headers, every architecture; no GPU needed (CI runs it).
cuda-check: install
	$(PY) -m pytest tests/ops/test_cuda_compile.py -q -m slow

# The suite under each CPU restriction torch allows (native, avx2, default, one-thread), with the time of
# each: how to check a new machine (tests/README.md). About an hour on two cores.
test-cpus: install
	tests/cpu_matrix.sh

# Half an hour of training with the memory sampled every minute (SST_FAST_SOAK_MINUTES, SST_FAST_SOAK_OUT).
soak: install
	$(PY) -m pytest tests -q -s -m soak

lint: install
	$(PY) -m ruff check sst_fast tests benchmarks setup.py

bench: install
	$(PY) -m pytest benchmarks -q -o python_files='bench_*.py' --benchmark-only --benchmark-group-by=group \
		--benchmark-columns=min,median,mean,rounds --benchmark-sort=name

clean:
	rm -rf build *.egg-info sst_fast/ops/_C*.so sst_fast/_C*.so .pytest_cache .benchmarks
