"""Selective Kernel convolution (SKConv): SKNet's SK unit in place of a 3x3 conv."""
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer
from torch.nn.modules.batchnorm import _BatchNorm

from ...registry import register_model
from ..checks import check_divisible, check_int, reduced_channels
from ..conv_replacement import ConvReplacement
from ..gating import selective_sum
from ..map_norm import build_map_norm
from ..maps import AttentionMap
from ..norm import norm_any_batch
from ..pointwise import PointwiseConv2d


class SKBranch(nn.Module):
    """One branch of :class:`SKConv`: ``act(norm(conv(x)))``, the norm through
    :func:`~cvattn_mm.attention.norm.norm_any_batch` (Li et al., arXiv:1903.06586)."""

    def __init__(self, conv: nn.Conv2d, norm: nn.Module, act: nn.Module):
        super().__init__()
        self.conv = conv
        self.norm = norm
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(norm_any_batch(self.norm, self.conv(x)))


@register_model()
class SKConv(ConvReplacement):
    """Selective Kernel convolution: the SK unit of SKNet in place of a 3x3 conv (Li et al.,
    Selective Kernel Networks, CVPR 2019, arXiv:1903.06586).

    M branches ``U_i = ReLU(BN(conv_i(x)))``, ``conv_i`` a bias-free 3x3 conv
    ``C_in -> C`` (C = ``out_channels``) with G groups, the replaced conv's stride, dilation
    ``i * d`` and padding ``i * d`` (d = the replaced conv's dilation, i = 1..M; dilation 2
    is the paper's 5x5 kernel); fuse ``s = GAP(sum_i U_i)``,
    ``z = ReLU(BN(W_z s))``, ``W_z: C -> d_z``, ``d_z = max(C // r, L)``; select
    ``a = softmax over i`` of ``W_s z`` (one bias-free 1x1 conv ``d_z -> M C``, branch-major:
    branch 1's C logits first), per channel; ``y = sum_i a_i * U_i``. Nothing follows the
    fusion (the next layer of SKNet is conv3). The unit ends with its branches' norms and
    activations, so it replaces the conv and the norm after it (``absorbs_norm``; the host's
    ReLU after that norm stays and changes nothing: y is a convex combination of
    non-negative maps).
    Parameters: ``M (9 C_in C / G + 2C) + C d_z + 2 d_z + M C d_z``; 62,528 for
    ``C_in = C = 256``, G = 32 (the SKNet unit); SKNet-50 is ResNeXt-50 (32x4d) with every
    conv2 replaced (``replace='paper'``).
    Paper position: ``replaces_mid_conv`` (+ the norm after it).

    Groups. The SK unit keeps the cardinality of the conv it replaces: ``branch_groups=None``
    (default) takes the replaced conv's ``groups``, which gives SKNet's G = 32 on
    ResNeXt-50 (32x4d) (the official SKNet-50) and depthwise branches on a depthwise conv
    (the paper's ShuffleNetV2 experiments). On a dense conv (ResNet-50's conv2, groups 1)
    the branches are then dense (``2 * 9 C^2`` weights); ``branch_groups=32`` puts the
    SKNet unit itself (G = 32) there instead, at the price of an exact ``init_from_conv``.

    ``init_from_conv(conv, norm)`` (exact, when G equals the conv's groups): branch 1 takes
    the conv's weight and the BN's statistics with its affine γ, β multiplied by M, the other
    branches' BN affines and the selection conv ``W_s`` are zero, so ``a = 1/M`` exactly,
    ``U_i = 0`` for i > 1, and ``y = ReLU(M BN(conv x)) / M = ReLU(BN(conv x))`` (train and
    eval). Caution: the zeroed branches then output ``ReLU(0)``, whose gradient is 0 in
    PyTorch, so plain gradient descent never revives them (their convs and norms get zero
    gradients); only branch 1 and the selection network (``W_z``, its norm, ``W_s``) train.

    Deviations:

    * the official BN momentum is Caffe's 0.95, PyTorch's 0.05; ``norm_cfg``'s default BN
      uses 0.1 (``norm_cfg=dict(type='BN', momentum=0.05)`` removes this). The official
      initialisation is kept in :meth:`init_special` (MSRA branch convs, N(0, 0.01) for
      ``W_z`` and ``W_s``).
    * training on a batch of one sample: a BN that sees one value per channel (z always,
      a branch on a 1x1 output map) uses its running statistics, without updating them,
      instead of failing (``nn.BatchNorm2d`` raises).
    * the M branch convs are a Python loop (their dilations differ; a zero-padded 5x5 kernel
      costs 25/9 of the MACs); the fuse-and-select backward is hand-written
      (:func:`~cvattn_mm.attention.gating.selective_sum`, as :class:`SK`) and not twice
      differentiable; ``CVATTN_FAST_BACKWARD=0`` runs plain autograd. The softmax runs in
      at least float32 and is cast back.
    * on a host conv with groups other than 32, the default G follows the conv (see
      Groups); ``branch_groups=32`` is the official G.

    Args:
        in_channels (int): Input channels of the replaced conv.
        out_channels (int | None): Output channels C (``None``: ``in_channels``).
        kernel_size (int): 3 (the replaced conv's).
        stride (int): The replaced conv's stride (every branch).
        padding (int | None): Size-keeping (``dilation``) or ``None``.
        dilation (int): The replaced conv's dilation d; branch i uses ``i * d``.
        groups (int): The replaced conv's groups.
        bias (bool): False (the branch convs have none).
        num_branches (int): Branches M (>= 2).
        branch_groups (int | None): Groups G of the branch convs (``None``: ``groups``).
        reduction (int): Divisor r of the fuse width; ``d_z = max(C // r, min_channels)``.
        min_channels (int): Floor L of the fuse width.
        norm_cfg (dict): Norm after each branch conv and after ``W_z``.
        act_cfg (dict): Activation after each branch norm and after the ``W_z`` norm.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C_in, H, W) -> (N, C, H_out, W_out), the replaced conv's output size.
    """

    family = 'branch'
    paper = 'Li et al., Selective Kernel Networks, CVPR 2019, arXiv:1903.06586'
    _abbr_ = 'skconv'
    takes_groups = True
    takes_dilation = True
    absorbs_norm = True
    conv_init = ('branch 1 takes the conv and the absorbed BN (gamma, beta times M), the other '
                 "branches' BN affines and the selection conv are zero: exactly "
                 'ReLU(BN(conv x)) when branch_groups equal the conv\'s groups')

    def __init__(self,
                 in_channels: int,
                 out_channels: Optional[int] = None,
                 kernel_size: int = 3,
                 stride: int = 1,
                 padding: Optional[int] = None,
                 dilation: int = 1,
                 groups: int = 1,
                 bias: bool = False,
                 num_branches: int = 2,
                 branch_groups: Optional[int] = None,
                 reduction: int = 16,
                 min_channels: int = 32,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='ReLU', inplace=True),
                 init_cfg=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, init_cfg=init_cfg)
        name = type(self).__name__
        self.num_branches = check_int(name, 'num_branches', num_branches, 2)
        self.branch_groups = self.groups if branch_groups is None else check_int(
            name, 'branch_groups', branch_groups, 1)
        for what, channels in (('in_channels', in_channels),
                               ('out_channels', self.out_channels)):
            check_divisible(name, what, channels, self.branch_groups, 'branch_groups')
        out = self.out_channels
        self.hidden = reduced_channels(name, out, reduction, min_channels)
        self.reduction = reduction
        self.branches = nn.ModuleList(
            SKBranch(nn.Conv2d(in_channels, out, 3, self.stride, padding=i * self.dilation,
                               dilation=i * self.dilation, groups=self.branch_groups,
                               bias=False),
                     build_map_norm(norm_cfg, out), build_activation_layer(act_cfg))
            for i in range(1, self.num_branches + 1))
        self.fc_reduce = PointwiseConv2d(out, self.hidden, bias=False)
        self.fc_norm = build_map_norm(norm_cfg, self.hidden)
        self.fc_act = build_activation_layer(act_cfg)
        self.fc_select = PointwiseConv2d(self.hidden, self.num_branches * out, bias=False)
        self.init_special()

    def init_special(self) -> None:
        """The official fillers (sknet50.prototxt): MSRA (``N(0, 2 / fan_in)``) for the branch
        convs, ``N(0, 0.01^2)`` for ``W_z`` and ``W_s``; norms at weight 1, bias 0."""
        for branch in self.branches:
            nn.init.kaiming_normal_(branch.conv.weight, mode='fan_in', nonlinearity='relu')
        for fc in (self.fc_reduce, self.fc_select):
            nn.init.normal_(fc.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        select = (self.fc_reduce, self.fc_norm, self.fc_act, self.fc_select)
        return selective_sum(self.branch_outputs(x), self.selection, select)

    def branch_outputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The M branch outputs ``U_i`` (N, C, H_out, W_out) of ``x``."""
        return [branch(x) for branch in self.branches]

    def selection(self, s: torch.Tensor) -> torch.Tensor:
        """The weights ``a`` (N, M, C, 1, 1), a softmax over the M branches, of the means
        ``s`` (N, C, 1, 1) of the branch sum."""
        z = self.fc_act(norm_any_batch(self.fc_norm, self.fc_reduce(s)))
        logits = self.fc_select(z).reshape(s.shape[0], self.num_branches, -1, 1, 1)
        dtype = torch.promote_types(logits.dtype, torch.float32)
        return logits.to(dtype).softmax(1).to(logits.dtype)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'branch_i' (i = 1..M): the selection weights (N, C) of branch i."""
        s = sum(u.mean((2, 3), keepdim=True) for u in self.branch_outputs(x))
        weights = self.selection(s).flatten(2)  # (N, M, C)
        return {f'branch_{i + 1}': AttentionMap(
            'channel', weights[:, i], f'branch {i + 1} (dilation {(i + 1) * self.dilation}) '
            'weight') for i in range(self.num_branches)}

    def init_from_conv(self, conv: nn.Conv2d, norm: Optional[nn.Module] = None) -> bool:
        """Compute exactly ``ReLU(norm(conv(x)))`` (see the class docstring); returns True.

        Raises ``ValueError`` when that is impossible: ``branch_groups`` differ from the
        conv's groups (a dense conv is not a grouped one), no BN ``norm`` is given, the
        branch norms are not BNs, the activation is not a ReLU, or the conv's
        hyper-parameters are not the ones the module was built with.
        """
        name = type(self).__name__
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f'{name}.init_from_conv takes an nn.Conv2d, got '
                             f'{type(conv).__name__}')
        built = (self.in_channels, self.out_channels, (3, 3), (self.stride, ) * 2,
                 (self.padding, ) * 2, (self.dilation, ) * 2, self.groups, False)
        given = (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                 conv.padding, conv.dilation, conv.groups, conv.bias is not None)
        if given != built:
            raise ValueError(f'{name}.init_from_conv: {conv} is not the conv this module was '
                             f'built from ({self.extra_repr()})')
        if self.branch_groups != conv.groups:
            raise ValueError(f'{name}.init_from_conv: the branches have branch_groups='
                             f'{self.branch_groups} but the conv has groups={conv.groups}: '
                             'a conv with other groups cannot be copied into a branch (build '
                             'with branch_groups=None to take the conv\'s groups)')
        if not isinstance(norm, _BatchNorm) or not norm.affine or norm.running_mean is None:
            raise ValueError(f'{name}.init_from_conv needs the BatchNorm after the conv (with '
                             f'affine and running statistics), which it absorbs; got '
                             f'{type(norm).__name__}')
        first = self.branches[0]
        if not all(isinstance(b.norm, _BatchNorm) for b in self.branches):
            raise ValueError(f'{name}.init_from_conv needs BatchNorm branch norms (norm_cfg), '
                             f'got {type(first.norm).__name__}')
        if norm.num_features != self.out_channels or norm.eps != first.norm.eps:
            raise ValueError(f'{name}.init_from_conv: the norm ({norm}) must have '
                             f'{self.out_channels} channels and eps={first.norm.eps} (the '
                             'branch norms\')')
        if not all(type(m) is nn.ReLU for m in [b.act for b in self.branches]):
            raise ValueError(f'{name}.init_from_conv needs ReLU branch activations (act_cfg): '
                             'ReLU(M h) / M = ReLU(h) holds for them')
        m = self.num_branches
        with torch.no_grad():
            first.conv.weight.copy_(conv.weight)
            first.norm.load_state_dict(norm.state_dict())
            first.norm.weight.mul_(m)
            first.norm.bias.mul_(m)
            for branch in self.branches[1:]:
                branch.norm.weight.zero_()
                branch.norm.bias.zero_()
            self.fc_select.weight.zero_()
        return True

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, num_branches={self.num_branches}, '
                f'branch_groups={self.branch_groups}, hidden={self.hidden}')
