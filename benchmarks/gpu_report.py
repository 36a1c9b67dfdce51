"""Result tables of a benchmark run, as Markdown: what benchmarks/gpu_suite.sh writes to SUMMARY.md.

Reads from the folder given as argument whatever of these is there:

* ``probe.json`` (gpu_probe.py): the machine, the versions, the copy bandwidth and bf16 matmul rate;
* ``stages.tsv``: one line per suite stage, ``name<TAB>status<TAB>seconds``;
* ``ops.json`` (pytest-benchmark, bench_ops.py): per op, shape and pass, every backend's time per call,
  its speed-up over the reference, and for the memory-bound ops its bandwidth (``bytes`` / time) as a
  fraction of the device-to-device copy of the same run's ``copy`` group; TFLOP/s for the convolution;
* ``model.json`` (pytest-benchmark, bench_model.py): per step, every variant's time and speed-up over
  the reference, peak memory, model FLOP utilisation (the reference's counted FLOPs / time / the
  device's peak) and, for evaluation, episodes per second.

Run: ``python benchmarks/gpu_report.py FOLDER`` (prints the Markdown and writes FOLDER/SUMMARY.md).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

MEMORY_BOUND = ("masked_avg_pool", "tuned_prototype", "copy")
GOALS = dict(bandwidth=0.80, head_speedup=5.0, mfu=0.40)


def load(path: Path):
    if not path.exists():
        return None
    with open(path) as handle:
        return json.load(handle)


def per_call(bench: dict) -> float:
    """Median seconds per call (a timed round may hold several calls: ``extra_info['calls']``)."""
    return bench["stats"]["median"] / bench["extra_info"].get("calls", 1)


def seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} µs"


def by_group(data: dict, variant) -> dict[str, dict[str, dict]]:
    """{group: {variant(bench): bench}} of a pytest-benchmark result."""
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        groups[bench["group"]][variant(bench)] = bench
    return groups


def table_start(title: str, explanation: str, header: list[str]) -> list[str]:
    """A section's heading, its explanation and a Markdown table's header rows."""
    return [f"## {title}", "", explanation, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def machine_section(probe: dict | None) -> list[str]:
    if probe is None:
        return ["## Machine", "", "No probe.json.", ""]
    v, d = probe["versions"], probe.get("device")
    lines = ["## Machine", ""]
    if d is not None:
        lines.append(
            f"- Device: {d['name']} ({d['capability']}, {d['multiprocessors']} SMs, {d['memory_gib']} GiB), "
            f"driver {v.get('driver')}"
        )
        lines.append(
            f"- Measured: device-to-device copy {d['copy_gbps']} GB/s (read + written, 1 GiB); "
            f"bf16 8192³ matmul {d['matmul_tflops']} TFLOP/s; peak for MFU {d['peak_tflops']} TFLOP/s "
            f"({d['peak_source']})"
        )
    else:
        lines.append("- No GPU: CPU only")
    lines.append(
        f"- Python {v['python']}, torch {v['torch']}, CUDA {v['cuda']}, cuDNN {v['cudnn']}, Triton {v['triton']}; "
        f"{v['cpu_count']} CPU cores"
    )
    return [*lines, ""]


def stages_section(folder: Path) -> list[str]:
    path = folder / "stages.tsv"
    if not path.exists():
        return []
    lines = ["## Stages", "", "| stage | status | time |", "|---|---|---|"]
    for row in path.read_text().splitlines():
        name, status, secs = row.split("\t")
        lines.append(f"| {name} | {status} | {float(secs):.0f} s |")
    return [*lines, ""]


def ops_section(data: dict | None) -> list[str]:
    if data is None:
        return []
    groups = by_group(
        data, lambda b: b["params"].get("backend") or ("autograd" if "by_autograd" in b["name"] else "copy")
    )
    copy_rate = {}
    for group, benches in groups.items():
        if group.startswith("copy "):
            bench = benches["copy"]
            copy_rate[group.split()[1]] = bench["extra_info"]["bytes"] / per_call(bench)
    backends = sorted({name for benches in groups.values() for name in benches} - {"copy", "reference", "autograd"})
    header = ["group", "reference", *backends, "speed-up", "rate", "goal"]
    lines = table_start(
        "Ops",
        "Time per call (median); speed-up = reference / backend; rate = the best backend's "
        "GB/s and fraction of the same run's copy bandwidth (memory-bound ops), or TFLOP/s.",
        header,
    )
    for group in sorted(groups):
        benches = groups[group]
        if group.startswith("copy "):
            shape = group.split()[1]
            lines.append(f"| {group} | | {' | '.join('' for _ in backends)} | | {copy_rate[shape] / 1e9:.0f} GB/s | |")
            continue
        op, shape = group.split()[:2]
        reference = benches.get("reference")
        cells = [seconds(per_call(reference)) if reference else "—"]
        cells += [seconds(per_call(benches[name])) if name in benches else "—" for name in backends]
        timed = {name: per_call(benches[name]) for name in backends if name in benches}
        if not timed:
            continue
        best = min(timed, key=timed.get)
        speedups = ", ".join(f"{name} {per_call(reference) / t:.2f}×" for name, t in timed.items()) if reference else ""
        if "autograd" in benches:  # what the closed-form tuning step replaces
            speedups += f"; {best} vs autograd ∂L/∂F + pool {per_call(benches['autograd']) / timed[best]:.1f}×"
        info = benches[best]["extra_info"]
        goal = ""
        if op in MEMORY_BOUND:
            rate = info["bytes"] / timed[best]
            fraction = rate / copy_rate[shape] if shape in copy_rate else None
            text = f"{best}: {rate / 1e9:.0f} GB/s"
            if fraction is not None:
                text += f" ({fraction:.0%} of copy)"
                if shape == "large":
                    goal = f"≥ {GOALS['bandwidth']:.0%}: {'met' if fraction >= GOALS['bandwidth'] else 'not met'}"
        else:
            text = f"{best}: {info['flops'] / timed[best] / 1e12:.2f} TFLOP/s"
        lines.append(f"| {group} | {' | '.join(cells)} | {speedups} | {text} | {goal} |")
    return [*lines, ""]


def model_section(data: dict | None, probe: dict | None) -> list[str]:
    if data is None:
        return []
    peak = None
    if probe and probe.get("device") and probe["device"].get("peak_tflops"):
        peak = probe["device"]["peak_tflops"] * 1e12
    groups = by_group(data, lambda b: b["params"]["variant"])
    variants = [
        v
        for v in ("reference", "fast", "fast-bf16-cl", "reference-bf16-cl", "fast-bf16-cl-graphs")
        if any(v in benches for benches in groups.values())
    ]
    header = [
        "step",
        *variants,
        "best speed-up",
        "peak MiB (ref / best)",
        "model TFLOP/s (best)",
        "MFU",
        "episodes/s",
        "goal",
    ]
    lines = table_start(
        "Model steps",
        "Median time per step; best = the fastest `fast` variant; speed-up = reference / best (same run); MFU = the "
        "reference's counted FLOPs / the variant's time / the device's peak.",
        header,
    )
    for group in sorted(groups):
        benches = groups[group]
        reference = benches.get("reference")
        cells = [seconds(benches[v]["stats"]["median"]) if v in benches else "—" for v in variants]
        others = {v: benches[v]["stats"]["median"] for v in variants if v in benches and v.startswith("fast")}
        if not reference or not others:
            lines.append(f"| {group} | {' | '.join(cells)} | | | | | | |")
            continue
        best = min(others, key=others.get)
        speedup = reference["stats"]["median"] / others[best]
        flops = reference["extra_info"].get("flops")
        rate = flops / others[best] if flops else None
        mfu = f"{rate / peak:.1%}" if rate and peak else "—"
        batch = reference["extra_info"].get("batch", 1)
        episodes = (
            f"{batch / others[best]:.1f} (ref {batch / reference['stats']['median']:.1f})"
            if group.startswith("eval")
            else ""
        )
        memory = " / ".join(str(b["extra_info"].get("peak_mib", "—")) for b in (reference, benches[best]))
        goal = ""
        if group.startswith("head"):
            goal = f"≥ {GOALS['head_speedup']:.0f}×: {'met' if speedup >= GOALS['head_speedup'] else 'not met'}"
        elif group.startswith("train") and rate and peak:
            goal = f"MFU ≥ {GOALS['mfu']:.0%}: {'met' if rate / peak >= GOALS['mfu'] else 'not met'}"
        lines.append(
            f"| {group} | {' | '.join(cells)} | {best} {speedup:.2f}× | {memory} | "
            f"{'' if rate is None else f'{rate / 1e12:.1f}'} | {mfu} | {episodes} | {goal} |"
        )
    return [*lines, ""]


def report(folder: Path) -> str:
    probe = load(folder / "probe.json")
    lines = ["# GPU suite results", ""]
    lines += machine_section(probe)
    lines += stages_section(folder)
    lines += ops_section(load(folder / "ops.json"))
    lines += model_section(load(folder / "model.json"), probe)
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python benchmarks/gpu_report.py FOLDER", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    text = report(folder)
    (folder / "SUMMARY.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
