"""Inserting attention into any backbone or neck (see ``insert.insert_attention``)."""
from .fusion import fuse_conv_bn
from .insert import build_with_attention, insert_attention
from .places import resolve_places
from .presets import PAPER_PRESETS, register_preset
from .site import LAYOUTS, AttentionSite, IdentityBlend

__all__ = ['insert_attention', 'build_with_attention', 'resolve_places', 'PAPER_PRESETS',
           'register_preset', 'LAYOUTS', 'AttentionSite', 'IdentityBlend', 'fuse_conv_bn']
