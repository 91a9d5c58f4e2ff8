"""Pooled self-attention (the basic attention module of STANet)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_int, reduced_channels


@register_model()
class PooledSelfAttention(AttentionModule):
    """Pooled self-attention, STANet's basic attention module (Chen and Shi, Remote Sensing
    2020, arXiv:2007.03078).

    ``p = AvgPool_ds(x)``; ``q, k = W_q p, W_k p`` (biased 1x1 convs C -> C/r),
    ``v = W_v p`` (C -> C); ``o_i = sum_j softmax_j(q_i^T k_j / sqrt(C/r)) v_j`` over the
    pooled positions; ``y = x + gamma * Up_ds(o)`` with ``gamma`` a scalar initialised to 0
    (the block starts as the identity). ``Up_ds`` repeats each pooled value over its ds x ds
    window (nearest, as the source) and is cropped to exactly H x W.
    Parameters: ``2 (C d + d) + C^2 + C + 1`` with ``d = C/r``.

    Deviations: pooling uses ``ceil_mode=True`` (a partial last window averages the positions
    it covers), so H, W need not be multiples of ds and maps smaller than ds work (the
    source's floor pooling and ``ds``-times upsampling crash there). The source defines
    ``gamma`` but adds ``o`` unscaled; here ``gamma`` is applied (identity at initialisation;
    ``init_weights`` re-zeroes it unless it loads a checkpoint). q, k and v share one conv
    ``qkv`` (same parameters as three).

    Args:
        in_channels (int): Channels C.
        ds (int): Pooling factor (window and stride); 1 disables pooling.
        reduction (int): Divisor r of the query/key width ``d = max(C // r, min_channels)``.
        min_channels (int): Floor of d.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'spatial'
    paper = ('Chen and Shi, A Spatial-Temporal Attention-Based Method and a New Dataset for '
             'Remote Sensing Image Change Detection, Remote Sensing 2020, arXiv:2007.03078')
    paper_position = 'late_stages'
    _abbr_ = 'pooled_sa'

    def __init__(self,
                 in_channels: int,
                 ds: int = 8,
                 reduction: int = 8,
                 min_channels: int = 1,
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        self.ds = check_int('PooledSelfAttention', 'ds', ds, 1)
        self.reduction = reduction
        self.key_channels = reduced_channels('PooledSelfAttention', in_channels, reduction,
                                             min_channels)
        self.qkv = nn.Conv2d(in_channels, 2 * self.key_channels + in_channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def init_special(self):
        nn.init.zeros_(self.gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        n, c, h, w = x.shape
        ds, d = self.ds, self.key_channels
        p = x if ds == 1 else F.avg_pool2d(x, ds, ds, ceil_mode=True, count_include_pad=False)
        ph, pw = p.shape[-2:]
        qkv = self.qkv(p).flatten(2).transpose(1, 2).unsqueeze(1)  # (N, 1, L, 2d + C) view
        q, k, v = qkv.split([d, d, c], dim=-1)
        o = F.scaled_dot_product_attention(q, k, v)  # one head, scale 1 / sqrt(d)
        o = (self.gamma.to(o.dtype) * o.squeeze(1)).transpose(1, 2).reshape(n, c, ph, pw)
        if ds > 1:  # nearest upsampling by ds (faster than F.interpolate), cropped to H x W
            o = o[:, :, :, None, :, None].expand(n, c, ph, ds, pw, ds)
            o = o.reshape(n, c, ph * ds, pw * ds)[:, :, :h, :w]
        return x + o

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, ds={self.ds}, '
                f'reduction={self.reduction}')
