"""Layers: ``nn.Module``s that run generated executors (SPEC.md sections 3 and 4)."""

from contractssm.layers.base import SSMModule, bucket_length
from contractssm.layers.generic import DeclaredSSM

__all__ = ["DeclaredSSM", "SSMModule", "bucket_length"]
