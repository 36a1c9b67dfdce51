"""Model stages (named after the paper's symbols) and the :class:`SST` model."""

from .backbones import BACKBONE_CLASSES, Backbone, LoadReport, build_backbone, load_backbone_weights
from .decoder import Decoder
from .encoder import Encoder
from .episode import SSTOutput
from .relation import Relation
from .sst import SST
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
    "SelfSupervisedTuning",
    "build_backbone",
    "load_backbone_weights",
]
