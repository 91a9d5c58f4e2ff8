"""Squeeze-and-Excitation."""
import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer

from ...registry import register_model
from ..base import AttentionModule
from ..checks import reduced_channels
from ..gating import pooled_gate
from ..pointwise import pointwise


@register_model()
class SE(AttentionModule):
    """Squeeze-and-Excitation block (Hu et al., CVPR 2018, arXiv:1709.01507).

    ``y = x * sigmoid(W2 act(W1 GAP(x)))`` with ``W1: C -> C/r``, ``W2: C/r -> C`` as biased
    1x1 convolutions (the paper's FC layers on the pooled vector).
    Parameters: ``2 * C * C/r + C/r + C``.

    Deviations: none. The gate activation is configurable (MobileNetV3 uses hard-sigmoid).
    The backward is hand-written (:func:`~cvattn_mm.attention.gating.pooled_gate`).

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
        hidden = reduced_channels('SE', in_channels, reduction, min_channels)
        self.reduction = reduction
        self.fc1 = nn.Conv2d(in_channels, hidden, 1)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = nn.Conv2d(hidden, in_channels, 1)
        self.gate = build_activation_layer(gate_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return pooled_gate(x, self.channel_gate, self)

    def channel_gate(self, s: torch.Tensor) -> torch.Tensor:
        """The gate (N, C, 1, 1) of the channel means ``s`` (N, C, 1, 1)."""
        hidden = self.act(pointwise(self.fc1, s.flatten(1)))
        return self.gate(pointwise(self.fc2, hidden))[:, :, None, None]

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, reduction={self.reduction}'
