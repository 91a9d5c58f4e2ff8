"""Bottleneck Attention Module."""
from typing import Dict, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer, build_norm_layer

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_int, reduced_channels
from ..maps import AttentionMap, channel_map, spatial_map
from ..norm import norm_any_batch
from ..pointwise import PointwiseConv2d


@register_model()
class BAM(AttentionModule):
    """Bottleneck Attention Module (Park et al., BMVC 2018, arXiv:1807.06514).

    ``y = x * (1 + sigmoid(Mc(x) + Ms(x)))`` (``fusion='add'``, the paper) or
    ``y = x * (1 + sigmoid(Mc(x) * Ms(x)))`` (``fusion='mul'``, the official code), with the
    channel branch ``Mc = W2 act(BN(W1 GAP(x)))`` (C -> C/r -> C, C x 1 x 1) and the spatial
    branch ``Ms = conv1x1(f_n(...f_1(f_0(x))))`` (1 x H x W), where ``f_0`` is a 1x1 conv
    C -> C/r and ``f_1..f_n`` (n = ``num_dilated``) are 3x3 convs with dilation d and padding
    d (which keeps every H x W), each followed by BN and act; the last 1x1 conv maps C/r -> 1.
    Parameters, h = C/r: ``2 * C * h + C + 2 * h`` (channel) plus
    ``C * h + 2 * h + n * (9 * h * h + 2 * h) + h + 1`` (spatial), with BN as the norm.

    Deviations: the convs/FC followed by a norm have no bias (a bias before a batch norm is
    cancelled by it; the official code has them: ``(2 + n) * h`` more parameters). The
    official code pools with a square ``H x H`` window (wrong on non-square maps); here GAP.
    In training, a batch norm that sees one value per channel (batch 1 in the channel branch,
    or batch 1 of a 1x1 map) uses its running statistics instead of raising.

    Args:
        in_channels (int): Channels C.
        reduction (int): Bottleneck divisor r; the hidden width is ``max(C // r, min_channels)``.
        dilation (int): Dilation d (and padding) of the 3x3 convs of the spatial branch.
        num_dilated (int): Number n of dilated 3x3 convs.
        fusion (str): ``'add'`` (paper) or ``'mul'`` (official code) of the two branches.
        min_channels (int): Floor of the hidden width.
        norm_cfg (dict): Norm after each hidden layer.
        act_cfg (dict): Activation after each norm.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Park et al., BAM: Bottleneck Attention Module, BMVC 2018, arXiv:1807.06514')
    paper_position = 'between_stages'
    _abbr_ = 'bam'

    def __init__(self,
                 in_channels: int,
                 reduction: int = 16,
                 dilation: int = 4,
                 num_dilated: int = 2,
                 fusion: str = 'add',
                 min_channels: int = 1,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='ReLU'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        hidden = reduced_channels(owner, in_channels, reduction, min_channels)
        self.dilation = check_int(owner, 'dilation', dilation, 1)
        self.num_dilated = check_int(owner, 'num_dilated', num_dilated, 0)
        self.fusion = check_choice(owner, 'fusion', fusion, ('add', 'mul'))
        self.reduction = reduction

        self.channel_fc1 = PointwiseConv2d(in_channels, hidden, bias=False)
        self.channel_norm = build_norm_layer(norm_cfg, hidden)[1]
        self.channel_act = build_activation_layer(act_cfg)
        self.channel_fc2 = PointwiseConv2d(hidden, in_channels)

        convs = [nn.Conv2d(in_channels, hidden, 1, bias=False)]
        convs += [
            nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation, bias=False)
            for _ in range(num_dilated)
        ]
        self.spatial_convs = nn.ModuleList(convs)
        self.spatial_norms = nn.ModuleList(
            build_norm_layer(norm_cfg, hidden)[1] for _ in range(num_dilated + 1))
        self.spatial_acts = nn.ModuleList(
            build_activation_layer(act_cfg) for _ in range(num_dilated + 1))
        self.spatial_out = nn.Conv2d(hidden, 1, 1)

    def branch_logits(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The channel logits ``Mc`` (N, C, 1, 1) and the spatial logits ``Ms`` (N, 1, H, W)."""
        mc = self.channel_act(norm_any_batch(self.channel_norm,
                                             self.channel_fc1(x.mean((2, 3), keepdim=True))))
        mc = self.channel_fc2(mc)
        ms = x
        # Sequential layers of one branch (not parallel branches): nothing to batch.
        for conv, norm, act in zip(self.spatial_convs, self.spatial_norms, self.spatial_acts,
                                   strict=True):
            ms = act(norm_any_batch(norm, conv(ms)))
        return mc, self.spatial_out(ms)

    def fuse(self, mc: torch.Tensor, ms: torch.Tensor) -> torch.Tensor:
        """The attention logits (N, C, H, W) of the branch logits: ``Mc + Ms`` or ``Mc * Ms``."""
        return mc + ms if self.fusion == 'add' else mc * ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return x + x * torch.sigmoid(self.fuse(*self.branch_logits(x)))

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'channel_gate' ``sigmoid(Mc)`` (N, C), 'spatial_gate' ``sigmoid(Ms)`` (N, H, W) and
        'combined_gate', the applied ``sigmoid(fuse(Mc, Ms))`` averaged over C (N, H, W)."""
        mc, ms = self.branch_logits(x)
        op = '+' if self.fusion == 'add' else '*'
        return {
            'channel_gate': channel_map(torch.sigmoid(mc), 'channel branch sigmoid(Mc)'),
            'spatial_gate': spatial_map(torch.sigmoid(ms), x.shape,
                                        'spatial branch sigmoid(Ms)'),
            'combined_gate': spatial_map(torch.sigmoid(self.fuse(mc, ms)), x.shape,
                                         f'sigmoid(Mc {op} Ms), mean over C'),
        }

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, reduction={self.reduction}, '
                f'dilation={self.dilation}, num_dilated={self.num_dilated}, '
                f'fusion={self.fusion!r}')
