"""Coordinate Attention."""
from typing import Dict, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer

from ...registry import register_model
from ..base import AttentionModule
from ..checks import reduced_channels
from ..gating import axis_pooled_gates
from ..map_norm import build_map_norm
from ..maps import AttentionMap, axis_gate_maps


@register_model()
class CoordAttention(AttentionModule):
    """Coordinate Attention (Hou et al., CVPR 2021, arXiv:2103.02907).

    Each channel is average-pooled along W, giving ``z_h`` (C, H), and along H, giving
    ``z_w`` (C, W). Both are joined along the position axis and embedded together:
    ``f = act(BN(F1 [z_h, z_w]))`` with ``F1: C -> mip``; ``f`` is split back into
    ``f_h`` (mip, H) and ``f_w`` (mip, W), and
    ``y = x * sigmoid(F_h f_h)[:, :, :, None] * sigmoid(F_w f_w)[:, :, None, :]``
    with ``F_h, F_w: mip -> C``; all of ``F1, F_h, F_w`` are biased 1x1 convolutions and
    ``mip = max(C // reduction, min_channels)``.
    Parameters: ``3 * C * mip + 2 * C + 3 * mip`` (with a BN of 2 * mip affine parameters).

    The paper inserts it after the depthwise 3x3 conv (and its BN + ReLU6) of each
    MobileNetV2 inverted residual, and like SE (end of the residual branch) in ResNets;
    ``paper_position`` is the latter. Submodule names follow the official code
    (``conv1``, ``bn1``, ``conv_h``, ``conv_w``), so its checkpoints load unchanged.

    Deviations: none (``mip = max(8, C // 32)`` is the official rule written with the
    library's ``reduction`` / ``min_channels`` convention). The backward is hand-written
    (:func:`~cvattn_mm.attention.gating.axis_pooled_gates`, not twice differentiable);
    ``CVATTN_FAST_BACKWARD=0`` or
    :func:`cvattn_mm.attention.fast_backward.set_fast_backward` ``(False)`` runs plain
    autograd instead.

    Args:
        in_channels (int): Channels C.
        reduction (int): Divisor of the embedding width: ``mip = max(C // r, min_channels)``.
        min_channels (int): Floor of the embedding width.
        norm_cfg (dict): Norm after the shared embedding.
        act_cfg (dict): Activation after that norm (the paper's h-swish).
        gate_cfg (dict): Activation of the two gates.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Hou et al., Coordinate Attention for Efficient Mobile Network Design, '
             'CVPR 2021, arXiv:2103.02907')
    paper_position = 'residual_end'
    _abbr_ = 'coord_attention'

    def __init__(self,
                 in_channels: int,
                 reduction: int = 32,
                 min_channels: int = 8,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='HSwish'),
                 gate_cfg: dict = dict(type='Sigmoid'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        mip = reduced_channels(type(self).__name__, in_channels, reduction, min_channels)
        self.reduction = reduction
        self.mip = mip
        self.conv1 = nn.Conv2d(in_channels, mip, 1)
        self.bn1 = build_map_norm(norm_cfg, mip)
        self.act = build_activation_layer(act_cfg)
        self.conv_h = nn.Conv2d(mip, in_channels, 1)
        self.conv_w = nn.Conv2d(mip, in_channels, 1)
        self.gate = build_activation_layer(gate_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return axis_pooled_gates(x, self.gates, self)

    def gates(self, z_h: torch.Tensor, z_w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The gates ``a_h`` (N, C, H, 1) and ``a_w`` (N, C, 1, W) of the row means ``z_h``
        (N, C, H, 1) and the column means ``z_w`` (N, C, 1, W)."""
        h = z_h.shape[2]
        # (N, C, H + W, 1): the H profile (mean over W) followed by the W profile.
        z = torch.cat((z_h, z_w.transpose(2, 3)), dim=2)
        f = self.act(self.bn1(self.conv1(z)))
        f_h, f_w = f.split((h, z.shape[2] - h), dim=2)
        a_h = self.gate(self.conv_h(f_h))
        a_w = self.gate(self.conv_w(f_w.transpose(2, 3)))  # a view
        return a_h, a_w

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'h_gate', 'w_gate' and their product 'gate', each averaged over C (N, H, W)."""
        a_h, a_w = self.gates(x.mean(3, keepdim=True), x.mean(2, keepdim=True))
        return axis_gate_maps(a_h, a_w, x.shape)

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, reduction={self.reduction}, mip={self.mip}'
