"""How far apart two computations of one quantity may be, derived from what they compute.

Two kernels that compute the same sum of n rounded products add in different orders: the SIMD width
(AVX-512, AVX2, none), the blocking, the split over threads, the algorithm oneDNN or MKL picks for the
shape at hand. Neither result is exact and no order is the right one, so a test that compares two
different kernels (the fused op and the reference, one backend and another, a batch of 2 and a batch
of 1, channels-last and contiguous) compares within the rounding error of the computation, never bit
for bit. Bit-exact checks remain only where both sides run the same code on the same shapes (the same
call twice, a resume, the same seed), and such tests say so.

The bound. A sum of n terms t_i computed in a format with unit roundoff u is, whatever the order, within
``lam * sqrt(n) * u * sum|t_i|`` of the exact sum with probability at least ``1 - 2 exp(-lam^2 / 2)``
(Higham and Mary, "A new approach to probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5),
2019). With ``LAMBDA = 7`` that is 5e-11 per element: a test comparing a million numbers fails by chance
less than once in ten thousand runs. The tests compare relative to the result's largest magnitude, and
``sum|t_i|`` is about ``sqrt(n)`` times the result for terms of random sign (products of weights and
features) and about the result itself for terms of one sign (a mean, a pool over a mask, a loss): a sum
contributes ``lam * n * u`` in the first case and ``lam * sqrt(n) * u`` in the second.

A composition of such sums (a network) carries each stage's error to the result through the later stages;
to first order, with stages that do not amplify a relative error (the default initialisation keeps
activations at one scale), the errors add. Two computations are each within that sum of the exact result,
so within twice it of each other.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch

LAMBDA = 7.0


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = 2^-p for a p-bit significand: half of ``finfo.eps`` (2^-24 for float32, 2^-8 for bfloat16)."""
    return torch.finfo(dtype).eps / 2


def between(dtype: torch.dtype, mixed: Iterable[int] = (), same: Iterable[int] = ()) -> float:
    """Relative to the compared tensor's largest magnitude: how far two computations may differ.

    ``mixed``: the number of terms of each sum of random-sign products along the computation (a
    convolution's ``C_in * k * k``, its weight gradient's ``N * H * W``); ``same``: of each sum of
    one-signed terms (a mean, a masked pool's ``H * W``, a loss over pixels).
    """
    stages = sum(int(n) for n in mixed) + sum(math.sqrt(int(n)) for n in same)
    return 2 * LAMBDA * unit_roundoff(dtype) * max(stages, 1.0)


def low_precision(dtype: torch.dtype, mixed: Iterable[int] = (), same: Iterable[int] = (), results: int = 0) -> float:
    """Relative to the compared tensor's largest magnitude: what rounding to ``dtype`` (float16, bfloat16) adds to
    a computation that otherwise runs in float32 (add ``between(torch.float32, ...)`` for its sums).

    Inputs rounded once to ``dtype`` (autocast, ``.to(dtype)``) against the same computation on the unrounded
    ones: a rounded factor is off by a relative u at most, so a sum of n terms with one rounded factor each moves
    by at most ``u * sum|t_i|``, about ``sqrt(n) * u`` times the result for terms of random sign and ``u`` times it
    for one-signed terms; the roundings being independent, it also moves by at most ``lam * u * sqrt(sum t_i^2)``
    (Hoeffding), about ``lam * u`` times the result, with the probability of the bound above. ``mixed`` and
    ``same`` list each sum once per rounded factor of its terms (a convolution of a rounded input with a rounded
    weight twice). ``results``: how many times the result, or an intermediate at its scale, is rounded to
    ``dtype`` (a float32 accumulation written out in ``dtype``), u each.
    """
    terms = sum(min(math.sqrt(int(n)), LAMBDA) for n in mixed) + sum(1 for _ in same)
    return unit_roundoff(dtype) * (terms + results)


@contextlib.contextmanager
def full_float32():
    """float32 products and convolutions in full float32 on a GPU, as on the CPU: TF32 off (cuDNN may use it
    for float32 convolutions by default, which rounds the inputs to 10 bits and no tolerance above covers).
    Every comparison runs under it: the suite's autouse fixture and tests/ops/kernel_drive.py's main."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
