"""Efficient Channel Attention."""
import math
from typing import Dict

import torch
import torch.nn as nn

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_odd, check_positive_float
from ..gating import pooled_gate
from ..maps import AttentionMap, channel_map


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """ECA's adaptive kernel size: ``t = int(|(log2 C + b) / gamma|)``, then the odd ``t | t+1``."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


@register_model()
class ECA(AttentionModule):
    """Efficient Channel Attention (Wang et al., CVPR 2020, arXiv:1910.03151).

    ``y = x * sigmoid(conv1d_k(GAP(x)))``: a 1-D convolution (no bias, padding ``(k - 1) / 2``)
    slides over the channel axis of the pooled vector, so each channel's gate sees its ``k``
    neighbours. ``k`` adapts to C: ``t = int(|(log2 C + b) / gamma|)``, ``k = t`` if ``t`` is odd
    else ``t + 1`` (C = 64 -> 3, 128..1024 -> 5, 2048 -> 7); an explicit ``kernel_size`` overrides
    it (the released ECA-ResNets use fixed kernels per stage).
    Parameters: ``k``.

    Deviations: none. The backward is hand-written
    (:func:`~cvattn_mm.attention.gating.pooled_gate`) and not twice differentiable;
    ``CVATTN_FAST_BACKWARD=0`` or :func:`cvattn_mm.attention.fast_backward.set_fast_backward`
    ``(False)`` runs plain autograd instead.

    Args:
        in_channels (int): Channels C.
        kernel_size (int, optional): Odd kernel size k; ``None`` (default) for the adaptive one.
        gamma (float): ``gamma`` of the adaptive kernel size (> 0).
        b (float): ``b`` of the adaptive kernel size (>= 0).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel'
    paper = ('Wang et al., ECA-Net: Efficient Channel Attention for Deep Convolutional Neural '
             'Networks, CVPR 2020, arXiv:1910.03151')
    paper_position = 'residual_end'
    _abbr_ = 'eca'

    def __init__(self,
                 in_channels: int,
                 kernel_size: int | None = None,
                 gamma: float = 2,
                 b: float = 1,
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        gamma = check_positive_float(owner, 'gamma', gamma)
        b = check_positive_float(owner, 'b', b, allow_zero=True)
        if kernel_size is None:
            kernel_size = eca_kernel_size(in_channels, gamma, b)
        else:
            kernel_size = check_odd(owner, 'kernel_size', kernel_size)
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return pooled_gate(x, self.channel_gate, self)

    def channel_gate(self, s: torch.Tensor) -> torch.Tensor:
        """The gate (N, C, 1, 1) of the channel means ``s`` (N, C, 1, 1)."""
        n = s.shape[0]
        # Views: the channels are the conv's length axis, (N, C, 1, 1) -> (N, 1, C) and back.
        return torch.sigmoid(self.conv(s.reshape(n, 1, -1))).view(n, -1, 1, 1)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'channel_gate': the gate (N, C) that the forward multiplies ``x`` by."""
        return {'channel_gate': channel_map(self.channel_gate(x.mean((2, 3), keepdim=True)),
                                            'channel gate')}

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, kernel_size={self.kernel_size}'
