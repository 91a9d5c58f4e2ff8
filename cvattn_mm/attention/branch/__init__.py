"""Branch attention: a soft selection among parallel branches."""
from .odconv import ODConv
from .pyramid_split_attention import PyramidSplitAttention
from .sk import SK
from .sk_conv import SKConv

__all__ = ['ODConv', 'PyramidSplitAttention', 'SK', 'SKConv']
