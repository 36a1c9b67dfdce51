#!/usr/bin/env bash
# Prepares a GPU run on a machine without a GPU: builds sst_fast, CUDA kernels included, against the GPU image's
# Python and torch in a scratch environment, proves it there (import, the LibTorch CMake build, the CPU test suite,
# the GPU suite's dry run) and writes what a GPU run carries, so that a lent GPU spends its minutes on tests,
# sanitizer and benchmarks rather than on building.
#
#   benchmarks/gpu_prepare.sh [CARRY]          (default: gpu-carry, ignored by git)
#
# CARRY then holds, under the device tool's 64 MiB:
#   _C.so        sst_fast.ops._C for TORCH_CUDA_ARCH_LIST (default 9.0, the H200) against that torch
#   BUILD.json   what it was built from and for (benchmarks/prebuilt.py): the GPU suite's build stage uses the
#                library only where the sources, Python, torch and CUDA versions all match, else builds
#   wheels/      exactly the packages the image lacks for Python 3.12 (benchmarks/gpu_wheels.sh; checked against
#                benchmarks/gpu_image_packages.txt)
#   prepare.log  every step's output, with the time of each
# Carry it with the device tool (carry: ["gpu-carry"]) and run benchmarks/gpu_suite.sh there.
#
# Environment:
#   SST_FAST_GPU_PYTHON    a Python of the image's version (default: python3.12, else pyenv's newest 3.12)
#   SST_FAST_GPU_TORCH     the image's torch (default: torch==2.11.0: the package index's build is for CUDA 13.0)
#   SST_FAST_GPU_ENV       the scratch environment, kept for later runs (default: .gpu-env, ignored by git)
#   TORCH_CUDA_ARCH_LIST   default 9.0
#   CUDA_HOME              the CUDA toolkit (default: benchmarks/prebuilt.py cuda-home finds one)
#   SST_FAST_PREPARE_TESTS pytest arguments of the CPU suite in that environment (default: tests as make test runs
#                          them, less tests/ops/test_triton.py: triton 3.6's interpreter, which that file runs on a
#                          CPU, cannot take a loop bound given at run time (range(0, P, BLOCK)); the GPU compiles the
#                          same kernels, and its test stage runs the file)
set -uo pipefail
[[ ${1:-} == -* ]] && { sed -n '2,/^set -uo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CARRY=$(mkdir -p "${1:-gpu-carry}" && cd "${1:-gpu-carry}" && pwd) || exit 2
ENV_DIR=${SST_FAST_GPU_ENV:-$ROOT/.gpu-env}
TORCH_SPEC=${SST_FAST_GPU_TORCH:-torch==2.11.0}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
LOG=$CARRY/prepare.log
: >"$LOG"

step() {  # step NAME COMMAND...: runs the command, its output to the log, one line with its time on the terminal
    local name=$1 start=$SECONDS status
    shift
    echo "== $name" >>"$LOG"
    "$@" >>"$LOG" 2>&1
    status=$?
    printf '%-10s %s in %ds\n' "$name" "$([[ $status == 0 ]] && echo ok || echo "FAILED (exit $status)")" \
        "$((SECONDS - start))" | tee -a "$LOG"
    if [[ $status != 0 ]]; then
        tail -n 30 "$LOG" | sed 's/^/   | /'
        exit 1
    fi
}

python312() {
    local candidate
    for candidate in "${SST_FAST_GPU_PYTHON:-}" python3.12 "$(ls -d "$HOME"/.pyenv/versions/3.12*/bin/python 2>/dev/null | sort -V | tail -n 1)"; do
        [[ -n $candidate ]] && command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { command -v "$candidate"; return; }
    done
    return 1
}

BASE=$(python312) || { echo "gpu_prepare: no Python 3.12 found (set SST_FAST_GPU_PYTHON)" >&2; exit 2; }
CUDA_HOME=$("$BASE" benchmarks/prebuilt.py cuda-home) || exit 2
export CUDA_HOME
PY=$ENV_DIR/bin/python
STAGE=$ENV_DIR/stage  # the tree as the device tool copies it: tracked and untracked files that git does not ignore

environment() {
    [[ -x $PY ]] || "$BASE" -m venv "$ENV_DIR" || return 1
    "$PY" -m pip install -q "$TORCH_SPEC" "setuptools>=70" wheel || return 1
    # sst_fast's requirements and its test extra's, without building sst_fast itself
    "$PY" benchmarks/prebuilt.py requirements >"$ENV_DIR/requirements.txt" || return 1
    "$PY" -m pip install -q -r "$ENV_DIR/requirements.txt" || return 1
    "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
}

stage() {
    rm -rf "$STAGE" && mkdir -p "$STAGE" || return 1
    git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$STAGE"
}

build() {  # the GPU suite's own build stage, without a GPU and with nothing built ahead: pip install, the library
    # beside the sources, loaded with every symbol resolved and its CUDA kernels registered
    (cd "$STAGE" && PYTHON=$PY SST_FAST_SUITE_DRY=1 SST_FAST_PREBUILT="$ENV_DIR/nothing-built" SST_FAST_CUDA=1 \
        bash benchmarks/gpu_suite.sh "$ENV_DIR/build" build) || return 1
    cat "$ENV_DIR/build/build.log"
    ls -l "$STAGE/sst_fast/ops/_C.so"
}

cmake_build() {  # the LibTorch build, CUDA included, against the same torch
    local prefix
    prefix=$("$PY" -c "import torch; print(torch.utils.cmake_prefix_path)") || return 1
    # torch links NVRTC; a toolkit of nvcc and the runtime alone lacks it, torch's own wheel (nvidia-cuda-nvrtc) has it
    local nvrtc=()
    if ! compgen -G "$CUDA_HOME/lib*/libnvrtc.so*" >/dev/null; then
        nvrtc=("-DCUDA_nvrtc_LIBRARY=$("$PY" -c "import glob, sysconfig
print(sorted(glob.glob(sysconfig.get_paths()['purelib'] + '/nvidia/**/libnvrtc.so*', recursive=True))[0])")") || return 1
    fi
    rm -rf "$ENV_DIR/cmake-build"
    cmake -S "$STAGE" -B "$ENV_DIR/cmake-build" -DSST_FAST_CUDA=ON -DCMAKE_PREFIX_PATH="$prefix" "${nvrtc[@]}" \
        -DPython3_EXECUTABLE="$PY" -DCMAKE_BUILD_TYPE=Release || return 1
    cmake --build "$ENV_DIR/cmake-build" -j "$(nproc)" || return 1
    ls -l "$ENV_DIR/cmake-build/libsst_fast.so"
}

cpu_tests() {
    local args
    read -r -a args <<<"${SST_FAST_PREPARE_TESTS:-tests --ignore=tests/ops/test_triton.py}"
    (cd "$STAGE" && "$PY" -m pytest -q -p no:cacheprovider --durations=5 "${args[@]}")
}

carry() {
    rm -rf "$CARRY/wheels" "$CARRY/_C.so" "$CARRY/BUILD.json"
    cp "$STAGE/sst_fast/ops/_C.so" "$CARRY/" || return 1
    (cd "$STAGE" && "$PY" benchmarks/prebuilt.py describe "$CARRY") || return 1
    PYTHON=$PY bash benchmarks/gpu_wheels.sh "$CARRY/wheels" 3.12 || return 1
    "$PY" benchmarks/prebuilt.py wheels "$CARRY/wheels" || return 1
    local bytes
    bytes=$(du -sb --exclude=prepare.log "$CARRY" | cut -f1)
    echo "carry: $bytes bytes"
    ((bytes < 60 * 1024 * 1024)) || { echo "carry: over the device tool's 64 MiB (with room for the tree)"; return 1; }
}

dry_suite() {  # the GPU suite's first stages in this environment, as on the GPU machine, up to the first that needs it
    cp -r "$CARRY" "$STAGE/gpu-carry" || return 1
    (cd "$STAGE" && PYTHON=$PY SST_FAST_SUITE_DRY=1 bash benchmarks/gpu_suite.sh "$ENV_DIR/dry-run") || return 1
    cat "$ENV_DIR/dry-run/stages.tsv"
}

step env "environment"
step stage "stage"
step build "build"
step cmake "cmake_build"
step carry "carry"
step tests "cpu_tests"
step dry-run "dry_suite"
echo "gpu_prepare: $CARRY is ready ($(du -sh --exclude=prepare.log "$CARRY" | cut -f1)); log: $LOG"
