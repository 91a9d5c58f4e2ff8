"""Efficient Multi-Scale Attention (EMA)."""
from typing import Dict

import torch
import torch.nn as nn

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_divisible, check_int
from ..maps import AttentionMap, spatial_map


@register_model()
class EfficientMultiScaleAttention(AttentionModule):
    """Efficient Multi-Scale Attention with cross-spatial learning (Ouyang et al., ICASSP
    2023, arXiv:2305.13563).

    The channels are split into ``G = factor`` groups of ``c = C / G`` consecutive channels,
    each group ``g`` (c, H, W) treated as a sample. The 1x1 branch: ``g`` is averaged along W
    (``z_h``, (c, H)) and along H (``z_w``, (c, W)); one biased 1x1 conv ``c -> c`` on their
    concatenation along the position axis, split back, and
    ``x1 = GN(g * sigmoid(z_h')[:, :, None] * sigmoid(z_w')[:, None, :])`` with a per-channel
    affine GroupNorm (c groups of one channel). The 3x3 branch: ``x2 = conv3x3(g)`` (biased,
    padding 1). Cross-spatial learning:
    ``m = softmax_c(GAP(x1)) . x2 + softmax_c(GAP(x2)) . x1`` (a (H, W) map per group, the
    channel softmaxes dotted with every position's c-vector), and ``y = g * sigmoid(m)``:
    one gate per group and position, shared by the group's c channels.
    Parameters: ``(c^2 + c)`` (1x1) ``+ (9 c^2 + c)`` (3x3) ``+ 2 c`` (GN)
    ``= 10 c^2 + 4 c`` with ``c = C / G`` (672 at C = 256, G = 32). The layers are shared by
    all groups.

    Paper position: ``residual_end``. The author's reply in the official repository's issue
    #2 puts it behind the last two C3 layers of the YOLOv5s backbone and otherwise "the same
    as" NAM and Coordinate Attention; the exact ResNet blocks are unconfirmed (the official
    README's +0.14M for its CIFAR ResNet-50 does not match every block's residual end,
    +198,368 parameters by the formula).

    Deviations: none with the defaults (the official ``EMA`` class of
    ``YOLOonMe/EMA-attention-module`` at afc37ec, submodule names ``conv1x1``, ``conv3x3``,
    ``gn`` as there, so its checkpoints load). The official code only asserts
    ``C // G > 0``; here ``C % G != 0`` or ``C < G`` raise a ValueError. Its unused ``c2``
    argument (a YOLO interface) is not taken. For half-precision inputs the channel softmaxes
    are computed in float32 and cast back. On a 1x1 map the per-channel GN returns its bias
    (as in the official code).

    Args:
        in_channels (int): Channels C, a multiple of ``factor``.
        factor (int): Number of groups G (official name and default: 32).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Ouyang et al., Efficient Multi-Scale Attention Module with Cross-Spatial '
             'Learning, ICASSP 2023, arXiv:2305.13563')
    paper_position = 'residual_end'
    _abbr_ = 'ema_ms'

    def __init__(self, in_channels: int, factor: int = 32, init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        check_int(owner, 'in_channels', in_channels)
        self.factor = check_int(owner, 'factor', factor)
        if in_channels < factor:
            raise ValueError(f'{owner}: in_channels={in_channels} must be at least '
                             f'factor={factor} (one channel per group)')
        check_divisible(owner, 'in_channels', in_channels, factor, 'factor')
        width = in_channels // factor
        self.group_channels = width
        self.conv1x1 = nn.Conv2d(width, width, 1)
        self.conv3x3 = nn.Conv2d(width, width, 3, padding=1)
        self.gn = nn.GroupNorm(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        n, c, h, w = x.shape
        gate = self.gate(x)  # (N, G, H, W)
        groups = x.reshape(n, self.factor, c // self.factor, h, w)
        return (groups * gate[:, :, None]).reshape(n, c, h, w)

    def branches(self, x: torch.Tensor):
        """The grouped input ``g`` (N G, c, H, W) and the outputs ``x1`` (1x1 branch, after
        the GN) and ``x2`` (3x3 branch) of the same shape."""
        n, c, h, w = x.shape
        g = x.reshape(n * self.factor, c // self.factor, h, w)
        z_h = g.mean(3, keepdim=True)  # (NG, c, H, 1)
        z_w = g.mean(2, keepdim=True).transpose(2, 3)  # (NG, c, W, 1)
        z = self.conv1x1(torch.cat((z_h, z_w), 2))
        a_h = torch.sigmoid(z[:, :, :h])  # (NG, c, H, 1)
        a_w = torch.sigmoid(z[:, :, h:]).transpose(2, 3)  # (NG, c, 1, W)
        x1 = self.gn(g * a_h * a_w)
        x2 = self.conv3x3(g)
        return g, x1, x2

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The gate ``sigmoid(m)`` (N, G, H, W) that multiplies each group's channels."""
        n, _, h, w = x.shape
        _, x1, x2 = self.branches(x)
        dtype = torch.promote_types(x1.dtype, torch.float32)
        s1 = torch.softmax(x1.mean((2, 3)).to(dtype), 1).to(x2.dtype)  # (NG, c)
        s2 = torch.softmax(x2.mean((2, 3)).to(dtype), 1).to(x1.dtype)
        m = (torch.matmul(s1[:, None], x2.flatten(2)) + torch.matmul(s2[:, None], x1.flatten(2)))
        return torch.sigmoid(m).reshape(n, self.factor, h, w)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``gate``: the gate of :meth:`gate` averaged over the G groups (N, H, W)."""
        return {'gate': spatial_map(self.gate(x), x.shape, 'gate (mean over groups)')}

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, factor={self.factor}'
