"""Simplified non-local block (from GCNet)."""
from typing import Dict

import torch
import torch.nn as nn

from ...registry import register_model
from ..base import AttentionModule
from ..maps import AttentionMap, weights_map
from ..pointwise import PointwiseConv2d
from .context_pooling import attention_pool, attention_weights, init_mask_conv, mask_conv


@register_model()
class SimplifiedNonLocal(AttentionModule):
    """Simplified non-local block (Cao et al., GCNet, arXiv:1904.11492, eq. 2).

    ``y_i = x_i + W_v sum_j softmax_j(W_k x) x_j``: one query-independent attention map
    (``W_k: C -> 1``, softmax over all H * W positions, shared with :class:`GC`) pools a global
    context, a biased 1x1 conv ``W_v: C -> C`` transforms it, and it is added to every position.
    Parameters: ``C`` (``W_k``) + ``C * C + C`` (``W_v``).

    Deviations: ``W_v`` is zero-initialised (like the output transform of non-local blocks),
    so the block starts as the identity; ``W_k`` has no bias (a softmax cancels it).
    ``W_v`` is applied after the pooling, which equals the paper's order (both are linear)
    at ``1 / (H * W)`` of the cost. The attention pooling's backward is hand-written
    (:mod:`~cvattn_mm.attention.channel.context_pooling`) and not twice differentiable;
    ``CVATTN_FAST_BACKWARD=0`` or :func:`cvattn_mm.attention.fast_backward.set_fast_backward`
    ``(False)`` runs plain autograd instead.

    Args:
        in_channels (int): Channels C.
        init_cfg (dict, optional): mmengine initialisation config; applied before the
            initialisation above, which ``init_weights`` redoes unless it loads a checkpoint.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel'
    paper = ('Cao et al., GCNet: Non-local Networks Meet Squeeze-Excitation Networks and '
             'Beyond, ICCV Workshops 2019, arXiv:1904.11492')
    paper_position = 'residual_end'
    _abbr_ = 'snl'

    def __init__(self, in_channels: int, init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        self.conv_mask = mask_conv(in_channels)
        self.value_conv = PointwiseConv2d(in_channels, in_channels)
        self.init_special()

    def init_special(self) -> None:
        """Kaiming fan-in ``W_k`` (as GC); zero ``W_v`` so that the block is the identity."""
        init_mask_conv(self.conv_mask)
        nn.init.zeros_(self.value_conv.weight)
        nn.init.zeros_(self.value_conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return x + self.value_conv(attention_pool(x, self.conv_mask))

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'context_weights' (N, H, W): the softmax over positions that pools the context."""
        return {'context_weights': weights_map(attention_weights(x, self.conv_mask),
                                               x.shape[2:], 'context weights')}
