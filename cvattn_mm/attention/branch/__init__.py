"""Branch attention: a soft selection among parallel branches."""
from .sk import SK

__all__ = ['SK']
