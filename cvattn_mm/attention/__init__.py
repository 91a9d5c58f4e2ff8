"""Attention modules, one file each, grouped by family (see ``base.FAMILIES``)."""
from .base import FAMILIES, PAPER_POSITIONS, AttentionModule
from .branch import *  # noqa: F401,F403
from .channel import *  # noqa: F401,F403
from .channel_spatial import *  # noqa: F401,F403
from .conv_replacement import ConvReplacement
from .spatial import *  # noqa: F401,F403

__all__ = ['AttentionModule', 'ConvReplacement', 'FAMILIES', 'PAPER_POSITIONS']
