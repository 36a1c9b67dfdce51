"""fd: the segmentation decoder, ASPP + classifier + bilinear upsampling (paper Eq. 7; CANet)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _branch(in_channels: int, out_channels: int, kernel_size: int, dilation: int, dropout: float) -> nn.Sequential:
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation),
        nn.ReLU(),
        nn.Dropout2d(dropout),
    )


class Decoder(nn.Module):
    """ASPP (image pooling, 1x1, 3x3 at rates 6/12/18), a 1x1 projection and a 2-class 1x1 classifier."""

    rates = (6, 12, 18)

    def __init__(self, channels: int, dropout: float, num_classes: int = 2) -> None:
        super().__init__()
        self.image_pool = _branch(channels, channels, 1, 1, dropout)
        self.branches = nn.ModuleList(
            [_branch(channels, channels, 1, 1, dropout)]
            + [_branch(channels, channels, 3, rate, dropout) for rate in self.rates]
        )
        self.project = _branch(channels * (2 + len(self.rates)), channels, 1, 1, dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, relation: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """relation [N, C, h, w] -> logits [N, 2, *size] (bilinear, ``align_corners=True``)."""
        height, width = relation.shape[-2:]
        pooled = self.image_pool(F.adaptive_avg_pool2d(relation, 1)).expand(-1, -1, height, width)
        multi_scale = torch.cat([pooled] + [branch(relation) for branch in self.branches], 1)  # [N, 5C, h, w]
        logits = self.classifier(self.project(multi_scale))  # [N, 2, h, w]
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)
