"""Long-run stability: train on the synthetic set for half an hour and watch the process's memory.

Marked ``soak`` and left out of every default run (``make soak`` runs it). ``SST_FAST_SOAK_MINUTES``
(default 30) sets the length, ``SST_FAST_SOAK_OUT`` a folder to keep the run and ``memory.json``.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.soak

WARM_UP_MINUTES = 5  # the first validations, TensorBoard's buffers, the allocator's pools
ALLOWED_GROWTH_MIB = 32


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads memory from /proc")
def test_training_memory_does_not_grow(tmp_path):
    minutes = float(os.environ.get("SST_FAST_SOAK_MINUTES", "30"))
    out = Path(os.environ.get("SST_FAST_SOAK_OUT", tmp_path))
    run_dir = out / "run"
    command = [sys.executable, "-m", "sst_fast", "train", "--config", "synthetic", "--run-dir", str(run_dir)]
    command += ["--no-progress", "optim.epochs=100000", "run.threads=1", "run.checkpoint_every=200"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < minutes * 60:
            time.sleep(min(60.0, minutes * 60 / 10))
            assert process.poll() is None, process.stderr.read()[-3000:]
            records = (
                (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
            )
            step = json.loads(records[-1])["step"] if records else 0
            samples.append(
                {"minute": (time.monotonic() - started) / 60, "rss_mib": resident_mib(process.pid), "step": step}
            )
            print(f"soak {samples[-1]['minute']:.1f} min: {samples[-1]['rss_mib']:.1f} MiB at step {step}", flush=True)
    finally:
        process.send_signal(signal.SIGINT)  # a clean stop: finish the step, checkpoint, exit 130
        code = process.wait(timeout=300)
    assert code == 130, process.stderr.read()[-3000:]
    after = [s for s in samples if s["minute"] >= min(WARM_UP_MINUTES, minutes / 2)]
    growth = max(s["rss_mib"] for s in after) - after[0]["rss_mib"]
    (out / "memory.json").write_text(json.dumps({"samples": samples, "growth_after_warm_up_mib": growth}, indent=1))
    assert growth <= ALLOWED_GROWTH_MIB, samples
