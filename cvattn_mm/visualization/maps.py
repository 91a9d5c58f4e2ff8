"""Attention maps of the attention modules: one extractor per class, in a registry.

An extractor ``(module, x) -> dict[str, AttentionMap]`` turns the gates and weights that
:mod:`.gates` recomputes from the module's input ``x`` (N, C, H, W) into maps that can be
drawn over an image: spatial gates and weights on the feature grid, channel gates, sampling
points. :func:`extract_maps` finds a module's extractor and runs it in eval mode without
gradients.
"""
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from ..attention import (
    BAM,
    CBAM,
    ECA,
    GC,
    SCSA,
    SCSE,
    SE,
    SK,
    CoordAttention,
    DeformableAttention2D,
    ExternalAttention,
    MultiHeadExternalAttention,
    NonLocalBlock,
    PooledSelfAttention,
    SimAM,
    SimplifiedNonLocal,
    TripletAttention,
)
from ..attention.spatial.deformable_attention import reference_points
from . import gates

#: What ``AttentionMap.values`` holds for each kind, and its shape.
KINDS = {
    'spatial': '(N, h, w) gate values on the feature grid',
    'channel': '(N, C) gate values, one per channel',
    'points': '(N, P, 2) sampling positions, (x, y) normalised to [-1, 1] over the feature '
              "map (grid_sample's align_corners=False convention)",
    'weights': '(N, h, w) attention weights over the feature (or key) grid, e.g. a softmax',
}
_DIMS = {'spatial': 3, 'channel': 2, 'points': 3, 'weights': 3}

#: Registered attention classes without an extractor, as ``(name, reason)`` pairs. Every
#: registered module has a map, so it is empty; the tests check that each registered class
#: is either here or in :data:`EXTRACTORS`.
WITHOUT_MAP: Tuple[Tuple[str, str], ...] = ()


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


Extractor = Callable[[torch.nn.Module, torch.Tensor], Dict[str, AttentionMap]]

#: Extractor of each attention class (subclasses use their closest base's).
EXTRACTORS: Dict[type, Extractor] = {}


def register_extractor(cls: type):
    """Decorator: register the function as the map extractor of ``cls``."""

    def _register(fn: Extractor) -> Extractor:
        EXTRACTORS[cls] = fn
        return fn

    return _register


def find_extractor(module: torch.nn.Module) -> Optional[Extractor]:
    """The extractor of ``module``'s class or of its closest registered base, or None."""
    return next((EXTRACTORS[k] for k in type(module).__mro__ if k in EXTRACTORS), None)


def extract_maps(module: torch.nn.Module, x: torch.Tensor) -> Dict[str, AttentionMap]:
    """The attention maps of ``module`` for its input ``x`` (N, C, H, W).

    Runs the module's extractor in eval mode (the training flags of the module and its
    children are restored afterwards) without gradients; the maps are contiguous float32
    tensors on the CPU.
    Returns an empty dict for a module without an extractor.
    """
    extractor = find_extractor(module)
    if extractor is None:
        return {}
    module.check_input(x)
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            maps = extractor(module, x)
    finally:
        for m, mode in modes.items():
            m.training = mode
    for m in maps.values():
        m.values = m.values.detach().float().cpu().contiguous()
        if m.origins is not None:
            m.origins = m.origins.detach().float().cpu().contiguous()
    return maps


def _channel(gate: torch.Tensor, title: str) -> AttentionMap:
    """A channel map from an (N, C, 1, 1) gate."""
    return AttentionMap('channel', gate.flatten(1), title)


def _spatial(gate: torch.Tensor, shape, title: str) -> AttentionMap:
    """A spatial map of shape (N, H, W) from a gate broadcastable to (N, C, H, W), averaged
    over its channels."""
    return AttentionMap('spatial', gate.mean(1).expand(shape[0], *shape[2:]), title)


def _query_weights(attn: torch.Tensor, query_hw, key_hw, what: str) -> Dict[str, AttentionMap]:
    """Maps of (N, Lq, Lk) attention: the centre query's row and the mean over queries."""
    centre = (query_hw[0] // 2) * query_hw[1] + query_hw[1] // 2
    n = attn.shape[0]
    return {
        'centre_query': AttentionMap('weights', attn[:, centre].reshape(n, *key_hw),
                                     f'{what} of the centre query'),
        'mean_over_queries': AttentionMap('weights', attn.mean(1).reshape(n, *key_hw),
                                          f'{what}, mean over queries'),
    }


@register_extractor(SE)
def se_maps(module, x):
    return {'channel_gate': _channel(gates.se_gate(module, x), 'channel gate')}


@register_extractor(ECA)
def eca_maps(module, x):
    return {'channel_gate': _channel(gates.eca_gate(module, x), 'channel gate')}


@register_extractor(GC)
def gc_maps(module, x):
    """Context weights ('att' pooling) and the channel gate of the 'mul' fusion, if used
    (so none for ``pooling='avg'`` with the 'add' fusion alone: its additive term is no map)."""
    parts = gates.gc_parts(module, x)
    maps = {}
    if 'weights' in parts:
        maps['context_weights'] = AttentionMap(
            'weights', parts['weights'].reshape(x.shape[0], *x.shape[2:]), 'context weights')
    if 'mul_gate' in parts:
        maps['mul_gate'] = _channel(parts['mul_gate'], 'channel gate (mul fusion)')
    return maps


@register_extractor(SimplifiedNonLocal)
def simplified_non_local_maps(module, x):
    weights = gates.simplified_non_local_weights(module, x)
    return {'context_weights': AttentionMap(
        'weights', weights.reshape(x.shape[0], *x.shape[2:]), 'context weights')}


@register_extractor(CBAM)
def cbam_maps(module, x):
    g = gates.cbam_gates(module, x)
    maps = {}
    if 'channel' in g:
        maps['channel_gate'] = _channel(g['channel'], 'channel gate')
    if 'spatial' in g:
        maps['spatial_gate'] = _spatial(g['spatial'], x.shape, 'spatial gate')
    return maps


@register_extractor(BAM)
def bam_maps(module, x):
    mc, ms = gates.bam_logits(module, x)
    att = mc + ms if module.fusion == 'add' else mc * ms
    return {
        'channel_gate': _channel(torch.sigmoid(mc), 'channel branch sigmoid(Mc)'),
        'spatial_gate': _spatial(torch.sigmoid(ms), x.shape, 'spatial branch sigmoid(Ms)'),
        'combined_gate': _spatial(torch.sigmoid(att), x.shape,
                                  f'sigmoid(Mc {"+" if module.fusion == "add" else "*"} Ms), '
                                  'mean over C'),
    }


@register_extractor(SCSE)
def scse_maps(module, x):
    g_c, g_s = gates.scse_gates(module, x)
    return {'channel_gate': _channel(g_c, 'cSE channel gate'),
            'spatial_gate': _spatial(g_s, x.shape, 'sSE spatial gate')}


@register_extractor(CoordAttention)
def coord_attention_maps(module, x):
    a_h, a_w = gates.coord_attention_gates(module, x)
    return {
        'h_gate': _spatial(a_h, x.shape, 'H gate, mean over C'),
        'w_gate': _spatial(a_w, x.shape, 'W gate, mean over C'),
        'gate': _spatial(a_h * a_w, x.shape, 'H gate x W gate, mean over C'),
    }


@register_extractor(TripletAttention)
def triplet_attention_maps(module, x):
    g = gates.triplet_gates(module, x)
    titles = {'cw': 'C-W branch (pooled over H)', 'hc': 'H-C branch (pooled over W)',
              'hw': 'H-W branch (pooled over C)'}
    maps = {f'{key}_gate': _spatial(gate, x.shape, f'{titles[key]}, mean over C')
            for key, gate in g.items()}
    maps['gate'] = _spatial(sum(g.values()) / len(g), x.shape, 'mean of the branches, '
                            'mean over C')
    return maps


@register_extractor(SimAM)
def simam_maps(module, x):
    gate = gates.simam_gate(module, x)
    return {'gate': _spatial(gate, x.shape, 'energy gate, mean over C'),
            'channel_mean': _channel(gate.mean((2, 3), keepdim=True),
                                     'energy gate, mean over positions')}


@register_extractor(SCSA)
def scsa_maps(module, x):
    a_h, a_w, a_c = gates.scsa_gates(module, x)
    return {'spatial_gate': _spatial(a_h * a_w, x.shape, 'SMSA gate a_h x a_w, mean over C'),
            'channel_gate': _channel(a_c, 'PCSA channel gate')}


@register_extractor(NonLocalBlock)
def non_local_maps(module, x):
    attn, keys = gates.non_local_attention(module, x)
    what = 'softmax' if module.mode in ('embedded_gaussian', 'gaussian') else 'pairwise weight'
    return _query_weights(attn, x.shape[2:], keys, what)


@register_extractor(PooledSelfAttention)
def pooled_self_attention_maps(module, x):
    attn, grid = gates.pooled_self_attention(module, x)
    return _query_weights(attn, grid, grid, 'softmax')


@register_extractor(ExternalAttention)
def external_attention_maps(module, x):
    attn = gates.external_attention_softmax(module, x).mean(1)
    return {'memory_attention': AttentionMap(
        'weights', attn.reshape(x.shape[0], *x.shape[2:]),
        'softmax over positions, mean over memory slots')}


@register_extractor(MultiHeadExternalAttention)
def multi_head_external_attention_maps(module, x):
    attn = gates.multi_head_external_attention_softmax(module, x).mean((1, 2))
    return {'memory_attention': AttentionMap(
        'weights', attn.reshape(x.shape[0], *x.shape[2:]),
        'softmax over positions, mean over heads and slots')}


@register_extractor(DeformableAttention2D)
def deformable_attention_maps(module, x):
    locations = module.sampling_locations(module.to_q(x))  # (N * G, H_k, W_k, 2)
    n = x.shape[0]
    origins = reference_points(*locations.shape[1:3], locations.dtype, locations.device)
    origins = origins.expand_as(locations).reshape(n, -1, 2)
    return {'sampling_points': AttentionMap(
        'points', locations.reshape(n, -1, 2),
        f'sampling points ({module.offset_groups} groups)', origins)}


@register_extractor(SK)
def sk_maps(module, x):
    weights = gates.sk_weights(module, x)
    return {f'branch_{i + 1}': AttentionMap('channel', weights[:, i],
                                            f'branch {i + 1} (dilation {i + 1}) weight')
            for i in range(module.num_branches)}
