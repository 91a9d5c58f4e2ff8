"""Large Kernel Attention (VAN)."""
import math
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import register_model
from ..base import AttentionModule
from ..maps import AttentionMap, weights_map


class _LargeKernelBase(AttentionModule):
    """Shared part of :class:`LKA` and :class:`LSKA`: the optional VAN ``Attention`` wrapper
    (``proj_1``, GELU, the large kernel attention, ``proj_2``, plus the input), the VAN
    initialisation and the maps. Subclasses build ``conv1`` and implement
    :meth:`depthwise`."""

    family = 'spatial'
    paper_position = 'own_block'
    fallback_position = 'residual_end'

    def _build_projection(self, with_projection: bool) -> None:
        self.with_projection = bool(with_projection)
        c = self.in_channels
        self.conv1 = nn.Conv2d(c, c, 1)
        if self.with_projection:
            self.proj_1 = nn.Conv2d(c, c, 1)
            self.proj_2 = nn.Conv2d(c, c, 1)

    def init_special(self) -> None:
        """VAN's ``_init_weights`` for every conv: weight ~ N(0, 2 / fan_out) with
        ``fan_out = kh kw C_out / groups``, bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)

    def depthwise(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def gating_input(self, x: torch.Tensor) -> torch.Tensor:
        """``u``: the tensor the attention reweights (``x``; ``GELU(proj_1 x)`` with the
        projection wrapper)."""
        if self.with_projection:
            return F.gelu(self.proj_1(x))
        return x

    def attention(self, u: torch.Tensor) -> torch.Tensor:
        """``attn = conv1(depthwise(u))`` (N, C, H, W): the unbounded weights (no sigmoid)
        that multiply ``u``."""
        return self.conv1(self.depthwise(u))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        u = self.gating_input(x)
        out = u * self.attention(u)
        if self.with_projection:
            out = self.proj_2(out) + x
        return out

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``attention_magnitude``: ``|attn|`` averaged over the channels and normalised to
        sum 1 over the positions (a ``weights`` map: ``attn`` is unbounded and signed, LKA has
        no sigmoid, so it is shown as each position's share of the attention magnitude)."""
        attn = self.attention(self.gating_input(x))
        n, _, h, w = attn.shape
        magnitude = attn.abs().mean(1).reshape(n, h * w)
        share = magnitude / magnitude.sum(1, keepdim=True).clamp_min(torch.finfo(
            magnitude.dtype).tiny)
        return {'attention_magnitude': weights_map(
            share, (h, w), 'large kernel attention |attn| (share per position)')}

@register_model()
class LKA(_LargeKernelBase):
    """Large Kernel Attention (Guo et al., Visual Attention Network, arXiv:2202.09741).

    A 21x21 receptive field from three convolutions, all with bias:
    ``attn = conv1(conv_spatial(conv0(x)))`` with ``conv0`` a depthwise 5x5 (padding 2),
    ``conv_spatial`` a depthwise 7x7 of dilation 3 (padding 9) and ``conv1`` a 1x1 C -> C;
    ``out = x * attn`` (element-wise, no sigmoid). Parameters: ``C (25 + 1) + C (49 + 1) +
    C (C + 1) = C^2 + 77 C`` (85,248 at C = 256); ``with_projection=True`` adds
    ``2 (C^2 + C)``.

    Paper position: only inside VAN's own block (``own_block``: in VAN's ``Attention``,
    ``proj_1`` 1x1, GELU, LKA, ``proj_2`` 1x1, plus the input, in a BatchNorm pre-norm block).
    ``at='paper'`` inserts it at ``fallback_position = 'residual_end'``.

    Deviations: none (the official ``LKA`` of Visual-Attention-Network/VAN-Classification
    ``models/van.py`` @e19779b: same state-dict keys ``conv0``, ``conv_spatial``, ``conv1``;
    max abs diff 0 in float64). ``with_projection=True`` (default False) adds the official
    ``Attention`` wrapper around it (keys ``proj_1``, ``proj_2``). The initialisation is
    VAN's (weights N(0, 2 / fan_out), biases 0); at init the output is not ``x``. Not at the
    paper's position when inserted into a ResNet (see above).

    Args:
        in_channels (int): Channels C.
        with_projection (bool): Wrap in VAN's ``Attention`` (1x1, GELU, LKA, 1x1, + x).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    paper = 'Guo et al., Visual Attention Network, CVMJ 2023, arXiv:2202.09741'
    _abbr_ = 'lka'

    def __init__(self, in_channels: int, with_projection: bool = False, init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        c = self.in_channels
        self.conv0 = nn.Conv2d(c, c, 5, padding=2, groups=c)
        self.conv_spatial = nn.Conv2d(c, c, 7, padding=9, groups=c, dilation=3)
        self._build_projection(with_projection)
        self.init_special()

    def depthwise(self, u: torch.Tensor) -> torch.Tensor:
        """The depthwise 5x5 then the depthwise dilated 7x7."""
        return self.conv_spatial(self.conv0(u))

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, with_projection={self.with_projection}'
