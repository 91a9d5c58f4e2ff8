"""Selective Kernel unit (SK)."""
from typing import Dict, List

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_divisible, check_int, reduced_channels
from ..gating import selective_sum
from ..map_norm import build_map_norm
from ..maps import AttentionMap
from ..norm import norm_any_batch
from ..pointwise import PointwiseConv2d


@register_model()
class SK(AttentionModule):
    """Selective Kernel unit (Li et al., CVPR 2019, arXiv:1903.06586).

    M branches ``F_i = ReLU(BN(conv_i(x)))``, ``conv_i`` a 3x3 conv with G groups, dilation i
    and padding i (i = 1..M; dilation 2 stands in for the paper's 5x5 kernel);
    ``s = GAP(sum_i F_i)``; ``z = ReLU(BN(W_z s))``, ``W_z: C -> d``, ``d = max(C // r, L)``;
    ``a = softmax over i of (W_i z)`` per channel (``W_i: d -> C``, one batched 1x1 conv
    ``d -> M C``; both FCs are :class:`~cvattn_mm.attention.pointwise.PointwiseConv2d`, matrix
    products on the pooled vectors); ``y = sum_i a_i * F_i``.
    Parameters: ``M (9 C^2 / G + 2C) + C d + 2d + M C d`` (bias-free convs, affine BNs).

    Deviations:

    * plug-in form: in == out channels and stride 1 (the output keeps the input's shape);
      ``stride`` other than 1 is rejected.
    * training on a batch of one sample: batch statistics of the per-sample vector z are
      undefined (``nn.BatchNorm2d`` raises); its BN then uses its running statistics (without
      updating them) instead of failing. SyncBN and other norms are used unchanged.
    * the M branch convs are a Python loop: their dilations differ, and no single conv
      computes them without extra work (a zero-padded 5x5 kernel costs 25/9 of the MACs).
      The selection is batched (one 1x1 conv ``d -> M C``, one softmax over the branch axis);
      the pooling and the weighted sum accumulate over the M branch outputs (``addcmul``):
      stacking them for one batched product would copy M full maps and keep the copy for
      backward (+40% saved activations at M = 2). The fuse-and-select backward is
      hand-written (:func:`~cvattn_mm.attention.gating.selective_sum`) and not twice
      differentiable; ``CVATTN_FAST_BACKWARD=0`` or
      :func:`cvattn_mm.attention.fast_backward.set_fast_backward` ``(False)`` runs plain
      autograd instead.

    Args:
        in_channels (int): Channels C (input and output); divisible by ``groups``.
        num_branches (int): Branches M (>= 2), with dilations 1..M.
        groups (int): Groups G of the branch convs.
        reduction (int): Divisor r of the fuse width; ``d = max(C // r, min_channels)``.
        min_channels (int): Floor L of the fuse width.
        stride (int): Must be 1 (plug-in form).
        norm_cfg (dict): Norm after each branch conv and after ``W_z``.
        act_cfg (dict): Activation after each branch norm and after the ``W_z`` norm.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'branch'
    paper = 'Li et al., Selective Kernel Networks, CVPR 2019, arXiv:1903.06586'
    paper_position = 'after_mid_norm'
    _abbr_ = 'sk'

    def __init__(self,
                 in_channels: int,
                 num_branches: int = 2,
                 groups: int = 32,
                 reduction: int = 16,
                 min_channels: int = 32,
                 stride: int = 1,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='ReLU', inplace=True),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        name = type(self).__name__
        self.num_branches = check_int(name, 'num_branches', num_branches, 2)
        self.groups = check_int(name, 'groups', groups, 1)
        check_divisible(name, 'in_channels', in_channels, groups, 'groups')
        if stride != 1:
            raise ValueError(f'{name}: stride must be 1, got {stride!r}: as a plug-in, {name} '
                             'keeps the input shape (in == out channels, same H and W)')
        self.hidden = reduced_channels(name, in_channels, reduction, min_channels)
        self.reduction = reduction
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation,
                          groups=groups, bias=False),
                build_map_norm(norm_cfg, in_channels),
                build_activation_layer(act_cfg))
            for dilation in range(1, num_branches + 1))
        self.fc_reduce = PointwiseConv2d(in_channels, self.hidden, bias=False)
        self.fc_norm = build_map_norm(norm_cfg, self.hidden)
        self.fc_act = build_activation_layer(act_cfg)
        self.fc_select = PointwiseConv2d(self.hidden, num_branches * in_channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        select = (self.fc_reduce, self.fc_norm, self.fc_act, self.fc_select)
        return selective_sum(self.branch_outputs(x), self.selection, select)

    def branch_outputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The M branch outputs ``F_i`` (N, C, H, W) of ``x``."""
        return [branch(x) for branch in self.branches]

    def selection(self, s: torch.Tensor) -> torch.Tensor:
        """The weights ``a`` (N, M, C, 1, 1), a softmax over the M branches, of the means ``s``
        (N, C, 1, 1) of the branch sum."""
        z = self.fc_act(norm_any_batch(self.fc_norm, self.fc_reduce(s)))
        logits = self.fc_select(z)
        return logits.reshape(s.shape[0], self.num_branches, -1, 1, 1).softmax(1)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'branch_i' (i = 1..M): the selection weights (N, C) of branch i."""
        s = sum(f.mean((2, 3), keepdim=True) for f in self.branch_outputs(x))
        weights = self.selection(s).flatten(2)  # (N, M, C)
        return {f'branch_{i + 1}': AttentionMap('channel', weights[:, i],
                                                f'branch {i + 1} (dilation {i + 1}) weight')
                for i in range(self.num_branches)}

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, num_branches={self.num_branches}, '
                f'groups={self.groups}, hidden={self.hidden}')
