import platform

import pytest
import torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@pytest.fixture
def machine(benchmark):
    """Record where a timing was taken, with every benchmark."""
    benchmark.extra_info.update(
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpu=_cpu_model(),
        cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    )
    return benchmark
