"""Pyramid split attention (EPSANet's PSA module), a replacement of a block's 3x3 conv."""
import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn

from ...registry import register_model
from ..checks import check_choice, check_int, check_odd
from ..conv_replacement import ConvReplacement
from ..maps import AttentionMap
from ..pointwise import PointwiseConv2d


@register_model()
class PyramidSplitAttention(ConvReplacement):
    """Pyramid split (squeeze) attention, the PSA module of EPSANet (Zhang et al., ACCV 2022,
    arXiv:2105.14447), in place of a residual block's 3x3 conv.

    Not to be confused with polarized self-attention (``PolarizedSelfAttention``) or PSANet's
    head (mmseg's ``PSAHead``): the short name ``PSA`` is ambiguous and refused by the
    registry. The paper's later version calls the module "pyramid squeeze attention".

    S branches (S = 4) split the output channels: branch i is a ``k_i x k_i`` conv with
    ``g_i`` groups, stride s (the replaced conv's), padding ``k_i // 2`` and no bias,
    ``F_i = Conv_{k_i, g_i}(x)``, ``C_in -> C / S`` channels. One SE module shared by the
    branches gives ``z_i = sigma(W_2 ReLU(W_1 GAP(F_i) + b_1) + b_2)`` (``W_1: C/S -> C/(S r)``,
    ``W_2: C/(S r) -> C/S``, 1x1 convs with biases, as
    :class:`~cvattn_mm.attention.pointwise.PointwiseConv2d` on the pooled vectors);
    ``a = softmax over the S branches of z`` (per channel, a softmax of sigmoids as in the
    official code); ``y = Cat([a_1 * F_1, ..., a_S * F_S])``, (N, C, ceil(H / s),
    ceil(W / s)) like the replaced conv.
    Parameters: ``sum_i C_in (C / S) k_i^2 / g_i + 2 (C / S) (C / (S r)) + C / (S r) + C / S``
    (433,732 at C_in = C = 256 with the defaults, against 589,824 for the 3x3 conv).
    Paper position: ``replaces_mid_conv`` (the conv2 of every Bottleneck; the host's norm2
    and ReLU follow, as in the official ``EPSABlock``).

    The S convs are S calls (one per kernel size; their kernel sizes and groups differ, and a
    single conv would need zero-padded 9x9 dense kernels, many times the MACs); their outputs
    are stacked once, (N, S, C / S, H, W), whose layout is the concatenation (a view as
    (N, C, H, W)); the SE runs once on the S pooled vectors stacked along the batch axis, the
    softmax once over the branch axis, and the weighting is one product. Plain autograd: the
    hand-written backward of SE's form (:func:`~cvattn_mm.attention.gating.pooled_gate` on
    the concatenation) was measured 10% faster on the pooling and product alone but equal on
    the module (0.601 / 0.604 s forward+backward at 4x256x28x28; the convs dominate), with
    the same peak memory, so it is not used.

    Initialisation (:meth:`init_special`): the official EPSANet's for every conv of the
    module, branch convs and SE layers alike: weights ``N(0, 2 / (k^2 C_out))`` (``C_out``
    the conv's output channels), biases PyTorch's default.

    Deviations:

    * concatenation order: the paper concatenates the branches in order,
      ``Cat([Y_1, ..., Y_S])``; the official ``PSAModule`` (murufeng/EPSANet @9955041)
      prepends each weighted branch, ``Cat([Y_S, ..., Y_1])``. The default is the paper's
      order; ``concat_order='official'`` reproduces the official layout (needed to load
      official weights into the following norm and conv). Both compute the same values up
      to that channel permutation, which the host's norm2 and conv3 absorb.
    * arguments the official code floors or leaves to ``nn.Conv2d`` raise a ``ValueError``
      naming the numbers: ``out_channels`` not divisible by S (officially ``planes // 4``
      channels per branch, dropping the rest), ``C / S`` not divisible by a branch's groups or
      by the SE ``reduction`` (officially ``channels // reduction``), ``in_channels`` not
      divisible by a branch's groups.
    * S is ``len(kernel_sizes)`` (the paper's S, >= 2; the official module has exactly 4).
    * the softmax over the branches is computed in float32 at least (fp16 / bf16 inputs).

    What it replaces: a 3x3 conv with groups 1, dilation 1, no bias and size-keeping padding
    (the official block's conv2). The replaced conv's groups are refused, not reused: the
    official code sets the branches' groups itself (``conv_groups``) and has no use for the
    host's (a ResNeXt conv2 would need a choice the paper does not make); it has no dilation
    either. :meth:`init_from_conv` cannot take the replaced conv's weights (see
    ``no_conv_init``).

    Args:
        in_channels (int): Input channels of the replaced conv; divisible by every
            ``conv_groups`` entry.
        out_channels (int | None): Output channels C (``None``: ``in_channels``); C / S must
            be divisible by every ``conv_groups`` entry and by ``reduction``.
        kernel_size (int): Kernel size of the replaced conv (3).
        stride (int): Stride of the replaced conv, used by every branch.
        padding (int | None): Padding of the replaced conv (``None`` or 1).
        dilation (int): Dilation of the replaced conv (1).
        groups (int): Groups of the replaced conv (1).
        bias (bool): Whether the replaced conv has a bias (False).
        conv_kernels (sequence of int): The odd kernel sizes ``k_i`` of the S branches.
        conv_groups (sequence of int): The groups ``g_i`` of the S branches (as many).
        reduction (int): Divisor r of the SE's hidden width ``C / (S r)``.
        concat_order (str): ``'paper'`` (branch 1 first) or ``'official'`` (branch S first).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride)).
    """

    family = 'branch'
    paper = ('Zhang et al., EPSANet: An Efficient Pyramid Squeeze Attention Block on '
             'Convolutional Neural Network, ACCV 2022, arXiv:2105.14447')
    paper_position = 'replaces_mid_conv'
    _abbr_ = 'epsa'
    kernel_sizes = (3, )
    takes_groups = False
    takes_dilation = False
    takes_bias = False
    any_padding = False
    absorbs_norm = False
    no_conv_init = ('only branch 1 (3x3, groups 1) could hold the dense 3x3 conv, and only for '
                    'C / 4 of its output channels; the other branches are grouped (groups 4, '
                    '8, 16 by default), so the cross-group weights of a dense conv have no '
                    'place in them (their larger kernel sizes would not be the obstacle: a '
                    '3x3 kernel zero-padded to 5x5 is the same conv)')

    def __init__(self,
                 in_channels: int,
                 out_channels: Optional[int] = None,
                 kernel_size: int = 3,
                 stride: int = 1,
                 padding: Optional[int] = None,
                 dilation: int = 1,
                 groups: int = 1,
                 bias: bool = False,
                 conv_kernels: Sequence[int] = (3, 5, 7, 9),
                 conv_groups: Sequence[int] = (1, 4, 8, 16),
                 reduction: int = 16,
                 concat_order: str = 'paper',
                 init_cfg=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, init_cfg=init_cfg)
        name = type(self).__name__
        if isinstance(conv_kernels, (str, bytes)) or not isinstance(conv_kernels, Sequence):
            raise ValueError(f'{name}: conv_kernels must be a sequence of odd kernel sizes, '
                             f'got {conv_kernels!r}')
        if isinstance(conv_groups, (str, bytes)) or not isinstance(conv_groups, Sequence):
            raise ValueError(f'{name}: conv_groups must be a sequence of group counts, got '
                             f'{conv_groups!r}')
        if len(conv_kernels) < 2:
            raise ValueError(f'{name}: conv_kernels must give at least 2 branches, got '
                             f'{tuple(conv_kernels)}')
        if len(conv_groups) != len(conv_kernels):
            raise ValueError(f'{name}: conv_groups must have one entry per branch '
                             f'({len(conv_kernels)}, as conv_kernels), got '
                             f'{tuple(conv_groups)}')
        self.conv_kernels = tuple(check_odd(name, f'conv_kernels[{i}]', k)
                                  for i, k in enumerate(conv_kernels))
        self.conv_groups = tuple(check_int(name, f'conv_groups[{i}]', g, 1)
                                 for i, g in enumerate(conv_groups))
        self.reduction = check_int(name, 'reduction', reduction, 1)
        self.concat_order = check_choice(name, 'concat_order', concat_order,
                                         ('paper', 'official'))
        self.num_branches = s = len(self.conv_kernels)
        if self.out_channels % s:
            raise ValueError(f'{name}: out_channels={self.out_channels} must be divisible by '
                             f'the number of branches {s} (len(conv_kernels))')
        self.split_channels = split = self.out_channels // s
        for i, g in enumerate(self.conv_groups):
            if in_channels % g:
                raise ValueError(f'{name}: in_channels={in_channels} must be divisible by '
                                 f'conv_groups[{i}]={g}')
            if split % g:
                raise ValueError(f'{name}: out_channels / {s} = {split} (the channels of a '
                                 f'branch) must be divisible by conv_groups[{i}]={g}')
        if split % self.reduction:
            raise ValueError(f'{name}: out_channels / {s} = {split} (the channels of a branch) '
                             f'must be divisible by reduction={self.reduction}')
        self.hidden = split // self.reduction
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, split, k, self.stride, k // 2, groups=g, bias=False)
            for k, g in zip(self.conv_kernels, self.conv_groups))
        self.se_reduce = PointwiseConv2d(split, self.hidden)
        self.se_act = nn.ReLU(inplace=True)
        self.se_expand = PointwiseConv2d(self.hidden, split)
        self.se_gate = nn.Sigmoid()
        #: the branch indices in the order of the concatenation
        self.order = tuple(range(s)) if concat_order == 'paper' else tuple(reversed(range(s)))
        self.init_special()

    def init_special(self) -> None:
        """The official EPSANet initialisation of the module's convs: ``N(0, 2 / (k^2
        C_out))`` weights, default biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0., math.sqrt(2. / fan_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        feats = self.branch_outputs(x)
        return (feats * self.branch_weights(feats.mean((3, 4), keepdim=True))).flatten(1, 2)

    def branch_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The branch outputs ``F_i`` stacked in the concatenation order (``self.order``),
        (N, S, C / S, H_out, W_out)."""
        return torch.stack([self.branches[i](x) for i in self.order], 1)

    def branch_weights(self, pooled: torch.Tensor) -> torch.Tensor:
        """The weights ``a`` (N, S, C / S, 1, 1), a softmax over the S branches of the shared
        SE's sigmoid outputs, of the branch means ``pooled`` (N, S, C / S, 1, 1) (the same
        branch order)."""
        n, s = pooled.shape[:2]
        z = self.se_gate(self.se_expand(self.se_act(self.se_reduce(pooled.flatten(0, 1)))))
        dtype = torch.promote_types(z.dtype, torch.float32)
        return z.view(n, s, -1, 1, 1).to(dtype).softmax(1).to(z.dtype)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'branch_weights': the weight (N, C) that the forward gives each output channel,
        in the output's order: block j (C / S channels) holds ``a_i`` of the branch
        concatenated j-th (branch j + 1 with ``concat_order='paper'``, branch S - j with
        ``'official'``)."""
        feats = self.branch_outputs(x)
        weights = self.branch_weights(feats.mean((3, 4), keepdim=True)).flatten(1)
        kernels = ', '.join(str(self.conv_kernels[i]) for i in self.order)
        return {'branch_weights': AttentionMap(
            'channel', weights, f'branch weights per output channel (blocks of C / '
            f'{self.num_branches}: kernels {kernels})')}

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, conv_kernels={self.conv_kernels}, '
                f'conv_groups={self.conv_groups}, reduction={self.reduction}, '
                f'concat_order={self.concat_order!r}')
