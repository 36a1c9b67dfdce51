"""The speed switches of training and evaluation: mixed precision and the channels-last layout.

``run.amp`` (``off`` / ``bf16`` / ``fp16``) runs the forward under ``torch.autocast``: convolutions
in the low-precision dtype, the inner tuning step's prototype arithmetic in float32 (the policy of
:mod:`sst_fast.ops`), losses in float32. ``fp16`` also scales the loss (``torch.amp.GradScaler``).
``run.channels_last`` stores the model's 4-d weights in the channels-last layout, so that every
convolution's output, and hence every feature map, is channels-last too (oneDNN and cuDNN's
preferred layout: no reorder per call).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str):
    """The autocast context of ``run.amp`` on ``device`` (a no-op context for ``off``)."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled only for float16 (bfloat16 has float32's range)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def set_memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """Store the model's convolution weights channels-last (or back in the default layout)."""
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
