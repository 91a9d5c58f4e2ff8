"""Global Attention Mechanism."""
from typing import Dict

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_odd, reduced_channels
from ..map_norm import build_map_norm
from ..maps import AttentionMap, channel_map, spatial_map
from ..norm import norm_any_batch
from ..pointwise import PointwiseConv2d


@register_model()
class GAM(AttentionModule):
    """Global Attention Mechanism (Liu, Shao and Hoffmann, 2021, arXiv:2112.05561).

    Channel submodule, then spatial submodule, no pooling anywhere and no residual. Channel:
    the map permuted to (N, H, W, C) and a two-layer MLP over the channels of every pixel
    (biased, C -> C/r -> C, act between), ``M_c = sigmoid(MLP(x))`` of x's size;
    ``x1 = x * M_c``. Spatial: ``M_s = sigmoid(BN(conv_k(act(BN(conv_k(x1))))))`` with two
    biased k x k convs C -> C/r -> C (padding (k - 1) / 2); ``y = x1 * M_s``. The per-pixel
    MLP is a 1x1 conv pair here (:class:`~cvattn_mm.attention.pointwise.PointwiseConv2d`,
    the same function as ``nn.Linear`` on the permuted map).
    Parameters, h = C/r, k = 7: ``2 C h + h + C`` (MLP) ``+ 2 k^2 C h + h + C`` (convs)
    ``+ 2 h + 2 C`` (BNs) ``= 100 C^2 / r + 4 C / r + 4 C``: **1,639,680 at C = 256, r = 4**.
    Heavy: ResNet-50 with GAM (r = 4) after ``bn3`` of all 16 blocks has 528,621,352
    parameters (the plain model 25,557,032; ``cvattn-mm insertions`` prints each module's
    count), and the two 7x7 convs cost ``98 C^2 H W / r`` multiply-adds (5.0 G for one
    256 x 56 x 56 map). With r = 16 the 16 modules add 125,811,392 parameters (a CIFAR-100
    ResNet-50 then has the 149.5 M that circulates for ResNet-50 + GAM; which r the paper's
    tables use is *unconfirmed*).
    Paper position: *unconfirmed*; ``residual_end`` (after the residual branch's last norm,
    before the addition) by default, where the circulating parameter counts put it.

    There is no official code; the defaults follow the most used public copy
    (z1069614715/objectdetection_script ``cv-attention/GAM.py``, ``GAM_Attention``, r = 4,
    biased convs before the BNs, PyTorch's default initialisation).

    Deviations: none in the computation with the defaults. Not implemented: the "group
    convolution with channel shuffle" that the paper reportedly uses in the spatial
    submodule of ResNet-50 to limit its parameters (*unconfirmed*: neither the number of
    groups nor the place of the shuffle could be pinned to the paper; some copies add 4
    groups and a shuffle of the spatial map), so only the dense spatial submodule is offered.
    The hidden width is ``max(C // r, min_channels)`` (the copy's ``int(C / r)`` is 0 for
    C < r). In training, a batch norm that sees one value per channel (batch 1 of a 1x1 map)
    uses its running statistics instead of raising. The 1x1-conv weights are the copy's
    Linear weights reshaped to (out, in, 1, 1).

    Args:
        in_channels (int): Channels C.
        reduction (int): Divisor r of both submodules; the hidden width is
            ``max(C // r, min_channels)``.
        kernel_size (int): Odd kernel size k of the spatial convs (7).
        min_channels (int): Floor of the hidden width.
        norm_cfg (dict): Norm after each spatial conv.
        act_cfg (dict): Activation inside the MLP and between the spatial convs.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Liu, Shao and Hoffmann, Global Attention Mechanism: Retain Information to '
             'Enhance Channel-Spatial Interactions, 2021, arXiv:2112.05561')
    paper_position = 'residual_end'
    _abbr_ = 'gam'

    def __init__(self,
                 in_channels: int,
                 reduction: int = 4,
                 kernel_size: int = 7,
                 min_channels: int = 1,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='ReLU'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        hidden = reduced_channels(owner, in_channels, reduction, min_channels)
        self.kernel_size = check_odd(owner, 'kernel_size', kernel_size)
        self.reduction = reduction
        self.hidden_channels = hidden
        self.channel_fc1 = PointwiseConv2d(in_channels, hidden)
        self.channel_act = build_activation_layer(act_cfg)
        self.channel_fc2 = PointwiseConv2d(hidden, in_channels)
        padding = (kernel_size - 1) // 2
        self.spatial_conv1 = nn.Conv2d(in_channels, hidden, kernel_size, padding=padding)
        self.spatial_norm1 = build_map_norm(norm_cfg, hidden)
        self.spatial_act = build_activation_layer(act_cfg)
        self.spatial_conv2 = nn.Conv2d(hidden, in_channels, kernel_size, padding=padding)
        self.spatial_norm2 = build_map_norm(norm_cfg, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x1 = x * self.channel_gate(x)
        return x1 * self.spatial_gate(x1)

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """``M_c`` (N, C, H, W): the per-pixel channel MLP of ``x``, through a sigmoid."""
        return torch.sigmoid(self.channel_fc2(self.channel_act(self.channel_fc1(x))))

    def spatial_gate(self, x1: torch.Tensor) -> torch.Tensor:
        """``M_s`` (N, C, H, W) of the channel-gated map ``x1``."""
        h = self.spatial_act(norm_any_batch(self.spatial_norm1, self.spatial_conv1(x1)))
        return torch.sigmoid(norm_any_batch(self.spatial_norm2, self.spatial_conv2(h)))

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """Both gates are (N, C, H, W): 'channel_gate', ``M_c`` averaged over the positions
        (N, C); 'channel_gate_positions', ``M_c`` averaged over C (N, H, W); 'spatial_gate',
        ``M_s`` averaged over C (N, H, W)."""
        m_c = self.channel_gate(x)
        m_s = self.spatial_gate(x * m_c)
        return {
            'channel_gate': channel_map(m_c.mean((2, 3)), 'channel gate M_c, mean over positions'),
            'channel_gate_positions': spatial_map(m_c, x.shape, 'channel gate M_c, mean over C'),
            'spatial_gate': spatial_map(m_s, x.shape, 'spatial gate M_s, mean over C'),
        }

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, reduction={self.reduction}, '
                f'kernel_size={self.kernel_size}, hidden_channels={self.hidden_channels}')
