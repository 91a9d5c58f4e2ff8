"""Attention heads (registered in the root MODELS, usable from mmpretrain configs)."""
from .csra_head import CSRAHead

__all__ = ['CSRAHead']
