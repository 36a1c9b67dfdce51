import getpass
import logging
import os
import tempfile

import pytest
import torch

from tests.tolerance import full_float32

# Inductor keeps the kernels it compiles in one folder whatever ATEN_CPU_CAPABILITY says, and reuses a kernel
# vectorised for AVX2 in a process restricted to no vector extensions, where it does not compile: a cache per
# instruction set (tests/cpu_matrix.sh runs the suite under several on one machine).
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_{torch.backends.cpu.get_cpu_capability()}"),
)

# The reasons of the skips that mean "this machine has no GPU kernels to test" (and of the CPU library's
# absence). With SST_FAST_REQUIRE_GPU=1 (benchmarks/gpu_suite.sh) such a skip is a failure: on a GPU machine
# every CUDA and Triton test must run.
GPU_SKIP_REASONS = (
    "no CUDA kernels or no GPU",
    "needs a CUDA GPU",
    "the triton backend was not registered",
    "nvcc not found",
    "sst_fast.ops._C (CPU) is not built",
)
REQUIRE_GPU = os.environ.get("SST_FAST_REQUIRE_GPU") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (REQUIRE_GPU and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if any(known in reason for known in GPU_SKIP_REASONS):
        report.outcome = "failed"
        report.longrepr = f"SST_FAST_REQUIRE_GPU=1, yet this test was skipped: {reason}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test (or a run with run.threads set) that changes this process's torch threads leaves them as it found
    them: a later test that compares against a fresh process (same default threads) must not inherit them."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _logging_errors_fail(monkeypatch):
    """A log call whose arguments do not fit its format (a fold name under %d) prints "--- Logging error ---" and
    loses its line; in the tests it fails the test that made it."""

    def handle_error(self, record):
        raise  # the error Handler.emit is handling

    monkeypatch.setattr(logging.Handler, "handleError", handle_error)


@pytest.fixture(autouse=True)
def _full_float32():
    """Every comparison at one precision: TF32 off on a GPU (tests.tolerance.full_float32)."""
    with full_float32():
        yield


def assert_close(actual, expected, rtol, atol, what=""):
    """torch.testing.assert_close that also names the first mismatching index and both values."""
    try:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
    except AssertionError as error:
        diff = (actual - expected).abs()
        bad = diff > atol + rtol * expected.abs()
        index = tuple(int(i) for i in bad.nonzero()[0]) if bad.any() else ()
        where = f" first mismatch at {index}: {actual[index].item()!r} vs {expected[index].item()!r};" if index else ""
        raise AssertionError(f"{what}{where} max abs error {diff.max().item():.3e}\n{error}") from None


def threshold_in_widest_gap(margins, low=0.4, high=0.6):
    """A decision threshold between two neighbouring values of ``margins``, in the widest gap between its
    ``low`` and ``high`` quantiles: no margin lies on it or near it, so two kernels whose logits differ by
    rounding take the same argmax everywhere (a median would sit on one pixel's margin, a tie)."""
    ordered = margins.flatten().double().sort().values
    first, last = int(low * (ordered.numel() - 1)), int(high * (ordered.numel() - 1))
    gaps = ordered[first + 1 : last + 1] - ordered[first:last]
    widest = first + int(gaps.argmax())
    return float((ordered[widest] + ordered[widest + 1]) / 2)


def balance_classifier(model, query, support_images, support_masks, on="query"):
    """Shift an untrained model's classifier bias so that about half of the pixels are foreground.

    An untrained head scores nearly every pixel alike, so its argmax is all one class and any
    check on predicted masks or IoU fusion weights would compare constants. The shift only moves
    the decision threshold into the widest gap of the margins near their median, on this episode's
    query (``on="query"``) or its supports' self-segmentation (``on="supports"``, which sets the IoU
    fusion weights).
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(query, support_images, support_masks)
        logits = out.logits if on == "query" else out.support_logits.flatten(0, 1)
        model.decoder.classifier.bias[1] -= threshold_in_widest_gap(logits[:, 1] - logits[:, 0])
    model.train(was_training)
    return model


def decided(logits, tol):
    """The pixels of logits [N, 2, H, W] whose argmax rounding cannot change: a margin beyond ``tol`` of the
    logits' largest value."""
    return (logits[:, 1] - logits[:, 0]).abs() > tol * logits.abs().max()


def foreground_fraction(prediction):
    return float((torch.as_tensor(prediction) == 1).float().mean())
