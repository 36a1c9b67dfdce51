"""fe: the shared (Siamese) embedding of backbone features, paper Eq. 2-3 (CANet ``layer5``)."""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """3x3 convolution with dilation 2 (backbone channels -> ``channels``), ReLU, Dropout2d."""

    def __init__(self, in_channels: int, channels: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=2, dilation=2)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.relu(self.conv(features)))
