"""Pooled self-attention (the basic attention module of STANet)."""
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_int, reduced_channels
from ..maps import AttentionMap, query_weight_maps


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
        owner = type(self).__name__
        self.ds = check_int(owner, 'ds', ds, 1)
        self.reduction = reduction
        self.key_channels = reduced_channels(owner, in_channels, reduction, min_channels)
        self.qkv = nn.Conv2d(in_channels, 2 * self.key_channels + in_channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def init_special(self):
        nn.init.zeros_(self.gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        n, c, h, w = x.shape
        ds = self.ds
        p = self.pool(x)
        ph, pw = p.shape[-2:]
        q, k, v = (t.unsqueeze(1) for t in self.queries_keys_values(p))  # (N, 1, L, .)
        o = F.scaled_dot_product_attention(q, k, v)  # one head, scale 1 / sqrt(d)
        o = (self.gamma.to(o.dtype) * o.squeeze(1)).transpose(1, 2).reshape(n, c, ph, pw)
        if ds > 1:  # nearest upsampling by ds (faster than F.interpolate), cropped to H x W
            o = o[:, :, :, None, :, None].expand(n, c, ph, ds, pw, ds)
            o = o.reshape(n, c, ph * ds, pw * ds)[:, :, :h, :w]
        return x + o

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Average pooling by ``ds`` (ceil mode): (N, C, H, W) -> (N, C, H_p, W_p)."""
        if self.ds == 1:
            return x
        return F.avg_pool2d(x, self.ds, self.ds, ceil_mode=True, count_include_pad=False)

    def queries_keys_values(self, p: torch.Tensor
                            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys (N, L, d) and values (N, L, C) of the pooled map ``p`` (views of
        one ``qkv`` output, L = H_p W_p)."""
        d = self.key_channels
        return self.qkv(p).flatten(2).transpose(1, 2).split([d, d, p.shape[1]], dim=-1)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'centre_query' and 'mean_over_queries' (N, H_p, W_p): the softmax over the pooled
        positions of the centre query and its mean over the queries. The forward computes
        the same weights inside ``scaled_dot_product_attention``."""
        p = self.pool(x)
        q, k, _ = self.queries_keys_values(p)
        attn = torch.bmm(q, k.transpose(1, 2)).mul(self.key_channels**-0.5).softmax(-1)
        return query_weight_maps(attn, p.shape[2:], p.shape[2:], 'softmax')

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, ds={self.ds}, '
                f'reduction={self.reduction}')
