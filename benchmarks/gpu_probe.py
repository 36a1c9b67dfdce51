"""The machine a GPU benchmark ran on, and what its device can do: written as JSON for gpu_report.py.

Records the device (name, multiprocessors, memory, compute capability), the driver and the versions of
Python, torch, CUDA, cuDNN and Triton, then measures two ceilings with CUDA events:

* ``copy_gbps``: a device-to-device copy of 1 GiB (bytes read + written per second), the bandwidth the
  memory-bound ops are compared with;
* ``matmul_tflops``: an 8192 x 8192 x 8192 bfloat16 product, the attainable rate of dense bf16 math.

``peak_tflops`` is the datasheet's dense bf16 rate for the device (SST_FAST_PEAK_TFLOPS overrides it),
which model FLOP utilisation is quoted against. Without a GPU only the versions are written.

Run: ``python benchmarks/gpu_probe.py OUT.json``
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import torch

# Dense (no sparsity) bfloat16 tensor-core rates, TFLOP/s, from the vendor's datasheets; the first name
# that occurs in the device's name wins.
DATASHEET_BF16_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("A10G", 70.0),
)


def versions() -> dict:
    info = dict(
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        host=platform.node(),
        cpu=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
    )
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,name,clocks.max.sm,clocks.max.mem", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        info["nvidia_smi"] = smi.stdout.strip()
        info["driver"] = smi.stdout.split(",")[0].strip()
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    return info


def timed(function, repeat: int) -> float:
    """Seconds per call: the median of ``repeat`` calls timed with CUDA events, after three warm-ups."""
    for _ in range(3):
        function()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def device_info() -> dict:
    props = torch.cuda.get_device_properties(0)
    name = torch.cuda.get_device_name(0)
    peak, peak_source = os.environ.get("SST_FAST_PEAK_TFLOPS"), "SST_FAST_PEAK_TFLOPS"
    if peak is None:
        peak = next((rate for key, rate in DATASHEET_BF16_TFLOPS if key in name), None)
        peak_source = "datasheet, dense bf16"
    info = dict(
        name=name,
        capability=f"sm_{props.major}{props.minor}",
        multiprocessors=props.multi_processor_count,
        memory_gib=round(props.total_memory / 2**30, 1),
        peak_tflops=None if peak is None else float(peak),
        peak_source=peak_source if peak is not None else None,
    )
    info["copy_gbps"] = copy_gbps()
    info["matmul_tflops"] = matmul_tflops()
    return info


def copy_gbps() -> float:
    origin = torch.empty(2**28, dtype=torch.float32, device="cuda")  # 1 GiB
    target = torch.empty_like(origin)
    seconds = timed(lambda: target.copy_(origin), repeat=20)
    return round(2 * origin.numel() * 4 / seconds / 1e9, 1)


def matmul_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    seconds = timed(lambda: a @ b, repeat=10)
    return round(2 * 8192**3 / seconds / 1e12, 1)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python benchmarks/gpu_probe.py OUT.json", file=sys.stderr)
        return 2
    probe = dict(versions=versions(), device=device_info() if torch.cuda.is_available() else None)
    with open(argv[0], "w") as out:
        json.dump(probe, out, indent=2)
    print(json.dumps(probe, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
