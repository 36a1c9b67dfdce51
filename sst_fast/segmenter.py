"""Many queries against one support set: the supports' branch runs once, then only the query branch per batch."""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from .predict import _placement, input_size, mask_at, prepare_query, prepare_supports, support_lists


class Segmenter:
    """Segment any number of query images with one annotated support set, as :func:`sst_fast.predict` does.

    The support branch (encoding, self-segmentation, the tuning step, the K-shot fusion weights) runs once,
    here; :meth:`predict` and :meth:`predict_many` run only the query branch (encoder, relation, decoder)
    per batch of queries. Each mask equals ``predict(model, query, support_images, support_masks,
    image_size)`` up to floating-point rounding (a batch of queries runs other kernels than one query).

    Args:
        model: an :class:`sst_fast.SST` (or :class:`~sst_fast.reference.SSTReference`); the supports are
            encoded with its weights now: a model changed later is not seen until a new Segmenter is made.
        support_images: one image or a sequence of K images (PIL, or [H, W, 3] arrays).
        support_masks: one mask or a sequence of K masks, labels 0/1/255 (or bool).
        image_size: network input size; defaults to ``model.config.image_size``.

    Example::

        segmenter = sst_fast.Segmenter(model, [photo], [mask])
        masks = segmenter.predict_many(queries, batch_size=8)  # one uint8 [H, W] mask per query
    """

    def __init__(self, model: nn.Module, support_images, support_masks, image_size=None) -> None:
        if not (hasattr(model, "encode_supports") and hasattr(model, "segment_queries")):
            raise TypeError(
                f"model must be an sst_fast.SST or SSTReference (with encode_supports), got {type(model).__name__}"
            )
        support_images, support_masks = support_lists(support_images, support_masks)
        self.image_size = input_size(model, image_size)  # (H, W)
        support_batch, mask_batch = prepare_supports(model, support_images, support_masks, self.image_size)
        self.model = model
        self.shots = support_batch.shape[1]
        with self._evaluating():
            self.state = model.encode_supports(support_batch, mask_batch)

    def predict(self, query) -> np.ndarray:
        """One query image (PIL, or [H, W, 3] array) -> its uint8 mask {0, 1} at the query's own size."""
        return self._segment([query], ["query"])[0]

    def predict_many(self, queries: Iterable, batch_size: int = 8) -> list[np.ndarray]:
        """Query images -> their masks, in order, ``batch_size`` queries through the network at a time.

        The queries may differ in size: each is resized to the network input and its mask back to its own size.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(queries, (str, bytes, np.ndarray, torch.Tensor)) or not isinstance(queries, Iterable):
            raise TypeError(
                f"queries must be a sequence of images (PIL or [H, W, 3] arrays), got {type(queries).__name__}; "
                "for one image use predict()"
            )
        masks: list[np.ndarray] = []
        batch: list = []
        for query in queries:
            batch.append(query)
            if len(batch) == batch_size:
                masks += self._segment(batch, [f"queries[{len(masks) + i}]" for i in range(len(batch))])
                batch = []
        if batch:
            masks += self._segment(batch, [f"queries[{len(masks) + i}]" for i in range(len(batch))])
        return masks

    def _segment(self, queries: list, names: list[str]) -> list[np.ndarray]:
        prepared = [prepare_query(query, name, self.image_size) for query, name in zip(queries, names, strict=True)]
        device, dtype = _placement(self.model)
        batch = torch.stack([tensor for tensor, _ in prepared]).to(device, dtype)  # [B, 3, H, W]
        with self._evaluating():
            logits = self.model.segment_queries(batch, self.state).logits  # [B, 2, H, W]
        return [mask_at(logits[row : row + 1], size) for row, (_, size) in enumerate(prepared)]

    @contextlib.contextmanager
    def _evaluating(self):
        """The model in eval mode (BatchNorm's running statistics, no dropout) under no_grad, its mode restored.
        The tuning step inside takes its gradient with autograd on regardless (``SSTReference.tune``)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)
