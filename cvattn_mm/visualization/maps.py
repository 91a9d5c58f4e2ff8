"""Extracting a module's attention maps for drawing.

Each attention module computes its own maps (:meth:`~cvattn_mm.attention.base.AttentionModule.
attention_maps`, next to its forward); :func:`extract_maps` runs that method in eval mode
without gradients and hands the maps over as float32 CPU tensors.
"""
from typing import Dict

import torch

from ..attention.base import AttentionModule
from ..attention.maps import KINDS, AttentionMap

__all__ = ['AttentionMap', 'KINDS', 'extract_maps']


def extract_maps(module: torch.nn.Module, x: torch.Tensor) -> Dict[str, AttentionMap]:
    """The attention maps of ``module`` for its input ``x`` (N, C, H, W).

    Runs :meth:`~cvattn_mm.attention.base.AttentionModule.attention_maps` in eval mode (the
    training flags of the module and its children are restored afterwards) without
    gradients; the maps are contiguous float32 tensors on the CPU. Returns an empty dict for
    a module that is not an attention module of cvattn_mm.
    """
    if not isinstance(module, AttentionModule):
        return {}
    module.check_input(x)
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            maps = module.attention_maps(x)
    finally:
        for m, mode in modes.items():
            m.training = mode
    for m in maps.values():
        m.values = m.values.detach().float().cpu().contiguous()
        if m.origins is not None:
            m.origins = m.origins.detach().float().cpu().contiguous()
    return maps
