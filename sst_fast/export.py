"""Export of SST for deployment: the untuned model (``ssm=False``) as a :class:`torch.export.ExportedProgram`.

What exports, and what does not (torch 2.13):

* **The untuned model exports.** :func:`export_untuned` traces ``model(query, support_images, support_masks)``
  of an :class:`sst_fast.SST` or :class:`sst_fast.reference.SSTReference` with ``ssm=False`` in eval mode
  into one graph: backbone, embedding, relation, K-shot fusion (with IoU weights for ``fusion="weighted"``
  and K > 1: the supports' self-segmentation, without a gradient) and decoder, returning the query logits
  [B, 2, H, W]. The fused ops stay custom ops in the graph (``torch.ops.sst_fast.masked_avg_pool``,
  ``torch.ops.sst_fast.prototype_conv2d``), traced by their fake kernels; the program runs the same kernels
  as the eager model, so its logits are the eager ones bit for bit. Under
  ``sst_fast.ops.use_backend("reference")`` the graph holds plain ATen ops only.
* **The tuned model (``ssm=True``) does not export.** Its tuning step differentiates the supports'
  self-segmentation loss inside the forward (``torch.autograd.grad``, paper Eq. 11). ``torch.export``
  captures the operations a forward runs, not the backward pass that autograd's engine runs for
  ``autograd.grad``: non-strict export (the default) fails with "We found a fake tensor in the exported
  program constant's list"; strict export stops at the graph break on ``torch.autograd.grad``, and with
  dynamo's ``trace_autograd_ops`` it returns a program whose constants and outputs are fake tensors. A
  deployable tuned model would need the inner gradient written out as forward operations, which this
  package does not do. :func:`export_untuned` refuses a model with ``ssm=True``.

The program does not check its inputs' values: the checks of ``check_inputs`` (finite images, labels in
{0, 1, 255}) branch on the data, which export cannot trace. The example inputs are checked once, eagerly,
and the program itself checks the inputs' shapes and dtypes (the batch may vary with ``dynamic_batch=True``;
the shot count K and the image sizes are those of the example). Load a saved program with ``import sst_fast``
first: loading the package registers the custom ops and their fake kernels.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from .models.episode import check_episode

__all__ = ["UntunedSegmenter", "export_untuned"]


class UntunedSegmenter(nn.Module):
    """The untuned SST (``ssm=False``) as one traceable function: ``(query, support_images, support_masks)``
    -> query logits [B, 2, H, W].

    It calls ``model``'s own forward, on a shallow copy of the model (the same modules and parameters) with
    two differences that change no number: the inputs are not checked (the checks branch on the data), and
    the supports' self-segmentation (run only for ``fusion="weighted"`` with K > 1, for the IoU weights)
    calls ``model._tune`` directly, without a gradient, instead of ``model.tune``, whose ``torch.compile``
    branch recurses when export traces it.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        config = getattr(model, "config", None)
        if config is None or not hasattr(model, "_tune"):
            raise TypeError(f"UntunedSegmenter: expected an sst_fast.SST or SSTReference, got {type(model).__name__}")
        if config.ssm:
            raise ValueError(
                "UntunedSegmenter: the model has ssm=True; the tuning step differentiates its own loss inside the "
                "forward (torch.autograd.grad), which torch.export cannot capture. Export the untuned model "
                "(SSTConfig(ssm=False), the same weights) or run the tuned model eagerly or under torch.compile"
            )
        traced = copy.copy(model)  # shares modules, parameters and buffers; own config and tune
        traced.config = dataclasses.replace(config, check_inputs=False)

        def self_segmentation(rs, mask, labels, feature_gradient=False):
            return model._tune(rs, mask, labels, False, feature_gradient)

        traced.tune = self_segmentation
        self.model = traced

    def forward(self, query: torch.Tensor, support_images: torch.Tensor, support_masks: torch.Tensor) -> torch.Tensor:
        return self.model(query, support_images, support_masks).logits


def export_untuned(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    dynamic_batch: bool = False,
) -> torch.export.ExportedProgram:
    """Export the untuned ``model`` (``ssm=False``, eval mode) with :func:`torch.export.export`.

    Args:
        model: an :class:`sst_fast.SST` or :class:`sst_fast.reference.SSTReference` with ``config.ssm=False``,
            in eval mode (dropout off, BatchNorm statistics frozen: what a deployed model runs).
        example_inputs: ``(query [B, 3, H, W], support_images [B, K, 3, Hs, Ws], support_masks [B, K, Hs, Ws])``,
            checked once here.
        dynamic_batch: let the program take any number of episodes B >= 1 (K and the sizes stay fixed).

    Returns:
        An ExportedProgram whose ``module()(query, support_images, support_masks)`` returns the query logits
        [B, 2, H, W], equal to ``model(query, support_images, support_masks).logits``. The op backend
        (:func:`sst_fast.ops.use_backend`) in force here is the one the program runs.
    """
    segmenter = UntunedSegmenter(model)
    if model.training:
        raise ValueError(
            "export_untuned: the model is in training mode (dropout on, BatchNorm updating its statistics); "
            "call model.eval() first"
        )
    if not isinstance(example_inputs, (tuple, list)) or len(example_inputs) != 3:
        raise TypeError("export_untuned: example_inputs must be (query, support_images, support_masks)")
    example_inputs = tuple(example_inputs)
    check_episode(*example_inputs, None, like=model.embed.conv.weight)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = ({0: batch}, {0: batch}, {0: batch})
    with torch.no_grad():
        return torch.export.export(segmenter, example_inputs, dynamic_shapes=dynamic_shapes)
