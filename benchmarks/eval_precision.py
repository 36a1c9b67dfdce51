"""How many evaluation episodes and seeds a default needs: the spread of mIoU over evaluation seeds.

The study behind the default episode count and seeds of the ``sst`` protocol (docs/design.md §4.3,
"Episodes and seeds"). One small model is trained on the embedded synthetic data set (fold 0, the packaged
``synthetic`` configuration cut to 3 epochs of 100 steps; the unit tests' even smaller configuration,
``tests/engine/tiny.py``, trained for 180 or 200 steps, still predicted background everywhere, mIoU 0, which
has no spread to study); then it is evaluated 1-shot under the ``sst`` protocol with N episodes for each of
several evaluation seeds, and the standard deviation of the per-seed class-wise mIoU is fitted as
``k / sqrt(N)``. With S
seeds the 95% CI half-width of the mean is ``t(S-1) * k / sqrt(N * S)``; the script prints the N x S
that keep it within 1 mIoU point. It also times the evaluation (per 1000 episodes, this model, this
CPU) and one evaluation forward pass of the paper's model (ResNet-50, 321 x 321, batch 8, 1-shot).

Not part of the test run (minutes on two cores). Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_precision.py > benchmarks/eval_precision.txt

Its output is kept in ``benchmarks/eval_precision.txt``.
"""

from __future__ import annotations

import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import sst_fast
from sst_fast.engine import evaluate, load_run_config, model_from_checkpoint, train
from sst_fast.metrics import student_t_quantile

EPISODES = (250, 500, 1000, 2000)
SEEDS = tuple(range(100, 106))  # six evaluation seeds per episode count (not the training seed)


def trained_model(folder: Path, checkpoint: str | None = None):
    """The study's model: ``checkpoint`` (a run of this very configuration, to re-time without re-training)
    or a new training run in ``folder``."""
    if checkpoint is None:
        config = load_run_config("synthetic", ["optim.epochs=3", "data.val_episodes=100", "run.seed=0"])
        checkpoint = train(config, folder, progress=False).best_checkpoint
    return model_from_checkpoint(checkpoint)


def resnet50_forward_seconds(repeats: int = 3) -> list[float]:
    """One evaluation forward pass (inner gradient included) of the paper's model, 321 x 321, batch 8, 1-shot."""
    model = sst_fast.SST(sst_fast.SSTConfig(backbone="resnet50")).eval()
    query = torch.randn(8, 3, 321, 321)
    support = torch.randn(8, 1, 3, 321, 321)
    masks = (torch.rand(8, 1, 321, 321) > 0.5).long()
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        start = time.perf_counter()
        model(query, support, masks)
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    torch.manual_seed(0)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    print(f"# sst_fast {sst_fast.__version__}, torch {torch.__version__}, {cpu}")
    print(f"# torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as folder:
        model = trained_model(Path(folder) / "run", sys.argv[1] if len(sys.argv) > 1 else None)
    print("\n## mIoU over evaluation seeds (synthetic fold 0, 5 test classes, 1-shot, sst protocol)\n")
    print(
        "| episodes N | seeds | mean mIoU % | sd over seeds (points) | sd * sqrt(N) | 95% CI half-width "
        "| s per 1000 ep |"
    )
    print("|---|---|---|---|---|---|---|")
    ks, seconds = [], []
    for n in EPISODES:
        start = time.perf_counter()
        result = evaluate(model, "synthetic", 0, episodes=n, seeds=SEEDS)
        elapsed = time.perf_counter() - start
        mious = [100 * run["miou"] for run in result.runs]
        sd = statistics.stdev(mious)
        half = student_t_quantile(0.975, len(mious) - 1) * sd / math.sqrt(len(mious))
        ks.append(sd * math.sqrt(n))
        seconds.append(elapsed / (n * len(SEEDS)) * 1000)
        print(
            f"| {n} | {len(SEEDS)} | {statistics.mean(mious):.2f} | {sd:.2f} | {ks[-1]:.1f} | ±{half:.2f} "
            f"| {seconds[-1]:.1f} |"
        )
    k = statistics.mean(ks)
    print(f"\nk = sd * sqrt(N), mean over the rows: {k:.1f} (sd of one seed's mIoU ~ {k:.0f} / sqrt(N) points)")
    print("\n## Predicted 95% CI half-width of the mean over S seeds: t(S-1) * k / sqrt(N * S)\n")
    print("| N per seed | S = 1 | S = 3 | S = 5 | S = 10 |")
    print("|---|---|---|---|---|")
    for n in (1000, 2000, 5000, 10000, 20000):
        cells = ["n/a (no spread from one seed)"]
        for s in (3, 5, 10):
            cells.append(f"±{student_t_quantile(0.975, s - 1) * k / math.sqrt(n * s):.2f}")
        print(f"| {n} | " + " | ".join(cells) + " |")
    print(
        f"\nEvaluation time, this model (tiny backbone, 128x128, 64 channels): {statistics.median(seconds):.1f} s "
        "per 1000 episodes (median over the rows)"
    )
    times = resnet50_forward_seconds()
    per_batch = statistics.median(times)
    print(
        f"ResNet-50 SST, 321x321, batch 8, 1-shot, one evaluation forward pass (random weights): "
        f"{', '.join(f'{t:.2f}' for t in times)} s; median {per_batch:.2f} s -> "
        f"{per_batch * 1000 / 8 / 60:.1f} min per 1000 episodes on this CPU (forward only, no data loading)"
    )


if __name__ == "__main__":
    main()
