"""Capturing the attention maps of every attention module of a model in one forward pass."""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..attention.base import AttentionModule
from ..insertion.site import IdentityBlend
from .maps import AttentionMap, extract_maps


@dataclass
class CapturedMaps:
    """The maps of one call of one attention module.

    Args:
        path (str): The module's name in ``model.named_modules()``.
        type_name (str): Its class name.
        input_shape (tuple): Shape (N, C, H, W) of its input.
        maps (dict[str, AttentionMap]): Its maps (its ``attention_maps``).
        gain (float, optional): For a module inserted with ``identity_init=True``, the gain
            ``g`` of its :class:`~cvattn_mm.insertion.site.IdentityBlend`, which applies
            ``x + g (attention(x) - x)``; None otherwise.
    """

    path: str
    type_name: str
    input_shape: Tuple[int, ...]
    maps: Dict[str, AttentionMap]
    gain: Optional[float] = None


class _RecordMaps:
    """Forward pre-hook of an attention module: extracts its maps from its input, and the
    gain of the ``blend`` that wraps it, if any."""

    def __init__(self, path: str, captured: List[CapturedMaps],
                 blend: Optional[IdentityBlend] = None):
        self.path = path
        self.captured = captured
        self.blend = blend

    def __call__(self, module, args):
        x = args[0]
        gain = None if self.blend is None else float(self.blend.gain)
        self.captured.append(CapturedMaps(self.path, type(module).__name__, tuple(x.shape),
                                          extract_maps(module, x), gain))


def _blend_of(modules: Dict[str, nn.Module], path: str) -> Optional[IdentityBlend]:
    """The :class:`IdentityBlend` whose ``attention`` is the module at ``path``, if any."""
    parent = modules.get(path.rpartition('.')[0])
    if isinstance(parent, IdentityBlend) and parent.attention is modules[path]:
        return parent
    return None


def capture_attention_maps(model: nn.Module, inputs,
                           forward: Optional[Callable] = None) -> List[CapturedMaps]:
    """Run ``model`` once and return the maps of every :class:`AttentionModule` in it.

    Forward pre-hooks on the attention modules (wherever they are: inserted sites, mmcv
    plug-ins, hand-built blocks) compute the maps from each module's input during the
    pass, so in-place operations after a module cannot alter what is recorded. The model
    runs in eval mode without gradients; the hooks are removed and every module's training
    flag is restored afterwards. A module inserted with ``identity_init=True`` is recorded
    with the gain of its blend (:attr:`CapturedMaps.gain`).

    Args:
        model: The model holding the attention modules.
        inputs: The argument of the forward call.
        forward: What to call with ``inputs`` (e.g. ``model.extract_feat``); default
            ``model``.

    Returns:
        list[CapturedMaps]: One entry per attention-module call, in call order.
    """
    captured: List[CapturedMaps] = []
    modules = dict(model.named_modules())
    handles = [module.register_forward_pre_hook(
        _RecordMaps(path, captured, _blend_of(modules, path)))
        for path, module in modules.items() if isinstance(module, AttentionModule)]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            (model if forward is None else forward)(inputs)
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes.items():
            m.training = mode
    return captured
