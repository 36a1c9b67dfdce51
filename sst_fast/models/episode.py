"""The model's inputs and outputs: argument checks for an episode batch and :class:`SSTOutput`."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class SSTOutput:
    """What :class:`sst_fast.SST` returns for a batch of B episodes with K shots.

    Attributes:
        logits: [B, 2, H, W] query logits at the query's size.
        loss: ``main_loss + aux_weight * aux_loss`` (the auxiliary term only with ``aux_loss=True``);
            None without a ``query_mask``.
        main_loss: query cross-entropy (mean over episodes of the per-image mean), or None.
        aux_loss: self-segmentation cross-entropy of the supports (mean over B*K), or None when the
            self-segmentation did not run.
        support_logits: [B, K, 2, Hs, Ws] self-segmentation of each support (Eq. 8-9), or None when
            nothing needed it (``ssm`` and ``aux_loss`` off, no weighted K > 1 fusion).
        shot_weights: [B, K] fusion weights (Eq. 14), None for ``fusion='max'``.
        prototypes: [B, K, C] support prototypes before tuning.
        tuned_prototypes: [B, K, C] prototypes of the tuned features R's, or None with ``ssm=False``.
        untuned_logits: with ``explain=True`` only: [B, 2, H, W] the query logits with the untuned
            prototypes p (``logits`` are those with p'); the same as ``logits`` with ``ssm=False``.
        feature_gradient: with ``explain=True`` only: [B, K, C, hs, ws] dLsup/dRs of each support (paper
            Fig. 3), or None with ``ssm=False``.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    main_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    support_logits: torch.Tensor | None = None
    shot_weights: torch.Tensor | None = None
    prototypes: torch.Tensor | None = None
    tuned_prototypes: torch.Tensor | None = None
    untuned_logits: torch.Tensor | None = None
    feature_gradient: torch.Tensor | None = None

    def detach(self) -> SSTOutput:
        return SSTOutput(**{f.name: _detach(getattr(self, f.name)) for f in dataclasses.fields(self)})


def _detach(value):
    return value.detach() if isinstance(value, torch.Tensor) else value


def check_episode(
    query: torch.Tensor,
    support_images: torch.Tensor,
    support_masks: torch.Tensor,
    query_mask: torch.Tensor | None,
    like: torch.Tensor | None = None,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the argument for any malformed episode batch.

    ``like``: a model parameter; the images must have its device, and its dtype unless autocast
    is on for their device (then any floating dtype is cast by autocast).
    """
    _check_images("query", query, ndim=4, layout="[B, 3, H, W]")
    if like is not None:
        if query.device != like.device:
            raise ValueError(f"query is on {query.device} but the model is on {like.device}")
        if query.dtype != like.dtype and not torch.is_autocast_enabled(query.device.type):
            raise ValueError(f"query has dtype {query.dtype} but the model's parameters are {like.dtype}")
    _check_images("support_images", support_images, ndim=5, layout="[B, K, 3, H, W]")
    batch, shots = support_images.shape[:2]
    if batch != query.shape[0]:
        raise ValueError(
            f"support_images must hold B = {query.shape[0]} episodes like query, got shape {list(support_images.shape)}"
        )
    if support_images.dtype != query.dtype or support_images.device != query.device:
        raise ValueError(
            f"support_images must match query's dtype and device ({query.dtype}, {query.device}), "
            f"got ({support_images.dtype}, {support_images.device})"
        )
    _check_masks(support_masks, query_mask, batch, shots, query.device, "support_images")
    if support_masks.shape[-2:] != support_images.shape[-2:]:
        raise ValueError(
            f"support_masks must have the support images' size {list(support_images.shape[-2:])}, "
            f"got {list(support_masks.shape[-2:])}"
        )
    if query_mask is not None:
        if query_mask.shape[0] != batch or query_mask.shape[-2:] != query.shape[-2:]:
            raise ValueError(
                f"query_mask must be [B, H, W] = {[batch, *query.shape[-2:]]} like query, "
                f"got {list(query_mask.shape)}"
            )


def check_features(
    query_features: torch.Tensor,
    support_features: torch.Tensor,
    support_masks: torch.Tensor,
    query_mask: torch.Tensor | None,
    channels: int,
    like: torch.Tensor | None = None,
) -> None:
    """:func:`check_episode` for backbone features: [B, Cb, h, w] and [B, K, Cb, hs, ws] with Cb = ``channels``."""
    for name, features, ndim, layout in (
        ("query_features", query_features, 4, "[B, Cb, h, w]"),
        ("support_features", support_features, 5, "[B, K, Cb, h, w]"),
    ):
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(features).__name__}")
        if features.dim() != ndim or features.shape[-3] != channels:
            raise ValueError(
                f"{name} must be {layout} with Cb = {channels} (the backbone's), got {list(features.shape)}"
            )
        if not features.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {features.dtype}")
        if like is not None and features.device != like.device:
            raise ValueError(f"{name} is on {features.device} but the model is on {like.device}")
    batch, shots = support_features.shape[:2]
    if batch != query_features.shape[0]:
        raise ValueError(
            f"support_features must hold B = {query_features.shape[0]} episodes like query_features, "
            f"got shape {list(support_features.shape)}"
        )
    _check_masks(support_masks, query_mask, batch, shots, query_features.device, "support_features")
    if query_mask is not None and query_mask.shape[0] != batch:
        raise ValueError(f"query_mask must be [B, H, W] with B = {batch}, got {list(query_mask.shape)}")


def _check_masks(support_masks, query_mask, batch: int, shots: int, device: torch.device, supports: str) -> None:
    """The label checks shared by images and features: masks of B episodes of K shots, on ``device``."""
    _check_labels("support_masks", support_masks, ndim=4, layout="[B, K, H, W]", device=device)
    if tuple(support_masks.shape[:2]) != (batch, shots):
        raise ValueError(
            f"support_masks must be [B, K, H, W] with B = {batch}, K = {shots} as {supports}, "
            f"got shape {list(support_masks.shape)}"
        )
    if query_mask is not None:
        _check_labels("query_mask", query_mask, ndim=3, layout="[B, H, W]", device=device)


def _capturing(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s stream is being captured into a CUDA graph. The checks of values then stand
    down (reading a value back waits for the GPU, which a capture forbids); the shapes, dtypes and devices
    are still checked. Values copied into a graph's inputs before a replay are not checked.
    """
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()


def _check_images(name: str, images, ndim: int, layout: str) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(images).__name__}")
    if images.dim() != ndim or images.shape[-3] != 3:
        raise ValueError(f"{name} must be {layout} with 3 colour channels, got shape {list(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (normalised images), got {images.dtype}")
    if images.numel() == 0:
        raise ValueError(f"{name} is empty: shape {list(images.shape)}")
    if not _capturing(images) and not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_labels(name: str, labels, ndim: int, layout: str, device: torch.device) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(labels).__name__}")
    if labels.dim() != ndim:
        raise ValueError(f"{name} must be {layout}, got shape {list(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"{name} must be on {device} like query, got {labels.device}")
    if labels.dtype == torch.bool:
        return
    if labels.is_complex():
        raise ValueError(f"{name} must hold labels 0 (background), 1 (object), 255 (ignore), got {labels.dtype}")
    if _capturing(labels):
        return
    invalid = (labels != 0) & (labels != 1) & (labels != 255)
    if invalid.any():
        example = labels[invalid][0].item()
        raise ValueError(
            f"{name} must hold only 0 (background), 1 (object) and 255 (ignore), found {example!r} "
            f"at {int(invalid.sum())} pixel(s)"
        )
