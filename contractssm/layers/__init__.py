"""Layers: ``nn.Module``s that run generated executors (SPEC.md sections 3 and 4)."""

from contractssm.layers.base import SSMModule, bucket_length
from contractssm.layers.centaurus import SSMLayer
from contractssm.layers.centaurus_lti import (
    Centaurus,
    CentaurusBase,
    CentaurusDWS,
    CentaurusFull,
    CentaurusNeck,
    CentaurusPWNeck,
)
from contractssm.layers.generic import DeclaredSSM
from contractssm.layers.lru import LRU
from contractssm.layers.lti import LTILayer, PlannedLTI
from contractssm.layers.network import CentaurusNetwork
from contractssm.layers.optim import param_groups, recurrence_parameter_names
from contractssm.layers.s4 import S4
from contractssm.layers.s4d import S4D
from contractssm.layers.s5 import S5

__all__ = [
    "LRU",
    "S4",
    "S4D",
    "S5",
    "Centaurus",
    "CentaurusBase",
    "CentaurusDWS",
    "CentaurusFull",
    "CentaurusNeck",
    "CentaurusNetwork",
    "CentaurusPWNeck",
    "DeclaredSSM",
    "LTILayer",
    "PlannedLTI",
    "SSMLayer",
    "SSMModule",
    "bucket_length",
    "param_groups",
    "recurrence_parameter_names",
]
