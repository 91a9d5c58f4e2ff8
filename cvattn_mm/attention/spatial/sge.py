"""Spatial Group-wise Enhance."""
import math
from typing import Dict

import torch
import torch.nn as nn

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_int, check_positive_float
from ..maps import AttentionMap, spatial_map


@register_model()
class SGE(AttentionModule):
    """Spatial Group-wise Enhance (Li et al., arXiv:1905.09646).

    The channels are split into ``G`` groups of ``C / G`` channels ``x_g`` (N G, C / G, H, W).
    Per group, the similarity of every position to the group's global feature,
    ``c_g = sum_channels x_g * GAP(x_g)`` (N G, H W), is normalised over the positions,
    ``t = (c - mean(c)) / (std(c) + eps)``, scaled and shifted per group,
    ``t' = w_g t + b_g``, and gates the group: ``y_g = x_g * sigmoid(t')``.
    Parameters: ``2 G`` (``weight`` and ``bias``, one per group), independent of C.
    Paper position: on the residual branch after its last norm, before the addition.

    As in the official code, ``weight`` starts at 0 and ``bias`` at 1: at initialisation the
    output is ``sigmoid(1) x`` (about 0.731 x), not the identity.

    Deviations: none with the defaults on maps of more than one position and when ``groups``
    divides C. The standard deviation is the unbiased one (official ``Tensor.std``); on a 1x1
    map its divisor ``H W - 1`` is 0 and the official code gives NaN, here the divisor is 1
    (the biased std, 0 there: ``t = 0``, the gate is ``sigmoid(b_g)``);
    ``std='unbiased_nan'`` keeps the official NaN, ``std='biased'`` divides by ``H W``. The
    official code needs ``G`` to divide C (its reshape fails otherwise); here the module
    uses ``gcd(groups, C)`` groups (``groups`` itself when it divides C, e.g. the default 64
    at every ResNet width). The normalisation (pooling, sums, mean, std) is computed in
    ``promote_types(x.dtype, float32)``. The state-dict keys are the official
    ``SpatialGroupEnhance``'s (``weight``, ``bias``, shaped (1, G, 1, 1)).

    Args:
        in_channels (int): Channels C.
        groups (int): Groups G asked for (official: 64); ``gcd(groups, C)`` are used.
        eps (float): Added to the standard deviation (official: 1e-5).
        std (str): ``'unbiased'`` (official, divisor ``max(H W - 1, 1)``), ``'biased'``
            (divisor ``H W``) or ``'unbiased_nan'`` (divisor ``H W - 1``: the official NaN
            on 1x1 maps).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'spatial'
    paper = ('Li et al., Spatial Group-wise Enhance: Improving Semantic Feature Learning in '
             'Convolutional Networks, arXiv:1905.09646')
    paper_position = 'residual_end'
    _abbr_ = 'sge'

    def __init__(self,
                 in_channels: int,
                 groups: int = 64,
                 eps: float = 1e-5,
                 std: str = 'unbiased',
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.requested_groups = check_int(owner, 'groups', groups)
        self.groups = math.gcd(groups, in_channels)
        self.eps = check_positive_float(owner, 'eps', eps, allow_zero=True)
        self.std = check_choice(owner, 'std', std, ('unbiased', 'biased', 'unbiased_nan'))
        self.weight = nn.Parameter(torch.empty(1, self.groups, 1, 1))
        self.bias = nn.Parameter(torch.empty(1, self.groups, 1, 1))
        self.init_special()

    def init_special(self) -> None:
        """The official initialisation: ``weight`` 0 and ``bias`` 1 (gate ``sigmoid(1)``)."""
        nn.init.zeros_(self.weight)
        nn.init.ones_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        n, c, h, w = x.shape
        gate = self.group_gates(x)  # (N, G, H, W)
        y = x.reshape(n, self.groups, -1, h * w) * gate.reshape(n, self.groups, 1, h * w)
        return y.reshape(n, c, h, w)

    def normalised_similarity(self, x: torch.Tensor) -> torch.Tensor:
        """``t``: per group, the similarity of each position to the group's mean feature,
        normalised over the positions (N, G, H, W), in ``promote_types(x.dtype, float32)``."""
        n, c, h, w = x.shape
        groups = x.reshape(n * self.groups, -1, h * w).to(
            torch.promote_types(x.dtype, torch.float32))
        count = groups.shape[2]
        sim = (groups * groups.mean(2, keepdim=True)).sum(1)  # (N G, H W)
        centred = sim - sim.mean(1, keepdim=True)
        if self.std == 'biased':
            divisor = count
        elif self.std == 'unbiased':
            # max(count - 1, 1) without a comparison, so that a trace is valid for any size
            divisor = count - 1 + 1 // count
        else:
            divisor = count - 1
        std = (centred.square().sum(1, keepdim=True) / divisor).sqrt()
        return (centred / (std + self.eps)).reshape(n, self.groups, h, w)

    def group_gates(self, x: torch.Tensor) -> torch.Tensor:
        """The gates (N, G, H, W): ``sigmoid(weight * t + bias)``; group g's gate multiplies
        its C / G channels."""
        t = self.normalised_similarity(x)
        return torch.sigmoid(t * self.weight + self.bias).to(x.dtype)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``spatial_gate``: the gates of :meth:`group_gates` averaged over the groups (the
        mean gate over the channels, the groups being of equal size)."""
        gate = self.group_gates(x).mean(1, keepdim=True)
        return {'spatial_gate': spatial_map(gate, x.shape, 'spatial gate (mean over groups)')}

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, groups={self.groups}, eps={self.eps}, '
                f'std={self.std!r}')
