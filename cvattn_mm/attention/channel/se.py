"""Squeeze-and-Excitation."""
from typing import Dict

import torch
from mmcv.cnn import build_activation_layer

from ...registry import register_model
from ..base import AttentionModule
from ..checks import reduced_channels
from ..gating import pooled_gate
from ..maps import AttentionMap, channel_map
from ..pointwise import PointwiseConv2d


@register_model()
class SE(AttentionModule):
    """Squeeze-and-Excitation block (Hu et al., CVPR 2018, arXiv:1709.01507).

    ``y = x * sigmoid(W2 act(W1 GAP(x)))`` with ``W1: C -> C/r``, ``W2: C/r -> C`` as biased
    1x1 convolutions (the paper's FC layers on the pooled vector; matrix products, see
    :class:`~cvattn_mm.attention.pointwise.PointwiseConv2d`).
    Parameters: ``2 * C * C/r + C/r + C``.

    Deviations: none. The gate activation is configurable (MobileNetV3 uses hard-sigmoid).
    The backward is hand-written (:func:`~cvattn_mm.attention.gating.pooled_gate`) and not
    twice differentiable; ``CVATTN_FAST_BACKWARD=0`` or
    :func:`cvattn_mm.attention.fast_backward.set_fast_backward` ``(False)`` runs plain
    autograd instead.

    Args:
        in_channels (int): Channels C.
        reduction (int): Bottleneck divisor r; the hidden width is ``max(C // r, min_channels)``.
        min_channels (int): Floor of the hidden width.
        act_cfg (dict): Activation between the two layers.
        gate_cfg (dict): Activation of the gate.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel'
    paper = 'Hu et al., Squeeze-and-Excitation Networks, CVPR 2018, arXiv:1709.01507'
    paper_position = 'residual_end'
    _abbr_ = 'se'

    def __init__(self,
                 in_channels: int,
                 reduction: int = 16,
                 min_channels: int = 1,
                 act_cfg: dict = dict(type='ReLU'),
                 gate_cfg: dict = dict(type='Sigmoid'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        hidden = reduced_channels(type(self).__name__, in_channels, reduction, min_channels)
        self.reduction = reduction
        self.fc1 = PointwiseConv2d(in_channels, hidden)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = PointwiseConv2d(hidden, in_channels)
        self.gate = build_activation_layer(gate_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return pooled_gate(x, self.channel_gate, self)

    def channel_gate(self, s: torch.Tensor) -> torch.Tensor:
        """The gate (N, C, 1, 1) of the channel means ``s`` (N, C, 1, 1)."""
        return self.gate(self.fc2(self.act(self.fc1(s))))

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'channel_gate': the gate (N, C) that the forward multiplies ``x`` by."""
        return {'channel_gate': channel_map(self.channel_gate(x.mean((2, 3), keepdim=True)),
                                            'channel gate')}

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, reduction={self.reduction}'
