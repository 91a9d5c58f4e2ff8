"""Efficient Local Attention."""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_divisible, check_int, check_odd
from ..gating import axis_pooled_gates
from ..map_norm import build_map_norm
from ..maps import AttentionMap, axis_gate_maps
from ..norm import norm_any_batch

#: The paper's variants: (kernel size, channels per conv group, GroupNorm groups).
VARIANTS = {'T': (5, 1, 32), 'B': (7, 1, 16), 'S': (5, 8, 16), 'L': (7, 8, 16)}


@register_model()
class ELA(AttentionModule):
    """Efficient Local Attention (Xu and Wan, arXiv:2403.01123).

    Each channel is average-pooled along W, giving the row profile ``z_h`` (C, H), and along
    H, giving the column profile ``z_w`` (C, W). One shared 1-D convolution ``F`` (kernel k,
    padding k // 2, ``C / g_w`` groups of ``g_w`` channels, no bias) and one shared GroupNorm
    ``GN`` (``n_g`` groups) are applied to each profile separately:
    ``a_h = sigmoid(GN(F z_h))``, ``a_w = sigmoid(GN(F z_w))`` and
    ``y = x * a_h[:, :, :, None] * a_w[:, :, None, :]``. The GroupNorm statistics of each
    profile are over its own positions (H for ``a_h``, W for ``a_w``).
    Parameters: ``C * g_w * k + 2 C`` (T: k 5, depthwise, ``n_g`` 32 -> ``7 C``; B: k 7,
    depthwise, ``n_g`` 16 -> ``9 C``; S: k 5, ``g_w`` 8 -> ``42 C``; L: k 7, ``g_w`` 8 ->
    ``58 C``).
    Paper position: the paper compares ELA with Coordinate Attention but the exact place in
    its ResNets is not confirmed; ``paper_position`` is ``residual_end`` (as Coordinate
    Attention and SE: after the residual branch's last norm, before the addition),
    *unconfirmed*.

    There is no official code. The computation follows the paper's PyTorch listing (as
    reproduced by third parties: a depthwise ``nn.Conv1d`` without bias named ``conv``, a
    ``nn.GroupNorm(16, C)`` named ``gn``, a sigmoid), whose state-dict keys (``conv.weight``,
    ``gn.weight``, ``gn.bias``) are kept, so its checkpoints load unchanged. Both layers keep
    PyTorch's default initialisation, as in the listing. timm's ``EfficientLocalAttn`` is a
    variant of it (separate H and W convolutions and norms, a GroupNorm with one group and a
    SiLU before the sigmoid by default); with ``act_layer=nn.Identity``, a GroupNorm of
    ``n_g`` groups and the same weights in both of its branches it computes this module's
    function (``cvattn_mm.analysis.peers``).

    Deviations: none with the defaults (the paper's variant B). The variants' kernel sizes,
    group widths and GroupNorm groups (``variant``) are the values reported for the paper's
    table, *unconfirmed* against the paper. The GroupNorm is built from ``norm_cfg``
    (default ``dict(type='GN', num_groups=n_g)``) and applied to the profiles as
    (N, C, L, 1) maps; a batch norm that sees one value per channel in training (batch 1, a
    1x1 map) uses its running statistics. The backward is hand-written
    (:func:`~cvattn_mm.attention.gating.axis_pooled_gates`, not twice differentiable);
    ``CVATTN_FAST_BACKWARD=0`` or :func:`cvattn_mm.attention.fast_backward.set_fast_backward`
    ``(False)`` runs plain autograd instead.

    Args:
        in_channels (int): Channels C (a multiple of the GroupNorm groups, and of ``g_w``).
        variant (str): ``'T'``, ``'B'`` (default), ``'S'`` or ``'L'``: the defaults of
            ``kernel_size``, ``group_width`` and the GroupNorm groups.
        kernel_size (int, optional): Odd kernel size k of the 1-D convolution (variant's if
            None: T 5, B 7, S 5, L 7).
        group_width (int, optional): Channels per group of the 1-D convolution, ``g_w``
            (1: depthwise; variant's if None: T, B 1, S, L 8, i.e. ``C / 8`` groups).
        norm_cfg (dict, optional): Norm after the convolution (variant's GroupNorm if None:
            ``dict(type='GN', num_groups=n_g)``, T 32, B, S, L 16).
        act_cfg (dict, optional): Activation between the norm and the gate; none in the paper
            (timm's default: ``dict(type='SiLU')``).
        gate_cfg (dict): Activation of the two gates.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Xu and Wan, ELA: Efficient Local Attention for Deep Convolutional Neural '
             'Networks, arXiv:2403.01123')
    paper_position = 'residual_end'
    _abbr_ = 'ela'

    def __init__(self,
                 in_channels: int,
                 variant: str = 'B',
                 kernel_size: Optional[int] = None,
                 group_width: Optional[int] = None,
                 norm_cfg: Optional[dict] = None,
                 act_cfg: Optional[dict] = None,
                 gate_cfg: dict = dict(type='Sigmoid'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.variant = check_choice(owner, 'variant', variant, tuple(VARIANTS))
        k, width, num_groups = VARIANTS[variant]
        self.kernel_size = check_odd(owner, 'kernel_size', k if kernel_size is None
                                     else kernel_size)
        self.group_width = check_int(owner, 'group_width', width if group_width is None
                                     else group_width)
        check_divisible(owner, 'in_channels', in_channels, self.group_width, 'group_width')
        if norm_cfg is None:
            norm_cfg = dict(type='GN', num_groups=num_groups)
        if norm_cfg.get('type') == 'GN':
            groups = check_int(owner, 'num_groups', norm_cfg.get('num_groups'))
            check_divisible(owner, 'in_channels', in_channels, groups, 'num_groups')
        self.conv = nn.Conv1d(in_channels, in_channels, self.kernel_size,
                              padding=self.kernel_size // 2,
                              groups=in_channels // self.group_width, bias=False)
        self.gn = build_map_norm(norm_cfg, in_channels)
        self.act = nn.Identity() if act_cfg is None else build_activation_layer(act_cfg)
        self.gate = build_activation_layer(gate_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return axis_pooled_gates(x, self.gates, self)

    def profile_gate(self, z: torch.Tensor) -> torch.Tensor:
        """The gate (N, C, L) of one profile ``z`` (N, C, L): ``gate(act(GN(F z)))``."""
        f = norm_any_batch(self.gn, self.conv(z)[..., None])[..., 0]
        return self.gate(self.act(f))

    def gates(self, z_h: torch.Tensor, z_w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The gates ``a_h`` (N, C, H, 1) and ``a_w`` (N, C, 1, W) of the row means ``z_h``
        (N, C, H, 1) and the column means ``z_w`` (N, C, 1, W): the same convolution and norm
        on each profile, separately."""
        a_h = self.profile_gate(z_h.flatten(2))[..., None]
        a_w = self.profile_gate(z_w.flatten(2))[:, :, None]
        return a_h, a_w

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'h_gate', 'w_gate' and their product 'gate', each averaged over C (N, H, W)."""
        a_h, a_w = self.gates(x.mean(3, keepdim=True), x.mean(2, keepdim=True))
        return axis_gate_maps(a_h, a_w, x.shape)

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, variant={self.variant!r}, '
                f'kernel_size={self.kernel_size}, group_width={self.group_width}')
