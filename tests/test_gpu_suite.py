"""The GPU suite's own parts, on the CPU: benchmarks/gpu_suite.sh's stages that run without a GPU,
the kernel drive it sanitizes, the report's arithmetic and SST_FAST_REQUIRE_GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sst_fast import ops

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_report  # noqa: E402
import prebuilt  # noqa: E402

from tests.ops import kernel_drive  # noqa: E402

needs_cpp = pytest.mark.skipif("cpp" not in ops.backends(), reason="sst_fast.ops._C (CPU) is not built")


@needs_cpp
def test_the_kernel_drive_passes_the_cpp_backend(capsys):
    assert kernel_drive.main(["--backend", "cpp", "--quick"]) == 0
    assert "0 mismatches" in capsys.readouterr().out


class _Skewed:
    """The compiled ops with one result off by a part in a thousand."""

    def __getattr__(self, name):
        op = getattr(torch.ops.sst_fast, name)
        if name != "prototype_update":
            return op
        return lambda *args: op(*args) * 1.001


@needs_cpp
def test_the_kernel_drive_catches_a_wrong_result(monkeypatch, capsys):
    monkeypatch.setattr(kernel_drive, "namespace", lambda backend: _Skewed())
    assert kernel_drive.main(["--backend", "cpp", "--quick"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "prototype_update" in out
    assert "prototype_conv2d" not in out.replace("prototype_update", "")


# These tests check the suite's logic as on a machine without a GPU, on every machine: on a GPU machine the
# suite's own test stage runs them, and must not start the real sanitizer or benchmarks from inside it.
WITHOUT_GPU = {"CUDA_VISIBLE_DEVICES": ""}


def suite(out: Path, *stages: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(out), *stages],
        cwd=ROOT,
        # nothing prepared for a GPU (a gpu-carry/ of this tree is for the GPU's Python) unless a test says so
        env={**os.environ, "PYTHON": sys.executable, "SST_FAST_PREBUILT": str(out / "no-carry"), **WITHOUT_GPU, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@needs_cpp
def test_the_suite_runs_its_cpu_stages_and_writes_the_tables(tmp_path):
    result = suite(
        tmp_path,
        "env",
        "sanitize",
        "bench-ops",
        "bench-model",
        "report",
        SST_FAST_SUITE_ALLOW_CPU="1",
        SST_FAST_BENCH_SHAPES="tiny",
        # every op; of the model steps, each reference (its FLOPs counted) and one fast variant (the speed-up column)
        SST_FAST_BENCH_ARGS="--benchmark-max-time=0.01 -k 'not fast] and not reference-bf16-cl] and "
        "(not fast-bf16-cl] or head-tiny-1shot-second-fast-bf16-cl])'",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    stages = [line.split("\t") for line in (tmp_path / "stages.tsv").read_text().splitlines()]
    assert [(name, status) for name, status, _ in stages] == [
        ("env", "ok"),
        ("sanitize", "ok"),
        ("bench-ops", "ok"),
        ("bench-model", "ok"),
        ("report", "ok"),
    ]
    assert "0 mismatches" in (tmp_path / "sanitize.log").read_text()
    ops_json = json.loads((tmp_path / "ops.json").read_text())
    assert {b["group"] for b in ops_json["benchmarks"]} >= {"copy tiny", "masked_avg_pool tiny fwd+bwd"}
    assert all(b["extra_info"]["bytes"] > 0 for b in ops_json["benchmarks"])
    model = json.loads((tmp_path / "model.json").read_text())
    references = [b for b in model["benchmarks"] if b["params"]["variant"] == "reference"]
    assert len(references) == 3 and all(b["extra_info"]["flops"] > 0 for b in references)
    summary = (tmp_path / "SUMMARY.md").read_text()
    for heading in ("## Machine", "## Stages", "## Ops", "## Model steps"):
        assert heading in summary
    assert "| copy tiny |" in summary and "| head tiny 1-shot second order |" in summary
    assert "fast-bf16-cl " in next(line for line in summary.splitlines() if line.startswith("| head tiny"))


def test_the_suite_refuses_a_machine_without_a_gpu_and_names_unknown_stages(tmp_path):
    result = suite(tmp_path, "env")
    assert result.returncode == 2 and "no CUDA device" in result.stderr
    result = suite(tmp_path, "env", "benchmark")
    assert result.returncode == 2 and "unknown stage 'benchmark'" in result.stderr
    result = suite(tmp_path, "build", SST_FAST_SUITE_ALLOW_CPU="1")
    assert result.returncode == 1 and "needs a GPU machine" in result.stdout


def test_a_dry_run_checks_the_imports_and_stops_before_the_first_stage_that_needs_a_gpu(tmp_path):
    result = suite(tmp_path, "env", "test", "report", SST_FAST_SUITE_DRY="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dry run: stopped before 'test'" in result.stdout
    stages = [line.split("\t")[:2] for line in (tmp_path / "stages.tsv").read_text().splitlines()]
    assert stages == [["env", "ok"]]
    assert "every package the suite needs is importable" in (tmp_path / "env.log").read_text()


def test_the_import_check_names_each_missing_package(tmp_path):
    blocker = tmp_path / "sitecustomize.py"  # this Python without imgviz and pycocotools
    blocker.write_text("import sys\nsys.modules.update(dict.fromkeys(('imgviz', 'pycocotools')))\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "prebuilt.py"), "imports"],
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "missing: imgviz" in result.stdout and "missing: pycocotools" in result.stdout
    assert "missing: torch" not in result.stdout


def _library_carry(folder: Path) -> Path:
    folder.mkdir()
    (folder / prebuilt.LIBRARY).write_bytes(b"a library")
    prebuilt.describe(folder)
    return folder


def test_a_prebuilt_library_is_used_only_for_its_sources_and_torch(tmp_path, monkeypatch):
    carry = _library_carry(tmp_path / "carry")
    assert prebuilt.mismatches(carry) == []
    record = json.loads((carry / prebuilt.RECORD).read_text())
    for key, value, reason in (
        ("sources", "0" * 64, "other sources"),
        ("torch", "2.11.0", "built for torch 2.11.0"),
        ("cuda", "13.0", "built for cuda 13.0"),
        ("python", "3.12", "built for python 3.12"),
    ):
        if record[key] == value:
            continue
        (carry / prebuilt.RECORD).write_text(json.dumps({**record, key: value}))
        assert any(reason in found for found in prebuilt.mismatches(carry)), (key, prebuilt.mismatches(carry))
    (carry / prebuilt.RECORD).write_text(json.dumps(record))
    (carry / prebuilt.LIBRARY).write_bytes(b"another library")
    assert any("is not the library" in found for found in prebuilt.mismatches(carry))
    assert prebuilt.mismatches(tmp_path / "nothing") == [f"{tmp_path / 'nothing'} holds no _C.so with its BUILD.json"]


def _wheel(folder: Path, name: str, *requires: str) -> None:
    import zipfile

    lines = [f"Name: {name}", "Version: 1.0", *(f"Requires-Dist: {r}" for r in requires)]
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{name}-1.0.dist-info/METADATA", "\n".join(lines) + "\n")


def test_the_wheels_check_finds_what_is_missing_and_what_is_superfluous(tmp_path):
    _wheel(tmp_path, "pycocotools", "numpy")
    _wheel(tmp_path, "imgviz", "numpy", "cmap", "scikit-image; extra == 'all'")
    _wheel(tmp_path, "cmap")
    assert prebuilt.wheel_gaps(tmp_path) == []
    (tmp_path / "cmap-1.0-py3-none-any.whl").unlink()
    _wheel(tmp_path, "numpy")
    assert prebuilt.wheel_gaps(tmp_path) == [
        "imgviz requires cmap, neither in the image nor carried",
        "numpy is carried but the image has it",
    ]


def test_require_gpu_turns_a_skipped_cuda_test_into_a_failure():
    test = "tests/models/test_cuda.py::test_channels_last_on_the_gpu_equals_the_reference"
    env = {**os.environ, **WITHOUT_GPU, "SST_FAST_REQUIRE_GPU": "1"}
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
    result = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 1, result.stdout
    assert "SST_FAST_REQUIRE_GPU=1, yet this test was skipped: " in result.stdout
    del env["SST_FAST_REQUIRE_GPU"]
    result = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0 and "skipped" in result.stdout


def bench(group, name, params, median, **extra):
    return dict(group=group, name=name, params=params, extra_info=extra, stats=dict(median=median))


def test_the_report_computes_bandwidth_speed_up_and_model_flop_utilisation(tmp_path):
    probe = dict(
        versions=dict(python="3.12", torch="2", cuda="13.0", cudnn=9, triton="3.6", cpu_count=16, driver="580"),
        device=dict(
            name="GPU",
            capability="sm_90",
            multiprocessors=132,
            memory_gib=80,
            copy_gbps=3000,
            matmul_tflops=800,
            peak_tflops=1000,
            peak_source="datasheet, dense bf16",
        ),
    )
    ops_results = [
        # 10 calls per timed round: 1 GB per call in 0.4 ms is 2500 GB/s; the copy moves 3125 GB/s: 80%
        bench("copy large", "test_device_copy[large]", {"shape": "large"}, 3.2e-3, bytes=10**9, calls=10),
        bench("masked_avg_pool large fwd", "t[r]", {"backend": "reference"}, 2e-2, bytes=10**9, calls=10),
        bench("masked_avg_pool large fwd", "t[c]", {"backend": "cuda"}, 4e-3, bytes=10**9, calls=10),
        bench("masked_avg_pool large fwd", "t[t]", {"backend": "triton"}, 8e-3, bytes=10**9, calls=10),
        bench("prototype_conv2d large fwd", "t[r]", {"backend": "reference"}, 1e-1, flops=10**11, calls=10),
        bench("prototype_conv2d large fwd", "t[c]", {"backend": "cuda"}, 5e-2, flops=10**11, calls=10),
    ]
    model_results = [
        bench(
            "head gpu 1-shot second order", "m[r]", {"variant": "reference"}, 1.0, flops=10**14, batch=16, peak_mib=900
        ),
        bench("head gpu 1-shot second order", "m[f]", {"variant": "fast-bf16-cl"}, 0.25, batch=16),
        bench("head gpu 1-shot second order", "m[g]", {"variant": "fast-bf16-cl-graphs"}, 0.2, batch=16),
        bench("head gpu 1-shot second order", "m[rb]", {"variant": "reference-bf16-cl"}, 0.1, batch=16),
        bench("train gpu 1-shot second order", "m[r]", {"variant": "reference"}, 2.0, flops=10**15, batch=16),
        bench("train gpu 1-shot second order", "m[f]", {"variant": "fast-bf16-cl"}, 2.5, batch=16),
        bench("eval gpu 5-shot", "m[r]", {"variant": "reference"}, 0.8, flops=10**12, batch=16),
        bench("eval gpu 5-shot", "m[f]", {"variant": "fast"}, 0.2, batch=16),
    ]
    (tmp_path / "probe.json").write_text(json.dumps(probe))
    (tmp_path / "ops.json").write_text(json.dumps(dict(benchmarks=ops_results)))
    (tmp_path / "model.json").write_text(json.dumps(dict(benchmarks=model_results)))
    (tmp_path / "stages.tsv").write_text("env\tok\t12\nbuild\tFAILED\t3\n")
    assert gpu_report.main([str(tmp_path)]) == 0
    rows = {line.split(" | ")[0].lstrip("| "): line for line in (tmp_path / "SUMMARY.md").read_text().splitlines()}
    assert "3125 GB/s" in rows["copy large"]
    pool = rows["masked_avg_pool large fwd"]
    assert "400 µs" in pool and "cuda 5.00×" in pool and "triton 2.50×" in pool
    assert "cuda: 2500 GB/s (80% of copy)" in pool and "met" in pool and "not met" not in pool
    assert "cuda: 20.00 TFLOP/s" in rows["prototype_conv2d large fwd"]
    head = rows["head gpu 1-shot second order"]
    assert "fast-bf16-cl-graphs 5.00×" in head, "the best of the fast variants, not the reference's switches"
    assert "≥ 5×: met" in head and "50.0%" in head and "| 900 / — |" in head
    train = rows["train gpu 1-shot second order"]
    assert "fast-bf16-cl 0.80×" in train and "40.0%" in train and "MFU ≥ 40%: met" in train
    assert "80.0 (ref 20.0)" in rows["eval gpu 5-shot"]
    assert "| build | FAILED | 3 s |" in (tmp_path / "SUMMARY.md").read_text()
