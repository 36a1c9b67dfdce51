"""Model stages (named after the paper's symbols), the literal :class:`SSTReference` and the fused :class:`SST`."""

from .backbones import BACKBONE_CLASSES, Backbone, LoadReport, build_backbone, load_backbone_weights
from .decoder import Decoder
from .encoder import Encoder
from .episode import SSTOutput
from .relation import Relation
from .sst import SST, SSTReference, SupportState, TuningResult
from .tuning import SelfSupervisedTuning

__all__ = [
    "BACKBONE_CLASSES",
    "Backbone",
    "Decoder",
    "Encoder",
    "LoadReport",
    "Relation",
    "SST",
    "SSTOutput",
    "SSTReference",
    "SelfSupervisedTuning",
    "SupportState",
    "TuningResult",
    "build_backbone",
    "load_backbone_weights",
]
