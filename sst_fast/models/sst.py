"""SST in one file, read top-down: :class:`SSTReference`, the model literally as the paper writes it (§4) in
plain PyTorch, then :class:`SST`, the model users train, which overrides the reference's two costly stages
with the fused ops (docs/design.md §2-3).

The reference is the spec every fast path is held against: its relation runs on ``cat(Rq, tile(p))``
(Eq. 12-13) and its tuning step differentiates the self-segmentation loss with respect to the full
support feature map with ``torch.autograd.grad`` (Eq. 11). Nothing in it is fused. :class:`SST` keeps
every module, parameter name, input and output, and replaces only ``pool``, ``relation_map`` and
``_tune``: follow the support features through ``segment`` -> ``support_stage`` -> ``tune`` -> ``SST._tune``
-> :mod:`sst_fast.ops`. The two stages also run apart (:meth:`SSTReference.encode_supports` once, then
:meth:`SSTReference.segment_queries` per batch of queries: :class:`sst_fast.Segmenter`).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from .. import ops
from ..config import SSTConfig
from ..ops.reference import masked_avg_pool
from .backbones import build_backbone
from .decoder import Decoder
from .encoder import Encoder
from .episode import SSTOutput, _check_images, _check_masks, check_episode, check_features
from .functional import (
    downsample_mask,
    foreground_iou,
    fuse,
    fusion_weights,
    init_head,
    per_image_cross_entropy,
)
from .relation import Relation
from .tuning import SelfSupervisedTuning


@dataclasses.dataclass
class TuningResult:
    """The self-supervised tuning of N = B*K support feature maps (paper §4.2)."""

    support_logits: torch.Tensor  # [N, 2, Hs, Ws], Ssup (Eq. 9)
    support_loss: torch.Tensor  # [N], Lsup per support image (Eq. 10)
    prototypes: torch.Tensor  # [N, C], pool(Rs, Ts)
    tuned_prototypes: torch.Tensor | None  # [N, C], pool(R's, Ts); None with ssm=False
    feature_gradient: torch.Tensor | None  # [N, C, h, w], dLsup/dRs (paper Fig. 3); None with ssm=False


@dataclasses.dataclass
class SupportState:
    """What B episodes' K supports give their queries: the support branch's output (:meth:`SSTReference.support_stage`).

    Computed once (:meth:`SSTReference.encode_supports`), met by any number of queries
    (:meth:`SSTReference.segment_queries`); a state of one episode serves a batch of queries.
    """

    prototypes: torch.Tensor  # [B, K, C], p = pool(Rs, Ts)
    tuned_prototypes: torch.Tensor | None  # [B, K, C], p' = pool(R's, Ts); None without the tuning step
    shot_weights: torch.Tensor | None  # [B, K], Eq. 14's weights; None for fusion='max'
    support_logits: torch.Tensor | None  # [B, K, 2, Hs, Ws] self-segmentation; None when it did not run
    aux_loss: torch.Tensor | None  # mean self-segmentation loss; None when it did not run
    feature_gradient: torch.Tensor | None = None  # [B, K, C, hs, ws] with explain only

    @property
    def batch(self) -> int:
        return self.prototypes.shape[0]

    @property
    def shots(self) -> int:
        return self.prototypes.shape[1]

    def for_batch(self, batch: int) -> SupportState:
        """This state for ``batch`` queries: itself, or a state of one episode repeated (views, no copies)."""
        if batch == self.batch:
            return self
        if self.batch != 1:
            raise ValueError(f"a state of {self.batch} episodes cannot serve {batch} queries (only of one can)")
        return SupportState(
            **{
                f.name: _repeat(getattr(self, f.name), batch) if f.name != "aux_loss" else self.aux_loss
                for f in dataclasses.fields(self)
            }
        )

    def detach(self) -> SupportState:
        return SupportState(**{f.name: _detached(getattr(self, f.name)) for f in dataclasses.fields(self)})


def _repeat(tensor: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    return None if tensor is None else tensor.expand(batch, *tensor.shape[1:])


def _detached(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach()


class SSTReference(nn.Module):
    """SST (Zhu et al., IJCAI 2020): encoder, self-supervised tuning, relation metric, decoder."""

    def __init__(self, config: SSTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else SSTConfig()
        self.backbone = build_backbone(config.backbone, config.backbone_weights, freeze=config.freeze_backbone)
        self.embed = Encoder(self.backbone.out_channels, config.channels, config.dropout)  # fe
        self.relation = Relation(config.channels, config.dropout)  # fm
        self.decoder = Decoder(config.channels, config.dropout)  # fd
        self.tuning = SelfSupervisedTuning(config.tune_step, config.learnable_step, config.tune_form)  # ft
        for head in (self.embed, self.relation, self.decoder):
            init_head(head)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Eq. 2-3: images [N, 3, H, W] -> latent features R [N, C, h, w]."""
        return self.embed(self.backbone(images))

    def forward(
        self,
        query: torch.Tensor,
        support_images: torch.Tensor,
        support_masks: torch.Tensor,
        query_mask: torch.Tensor | None = None,
        explain: bool = False,
    ) -> SSTOutput:
        """Segment each query with its K supports; with ``query_mask`` also return the training loss.

        Args:
            query: [B, 3, H, W] normalised images.
            support_images: [B, K, 3, Hs, Ws].
            support_masks: [B, K, Hs, Ws], 0 background, 1 object, 255 ignore.
            query_mask: [B, H, W] in the same convention, or None.
            explain: also return what the figures show (see :meth:`segment`); off, nothing extra is computed.
        """
        cfg = self.config
        if cfg.check_inputs:
            check_episode(query, support_images, support_masks, query_mask, like=self.embed.conv.weight)
        rq = self.encode(query)  # [B, C, h, w]
        rs = self.encode(support_images.flatten(0, 1))  # [B*K, C, hs, ws]
        rs = rs.unflatten(0, support_images.shape[:2])
        return self.segment(rq, rs, support_masks, query_mask, query.shape[-2:], explain=explain)

    def head(
        self,
        query_features: torch.Tensor,
        support_features: torch.Tensor,
        support_masks: torch.Tensor,
        query_mask: torch.Tensor | None = None,
        size: tuple[int, int] | None = None,
    ) -> SSTOutput:
        """:meth:`forward` from the backbone's outputs on: embedding, tuning, relation, decoder.

        For training on cached features of a frozen backbone. ``query_features`` [B, Cb, h, w] and
        ``support_features`` [B, K, Cb, hs, ws] are what ``self.backbone`` returns for the images;
        ``size`` is the query images' (H, W) (default: ``query_mask``'s size, else the support masks').
        """
        if self.config.check_inputs:
            check_features(query_features, support_features, support_masks, query_mask, self.backbone.out_channels,
                           like=self.embed.conv.weight)
        if size is None:
            size = (query_mask if query_mask is not None else support_masks).shape[-2:]
        rq = self.embed(query_features)
        rs = self.embed(support_features.flatten(0, 1)).unflatten(0, support_features.shape[:2])
        return self.segment(rq, rs, support_masks, query_mask, tuple(size))

    def segment(
        self,
        rq: torch.Tensor,
        rs: torch.Tensor,
        support_masks: torch.Tensor,
        query_mask: torch.Tensor | None,
        size: tuple[int, int],
        explain: bool = False,
    ) -> SSTOutput:
        """Everything after the encoder: rq [B, C, h, w], rs [B, K, C, hs, ws] -> logits at ``size``.

        The support branch (:meth:`support_stage`) then the query branch (:meth:`query_stage`).
        ``explain=True`` (for figures; opt-in, the training forward never pays for it): the supports'
        self-segmentation runs whatever the settings, the full feature gradient dLsup/dRs is formed, and
        the query is decoded a second time with the untuned prototypes, into the output's
        ``untuned_logits`` and ``feature_gradient``.
        """
        cfg = self.config
        training_loss = query_mask is not None
        state = self.support_stage(rs, support_masks, aux=training_loss, explain=explain)
        out = self.query_stage(rq, state, size, explain=explain)
        if training_loss:
            out.main_loss = per_image_cross_entropy(out.logits, query_mask).mean()
            out.loss = out.main_loss + cfg.aux_weight * out.aux_loss if cfg.aux_loss else out.main_loss
        # The inner loop always runs with autograd on; under no_grad nothing returned keeps a graph.
        return out if torch.is_grad_enabled() else out.detach()

    def support_stage(
        self, rs: torch.Tensor, support_masks: torch.Tensor, aux: bool = False, explain: bool = False
    ) -> SupportState:
        """The support branch: rs [B, K, C, hs, ws] and masks [B, K, Hs, Ws] -> :class:`SupportState`.

        Pooling (Eq. 12), the self-segmentation and tuning step (§4.2) when anything needs them (``ssm``,
        weighted K > 1 fusion, ``aux`` with ``aux_loss`` on, ``explain``), and Eq. 14's fusion weights.
        """
        cfg = self.config
        batch, shots = rs.shape[:2]
        rs = rs.flatten(0, 1)  # [B*K, C, hs, ws]
        support_labels = support_masks.flatten(0, 1).long()  # [B*K, Hs, Ws]
        mask = downsample_mask(support_labels, rs.shape[-2:], rs.dtype)  # [B*K, 1, hs, ws]

        weighted = cfg.fusion == "weighted" and shots > 1
        tuning = None
        if cfg.ssm or weighted or (cfg.aux_loss and aux) or explain:
            tuning = self.tune(rs, mask, support_labels, feature_gradient=explain)
            protos = tuning.prototypes
        else:
            protos = self.pool(rs, mask)  # [B*K, C]
        weights = self.shot_weights(tuning, support_labels, batch, shots)  # [B, K] or None

        def episodes(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.unflatten(0, (batch, shots))

        return SupportState(
            prototypes=episodes(protos),
            tuned_prototypes=episodes(tuning.tuned_prototypes) if tuning is not None else None,
            shot_weights=weights,
            support_logits=episodes(tuning.support_logits) if tuning is not None else None,
            aux_loss=tuning.support_loss.mean() if tuning is not None else None,
            feature_gradient=episodes(tuning.feature_gradient) if explain and tuning is not None else None,
        )

    def query_stage(
        self, rq: torch.Tensor, state: SupportState, size: tuple[int, int], explain: bool = False
    ) -> SSTOutput:
        """The query branch: rq [B, C, h, w] meets the supports' ``state`` (of B episodes, or of one shared by
        all B queries) -> :class:`SSTOutput` with logits [B, 2, *size] and the state's fields."""
        cfg = self.config
        state = state.for_batch(rq.shape[0])
        protos = state.tuned_prototypes if cfg.ssm else state.prototypes  # p' with ssm, else p
        relations = self.relate(rq, protos)  # [B, K, C, h, w]
        fused = fuse(relations, cfg.fusion, state.shot_weights)  # Eq. 14: M [B, C, h, w]
        logits = self.decoder(fused, size)  # Eq. 7: S [B, 2, H, W]
        out = SSTOutput(
            logits=logits,
            shot_weights=state.shot_weights,
            prototypes=state.prototypes,
            support_logits=state.support_logits,
            aux_loss=state.aux_loss,
            tuned_prototypes=state.tuned_prototypes,
        )
        if explain:
            out.untuned_logits = logits
            if cfg.ssm:  # the same decoding with the prototypes before the step
                untuned_relations = self.relate(rq, state.prototypes)
                out.untuned_logits = self.decoder(fuse(untuned_relations, cfg.fusion, state.shot_weights), size)
            out.feature_gradient = state.feature_gradient
        return out

    def encode_supports(self, support_images: torch.Tensor, support_masks: torch.Tensor) -> SupportState:
        """The support branch of :meth:`forward` alone, to be met by any number of queries (:meth:`segment_queries`).

        Args:
            support_images: [B, K, 3, Hs, Ws] normalised images (B = 1 for supports shared by every query).
            support_masks: [B, K, Hs, Ws], 0 background, 1 object, 255 ignore.

        ``forward(query, support_images, support_masks)`` equals
        ``segment_queries(query, encode_supports(support_images, support_masks))``; the state holds what the
        supports give at the model's weights when it is made (under ``torch.no_grad()`` detached).
        """
        if self.config.check_inputs:
            _check_supports(support_images, support_masks, like=self.embed.conv.weight)
        rs = self.encode(support_images.flatten(0, 1)).unflatten(0, support_images.shape[:2])
        state = self.support_stage(rs, support_masks)
        return state if torch.is_grad_enabled() else state.detach()

    def segment_queries(self, query: torch.Tensor, state: SupportState) -> SSTOutput:
        """The query branch of :meth:`forward`: query [B, 3, H, W] normalised images against ``state`` (from
        :meth:`encode_supports`, of B episodes or of one, shared by the B queries) -> :class:`SSTOutput`
        (logits [B, 2, H, W]; its support fields are the state's, one per query)."""
        if not isinstance(state, SupportState):
            raise TypeError(f"state must be a SupportState (from encode_supports), got {type(state).__name__}")
        if self.config.check_inputs:
            _check_query(query, like=self.embed.conv.weight)
            if state.prototypes.device != query.device:
                raise ValueError(f"state is on {state.prototypes.device} but query is on {query.device}")
        if state.batch not in (1, query.shape[0]):
            raise ValueError(f"query: B = {state.batch} queries like state (or a state of one), got {query.shape[0]}")
        out = self.query_stage(self.encode(query), state, tuple(query.shape[-2:]))
        return out if torch.is_grad_enabled() else out.detach()

    def pool(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Eq. 12's ``pool(R * T)``: [N, C, h, w], [N, 1, h, w] -> prototypes [N, C]."""
        return masked_avg_pool(features, mask, self.config.eps)

    def relate(self, rq: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        """Eq. 13 for every shot at once: rq [B, C, h, w] meets its K prototypes [B, K, C] -> [B, K, C, h, w]."""
        batch, shots = protos.shape[:2]
        rq_per_shot = rq[:, None].expand(-1, shots, -1, -1, -1).flatten(0, 1)  # [B*K, C, h, w]
        return self.relation_map(rq_per_shot, protos.flatten(0, 1)).unflatten(0, (batch, shots))

    def relation_map(self, features: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        """fm (Eq. 12-13): features [N, C, h, w] scored against prototypes [N, C] -> [N, C, h, w]."""
        return self.relation(features, protos)

    def tune(self, rs: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, feature_gradient: bool = False):
        """§4.2: the supports segment themselves (Eq. 8-10) and their features take one gradient step (Eq. 11).

        rs [N, C, h, w] (N = B*K), mask [N, 1, h, w], labels [N, Hs, Ws] -> :class:`TuningResult`.
        Each support image's loss is its own per-image mean, so the sum over the batch gives every
        image exactly the gradient of its own loss. The gradient is taken with autograd enabled
        even under ``torch.no_grad()`` and ``torch.inference_mode()`` (evaluation tunes too); it is
        part of the outer graph (second order) only when gradients are on and ``first_order`` is off.
        ``feature_gradient``: return the full gradient map dLsup/dRs too (paper Fig. 3); the
        reference forms it anyway, :class:`sst_fast.SST` only when asked.
        Under ``torch.compile`` this step runs eagerly, a graph break between the compiled stages
        before and after it (see :func:`_tune_eagerly` for why). ``torch.export`` cannot take it at all
        (:mod:`sst_fast.export`): there it is traced as it is, and fails where the gradient is taken.
        """
        # While exporting, is_compiling() is true too, but a disabled function is traced through, not run
        # eagerly: sending the step there would come straight back here.
        if torch.compiler.is_compiling() and not _exporting():
            return _tune_eagerly(self, rs, mask, labels, feature_gradient)
        if torch.is_inference_mode_enabled():
            # enable_grad cannot lift inference mode: step out of it, with ordinary copies of the inputs.
            with torch.inference_mode(False), torch.no_grad():
                return self.tune(rs.clone(), mask.clone(), labels.clone(), feature_gradient)
        outer_grad = torch.is_grad_enabled()
        with torch.enable_grad():
            rs = rs if rs.requires_grad else rs.detach().requires_grad_()
            return self._tune(rs, mask, labels, outer_grad, feature_gradient)

    def _tune(self, rs, mask, labels, outer_grad: bool, feature_gradient: bool) -> TuningResult:
        """Eq. 8-12 literally: autograd down to the full feature map, the step, then the pooling."""
        cfg = self.config
        proto = self.pool(rs, mask)  # Eq. 12, pool(Rs * Ts): [N, C]
        support_logits = self.decoder(self.relation(rs, proto), labels.shape[-2:])  # Eq. 8-9
        support_loss = per_image_cross_entropy(support_logits, labels)  # Eq. 10: [N]
        if not cfg.ssm:
            return TuningResult(support_logits, support_loss, proto, None, None)
        (gradient,) = torch.autograd.grad(
            support_loss.sum(), rs, create_graph=outer_grad and not cfg.first_order, retain_graph=outer_grad
        )
        steps = self.tuning.feature_steps(proto, self.pool(gradient, mask))  # alpha, or [N, 1] per shot
        if isinstance(steps, torch.Tensor) and steps.dim() == 2:
            steps = steps[:, :, None, None]
        tuned = rs - steps * gradient  # Eq. 11: R's [N, C, h, w]
        tuned_proto = self.pool(tuned, mask)  # Eq. 12, pool(R's * Ts)
        return TuningResult(support_logits, support_loss, proto, tuned_proto, gradient)

    def shot_weights(self, tuning: TuningResult | None, labels: torch.Tensor, batch: int, shots: int):
        """Eq. 14's fusion weights [B, K] (not differentiated); None for element-wise max."""
        fusion = self.config.fusion
        if fusion == "max":
            return None
        if fusion == "average" or tuning is None:  # one shot: its weight is 1 whatever its IoU
            return torch.full((batch, shots), 1.0 / shots, device=labels.device)
        with torch.no_grad():
            ious = foreground_iou(tuning.support_logits.argmax(1), labels)  # fIoU(Ssup_i, Ts_i): [B*K]
            return fusion_weights(ious.view(batch, shots))


# --- the fused model -------------------------------------------------------------------------------------


class SST(SSTReference):
    """Self-Supervised Tuning for few-shot segmentation, on the fused ops.

    Same modules, parameter names, inputs and outputs as :class:`sst_fast.reference.SSTReference`
    (``state_dict()`` moves freely between the two) and the same numbers to floating-point
    tolerance. What differs is how the two stages that carry SST's cost are computed:

    * every relation call (Eq. 12-13) is ``ops.prototype_conv2d``: the prototype's half of the
      first relation convolution acts on a constant map, so it is a k x k table of GEMVs added
      to the query half's convolution; the tile and the concatenation are never formed;
    * the tuning step (Eq. 11-12) stops the inner gradient at the relation convolution's output,
      ``delta = dLsup/dy``, and ``ops.tuned_prototype`` pools ``Rs - alpha dLsup/dRs`` from
      ``delta`` in closed form: neither the transposed convolution that would give ``dLsup/dRs``
      nor the tuned feature map ``R's`` is ever computed. Second order, ``delta`` keeps its graph
      and the outer loss differentiates through it.

    ``torch.compile(model)`` works, for evaluation (under ``torch.no_grad()`` or ``torch.inference_mode()``)
    and for training, with this model and with the reference: the tuning step (:meth:`tune`, which takes
    the inner gradient) runs eagerly between the compiled stages, which are the backbone, the embedding
    and the query's relation and decoder. The inputs' checks (``check_inputs``) and the tuning step are
    graph breaks, so ``fullgraph=True`` cannot apply to the whole model.
    """

    def pool(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return ops.masked_avg_pool(features, mask, self.config.eps)

    def relation_map(self, features: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        return self.relation.refine(self._score(features, protos))

    def _score(self, features: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        """The relation's first convolution on ``cat(features, tile(protos))``, fused."""
        conv = self.relation.conv
        return ops.prototype_conv2d(features, protos, conv.weight, conv.bias, conv.dilation[0])

    def _tune(self, rs, mask, labels, outer_grad: bool, feature_gradient: bool) -> TuningResult:
        if feature_gradient:  # the full map is wanted (paper Fig. 3): the reference forms it
            return super()._tune(rs, mask, labels, outer_grad, feature_gradient)
        cfg = self.config
        proto = self.pool(rs, mask)  # Eq. 12, pool(Rs * Ts): [N, C]
        y = self._score(rs, proto)  # the relation's first convolution, Eq. 13
        support_logits = self.decoder(self.relation.refine(y), labels.shape[-2:])  # Eq. 8-9
        support_loss = per_image_cross_entropy(support_logits, labels)  # Eq. 10: [N]
        if not cfg.ssm:
            return TuningResult(support_logits, support_loss, proto, None, None)
        second_order = outer_grad and not cfg.first_order
        # Under float16 autocast dLsup/dy (~1/pixels per pixel) would underflow: scale the loss by a power
        # of two near the pixel count, so that the gradient is O(1) in float16, and unscale it exactly.
        scale = _inner_loss_scale(y, labels)
        (delta,) = torch.autograd.grad(
            support_loss.sum() * scale if scale != 1 else support_loss.sum(),
            y,
            create_graph=second_order,
            retain_graph=outer_grad,
        )
        if scale != 1:
            delta = delta.float() / scale
        # First order the inner gradient is a constant: no path back through delta or the weight.
        weight = self.relation.conv.weight if second_order else self.relation.conv.weight.detach()
        dilation = self.relation.conv.dilation[0]
        if cfg.tune_form == "paper":
            tuned_proto = ops.tuned_prototype(  # Eq. 11 then Eq. 12, pool(Rs - alpha dLsup/dRs)
                delta, mask, weight, proto, self.tuning.step(), cfg.eps, dilation
            )
        else:  # the pooled gradient g = pool(dLsup/dRs) from the same op (p = 0, step 1 gives -g), then the step
            gradient = -ops.tuned_prototype(delta, mask, weight, torch.zeros_like(proto), 1.0, cfg.eps, dilation)
            tuned_proto = proto - self.tuning.feature_steps(proto, gradient) * gradient
        return TuningResult(support_logits, support_loss, proto, tuned_proto, None)


def _exporting() -> bool:
    """Whether ``torch.export`` is tracing: ``torch.compiler.is_exporting()``, read from the flag it returns.
    Traced by dynamo, torch before 2.12 folds the call itself to True under every ``torch.compile`` (2.11's
    ``tracing_state_functions``), which would trace the tuning step into the compiled graph; the flag that
    the call reads is set only by ``torch.export``, in every version."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return torch.compiler.is_exporting() if flag is None else bool(flag)


@torch.compiler.disable(reason="the tuning step differentiates its own loss: it runs eagerly")
def _tune_eagerly(model: SSTReference, rs, mask, labels, feature_gradient: bool) -> TuningResult:
    """``model.tune`` outside the compiled graphs: under ``torch.compile(model)`` the graph that returns Rs
    ends here, and the one that takes the tuned prototypes p' starts after it. Compiled, the step would fail
    or be wrong four ways (torch 2.13):

    * dynamo does not trace ``torch.autograd.grad`` (a graph break), and a compiled graph that returns both
      the self-segmentation loss and the tensor it is differentiated by (SST's ``y``) holds no path from one
      to the other for autograd: "The differentiated Tensor ... appears to not have been used in the graph";
    * second order (gradients on, ``first_order`` off) the inner gradient keeps its graph, and AOTAutograd
      has no double backward;
    * under ``inference_mode`` a compiled graph's outputs are inference tensors, even inside
      ``inference_mode(False)``, and autograd cannot differentiate them; eagerly the step copies them first;
    * inductor's CPU code for the backward of the decoder and the cross-entropy can run the classifier's
      convolution backward before the fused kernel that fills its input (the bilinear upsampling's
      backward), so the inner gradient comes back zero.

    What runs uncompiled is the supports' self-segmentation (their relation and decoder) and the step: their
    convolutions are library kernels compiled or not (SST's pools and relation convolution are its fused
    ops), so compiling them would only fuse the element-wise work between them.
    """
    return model.tune(rs, mask, labels, feature_gradient)


def _inner_loss_scale(y: torch.Tensor, labels: torch.Tensor) -> float:
    """1, or under float16 autocast the power of two nearest the support label's pixel count."""
    if y.dtype != torch.float16:
        return 1.0
    return float(2 ** round(math.log2(labels.shape[-2] * labels.shape[-1])))


def _check_query(query: torch.Tensor, like: torch.Tensor) -> None:
    """:func:`check_episode`'s checks of ``query`` alone (for :meth:`SSTReference.segment_queries`)."""
    _check_images("query", query, ndim=4, layout="[B, 3, H, W]")
    if query.device != like.device:
        raise ValueError(f"query is on {query.device} but the model is on {like.device}")
    if query.dtype != like.dtype and not torch.is_autocast_enabled(query.device.type):
        raise ValueError(f"query has dtype {query.dtype} but the model's parameters are {like.dtype}")


def _check_supports(support_images: torch.Tensor, support_masks: torch.Tensor, like: torch.Tensor) -> None:
    """:func:`check_episode`'s checks of the supports alone (for :meth:`SSTReference.encode_supports`)."""
    _check_images("support_images", support_images, ndim=5, layout="[B, K, 3, H, W]")
    if support_images.device != like.device:
        raise ValueError(f"support_images are on {support_images.device} but the model is on {like.device}")
    if support_images.dtype != like.dtype and not torch.is_autocast_enabled(support_images.device.type):
        raise ValueError(f"support_images have dtype {support_images.dtype}, the model's parameters {like.dtype}")
    batch, shots = support_images.shape[:2]
    _check_masks(support_masks, None, batch, shots, support_images.device, "support_images")
    if support_masks.shape[-2:] != support_images.shape[-2:]:
        raise ValueError(
            f"support_masks must have the support images' size {list(support_images.shape[-2:])}, "
            f"got {list(support_masks.shape[-2:])}"
        )
