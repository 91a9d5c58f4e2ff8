"""Convolutional Block Attention Module."""
from typing import Dict

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_odd, reduced_channels
from ..gating import pooled_gate
from ..map_norm import build_map_norm
from ..maps import AttentionMap, channel_map, spatial_map
from ..norm import norm_any_batch
from ..pointwise import PointwiseConv2d


@register_model()
class CBAM(AttentionModule):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018, arXiv:1807.06521).

    Channel gate, then spatial gate, no residual:
    ``x' = x * sigmoid(MLP(GAP(x)) + MLP(GMP(x)))`` with one shared ``MLP = W2 act(W1 .)``
    (biased 1x1 convs C -> C/r -> C), then
    ``y = x' * sigmoid(BN(conv_kxk([max_c(x'); mean_c(x')])))`` (2 -> 1 channels, no bias,
    padding (k - 1) / 2, so H x W is kept).
    Parameters, h = C/r: ``2 * C * h + h + C`` (channel) plus ``2 * k * k + 2`` (spatial,
    with BN as the norm).

    Deviations: none in the computation. As in the official code, the pooled maps are
    concatenated max first (the paper writes [avg; max]; the order only matters to load
    official weights) and the weight of the spatial gate's norm starts at zero (the official
    ResNet's initialisation: the spatial gate is 0.5 everywhere at step 0); the official BN
    momentum is 0.01, here ``norm_cfg``'s (pass ``momentum=0.01`` to match). In training, a
    batch norm that sees one value per channel (batch 1 of a 1x1 map) uses its running
    statistics instead of raising. The backward is hand-written
    (:func:`~cvattn_mm.attention.gating.pooled_gate`); the gradient of a max pool goes to one
    maximal element, as with the official code's ``max_pool2d`` and ``torch.max``
    (autograd's ``amax`` would split it between ties), and it is not twice differentiable.
    ``CVATTN_FAST_BACKWARD=0`` or
    :func:`cvattn_mm.attention.fast_backward.set_fast_backward` ``(False)`` runs plain
    autograd instead.

    Args:
        in_channels (int): Channels C.
        reduction (int): Bottleneck divisor r; the hidden width is ``max(C // r, min_channels)``.
        kernel_size (int): Odd kernel size k of the spatial gate's conv.
        use_channel (bool): Apply the channel gate.
        use_spatial (bool): Apply the spatial gate (``False`` is the paper's channel-only
            ablation).
        min_channels (int): Floor of the hidden width.
        norm_cfg (dict): Norm of the spatial gate.
        act_cfg (dict): Activation inside the channel MLP.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Woo et al., CBAM: Convolutional Block Attention Module, ECCV 2018, '
             'arXiv:1807.06521')
    paper_position = 'residual_end'
    _abbr_ = 'cbam'

    def __init__(self,
                 in_channels: int,
                 reduction: int = 16,
                 kernel_size: int = 7,
                 use_channel: bool = True,
                 use_spatial: bool = True,
                 min_channels: int = 1,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='ReLU'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.use_channel = check_choice(owner, 'use_channel', use_channel, (True, False))
        self.use_spatial = check_choice(owner, 'use_spatial', use_spatial, (True, False))
        if not (use_channel or use_spatial):
            raise ValueError(f'{owner}: use_channel and use_spatial are both False; '
                             'at least one gate must be used')
        self.reduction = reduction
        self.kernel_size = check_odd(owner, 'kernel_size', kernel_size)
        if use_channel:
            hidden = reduced_channels(owner, in_channels, reduction, min_channels)
            self.fc1 = PointwiseConv2d(in_channels, hidden)
            self.act = build_activation_layer(act_cfg)
            self.fc2 = PointwiseConv2d(hidden, in_channels)
        if use_spatial:
            self.spatial_conv = nn.Conv2d(
                2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
            self.spatial_norm = build_map_norm(norm_cfg, 1)
        self.init_special()

    def init_special(self) -> None:
        norm = getattr(self, 'spatial_norm', None)
        if norm is not None and getattr(norm, 'weight', None) is not None:
            nn.init.zeros_(norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.use_channel:
            x = pooled_gate(x, self.channel_gate, (self.fc1, self.act, self.fc2), (2, 3),
                            ('mean', 'max'))
        if self.use_spatial:
            x = pooled_gate(x, self.spatial_gate, (self.spatial_conv, self.spatial_norm), (1,),
                            ('max', 'mean'))
        return x

    def channel_gate(self, avg: torch.Tensor, max_: torch.Tensor) -> torch.Tensor:
        """``M_c`` (N, C, 1, 1) of the average- and max-pooled (N, C, 1, 1) descriptors: the
        shared MLP on both as one batch of 2N vectors (one matrix product per layer), summed."""
        n = avg.shape[0]
        logits = self.fc2(self.act(self.fc1(torch.cat((avg, max_)))))  # (2N, C, 1, 1)
        return torch.sigmoid(logits[:n] + logits[n:])

    def spatial_gate(self, max_: torch.Tensor, avg: torch.Tensor) -> torch.Tensor:
        """``M_s`` (N, 1, H, W) of the channel max and mean (N, 1, H, W)."""
        logits = self.spatial_conv(torch.cat([max_, avg], 1))
        return torch.sigmoid(norm_any_batch(self.spatial_norm, logits))

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'channel_gate' (N, C) and 'spatial_gate' (N, H, W), each present when its gate is
        used; the spatial gate is computed on the channel-gated input, as in the forward."""
        maps = {}
        if self.use_channel:
            gate = self.channel_gate(x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True))
            maps['channel_gate'] = channel_map(gate, 'channel gate')
            x = x * gate
        if self.use_spatial:
            gate = self.spatial_gate(x.amax(1, keepdim=True), x.mean(1, keepdim=True))
            maps['spatial_gate'] = spatial_map(gate, x.shape, 'spatial gate')
        return maps

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, reduction={self.reduction}, '
                f'kernel_size={self.kernel_size}, use_channel={self.use_channel}, '
                f'use_spatial={self.use_spatial}')
