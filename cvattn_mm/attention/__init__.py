"""Attention modules, one file each, grouped by family (see ``base.FAMILIES``)."""
from .base import FAMILIES, PAPER_POSITIONS, AttentionModule
from .branch import *  # noqa: F401,F403
from .channel import *  # noqa: F401,F403
from .channel_spatial import *  # noqa: F401,F403
from .spatial import *  # noqa: F401,F403

__all__ = ['AttentionModule', 'FAMILIES', 'PAPER_POSITIONS']
