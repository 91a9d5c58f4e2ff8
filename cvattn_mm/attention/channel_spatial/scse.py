"""Concurrent spatial and channel squeeze-and-excitation."""
from typing import Dict, Tuple

import torch
from mmcv.cnn import build_activation_layer

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, reduced_channels
from ..maps import AttentionMap, channel_map, spatial_map
from ..pointwise import PointwiseConv2d


@register_model()
class SCSE(AttentionModule):
    """Concurrent spatial and channel squeeze & excitation, scSE (Roy et al., MICCAI 2018,
    arXiv:1803.02579; IEEE TMI 2019, arXiv:1808.08127).

    ``cSE = x * g_c`` with ``g_c = sigmoid(W2 act(W1 GAP(x)))`` (biased 1x1 convs
    C -> C/r -> C) and ``sSE = x * g_s`` with ``g_s = sigmoid(conv1x1(x))`` (C -> 1, biased),
    combined element-wise: ``y = max(cSE, sSE)`` (``'max'``), ``cSE + sSE`` (``'add'``) or
    ``cSE * sSE / x = x * g_c * g_s`` (``'mul'``). The 1x1 convs are matrix products
    (:class:`~cvattn_mm.attention.pointwise.PointwiseConv2d`; for the sSE's C -> 1 conv its
    backward avoids oneDNN's slow one-output-channel convolution backward).
    Parameters, h = C/r: ``2 * C * h + h + C`` (cSE) plus ``C + 1`` (sSE).

    Deviations: none. ``'max'`` is the default (best in the TMI paper, used by the official
    code); ``'add'`` is the MICCAI paper's; r = 2 as in the official code.

    Args:
        in_channels (int): Channels C.
        reduction (int): Bottleneck divisor r; the hidden width is ``max(C // r, min_channels)``.
        combination (str): ``'max'``, ``'add'`` or ``'mul'``.
        min_channels (int): Floor of the hidden width.
        act_cfg (dict): Activation between the two layers of cSE.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Roy et al., Concurrent Spatial and Channel Squeeze & Excitation in Fully '
             'Convolutional Networks, MICCAI 2018, arXiv:1803.02579; Recalibrating Fully '
             'Convolutional Networks with Spatial and Channel Squeeze & Excitation Blocks, '
             'IEEE TMI 2019, arXiv:1808.08127')
    paper_position = 'residual_end'
    _abbr_ = 'scse'

    def __init__(self,
                 in_channels: int,
                 reduction: int = 2,
                 combination: str = 'max',
                 min_channels: int = 1,
                 act_cfg: dict = dict(type='ReLU'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        hidden = reduced_channels(owner, in_channels, reduction, min_channels)
        self.combination = check_choice(owner, 'combination', combination,
                                        ('max', 'add', 'mul'))
        self.reduction = reduction
        self.fc1 = PointwiseConv2d(in_channels, hidden)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = PointwiseConv2d(hidden, in_channels)
        self.spatial_conv = PointwiseConv2d(in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        g_c, g_s = self.gates(x)
        if self.combination == 'max':
            if torch.is_grad_enabled():
                # max(a, b) = b + relu(a - b): the same values (to rounding) with a backward
                # about 2.5x faster than torch.maximum's; the forward alone is faster below.
                return x * g_s + torch.relu(x * (g_c - g_s))
            return torch.maximum(x * g_c, x * g_s)
        if self.combination == 'add':
            return x * (g_c + g_s)
        return x * (g_c * g_s)

    def gates(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The cSE gate ``g_c`` (N, C, 1, 1) and the sSE gate ``g_s`` (N, 1, H, W)."""
        g_c = torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))
        return g_c, torch.sigmoid(self.spatial_conv(x))

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'channel_gate' (N, C), the cSE gate, and 'spatial_gate' (N, H, W), the sSE gate."""
        g_c, g_s = self.gates(x)
        return {'channel_gate': channel_map(g_c, 'cSE channel gate'),
                'spatial_gate': spatial_map(g_s, x.shape, 'sSE spatial gate')}

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, reduction={self.reduction}, '
                f'combination={self.combination!r}')
