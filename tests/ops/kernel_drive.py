"""Every kernel of a compiled backend down each of its code paths, checked against the reference.

This is the program that ``benchmarks/gpu_suite.sh`` runs under compute-sanitizer (memcheck, racecheck,
synccheck), so it calls the backend's six ops directly (``torch.ops.<namespace>``) on small shapes that
still reach every branch:

* planes from 1x1 to 97x97: the window kernels cache the mask plane in shared memory up to 32 KiB
  (8192 float32 / 4096 float64 accumulators) and read it from global memory above that, so 64x64
  (4096 px) and 97x97 (9409 px) sit on both sides of both limits;
* kernel sizes 1, 3, 5 and 7 (every instantiation), dilations 1 to 3, and one larger than the map;
* float32, float64, float16 and bfloat16; contiguous, channels-last and non-contiguous inputs;
* binary, soft, empty and full masks;
* every ``output_mask`` of the three backward ops;
* one round on a non-default stream.

Results are compared with the reference ops (float64, on the CPU, from the same inputs rounded to the
dtype under test); a mismatch is an error, so a clean
sanitizer run is also a correct one. Run::

    python tests/ops/kernel_drive.py --backend cuda      # or triton (CUDA), cpp (CPU)
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

from sst_fast import ops
from sst_fast.ops import reference

if __package__ in (None, ""):  # run as a script (the GPU suite): tests/ is a package of the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.tolerance import full_float32

# (batch, channels, out_channels, height, width, kernel, dilation)
SHAPES = [
    (1, 1, 1, 1, 1, 1, 1),
    (2, 3, 5, 7, 9, 3, 2),
    (1, 4, 3, 64, 64, 5, 1),
    (2, 3, 2, 97, 97, 3, 2),
    (3, 6, 4, 33, 17, 7, 3),
    (2, 5, 3, 12, 10, 3, 40),
]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Slack beyond the reference's own error, relative to the largest value of the result: 4 units of rounding
# of the half types (one fused op rounds where the reference rounds elsewhere), sums of many terms for the others.
TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 4 * torch.finfo(torch.float16).eps,
    torch.bfloat16: 4 * torch.finfo(torch.bfloat16).eps,
}
EPS = 5e-4


def namespace(backend: str):
    if backend == "triton":
        from sst_fast.ops import _triton

        return getattr(torch.ops, _triton.NAMESPACE)
    return torch.ops.sst_fast


def make_case(shape, mask_kind: str, seed: int):
    """Float64 CPU inputs of one case (the reference's precision)."""
    batch, channels, out_channels, height, width, kernel, dilation = shape
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    mask = {
        "binary": lambda: (torch.rand(batch, 1, height, width, generator=g, dtype=f64) > 0.6).to(f64),
        "soft": lambda: torch.rand(batch, 1, height, width, generator=g, dtype=f64),
        "empty": lambda: torch.zeros(batch, 1, height, width, dtype=f64),
        "full": lambda: torch.ones(batch, 1, height, width, dtype=f64),
    }[mask_kind]()
    return dict(
        features=torch.randn(batch, channels, height, width, generator=g, dtype=f64),
        mask=mask,
        proto=torch.randn(batch, channels, generator=g, dtype=f64),
        weight=torch.randn(out_channels, 2 * channels, kernel, kernel, generator=g, dtype=f64) / kernel,
        bias=torch.randn(out_channels, generator=g, dtype=f64),
        delta=torch.randn(batch, out_channels, height, width, generator=g, dtype=f64),
        grad_pool=torch.randn(batch, channels, generator=g, dtype=f64),
        grad_conv=torch.randn(batch, out_channels, height, width, generator=g, dtype=f64),
        dilation=dilation,
    )


def expected(case):
    """The reference's outputs and input gradients on the CPU, in the case's dtype; keys as in :func:`drive`."""
    x = {
        k: v.clone().requires_grad_() if k in ("features", "proto", "weight", "bias", "delta") else v
        for k, v in case.items()
    }
    d = case["dilation"]
    pool = reference.masked_avg_pool(x["features"], x["mask"], EPS)
    conv = reference.prototype_conv2d(x["features"], x["proto"], x["weight"], x["bias"], d)
    update = reference.prototype_update(x["delta"], x["mask"], x["weight"], EPS, d)
    (d_pool_f,) = torch.autograd.grad(pool, x["features"], case["grad_pool"])
    d_conv = torch.autograd.grad(conv, [x["features"], x["proto"], x["weight"], x["bias"]], case["grad_conv"])
    d_update = torch.autograd.grad(update, [x["delta"], x["weight"]], case["grad_pool"])
    # The mask gradient of the pool, by the product rule of sum(f m) / (sum(m) + eps).
    mask = case["mask"].clone().requires_grad_()
    (d_pool_m,) = torch.autograd.grad(reference.masked_avg_pool(case["features"], mask, EPS), mask, case["grad_pool"])
    values = dict(pool=pool, conv=conv, update=update)
    values |= {f"d_pool{i}": g for i, g in enumerate((d_pool_f, d_pool_m))}
    values |= {f"d_conv{i}": g for i, g in enumerate(d_conv)}
    values |= {f"d_update{i}": g for i, g in enumerate(d_update)}
    return values


def wanted(case, dtype):
    """(the case rounded to ``dtype``, in float64; {result: (its float64 value, the reference's in ``dtype``)})."""
    low = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in case.items()}
    rounded = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in low.items()}
    exact, own = expected(rounded), expected(low)
    return rounded, {key: (exact[key], own[key]) for key in exact}


def layout(tensor: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "channels_last" and tensor.dim() == 4:
        return tensor.contiguous(memory_format=torch.channels_last)
    if kind == "strided" and tensor.dim() == 4:
        # The same values in every other column of a wider tensor: a non-contiguous view.
        wide = torch.zeros(*tensor.shape[:-1], 2 * tensor.shape[-1], dtype=tensor.dtype, device=tensor.device)
        wide[..., ::2] = tensor
        return wide[..., ::2]
    return tensor


def check(what: str, actual, index, want, dtype, failures: list[str]) -> None:
    """``actual`` against ``want[index]`` = (the float64 result, the reference's result in ``dtype``)."""
    if actual is None:
        failures.append(f"{what}: no result")
        return
    exact, own = (value.detach().double() for value in want[index])
    scale = exact.abs().max().item()
    error = (actual.double().cpu() - exact).abs().max().item()
    allowed = 2 * (own - exact).abs().max().item() + TOLERANCE[dtype] * scale
    if not error <= allowed:
        failures.append(f"{what}: max error {error:.3e} > {allowed:.3e} (the reference's own, doubled, + slack)")


def drive(case, want, op, device, dtype, memory_layout, failures, label) -> int:
    """Every op and every output_mask of the backward ops on one case; returns the number of calls."""
    t = {
        k: layout(v.to(device=device, dtype=dtype), memory_layout) if isinstance(v, torch.Tensor) else v
        for k, v in case.items()
    }
    d = case["dilation"]

    def verify(name, actual, key):
        check(f"{label} {name}", actual, key, want, dtype, failures)

    verify("masked_avg_pool", op.masked_avg_pool(t["features"], t["mask"], EPS), "pool")
    verify("prototype_conv2d", op.prototype_conv2d(t["features"], t["proto"], t["weight"], t["bias"], d), "conv")
    verify("prototype_update", op.prototype_update(t["delta"], t["mask"], t["weight"], EPS, d), "update")
    backward = {  # name: (call with an output_mask, number of gradients, key prefix of the expected ones)
        "masked_avg_pool_backward": (
            lambda needs: op.masked_avg_pool_backward(t["grad_pool"], t["features"], t["mask"], EPS, needs),
            2,
            "d_pool",
        ),
        "prototype_update_backward": (
            lambda needs: op.prototype_update_backward(
                t["grad_pool"], t["delta"], t["mask"], t["weight"], EPS, d, needs
            ),
            2,
            "d_update",
        ),
        "prototype_conv2d_backward": (
            lambda needs: op.prototype_conv2d_backward(
                t["grad_conv"], t["features"], t["proto"], t["weight"], d, needs
            ),
            4,
            "d_conv",
        ),
    }
    calls = 3
    for name, (call, count, key) in backward.items():
        for needs in itertools.product((False, True), repeat=count):
            if not any(needs):
                continue
            got = call(list(needs))
            calls += 1
            for i, need in enumerate(needs):
                if need:
                    verify(f"{name}{list(needs)}[{i}]", got[i], f"{key}{i}")
    return calls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cuda", choices=("cuda", "triton", "cpp"))
    parser.add_argument("--quick", action="store_true", help="float32 and float64 only, contiguous and channels-last")
    args = parser.parse_args(argv)

    device = "cpu" if args.backend == "cpp" else "cuda"
    if args.backend not in ops.backends() or (device == "cuda" and not torch.cuda.is_available()):
        print(f"kernel_drive: the {args.backend} backend is not available here ({ops.library_status()})")
        return 2
    with full_float32():  # the backends' own cuDNN calls at full float32, as the tolerances assume
        return _drive_all(args, device)


def _drive_all(args, device) -> int:
    op = namespace(args.backend)
    dtypes = DTYPES[:2] if args.quick else DTYPES
    layouts = ("contiguous", "channels_last") if args.quick else ("contiguous", "channels_last", "strided")
    failures: list[str] = []
    calls = 0
    for index, (shape, mask_kind) in enumerate(itertools.product(SHAPES, ("binary", "soft", "empty", "full"))):
        case = make_case(shape, mask_kind, seed=index)
        for dtype in dtypes:
            rounded, want = wanted(case, dtype)
            for memory_layout in layouts:
                label = f"{'x'.join(map(str, shape))} {mask_kind} {str(dtype)[6:]} {memory_layout}"
                calls += drive(rounded, want, op, device, dtype, memory_layout, failures, label)
    if device == "cuda":
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            rounded, want = wanted(make_case(SHAPES[3], "binary", seed=99), torch.float32)
            calls += drive(rounded, want, op, device, torch.float32, "contiguous", failures, "side stream")
        stream.synchronize()
        torch.cuda.synchronize()
    for failure in failures[:50]:
        print("MISMATCH", failure)
    print(f"kernel_drive: backend {args.backend}, {calls} op calls, {len(failures)} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
