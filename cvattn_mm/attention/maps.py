"""Attention maps: what a module's :meth:`~.base.AttentionModule.attention_maps` returns.

Every attention module computes its own maps next to its forward, with the methods its
forward uses (docs/architecture.md, "The module contract"); the visualisation only captures
and draws them. The builders below turn gates and weights into :class:`AttentionMap`\\ s.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch

#: What ``AttentionMap.values`` holds for each kind, and its shape.
KINDS = {
    'spatial': '(N, h, w) gate values on the feature grid',
    'channel': '(N, C) gate values, one per channel',
    'points': '(N, P, 2) sampling positions, (x, y) normalised to [-1, 1] over the feature '
              "map (grid_sample's align_corners=False convention)",
    'weights': '(N, h, w) attention weights over the feature (or key) grid, e.g. a softmax',
}
_DIMS = {'spatial': 3, 'channel': 2, 'points': 3, 'weights': 3}


@dataclass
class AttentionMap:
    """One attention map of a module for a batch.

    Args:
        kind (str): A key of :data:`KINDS`.
        values (Tensor): The map, shaped as :data:`KINDS` says.
        title (str): Short description for figures.
        origins (Tensor, optional): For 'points': ``(N, P, 2)`` positions the points were
            moved from (e.g. a reference grid), same convention as ``values``.
    """

    kind: str
    values: torch.Tensor
    title: str
    origins: Optional[torch.Tensor] = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f'AttentionMap kind must be one of {tuple(KINDS)}, got {self.kind!r}')
        if self.values.dim() != _DIMS[self.kind]:
            raise ValueError(f'AttentionMap {self.title!r}: a {self.kind!r} map is '
                             f'{KINDS[self.kind]}, got shape {tuple(self.values.shape)}')


def channel_map(gate: torch.Tensor, title: str) -> AttentionMap:
    """A channel map from an (N, C, 1, 1) (or (N, C)) gate."""
    return AttentionMap('channel', gate.flatten(1), title)


def spatial_map(gate: torch.Tensor, shape: Sequence[int], title: str) -> AttentionMap:
    """A spatial map (N, H, W) from a gate broadcastable to ``shape`` (N, C, H, W), averaged
    over its channels."""
    return AttentionMap('spatial', gate.mean(1).expand(shape[0], *shape[2:]), title)


def axis_gate_maps(a_h: torch.Tensor, a_w: torch.Tensor,
                   shape: Sequence[int]) -> Dict[str, AttentionMap]:
    """'h_gate' (N, C, H, 1), 'w_gate' (N, C, 1, W) and their product 'gate', each averaged
    over C to (N, H, W): the maps of the modules that gate by one vector per row and one per
    column (CoordAttention, ELA)."""
    return {
        'h_gate': spatial_map(a_h, shape, 'H gate, mean over C'),
        'w_gate': spatial_map(a_w, shape, 'W gate, mean over C'),
        'gate': spatial_map(a_h * a_w, shape, 'H gate x W gate, mean over C'),
    }


def weights_map(weights: torch.Tensor, grid: Sequence[int], title: str) -> AttentionMap:
    """A 'weights' map (N, h, w) from (N, h * w) (or (N, 1, h * w)) weights over ``grid``."""
    return AttentionMap('weights', weights.reshape(weights.shape[0], *grid), title)


def query_weight_maps(attn: torch.Tensor, query_hw: Sequence[int], key_hw: Sequence[int],
                      what: str) -> Dict[str, AttentionMap]:
    """Maps of (N, Lq, Lk) attention: the centre query's row and the mean over queries."""
    centre = (query_hw[0] // 2) * query_hw[1] + query_hw[1] // 2
    return {
        'centre_query': weights_map(attn[:, centre], key_hw, f'{what} of the centre query'),
        'mean_over_queries': weights_map(attn.mean(1), key_hw, f'{what}, mean over queries'),
    }
