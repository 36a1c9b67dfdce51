#!/usr/bin/env bash
# The test suite under each restriction of the CPU that torch allows, one after another, with the time of
# each: what `make test` must pass on any x86-64 machine (tests/README.md). `make test-cpus` runs it.
#
#   tests/cpu_matrix.sh [CONFIG...] [-- PYTEST_ARGS...]
#
# CONFIG: native (the machine's own instruction set, every core), avx2, default (no vector extensions),
# one-thread; all four when none is named. Logs and the ten slowest tests of each go to $OUT
# (default: cpu-matrix/), one line per configuration to $OUT/summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-cpu-matrix}
configs=()
while (($#)) && [[ $1 != -- ]]; do configs+=("$1"); shift; done
[[ ${1:-} == -- ]] && shift
((${#configs[@]})) || configs=(native avx2 default one-thread)
mkdir -p "$OUT"

environment() {
    case $1 in
        native) echo "" ;;
        # torch's kernels (ATen), oneDNN's convolutions and MKL's BLAS, each held to the instruction set
        avx2) echo "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2" ;;
        default) echo "ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2" ;;
        one-thread) echo "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1" ;;
        *) echo "unknown configuration '$1' (native, avx2, default, one-thread)" >&2; return 2 ;;
    esac
}

status=0
for config in "${configs[@]}"; do
    settings=$(environment "$config") || exit 2
    capability=$(env $settings "$PY" -c "import torch; print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())")
    echo "== $config: ${settings:-(no restriction)}; torch sees capability/threads: $capability"
    started=$(date +%s)
    env $settings "$PY" -m pytest tests -q -p no:cacheprovider --durations=10 "$@" >"$OUT/$config.log" 2>&1
    code=$?
    seconds=$(($(date +%s) - started))
    result=$(tail -n 1 "$OUT/$config.log")
    printf '%-10s %4ds  exit %d  %s  [%s]\n' "$config" "$seconds" "$code" "$result" "$capability" | tee -a "$OUT/summary.txt"
    ((code == 0)) || status=1
done
exit $status
