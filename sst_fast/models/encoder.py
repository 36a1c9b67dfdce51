"""fe: the shared (Siamese) embedding of backbone features, paper Eq. 2-3 (CANet ``layer5``)."""

from __future__ import annotations

import torch
from torch import nn


def init_head(module: nn.Module) -> None:
    """Kaiming-normal (fan in, ReLU) convolutions with zero bias for the head's layers.

    PyTorch's default convolution init shrinks the signal by about 3x per layer, so through the
    ~10 layers of embed + relation + decoder an untrained head outputs almost the same logits
    everywhere; Kaiming init keeps the signal's scale from layer to layer.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class Encoder(nn.Module):
    """3x3 convolution with dilation 2 (backbone channels -> ``channels``), ReLU, Dropout2d."""

    def __init__(self, in_channels: int, channels: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=2, dilation=2)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.relu(self.conv(features)))
