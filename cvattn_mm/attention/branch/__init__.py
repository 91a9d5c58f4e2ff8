"""Branch attention: a soft selection among parallel branches."""
from .pyramid_split_attention import PyramidSplitAttention
from .sk import SK
from .sk_conv import SKConv

__all__ = ['PyramidSplitAttention', 'SK', 'SKConv']
