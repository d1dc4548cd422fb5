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
from contractssm.layers.network import CentaurusNetwork

__all__ = [
    "Centaurus",
    "CentaurusBase",
    "CentaurusDWS",
    "CentaurusFull",
    "CentaurusNeck",
    "CentaurusNetwork",
    "CentaurusPWNeck",
    "DeclaredSSM",
    "SSMLayer",
    "SSMModule",
    "bucket_length",
]
