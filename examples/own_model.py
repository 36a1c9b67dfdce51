"""Scoring a model that is not SST with sst-fast's evaluation harness.

Any ``nn.Module`` (or callable) with SST's call signature can be evaluated under every protocol,
with manifests and the protocol card:

    model(query [B, 3, H, W], support_images [B, K, 3, H, W], support_masks [B, K, H, W])
        -> logits [B, 2, h, w]   (background, foreground; a tensor or an object with .logits)

Support masks hold 0 (background), 1 (the class) and 255 (ignore). Logits at another size than the
scored labels are resized bilinearly.

From the command line (``build`` is the factory; with a checkpoint it is called as ``build(path)``):

    sst-fast eval --model examples/own_model.py:build --dataset synthetic --fold 0 --size 64 --protocol hsnet

From Python:

    from sst_fast.data import open_dataset
    from sst_fast.engine import evaluate
    result = evaluate(build(), open_dataset("synthetic"), fold=0, size=64, protocol="pfenet", episodes=200)
    print(result.card, result.table(), sep="\\n\\n")

The model here is a training-free prototype matcher: a fixed random convolutional embedding, the
supports' masked average foreground and background embeddings as the two prototypes, and each query
pixel's cosine similarity to them as its logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PrototypeMatcher(nn.Module):
    """Nearest prototype by cosine similarity in a fixed random embedding (no training)."""

    def __init__(self, channels: int = 32, kernel_size: int = 5, scale: float = 10.0, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.embed = nn.Conv2d(3, channels, kernel_size, padding=kernel_size // 2)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(self.embed.weight.shape, generator=generator) / kernel_size)
            self.embed.bias.zero_()
        self.scale = scale

    def forward(self, query, support_images, support_masks):
        batch, shots = support_images.shape[:2]
        query_features = F.normalize(torch.tanh(self.embed(query)), dim=1)  # [B, C, H, W]
        features = torch.tanh(self.embed(support_images.flatten(0, 1)))  # [B K, C, H, W]
        features = features.unflatten(0, (batch, shots))  # [B, K, C, H, W]
        prototypes = []
        for value in (0, 1):  # background, foreground; the ignore label 255 is in neither
            weight = (support_masks[:, :, None] == value).to(features.dtype)  # [B, K, 1, H, W]
            total = (features * weight).sum((1, 3, 4))  # [B, C]
            prototypes.append(total / weight.sum((1, 3, 4)).clamp_min(1.0))
        prototypes = F.normalize(torch.stack(prototypes, 1), dim=2)  # [B, 2, C]
        return self.scale * torch.einsum("bkc,bchw->bkhw", prototypes, query_features)


def build(checkpoint: str | None = None) -> PrototypeMatcher:
    """The factory ``sst-fast eval --model`` calls: a fresh matcher, or one with the weights saved in ``checkpoint``."""
    model = PrototypeMatcher()
    if checkpoint is not None:
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return model
