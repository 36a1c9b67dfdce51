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


def cuda_graph(body, model: nn.Module, warmup: int = 3):
    """``body`` (a training step: forward and backward) captured in a CUDA graph after ``warmup`` runs on a side
    stream; returns ``(graph, what body returned during the capture)``. ``graph.replay()`` reruns the step on
    whatever the captured input tensors hold.

    Gradients are set to None before the capture, so that the captured backward writes them (in the graph's
    memory) instead of adding to them: each replay leaves one step's gradients in ``p.grad``.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            model.zero_grad(set_to_none=True)
            body()
    torch.cuda.current_stream().wait_stream(side)
    model.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = body()
    return graph, result
