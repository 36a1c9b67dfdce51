"""fm: the relation network, a deep non-linear metric with late fusion (paper Eq. 12-13)."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.reference import tile


class ResidualBlock(nn.Module):
    """``x + conv(relu(conv(relu(x))))`` with 3x3 convolutions (CANet's residual refinement)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(self.relu(x))))


class Relation(nn.Module):
    """Scores every query position against a prototype: ``refine(conv(cat(Rq, tile(p))))``.

    ``conv`` is the 3x3, dilation-2 convolution (2C -> C) whose weight the fused op
    ``prototype_conv2d`` splits into a query half and a prototype half.
    """

    kernel_size = 3
    dilation = 2

    def __init__(self, channels: int, dropout: float, blocks: int = 2) -> None:
        super().__init__()
        padding = self.dilation * (self.kernel_size // 2)
        self.conv = nn.Conv2d(2 * channels, channels, self.kernel_size, padding=padding, dilation=self.dilation)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout2d(dropout)
        self.blocks = nn.Sequential(*[ResidualBlock(channels) for _ in range(blocks)])

    def forward(self, query: torch.Tensor, proto: torch.Tensor) -> torch.Tensor:
        """query [N, C, h, w], proto [N, C] -> relation map M [N, C, h, w]."""
        pair = torch.cat([query, tile(proto, query.shape[-2:])], 1)  # Eq. 12: [N, 2C, h, w]
        return self.refine(self.conv(pair))  # Eq. 13

    def refine(self, y: torch.Tensor) -> torch.Tensor:
        """Everything after the first convolution: ReLU, Dropout2d, the residual blocks."""
        return self.blocks(self.dropout(self.relu(y)))
