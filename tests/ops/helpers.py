"""Random inputs shared by the op tests: every tensor the three ops and their backward ops take."""

from __future__ import annotations

import torch


def random_inputs(
    shape,
    dtype,
    device,
    mask_kind="binary",
    seed=0,
    foreground=0.5,
    weight_scale=0.3,
    cotangents=False,
):
    """features/query, mask, proto, weight, bias, delta for ``shape`` = (B, C, Co, H, W, k, dilation).

    ``mask_kind``: "binary" (foreground with probability ``foreground``), "soft" or "empty".
    ``cotangents`` adds grad_proto [B, C] and grad_map [B, Co, H, W].
    """
    batch, channels, out_channels, height, width, kernel, _ = shape
    gen = torch.Generator().manual_seed(seed)

    def randn(*size, scale=1.0):
        return (torch.randn(*size, generator=gen, dtype=dtype) * scale).to(device)

    if mask_kind == "binary":
        mask = (torch.rand(batch, 1, height, width, generator=gen) > 1 - foreground).to(dtype)
    elif mask_kind == "soft":
        mask = torch.rand(batch, 1, height, width, generator=gen, dtype=dtype)
    else:
        mask = torch.zeros(batch, 1, height, width, dtype=dtype)
    inputs = dict(
        features=randn(batch, channels, height, width),
        mask=mask.to(device),
        proto=randn(batch, channels),
        weight=randn(out_channels, 2 * channels, kernel, kernel, scale=weight_scale),
        bias=randn(out_channels),
        delta=randn(batch, out_channels, height, width),
    )
    if cotangents:
        inputs.update(grad_proto=randn(batch, channels), grad_map=randn(batch, out_channels, height, width))
    return inputs
