"""Branch attention: a soft selection among parallel branches."""
from .sk import SK
from .sk_conv import SKConv

__all__ = ['SK', 'SKConv']
