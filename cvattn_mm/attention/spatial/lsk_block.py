"""Large selective kernel block of LSKNet."""
import math
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_divisible, check_int
from ..maps import AttentionMap, spatial_map


@register_model()
class LSKBlock(AttentionModule):
    """Large selective kernel block (Li et al., ICCV 2023, arXiv:2303.09030).

    Two depth-wise large kernels in sequence, ``a1 = DW5x5(x)`` (padding 2) and
    ``a2 = DW7x7_dilation3(a1)`` (padding 9), both with bias; each is reduced by a 1x1 conv
    C -> C/2 (bias): ``b1``, ``b2``. Spatial selection: ``m = [mean_c([b1; b2]);
    max_c([b1; b2])]`` (2 maps), ``s = sigmoid(Conv7x7_{2->2}(m))`` (padding 3, bias), one
    sigmoid map per branch (not a softmax across branches); ``attn = Conv1x1_{C/2->C}(s0 b1 +
    s1 b2)`` (bias) and ``y = x * attn`` (no sigmoid on ``attn``: an unbounded gate).
    ``with_projection=True`` adds LSKNet's ``Attention`` wrapper:
    ``y = x + proj2(LSK(GELU(proj1(x))))`` with 1x1 C -> C convs with bias.

    Parameters: ``26C + 50C + 2 (C^2/2 + C/2) + (C^2/2 + C) + (2*2*49 + 2)`` (bare), i.e.
    ``1.5 C^2 + 78 C + 198``, 118,470 at C = 256; the wrapper adds ``2 (C^2 + C)``
    (250,054 at C = 256). Paper position: inside LSKNet's own VAN-style block only
    (``own_block``); ``at='paper'`` inserts it at ``residual_end``.

    Initialisation: as LSKNet's backbone initialises its convs, every conv weight is drawn
    from ``N(0, 2 / fan_out)`` with ``fan_out = k_h k_w C_out / groups`` and every bias is 0.

    Deviations: none with the defaults (the bare ``LSKblock`` of the official code, state-dict
    keys included); ``with_projection=True`` is the official ``Attention`` (keys ``proj_1``,
    ``proj_2``, the block under ``spatial_gating_unit`` is flattened here). LSKNet's block
    also has a BN pre-norm, layer scale 1e-2 and an MLP; those belong to the host
    architecture and are not part of this module.

    Args:
        in_channels (int): Channels C (even).
        with_projection (bool): Add the 1x1 projections, GELU and residual of LSKNet's
            ``Attention``.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'spatial'
    paper = ('Li et al., Large Selective Kernel Network for Remote Sensing Object Detection, '
             'ICCV 2023, arXiv:2303.09030')
    paper_position = 'own_block'
    fallback_position = 'residual_end'
    _abbr_ = 'lsk'

    def __init__(self, in_channels: int, with_projection: bool = False, init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        check_int(owner, 'in_channels', in_channels)
        check_divisible(owner, 'in_channels', in_channels, 2, 'the two branches')
        if not isinstance(with_projection, bool):
            raise ValueError(f'{owner}: with_projection must be a bool, got {with_projection!r}')
        c, half = in_channels, in_channels // 2
        self.with_projection = with_projection
        if with_projection:
            self.proj_1 = nn.Conv2d(c, c, 1)
            self.proj_2 = nn.Conv2d(c, c, 1)
        self.conv0 = nn.Conv2d(c, c, 5, padding=2, groups=c)
        self.conv_spatial = nn.Conv2d(c, c, 7, padding=9, groups=c, dilation=3)
        self.conv1 = nn.Conv2d(c, half, 1)
        self.conv2 = nn.Conv2d(c, half, 1)
        self.conv_squeeze = nn.Conv2d(2, 2, 7, padding=3)
        self.conv = nn.Conv2d(half, c, 1)
        self.init_special()

    def init_special(self) -> None:
        """LSKNet's conv initialisation: ``N(0, 2 / fan_out)`` weights, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0., math.sqrt(2. / fan_out))
                nn.init.zeros_(m.bias)

    def branches(self, u: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The two reduced branches ``b1`` (5x5) and ``b2`` (5x5 then 7x7 dilation 3),
        each (N, C/2, H, W)."""
        a1 = self.conv0(u)
        a2 = self.conv_spatial(a1)
        return self.conv1(a1), self.conv2(a2)

    def selection(self, b1: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
        """The spatial selection ``s`` (N, 2, H, W): sigmoid of a 7x7 conv of the channel
        mean and max of ``[b1; b2]``."""
        both = torch.cat((b1, b2), 1)
        pooled = torch.cat((both.mean(1, keepdim=True), both.amax(1, keepdim=True)), 1)
        return torch.sigmoid(self.conv_squeeze(pooled))

    def gate(self, u: torch.Tensor) -> torch.Tensor:
        """The unbounded gate ``attn`` (N, C, H, W) that multiplies ``u``."""
        b1, b2 = self.branches(u)
        s = self.selection(b1, b2)
        return self.conv(b1 * s[:, :1] + b2 * s[:, 1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if not self.with_projection:
            return x * self.gate(x)
        u = F.gelu(self.proj_1(x))
        return x + self.proj_2(u * self.gate(u))

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``select_small``, ``select_large``: the sigmoid selection maps of the 5x5 branch
        and of the large (5x5 then dilated 7x7) branch."""
        u = F.gelu(self.proj_1(x)) if self.with_projection else x
        s = self.selection(*self.branches(u))
        return {'select_small': spatial_map(s[:, :1], x.shape, 'selection, 5x5 branch'),
                'select_large': spatial_map(s[:, 1:], x.shape,
                                            'selection, 5x5 + dilated 7x7 branch')}

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, with_projection={self.with_projection}'
