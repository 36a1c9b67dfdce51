#!/usr/bin/env bash
# The GPU suite: build, test, sanitize and benchmark sst_fast on a CUDA machine in one call.
#
#   benchmarks/gpu_suite.sh OUT [STAGE ...]
#
# Stages, in this order (default: all of them):
#   env          the wheels the machine lacks installed (SST_FAST_WHEELS, else gpu-carry/wheels), every package
#                the tests import checked (each missing one named), the machine and versions; copy bandwidth
#                and bf16 matmul rate (OUT/probe.json)
#   build        the library benchmarks/gpu_prepare.sh built ahead (SST_FAST_PREBUILT) where it fits these
#                sources and this torch; else pip install --no-build-isolation . (CUDA kernels for
#                TORCH_CUDA_ARCH_LIST, default 9.0), then the same library beside the sources, so that tests
#                run from this tree use it
#   test         the whole test suite (-m "not soak") with SST_FAST_REQUIRE_GPU=1: a CUDA, Triton or
#                compiled-library test that skips is a failure (OUT/junit.xml)
#   launch       sst-fast train and eval on CUDA under torchrun --nproc-per-node 1 (a few steps)
#   sanitize     compute-sanitizer memcheck, racecheck and synccheck over tests/ops/kernel_drive.py,
#                which drives every kernel of the cuda and triton backends down each code path
#   bench-ops    benchmarks/bench_ops.py: each op, reference vs cuda vs triton, fwd and fwd+bwd (OUT/ops.json)
#   bench-model  benchmarks/bench_model.py: head step, whole ResNet-50 step and eval at 321x321, batch 16,
#                1 and 5 shots, every variant (OUT/model.json)
#   report       benchmarks/gpu_report.py: the result tables (OUT/SUMMARY.md)
#
# Each stage writes OUT/<stage>.log and a line "stage<TAB>ok|FAILED<TAB>seconds" to OUT/stages.tsv. A failed
# stage does not stop the others; the exit status is 1 when one failed. Stages that need the library
# build it first when this tree has no CUDA build yet.
#
# Environment:
#   PYTHON                      the Python with torch (default: python3)
#   SST_FAST_WHEELS             a folder of wheels for packages the machine lacks, installed first (no network
#                               needed; benchmarks/gpu_wheels.sh fills one); default: SST_FAST_PREBUILT/wheels
#   SST_FAST_PREBUILT           what benchmarks/gpu_prepare.sh wrote (default: gpu-carry): the library and wheels
#   TORCH_CUDA_ARCH_LIST        the architectures to build (default: 9.0, the H100 and H200)
#   SST_FAST_PYTEST_ARGS        more arguments for the test stage (e.g. "-x" or "-n 8")
#   SST_FAST_BENCH_SHAPES       benchmark shapes (see bench_ops.py and bench_model.py)
#   SST_FAST_BENCH_ARGS         more pytest arguments for the benchmark stages
#   SST_FAST_STAGE_TIMEOUT      seconds a stage may run (default: 3000)
#   SST_FAST_SUITE_ALLOW_CPU=1  run without a GPU (the suite's own test): kernel_drive checks the cpp backend
#                               without the sanitizer, the build, test and launch stages are refused
#   SST_FAST_SUITE_DRY=1        a dry run without a GPU (benchmarks/gpu_prepare.sh runs one in the image's Python
#                               and torch): the stages in order up to the first that needs the device (test,
#                               launch, sanitize, bench-ops, bench-model), which it names; the build stage builds
#                               or installs the prepared library as on the GPU
set -uo pipefail

usage() {
    sed -n '2,/^set -uo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 2
}

[[ $# -ge 1 && $1 != -* ]] || usage
OUT=$1
shift
ALL_STAGES=(env build test launch sanitize bench-ops bench-model report)
STAGES=("$@")
[[ ${#STAGES[@]} -gt 0 ]] || STAGES=("${ALL_STAGES[@]}")
for stage in "${STAGES[@]}"; do
    [[ " ${ALL_STAGES[*]} " == *" $stage "* ]] || { echo "gpu_suite: unknown stage '$stage' (stages: ${ALL_STAGES[*]})" >&2; exit 2; }
done

mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
STAGE_TIMEOUT=${SST_FAST_STAGE_TIMEOUT:-3000}
DRY=${SST_FAST_SUITE_DRY:-0}
PREBUILT=${SST_FAST_PREBUILT:-$ROOT/gpu-carry}
WHEELS=${SST_FAST_WHEELS:-$PREBUILT/wheels}
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "gpu_suite: $PY cannot import torch (set PYTHON)" >&2
    exit 2
fi
GPU=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")
if [[ $GPU != 1 && ${SST_FAST_SUITE_ALLOW_CPU:-0} != 1 && $DRY != 1 ]]; then
    echo "gpu_suite: no CUDA device visible to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)'))" >&2
    exit 2
fi

words() {  # words VARIABLE: the variable's value split as a shell would (quotes kept together), one per line
    "$PY" -c 'import os, shlex, sys; print(*shlex.split(os.environ.get(sys.argv[1], "")), sep="\n")' "$1"
}

bench() {  # bench FILE JSON: one pytest-benchmark module, its results as JSON
    local extra
    mapfile -t extra < <(words SST_FAST_BENCH_ARGS)
    "$PY" -m pytest "$1" -q -p no:cacheprovider -o python_files='bench_*.py' --benchmark-only \
        --benchmark-json="$2" --benchmark-group-by=group --benchmark-columns=min,median,mean,rounds \
        --benchmark-sort=name --benchmark-warmup=on --benchmark-max-time=0.5 "${extra[@]}"
}

has_cuda_build() {  # the library beside the sources serves CUDA tensors
    "$PY" -c "from sst_fast import ops; raise SystemExit('cuda' not in ops.backends())" 2>/dev/null
}

needs_device() {  # the stages a dry run stops before
    case $1 in test | launch | sanitize | bench-ops | bench-model) return 0 ;; *) return 1 ;; esac
}

install_wheels() {
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        "$PY" -m pip install --no-index --no-deps "$WHEELS"/*.whl || return 1
    fi
}

check_imports() {  # every package sst_fast and its tests import, each missing one named with what provides it
    "$PY" benchmarks/prebuilt.py imports
}

stage_env() {
    install_wheels || return 1
    check_imports || return 1
    "$PY" benchmarks/gpu_probe.py "$OUT/probe.json" || return 1
    nvidia-smi || true
    nvcc --version || true
    compute-sanitizer --version || true
    "$PY" -m pip list 2>/dev/null || true
}

stage_build() {
    [[ $GPU == 1 || $DRY == 1 ]] || { echo "the build stage needs a GPU machine (it builds the CUDA kernels)"; return 1; }
    install_wheels || return 1
    if "$PY" benchmarks/prebuilt.py check "$PREBUILT"; then
        cp "$PREBUILT/_C.so" sst_fast/ops/ || return 1
        echo "using the library built ahead: $PREBUILT/_C.so"
        "$PY" -c "from sst_fast.ops import _compiled; assert 'cuda' in _compiled.built_device_types()" || return 1
        "$PY" -m sst_fast info || return 1
        [[ $GPU != 1 ]] || has_cuda_build
        return
    fi
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)}
    CUDA_HOME=$("$PY" benchmarks/prebuilt.py cuda-home) || return 1
    export CUDA_HOME
    "$PY" -m pip install --no-build-isolation --no-deps --force-reinstall -v . || return 1
    # The installed library, as imported from outside this tree, then copied beside the sources.
    local library
    library=$(cd / && "$PY" -c "import sst_fast.ops._C as c; print(c.__file__)") || return 1
    (cd / && "$PY" -c "from sst_fast.ops import _compiled; assert 'cuda' in _compiled.built_device_types()") || return 1
    cp "$library" sst_fast/ops/ || return 1
    "$PY" -m sst_fast info || return 1
    [[ $GPU != 1 ]] || has_cuda_build
}

ensure_built() {
    [[ $GPU == 1 ]] || return 0
    has_cuda_build || { echo "no CUDA build in this tree: building first"; stage_build; }
}

stage_test() {
    [[ $GPU == 1 ]] || { echo "the test stage needs a GPU machine (CI runs the tests on the CPU)"; return 1; }
    ensure_built || return 1
    local extra
    mapfile -t extra < <(words SST_FAST_PYTEST_ARGS)
    SST_FAST_REQUIRE_GPU=1 "$PY" -m pytest tests -m "not soak" -q -ra -p no:cacheprovider \
        --junitxml="$OUT/junit.xml" "${extra[@]}"
}

stage_launch() {
    [[ $GPU == 1 ]] || { echo "the launch stage needs a GPU machine"; return 1; }
    ensure_built || return 1
    local run="$OUT/launch-run"
    local launcher=("$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m sst_fast)
    rm -rf "$run"
    "${launcher[@]}" train --no-progress --config synthetic --run-dir "$run" optim.epochs=1 \
        optim.episodes_per_epoch=64 data.val_episodes=16 run.device=cuda run.amp=bf16 run.channels_last=true || return 1
    "${launcher[@]}" eval "$run/checkpoints/last.pt" --episodes 32 --device cuda --amp bf16 --no-progress \
        --out "$run/eval" || return 1
    test -s "$run/eval/metrics.json"
}

stage_sanitize() {
    if [[ $GPU != 1 ]]; then
        "$PY" tests/ops/kernel_drive.py --backend cpp --quick
        return
    fi
    ensure_built || return 1
    local failed=0 tool backend filter quick
    for tool in memcheck racecheck synccheck; do
        for backend in cuda triton; do
            # Our CUDA kernels live in namespace sst_fast; the Triton backend's kernels are checked with
            # the PyTorch kernels around them, on the smaller drive.
            filter=() quick=()
            [[ $backend == cuda ]] && filter=(--kernel-name kns=sst_fast)
            [[ $backend == triton || $tool == racecheck ]] && quick=(--quick)
            echo "== compute-sanitizer --tool $tool, backend $backend"
            PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 99 \
                "${filter[@]}" "$PY" tests/ops/kernel_drive.py --backend "$backend" "${quick[@]}" || failed=1
        done
    done
    return $failed
}

stage_bench_ops() {
    ensure_built || return 1
    bench benchmarks/bench_ops.py "$OUT/ops.json"
}

stage_bench_model() {
    ensure_built || return 1
    bench benchmarks/bench_model.py "$OUT/model.json"
}

stage_report() {
    "$PY" benchmarks/gpu_report.py "$OUT"
}

export GPU PY OUT STAGE_TIMEOUT DRY PREBUILT WHEELS
FAILED=0
for stage in "${STAGES[@]}"; do
    if [[ $DRY == 1 ]] && needs_device "$stage"; then
        echo "== gpu_suite: dry run: stopped before '$stage', the first stage that needs a GPU"
        break
    fi
    log="$OUT/$stage.log"
    echo "== gpu_suite: $stage (log: $log)"
    start=$SECONDS
    # Each stage in a subshell with a time limit, so that one that hangs or exits cannot take the rest along.
    timeout --kill-after=30 "$STAGE_TIMEOUT" bash -c "set -o pipefail; $(declare -f); stage_${stage//-/_}" >"$log" 2>&1
    status=$?
    seconds=$((SECONDS - start))
    if [[ $status == 0 ]]; then result=ok; else result=FAILED; FAILED=1; fi
    printf '%s\t%s\t%s\n' "$stage" "$result" "$seconds" >>"$OUT/stages.tsv"
    echo "   $result in ${seconds}s$([[ $status == 0 ]] || echo " (exit $status); last lines:")"
    [[ $status == 0 ]] || tail -n 25 "$log" | sed 's/^/   | /'
done
"$PY" benchmarks/gpu_report.py "$OUT" >/dev/null  # again, with every stage's line
echo "== gpu_suite: $([[ $FAILED == 0 ]] && echo "every stage passed" || echo "a stage FAILED"); summary: $OUT/SUMMARY.md"
exit $FAILED
