"""The Triton backend: the six fused ops of ``csrc/ops.h`` as ``torch.library.triton_op``\\ s.

The ops live in the ``sst_fast_triton`` namespace with the schemas of csrc/ops.h (``int`` reads
``SymInt``, ``bool[N]`` reads ``bool[]``: what ``triton_op`` infers), and get autograd and the
double-backward composite from :func:`sst_fast.ops._compiled.register_family`. Triton kernels
mirror the device kernels of ops.h; the convolution of the query (cuDNN) and the small matmuls
(over Co * k * k) run on PyTorch. Tiles are BLOCK_C/BLOCK_O channels x BLOCK_P flattened pixels
(powers of two up to 16 x 128 on a GPU, 64 x 1024 in the interpreter):

* ``_pool_kernel`` (masked_avg_pool), grid (C / BLOCK_C, B): one pass over the features,
  looping over the pixel blocks; the mass sum(m) + eps is reduced alongside.
* ``_pool_backward_kernel``, grid (H*W / BLOCK_P, B), looping over the channel blocks: writes
  d_features = g m / M and reads the features once for dot[b, p] = sum_c g f (only what
  output_mask asks for); ``_pool_backward_mask_kernel``, grid (B,): d_mask = (dot - sum_p m dot / M) / M
  from dot and the mask ([B, H*W], 1/C of the features).
* ``_window_sums_kernel`` (ops.h ``tap_sums``, and ``window_sums`` with a mask), grid
  (Co / BLOCK_O, B, SPLIT): one pass over the map; per tile, every tap (k*k, runtime loops)
  reduces the tile against its in-image indicator and its shifted mask into [BLOCK_O, k*k]
  accumulators. On a GPU the pixel blocks are split over SPLIT programs (partial sums added by
  PyTorch) so that about 2 programs run per SM; in the interpreter SPLIT = 1.
* ``_window_expand_kernel`` (``tap_expand_add_`` in place, ``window_expand`` into a new map),
  grid (H*W / BLOCK_P, Co / BLOCK_O, B): one read-modify-write (or write) pass over the map.
* ``_mask_stats_kernel``, grid (B,): sum(m) and sum(m^2), one pass over the mask.

Every kernel takes contiguous NCHW tensors (inputs are made contiguous; outputs are contiguous
NCHW) and accumulates in float32, float64 for float64 inputs; float16 and bfloat16 are read and
written in their dtype. Every dtype, float64 included, runs in the Triton interpreter
(``TRITON_INTERPRET=1``, CPU tensors), which is how the backend is tested without a GPU. The
variable must be set before triton itself is imported (``torch._dynamo``, hence ``sst_fast``,
imports it) and while the kernels run. Float scalars reach a compiled kernel as float32, so
``eps`` is passed as a float32 pair ``hi + lo`` (float64 kernels add both).

In the interpreter the kernels run eagerly, even on fake tensors: they are skipped for fake
tensors (shape propagation, ``opcheck``), and tracing into a graph (``torch.compile``,
``torch.export``) raises; on a GPU ``wrap_triton`` makes the ops traceable.

This module needs triton; :mod:`sst_fast.ops` imports it lazily.
"""

import contextlib
import functools
import struct

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor
from torch.library import triton_op, wrap_triton

from ._compiled import backend_ops, register_family

NAMESPACE = "sst_fast_triton"

# --- kernels ----------------------------------------------------------------------------------


@triton.jit
def _pool_kernel(
    f_ptr,
    m_ptr,
    out_ptr,
    C,
    P,
    eps_hi,
    eps_lo,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # out[b, c] = sum_p f[b, c, p] m[b, p] / (sum_p m[b, p] + eps); program (channel block, b).
    b = tl.program_id(1).to(tl.int64)
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_in = cs < C
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    mass = tl.zeros([BLOCK_P], dtype=ACC)
    for p0 in range(0, P, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        p_in = ps < P
        m = tl.load(m_ptr + b * P + ps, mask=p_in, other=0.0).to(ACC)
        f = tl.load(f_ptr + (b * C + cs[:, None]) * P + ps[None, :], mask=c_in[:, None] & p_in[None, :], other=0.0)
        acc += tl.sum(f.to(ACC) * m[None, :], axis=1)
        mass += m
    total = tl.sum(mass, axis=0) + eps_hi + eps_lo
    tl.store(out_ptr + b * C + cs, (acc / total).to(out_ptr.dtype.element_ty), mask=c_in)


@triton.jit
def _mask_stats_kernel(m_ptr, out_ptr, P, ACC: tl.constexpr, BLOCK_P: tl.constexpr):
    # out[b] = (sum_p m[b, p], sum_p m[b, p]^2); program b.
    b = tl.program_id(0).to(tl.int64)
    total = tl.zeros([BLOCK_P], dtype=ACC)
    squares = tl.zeros([BLOCK_P], dtype=ACC)
    for p0 in range(0, P, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        m = tl.load(m_ptr + b * P + ps, mask=ps < P, other=0.0).to(ACC)
        total += m
        squares += m * m
    tl.store(out_ptr + 2 * b, tl.sum(total, axis=0))
    tl.store(out_ptr + 2 * b + 1, tl.sum(squares, axis=0))


@triton.jit
def _pool_backward_kernel(
    g_ptr,
    f_ptr,
    m_ptr,
    inv_mass_ptr,
    df_ptr,
    dot_ptr,
    C,
    P,
    ACC: tl.constexpr,
    NEED_FEATURES: tl.constexpr,
    NEED_MASK: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # d_features[b, c, p] = g[b, c] m[b, p] / M[b];  dot[b, p] = sum_c g[b, c] f[b, c, p].
    # Program (pixel block, b), looping over the channels.
    b = tl.program_id(1).to(tl.int64)
    ps = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_in = ps < P
    scaled = tl.load(m_ptr + b * P + ps, mask=p_in, other=0.0).to(ACC) * tl.load(inv_mass_ptr + b)
    dot = tl.zeros([BLOCK_P], dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        c_in = cs < C
        g = tl.load(g_ptr + b * C + cs, mask=c_in, other=0.0).to(ACC)
        offsets = (b * C + cs[:, None]) * P + ps[None, :]
        both = c_in[:, None] & p_in[None, :]
        if NEED_FEATURES:
            tl.store(df_ptr + offsets, (g[:, None] * scaled[None, :]).to(df_ptr.dtype.element_ty), mask=both)
        if NEED_MASK:
            f = tl.load(f_ptr + offsets, mask=both, other=0.0).to(ACC)
            dot += tl.sum(g[:, None] * f, axis=0)
    if NEED_MASK:
        tl.store(dot_ptr + b * P + ps, dot, mask=p_in)


@triton.jit
def _pool_backward_mask_kernel(dot_ptr, m_ptr, inv_mass_ptr, dm_ptr, P, ACC: tl.constexpr, BLOCK_P: tl.constexpr):
    # d_mask[b, p] = (dot[b, p] - sum_p' m[b, p'] dot[b, p'] / M[b]) / M[b]; program b.
    b = tl.program_id(0).to(tl.int64)
    inv_mass = tl.load(inv_mass_ptr + b)
    total = tl.zeros([BLOCK_P], dtype=ACC)
    for p0 in range(0, P, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        p_in = ps < P
        m = tl.load(m_ptr + b * P + ps, mask=p_in, other=0.0).to(ACC)
        total += m * tl.load(dot_ptr + b * P + ps, mask=p_in, other=0.0)
    pooled = tl.sum(total, axis=0) * inv_mass
    for p0 in range(0, P, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        p_in = ps < P
        dot = tl.load(dot_ptr + b * P + ps, mask=p_in, other=0.0)
        tl.store(dm_ptr + b * P + ps, ((dot - pooled) * inv_mass).to(dm_ptr.dtype.element_ty), mask=p_in)


@triton.jit
def _tap(h, w, p_in, i, j, R: tl.constexpr, dilation, H, W):
    """Where tap (i, j) of a k x k kernel (r = R) reads for the pixels (h, w): whether it reads inside the
    H x W plane, and the flat index it reads. The tap geometry of both window kernels, written once."""
    hh = h + (i - R) * dilation
    ww = w + (j - R) * dilation
    return p_in & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W), hh * W + ww


# Op prototype_update (the public tuned_prototype): S and dQ in one pass; op prototype_conv2d's backward: dQ.
@triton.jit
def _window_sums_kernel(
    x_ptr,
    m_ptr,
    out_ptr,
    CO,
    H,
    W,
    dilation,
    SPLIT,
    K: tl.constexpr,
    KK_BLOCK: tl.constexpr,
    MASKED: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # out[s, b, o, 0, t] = sum_p x[b, o, p] inside_t(p)              (tap_sums)
    # out[s, b, o, 1, t] = sum_p x[b, o, p] m[b, shift_t(p)]         (MASKED; 0 outside)
    # over the pixel blocks s, s + SPLIT, ... (SPLIT partial sums, added up by the caller).
    # Program (channel block, b, s); x is read once, the mask (1/CO of it) once per tap.
    R: tl.constexpr = K // 2
    NS: tl.constexpr = 2 if MASKED else 1
    b = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    P = H * W
    os = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    o_in = os < CO
    taps = tl.arange(0, KK_BLOCK)
    plain = tl.zeros([BLOCK_O, KK_BLOCK], dtype=ACC)
    masked = tl.zeros([BLOCK_O, KK_BLOCK], dtype=ACC)
    for block in range(split, tl.cdiv(P, BLOCK_P), SPLIT):
        ps = block * BLOCK_P + tl.arange(0, BLOCK_P)
        p_in = ps < P
        h = ps // W
        w = ps % W
        x = tl.load(x_ptr + (b * CO + os[:, None]) * P + ps[None, :], mask=o_in[:, None] & p_in[None, :], other=0.0)
        x = x.to(ACC)
        for i in range(K):
            for j in range(K):
                inside, read = _tap(h, w, p_in, i, j, R, dilation, H, W)
                at_tap = (taps == i * K + j)[None, :]
                s = tl.sum(tl.where(inside[None, :], x, 0.0), axis=1)
                plain += tl.where(at_tap, s[:, None], 0.0)
                if MASKED:
                    m = tl.load(m_ptr + b * P + read, mask=inside, other=0.0).to(ACC)
                    s = tl.sum(x * m[None, :], axis=1)
                    masked += tl.where(at_tap, s[:, None], 0.0)
    base = ((split * tl.num_programs(1) + b) * CO + os[:, None]) * (NS * K * K) + taps[None, :]
    store_in = o_in[:, None] & (taps < K * K)[None, :]
    tl.store(out_ptr + base, plain, mask=store_in)
    if MASKED:
        tl.store(out_ptr + base + K * K, masked, mask=store_in)


# The adjoint of the window sums: op prototype_update's backward (d delta), op prototype_conv2d's forward (T).
@triton.jit
def _window_expand_kernel(
    c_ptr,
    m_ptr,
    out_ptr,
    CO,
    H,
    W,
    dilation,
    K: tl.constexpr,
    MASKED: tl.constexpr,
    ADD: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # out[b, o, p] (+)= sum_t c[b, o, 0, t] inside_t(p) + (MASKED) c[b, o, 1, t] m[b, shift_t(p)]
    # c [B, CO, NS, k*k] (NS = 2 if MASKED else 1) in ACC; ADD adds to out in place
    # (tap_expand_add_), else writes a new map (window_expand). Program (pixel block, channel block, b).
    R: tl.constexpr = K // 2
    NS: tl.constexpr = 2 if MASKED else 1
    b = tl.program_id(2).to(tl.int64)
    P = H * W
    ps = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    os = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    p_in = ps < P
    o_in = os < CO
    h = ps // W
    w = ps % W
    coeffs = c_ptr + (b * CO + os) * (NS * K * K)
    total = tl.zeros([BLOCK_O, BLOCK_P], dtype=ACC)
    for i in range(K):
        for j in range(K):
            inside, read = _tap(h, w, p_in, i, j, R, dilation, H, W)
            c = tl.load(coeffs + i * K + j, mask=o_in, other=0.0)
            total += tl.where(inside[None, :], c[:, None], 0.0)
            if MASKED:
                m = tl.load(m_ptr + b * P + read, mask=inside, other=0.0).to(ACC)
                c = tl.load(coeffs + K * K + i * K + j, mask=o_in, other=0.0)
                total += c[:, None] * m[None, :]
    offsets = (b * CO + os[:, None]) * P + ps[None, :]
    both = o_in[:, None] & p_in[None, :]
    if ADD:
        total += tl.load(out_ptr + offsets, mask=both, other=0.0).to(ACC)
    tl.store(out_ptr + offsets, total.to(out_ptr.dtype.element_ty), mask=both)


# --- launchers --------------------------------------------------------------------------------


def _is_interpreted(kernel) -> bool:
    """Whether triton.jit made ``kernel`` for its interpreter (TRITON_INTERPRET=1 when triton was imported)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # a triton without an interpreter
        return False
    return isinstance(kernel, InterpretedFunction)


_INTERPRETED = _is_interpreted(_pool_kernel)


def _launch(kernel):
    """``kernel`` ready to index with its grid: through ``wrap_triton`` (traceable by torch.compile), or itself in
    the interpreter, which runs eagerly and which ``wrap_triton`` refuses before torch 2.13."""
    return kernel if _INTERPRETED else wrap_triton(kernel)


def _shapes_only(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a fake tensor that a kernel must not run on (its outputs' shapes are all
    that is asked for). Compiled Triton kernels pass through ``wrap_triton``'s higher-order op,
    which handles fake and functional tensors; the interpreter runs every kernel eagerly, so it
    skips fake tensors (shape propagation, ``opcheck``) and refuses to be traced into a graph."""
    if not _INTERPRETED:
        return False
    if isinstance(tensor, FunctionalTensor):
        raise RuntimeError(
            f"{NAMESPACE}: the Triton interpreter (TRITON_INTERPRET=1) runs kernels eagerly; the ops cannot be "
            "traced into a graph (torch.compile, torch.export) in this mode"
        )
    return isinstance(tensor, FakeTensor)


def _acc(dtype: torch.dtype) -> tuple[torch.dtype, tl.dtype]:
    """The accumulation dtype for inputs of ``dtype``: float64 for float64, else float32."""
    if dtype == torch.float64:
        return torch.float64, tl.float64
    return torch.float32, tl.float32


def _blocks(device: torch.device, channels: int, pixels: int, max_channels: int, max_pixels: int) -> tuple[int, int]:
    """Power-of-two (channel, pixel) tile sizes. The interpreter (CPU) runs whole numpy arrays
    per program, so it gets large tiles; a GPU gets tiles that fit in registers."""
    if device.type == "cpu":
        max_channels, max_pixels = 4 * max_channels, 8 * max_pixels
    block_c = min(triton.next_power_of_2(max(channels, 1)), max_channels)
    block_p = min(triton.next_power_of_2(max(pixels, 1)), max_pixels)
    return block_c, block_p


def _eps_pair(eps: float) -> tuple[float, float]:
    """``eps`` as float32 ``hi + lo``: kernels get float scalars as float32."""
    hi = struct.unpack("f", struct.pack("f", eps))[0]
    return hi, eps - hi


def _mask_stats(mask: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] -> [B, 2]: (sum m, sum m^2) per image, in the accumulation dtype."""
    batch = mask.shape[0]
    acc_dtype, acc = _acc(mask.dtype)
    out = mask.new_empty((batch, 2), dtype=acc_dtype)
    pixels = mask[0].numel() if batch else 0
    if batch == 0:
        return out
    if pixels == 0:
        return out.zero_()
    _, block_p = _blocks(mask.device, 1, pixels, 1, 1024)
    if _shapes_only(mask):
        return out
    _launch(_mask_stats_kernel)[(batch,)](mask.contiguous(), out, pixels, ACC=acc, BLOCK_P=block_p)
    return out


def _split_count(device: torch.device, programs: int, blocks: int) -> int:
    """How many partial sums over the pixel blocks keep a GPU busy (1 in the interpreter)."""
    if device.type != "cuda" or blocks <= 1:
        return 1
    wanted = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(blocks, -(-wanted // max(programs, 1))))


def _window_sums(
    x: torch.Tensor, mask: torch.Tensor | None, kernel_size: int, dilation: int, split: int | None = None
) -> torch.Tensor:
    """ops.h ``window_sums`` ([B, O, 2, k, k]) with a mask, ``tap_sums`` ([B, O, 1, k, k]) without.

    In the accumulation dtype. ``split`` (default: by device) partial sums over the pixels.
    """
    x = x.contiguous()
    batch, channels, height, width = x.shape
    pixels = height * width
    masked = mask is not None
    kinds = 2 if masked else 1
    acc_dtype, acc = _acc(x.dtype)
    if x.numel() == 0:
        return x.new_zeros((batch, channels, kinds, kernel_size, kernel_size), dtype=acc_dtype)
    block_o, block_p = _blocks(x.device, channels, pixels, 16, 128)
    grid_o = triton.cdiv(channels, block_o)
    blocks = triton.cdiv(pixels, block_p)
    if split is None:
        split = _split_count(x.device, grid_o * batch, blocks)
    split = max(1, min(split, blocks))
    out = x.new_empty((split, batch, channels, kinds, kernel_size, kernel_size), dtype=acc_dtype)
    if _shapes_only(x):
        return out[0]
    _launch(_window_sums_kernel)[(grid_o, batch, split)](
        x,
        mask.contiguous() if masked else x,
        out,
        channels,
        height,
        width,
        dilation,
        split,
        K=kernel_size,
        KK_BLOCK=triton.next_power_of_2(kernel_size * kernel_size),
        MASKED=masked,
        ACC=acc,
        BLOCK_O=block_o,
        BLOCK_P=block_p,
    )
    return out[0] if split == 1 else out.sum(0)


def _window_expand(
    coeffs: torch.Tensor, mask: torch.Tensor | None, out: torch.Tensor, dilation: int, add: bool
) -> torch.Tensor:
    """ops.h ``window_expand`` (coeffs [B, O, 2, k, k], a mask) or ``tap_expand_add_`` (coeffs
    [B, O, 1, k, k], no mask, ``add``) into the contiguous NCHW ``out``; returns ``out``."""
    batch, channels, height, width = out.shape
    kernel_size = coeffs.shape[-1]
    pixels = height * width
    if out.numel() == 0 or _shapes_only(out):
        return out
    _, acc = _acc(out.dtype)
    block_o, block_p = _blocks(out.device, channels, pixels, 16, 128)
    grid = (triton.cdiv(pixels, block_p), triton.cdiv(channels, block_o), batch)
    coeffs = coeffs.contiguous()
    _launch(_window_expand_kernel)[grid](
        coeffs,
        coeffs if mask is None else mask.contiguous(),  # (a placeholder without a mask)
        out,
        channels,
        height,
        width,
        dilation,
        K=kernel_size,
        MASKED=mask is not None,
        ADD=add,
        ACC=acc,
        BLOCK_O=block_o,
        BLOCK_P=block_p,
    )
    return out


def _update_scales(mask: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, sigma) per image: M = sum m + eps, sigma = sum m^2 / M^2; [B] each, accumulation dtype."""
    stats = _mask_stats(mask)
    mass = stats[:, 0] + eps
    return mass, stats[:, 1] / mass.square()


def _split_weight(weight: torch.Tensor, acc_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    channels = weight.shape[1] // 2
    weight = weight.to(acc_dtype)
    return weight[:, :channels], weight[:, channels:]


# --- the ops ----------------------------------------------------------------------------------


def _device_guard(device: torch.device):
    """``device`` made current while a kernel launches: Triton launches on the current CUDA device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _on_inputs_device(body):
    """An op body run on its inputs' device (the first argument's, which every op checks the others against)."""

    @functools.wraps(body)
    def on_device(*args, **kwargs):
        with _device_guard(args[0].device):
            return body(*args, **kwargs)

    return on_device


@triton_op(f"{NAMESPACE}::masked_avg_pool", mutates_args=())
@_on_inputs_device
def masked_avg_pool(features: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    batch, channels, height, width = features.shape
    pixels = height * width
    out = features.new_empty((batch, channels))
    if out.numel() == 0 or _shapes_only(features):
        return out
    if pixels == 0:
        return out.zero_()
    _, acc = _acc(features.dtype)
    block_c, block_p = _blocks(features.device, channels, pixels, 16, 128)
    _launch(_pool_kernel)[(triton.cdiv(channels, block_c), batch)](
        features.contiguous(),
        mask.contiguous(),
        out,
        channels,
        pixels,
        *_eps_pair(eps),
        ACC=acc,
        BLOCK_C=block_c,
        BLOCK_P=block_p,
    )
    return out


@triton_op(f"{NAMESPACE}::masked_avg_pool_backward", mutates_args=())
@_on_inputs_device
def masked_avg_pool_backward(
    grad: torch.Tensor, features: torch.Tensor, mask: torch.Tensor, eps: float, output_mask: list[bool]
) -> tuple[torch.Tensor, torch.Tensor]:
    need_features, need_mask = bool(output_mask[0]), bool(output_mask[1])
    batch, channels, height, width = features.shape
    pixels = height * width
    d_features = torch.empty_like(features, memory_format=torch.contiguous_format) if need_features else None
    d_mask = torch.empty_like(mask, memory_format=torch.contiguous_format) if need_mask else None
    if (need_features or need_mask) and features.numel() + mask.numel() > 0 and not _shapes_only(features):
        acc_dtype, acc = _acc(features.dtype)
        inv_mass = (_mask_stats(mask)[:, 0] + eps).reciprocal()
        dot = features.new_empty((batch, pixels), dtype=acc_dtype) if need_mask else inv_mass
        if channels == 0:
            if need_mask:
                dot.zero_()
        else:
            block_c, block_p = _blocks(features.device, channels, pixels, 16, 128)
            _launch(_pool_backward_kernel)[(triton.cdiv(pixels, block_p), batch)](
                grad.contiguous(),
                features.contiguous(),
                mask.contiguous(),
                inv_mass,
                d_features if need_features else inv_mass,
                dot,
                channels,
                pixels,
                ACC=acc,
                NEED_FEATURES=need_features,
                NEED_MASK=need_mask,
                BLOCK_C=block_c,
                BLOCK_P=block_p,
            )
        if need_mask:
            _, block_p = _blocks(features.device, 1, pixels, 1, 1024)
            _launch(_pool_backward_mask_kernel)[(batch,)](
                dot, mask.contiguous(), inv_mass, d_mask, pixels, ACC=acc, BLOCK_P=block_p
            )
    return (
        d_features if need_features else features.new_empty(0),
        d_mask if need_mask else mask.new_empty(0),
    )


@triton_op(f"{NAMESPACE}::prototype_conv2d", mutates_args=())
@_on_inputs_device
def prototype_conv2d(
    query: torch.Tensor, proto: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int
) -> torch.Tensor:
    channels = query.shape[1]
    kernel_size = weight.shape[-1]
    acc_dtype, _ = _acc(query.dtype)
    padding = dilation * (kernel_size // 2)
    out = torch.nn.functional.conv2d(query, weight[:, :channels], bias, padding=padding, dilation=dilation)
    out = out.contiguous()
    # Q[b, o, t] = sum_c Wp[o, c, t] p[b, c], then out += T (ops.h tap_expand_add_).
    _, w_proto = _split_weight(weight, acc_dtype)
    taps = torch.einsum("bc,ocij->boij", proto.to(acc_dtype), w_proto)[:, :, None]  # [B, O, 1, k, k]
    return _window_expand(taps, None, out, dilation, add=True)


@triton_op(f"{NAMESPACE}::prototype_conv2d_backward", mutates_args=())
@_on_inputs_device
def prototype_conv2d_backward(
    grad: torch.Tensor,
    query: torch.Tensor,
    proto: torch.Tensor,
    weight: torch.Tensor,
    dilation: int,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    need_query, need_proto, need_weight, need_bias = (bool(x) for x in output_mask)
    channels = query.shape[1]
    kernel_size = weight.shape[-1]
    radius = kernel_size // 2
    acc_dtype, _ = _acc(query.dtype)
    d_query = d_proto = d_weight = d_bias = None
    d_weight_query = None
    if need_query or need_weight:
        padding = dilation * radius
        d_query, d_weight_query, _ = torch.ops.aten.convolution_backward(
            grad,
            query,
            weight[:, :channels],
            None,
            [1, 1],
            [padding, padding],
            [dilation, dilation],
            False,
            [0, 0],
            1,
            [need_query, need_weight, False],
        )
    if need_proto or need_weight or need_bias:
        # dQ[b, o, t] = sum over the pixels where tap t is inside of grad (ops.h tap_sums).
        taps = _window_sums(grad, None, kernel_size, dilation)[:, :, 0]  # [B, O, k, k]
        if need_proto:
            _, w_proto = _split_weight(weight, acc_dtype)
            d_proto = torch.einsum("boij,ocij->bc", taps, w_proto).to(proto.dtype)
        if need_weight:
            d_weight_proto = torch.einsum("boij,bc->ocij", taps, proto.to(acc_dtype)).to(weight.dtype)
            d_weight = torch.cat([d_weight_query, d_weight_proto], 1)
        if need_bias:
            d_bias = taps[:, :, radius, radius].sum(0).to(weight.dtype)
    return (
        d_query if need_query else query.new_empty(0),
        d_proto if need_proto else query.new_empty(0),
        d_weight if need_weight else query.new_empty(0),
        d_bias if need_bias else query.new_empty(0),
    )


@triton_op(f"{NAMESPACE}::prototype_update", mutates_args=())
@_on_inputs_device
def prototype_update(
    delta: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, eps: float, dilation: int
) -> torch.Tensor:
    acc_dtype, _ = _acc(delta.dtype)
    sums = _window_sums(delta, mask, weight.shape[-1], dilation)  # [B, O, 2, k, k]: dQ, S
    mass, sigma = _update_scales(mask, eps)
    w_query, w_proto = _split_weight(weight, acc_dtype)
    direct = torch.einsum("boij,ocij->bc", sums[:, :, 1], w_query) / mass[:, None]
    through_proto = torch.einsum("boij,ocij->bc", sums[:, :, 0], w_proto) * sigma[:, None]
    return (direct + through_proto).to(delta.dtype)


@triton_op(f"{NAMESPACE}::prototype_update_backward", mutates_args=())
@_on_inputs_device
def prototype_update_backward(
    grad: torch.Tensor,
    delta: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    dilation: int,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    need_delta, need_weight = bool(output_mask[0]), bool(output_mask[1])
    acc_dtype, _ = _acc(delta.dtype)
    d_delta = d_weight = None
    if need_delta or need_weight:
        mass, sigma = _update_scales(mask, eps)
        g_query = grad.to(acc_dtype) / mass[:, None]  # the direct part's weight per prototype channel
        g_proto = grad.to(acc_dtype) * sigma[:, None]  # the part through the prototype
        w_query, w_proto = _split_weight(weight, acc_dtype)
        if need_delta:
            # u = sum Wq S / M + sigma sum Wp dQ: d/dS = sum_c Wq g / M, d/ddQ = sigma sum_c Wp g,
            # and d_delta = window_expand([d/ddQ, d/dS], mask) (ops.h).
            coeffs = torch.stack(
                [torch.einsum("bc,ocij->boij", g_proto, w_proto), torch.einsum("bc,ocij->boij", g_query, w_query)],
                2,
            )
            d_delta = torch.empty_like(delta, memory_format=torch.contiguous_format)
            _window_expand(coeffs, mask, d_delta, dilation, add=False)
        if need_weight:
            sums = _window_sums(delta, mask, weight.shape[-1], dilation)  # [B, O, 2, k, k]: dQ, S
            d_weight_query = torch.einsum("boij,bc->ocij", sums[:, :, 1], g_query)
            d_weight_proto = torch.einsum("boij,bc->ocij", sums[:, :, 0], g_proto)
            d_weight = torch.cat([d_weight_query, d_weight_proto], 1).to(weight.dtype)
    return (
        d_delta if need_delta else delta.new_empty(0),
        d_weight if need_weight else weight.new_empty(0),
    )


OPS = register_family(NAMESPACE)
BACKEND = backend_ops(OPS)
