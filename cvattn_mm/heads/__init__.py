"""Attention heads (registered in the root MODELS, usable from mmpretrain configs).

:class:`CSRAHead` builds on mmpretrain's ``CSRAClsHead``, so it needs mmpretrain. Without
mmpretrain installed, ``import cvattn_mm`` still works and ``CSRAHead`` is registered as a
stand-in whose construction raises an ``ImportError`` that says to install mmpretrain. An
mmpretrain that is installed but fails to import raises its own error here.
"""
from ..registry import register_model

try:
    from .csra_head import CSRAHead
except ModuleNotFoundError as error:
    if error.name != 'mmpretrain':
        raise

    @register_model()
    class CSRAHead:
        """Stand-in for the CSRA head when mmpretrain is not installed."""

        def __init__(self, *args, **kwargs):
            raise ImportError("CSRAHead builds on mmpretrain's CSRAClsHead, but mmpretrain is "
                              'not installed: pip install mmpretrain (cvattn_mm is tested with '
                              'mmpretrain 1.2.0)')


__all__ = ['CSRAHead']
