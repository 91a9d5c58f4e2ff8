"""Recurrent criss-cross attention (CCNet)."""
from typing import Dict, Tuple

import torch
import torch.nn as nn

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_int, reduced_channels
from ..maps import AttentionMap, weights_map


@register_model()
class RCCA(AttentionModule):
    """Recurrent criss-cross attention (Huang et al., CCNet, ICCV 2019 / TPAMI 2020,
    arXiv:1811.11721).

    One criss-cross pass (CCA): ``Q, K = W_q x + b_q, W_k x + b_k`` (1x1 convs ``C -> d``,
    ``d = C / 8``), ``V = W_v x + b_v`` (1x1 conv ``C -> C``). The query at (i, j) attends to
    the keys of its column and of its row: the logits ``e_H(i, j, i') = Q(i, j) . K(i', j)``
    for every ``i' != i`` and ``e_W(i, j, j') = Q(i, j) . K(i, j')`` for every ``j'`` (the
    centre is counted once, through the row), one softmax over the ``H + W`` logits,
    ``out(i, j) = sum_i' a_H(i, j, i') V(i', j) + sum_j' a_W(i, j, j') V(i, j')`` and
    ``y = gamma out + x``. RCCA applies the same CCA ``recurrence`` times (shared weights):
    ``x_{t+1} = CCA(x_t)``; with R = 2 every position reaches every other one.
    Parameters: ``2 (C d + d) + C^2 + C + 1`` (``1.25 C^2 + 1.25 C + 1`` for C divisible by
    8), independent of R. Paper position: CCNet's segmentation head (after a 3x3 conv
    ``C -> C/4`` with BN on the dilated ResNet's output); as a backbone plug-in, after the
    last two stages (``late_stages``, like the non-local block).

    ``gamma`` starts at zero (official), so the module is the identity at initialisation; the
    convs keep PyTorch's default initialisation, as in the official code. The state-dict keys
    are the official ``CrissCrossAttention``'s (``query_conv``, ``key_conv``, ``value_conv``,
    ``gamma``), so an official ``cca.*`` state dict loads as is.

    Deviations: none in the computation with the defaults. The official code (and mmcv's
    ``CrissCrossAttention``) masks the column's centre by adding a ``-inf`` diagonal built
    with ``.cuda()``; here a masked fill on the logits' device (the same softmax). The
    logits and the softmax are computed in ``promote_types(x.dtype, float32)`` (the official
    code in the input's dtype; equal in float32 and float64). The default R = 2 is the
    paper's and the README's best model; the official training script's default is
    ``--recurrence 0`` (``recurrence=1`` gives one pass, mmcv's module). ``d`` is
    ``max(C // reduction, min_channels)``: the official ``C // 8`` is 0 for C < 8, where
    ours needs ``reduction <= C`` or a ``min_channels`` floor. As a plug-in the module sits
    in the backbone (``late_stages``), not in the paper's head.

    Args:
        in_channels (int): Channels C.
        recurrence (int): Number R of criss-cross passes with shared weights (>= 1).
        reduction (int): Divisor of the query/key width ``d`` (official: 8).
        min_channels (int): Floor of ``d``.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'spatial'
    paper = ('Huang et al., CCNet: Criss-Cross Attention for Semantic Segmentation, ICCV 2019 '
             '/ TPAMI 2020, arXiv:1811.11721')
    paper_position = 'late_stages'
    _abbr_ = 'rcca'

    def __init__(self,
                 in_channels: int,
                 recurrence: int = 2,
                 reduction: int = 8,
                 min_channels: int = 1,
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.recurrence = check_int(owner, 'recurrence', recurrence, 1)
        self.reduction = reduction
        d = reduced_channels(owner, in_channels, reduction, min_channels)
        self.inter_channels = d
        self.query_conv = nn.Conv2d(in_channels, d, 1)
        self.key_conv = nn.Conv2d(in_channels, d, 1)
        self.value_conv = nn.Conv2d(in_channels, in_channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.init_special()

    def init_special(self) -> None:
        """The official zero ``gamma``: the identity at initialisation."""
        nn.init.zeros_(self.gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        for _ in range(self.recurrence):
            x = self.criss_cross(x)
        return x

    def criss_cross(self, x: torch.Tensor) -> torch.Tensor:
        """One criss-cross pass (CCA): ``gamma out + x`` with the weights of
        :meth:`attention`."""
        value = self.value_conv(x)
        attn_h, attn_w = self.attention(x)
        out = torch.einsum('ncgw,nhwg->nchw', value, attn_h.to(value.dtype))
        out = out + torch.einsum('nchv,nhwv->nchw', value, attn_w.to(value.dtype))
        return self.gamma * out + x

    def attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The criss-cross weights of one pass on ``x``: ``a_H`` (N, H, W, H) over the query's
        column (``a_H[n, i, j, i']``, zero at ``i' = i``) and ``a_W`` (N, H, W, W) over its
        row; one softmax over both, in ``promote_types(x.dtype, float32)``."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        query = self.query_conv(x).to(dtype)
        key = self.key_conv(x).to(dtype)
        h = x.shape[2]
        energy_h = torch.einsum('nchw,ncgw->nhwg', query, key)
        rows = torch.arange(h, device=x.device)
        centre = rows[:, None, None] == rows  # (i, 1, i'): true at i' = i
        energy_h = energy_h.masked_fill(centre, float('-inf'))
        energy_w = torch.einsum('nchw,nchv->nhwv', query, key)
        attn = torch.cat([energy_h, energy_w], 3).softmax(3)
        return attn[..., :h], attn[..., h:]

    @staticmethod
    def propagate(weights: Tuple[torch.Tensor, torch.Tensor],
                  mass: torch.Tensor) -> torch.Tensor:
        """The weight that queries holding ``mass`` (N, H, W) put on each key (N, H, W)
        through one pass's criss-cross ``weights`` (:meth:`attention`)."""
        attn_h, attn_w = weights
        column = torch.einsum('nhw,nhwg->ngw', mass, attn_h)
        row = torch.einsum('nhw,nhwv->nhv', mass, attn_w)
        return column + row

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """For each pass t = 1..R (its input ``x_t``): 'centre_query_pass{t}', the weights
        of the centre query over its column and row, and 'mean_over_queries_pass{t}', the
        mean over the queries of the weight each key receives. With R > 1,
        'centre_query_all_passes': the centre query's weights composed through the R passes
        (the weights of the last pass, each spread by the earlier passes' weights of its
        key: what the paper's figures show for R = 2; the residuals and value convs are left
        out). Every map sums to 1 over the grid."""
        n, _, h, w = x.shape
        weights = []
        for _ in range(self.recurrence):
            weights.append(self.attention(x))
            x = self.criss_cross(x)
        dtype = weights[0][0].dtype
        centre = torch.zeros(n, h, w, dtype=dtype, device=x.device)
        centre[:, h // 2, w // 2] = 1
        uniform = torch.full((n, h, w), 1 / (h * w), dtype=dtype, device=x.device)
        maps = {}
        for t, pass_weights in enumerate(weights, 1):
            maps[f'centre_query_pass{t}'] = weights_map(
                self.propagate(pass_weights, centre), (h, w),
                f'criss-cross softmax of the centre query, pass {t}')
            maps[f'mean_over_queries_pass{t}'] = weights_map(
                self.propagate(pass_weights, uniform), (h, w),
                f'criss-cross softmax, mean over queries, pass {t}')
        if self.recurrence > 1:
            mass = centre
            for pass_weights in reversed(weights):
                mass = self.propagate(pass_weights, mass)
            maps['centre_query_all_passes'] = weights_map(
                mass, (h, w), f'centre query through the {self.recurrence} passes')
        return maps

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, recurrence={self.recurrence}, '
                f'reduction={self.reduction}, inter_channels={self.inter_channels}')
