"""Global Context block (GCNet)."""
from typing import Dict, Sequence

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer, build_norm_layer

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, reduced_channels
from ..maps import AttentionMap, channel_map, weights_map
from ..pointwise import PointwiseConv2d
from .context_pooling import attention_pool, attention_weights, init_mask_conv, mask_conv

FUSIONS = ('add', 'mul')


@register_model()
class GC(AttentionModule):
    """Global Context block (Cao et al., ICCVW 2019, arXiv:1904.11492).

    ``c = sum_j softmax_j(W_k x) x_j`` (attention pooling; ``pooling='avg'``: ``c = GAP(x)``),
    ``T(c) = W2 ReLU(LN(W1 c))`` with ``W1: C -> C/r``, ``W2: C/r -> C`` biased 1x1 convs
    (matrix products, :class:`~cvattn_mm.attention.pointwise.PointwiseConv2d`) and the
    LayerNorm over ``(C/r, 1, 1)``; ``y = x * sigmoid(T_mul(c)) + T_add(c)`` for the chosen fusions
    (default ``'add'`` only: ``y = x + T_add(c)``). ``W2`` of every transform is zero-initialised,
    as in the official code, so the default block starts as the identity.
    Parameters: ``C`` (``W_k``, 'att' only) plus ``2 * C * C/r + 3 * C/r + C`` per fusion.
    Paper position: after the last norm of every residual block of stages c3-c5.

    Deviations: ``W_k`` has no bias (the official one has; the softmax cancels it, so it never
    gets a gradient): one parameter fewer. A LayerNorm over a hidden width of 1 (r <= C < 2r
    with ``min_channels=1``) outputs a constant: it is rejected instead of built. Otherwise
    state-dict compatible with mmcv's ``ContextBlock`` (same submodule names and shapes: drop
    its ``conv_mask.bias``). The attention pooling's backward is hand-written
    (:mod:`~cvattn_mm.attention.channel.context_pooling`) and not twice differentiable;
    ``CVATTN_FAST_BACKWARD=0`` or :func:`cvattn_mm.attention.fast_backward.set_fast_backward`
    ``(False)`` runs plain autograd instead.

    Args:
        in_channels (int): Channels C.
        reduction (int): Bottleneck divisor r; the hidden width is ``max(C // r, min_channels)``.
        min_channels (int): Floor of the hidden width.
        pooling (str): Context modelling: ``'att'`` (attention pooling) or ``'avg'`` (GAP).
        fusions (Sequence[str]): Non-empty subset of ``('add', 'mul')``; ``'mul'`` is applied
            first when both are given, as in the official code.
        norm_cfg (dict): Norm of the hidden ``(C/r, 1, 1)`` map. ``dict(type='LN')`` (default) is
            the paper's LayerNorm over ``(C/r, 1, 1)`` (mmcv's 'LN' would normalise the size-1
            last axis instead); any mmcv channel norm (GN, BN, SyncBN) is also accepted.
        act_cfg (dict): Activation of the transform.
        init_cfg (dict, optional): mmengine initialisation config; applied before the official
            initialisation, which ``init_weights`` redoes unless it loads a checkpoint.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel'
    paper = ('Cao et al., GCNet: Non-local Networks Meet Squeeze-Excitation Networks and '
             'Beyond, ICCV Workshops 2019, arXiv:1904.11492')
    paper_position = 'residual_end_c3_c5'
    _abbr_ = 'gc'

    def __init__(self,
                 in_channels: int,
                 reduction: int = 16,
                 min_channels: int = 1,
                 pooling: str = 'att',
                 fusions: str | Sequence[str] = ('add', ),
                 norm_cfg: dict = dict(type='LN'),
                 act_cfg: dict = dict(type='ReLU'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        hidden = reduced_channels(owner, in_channels, reduction, min_channels)
        self.reduction = reduction
        self.pooling = check_choice(owner, 'pooling', pooling, ('att', 'avg'))
        self.fusions = _check_fusions(owner, fusions)
        if not isinstance(norm_cfg, dict) or 'type' not in norm_cfg:
            raise ValueError(f"{owner}: norm_cfg must be a dict with a 'type', got {norm_cfg!r}")
        is_ln = norm_cfg['type'] in ('LN', 'LayerNorm')
        if is_ln and hidden < 2:
            raise ValueError(f'{owner}: reduction={reduction} leaves a hidden width of 1 for '
                             f'in_channels={in_channels}, where the LayerNorm over (C/r, 1, 1) '
                             f'is a constant; use reduction <= {in_channels // 2} or '
                             'min_channels >= 2')

        self.conv_mask = mask_conv(in_channels) if self.pooling == 'att' else None
        self.channel_mul_conv = None
        self.channel_add_conv = None
        for fusion in self.fusions:
            if is_ln:
                norm = nn.LayerNorm([hidden, 1, 1], eps=norm_cfg.get('eps', 1e-5))
            else:
                norm = build_norm_layer(norm_cfg, hidden)[1]
            transform = nn.Sequential(
                PointwiseConv2d(in_channels, hidden), norm, build_activation_layer(act_cfg),
                PointwiseConv2d(hidden, in_channels))
            setattr(self, f'channel_{fusion}_conv', transform)
        self.init_special()

    def init_special(self) -> None:
        """Kaiming fan-in ``W_k``; zero last conv of every transform (official GCNet)."""
        if self.conv_mask is not None:
            init_mask_conv(self.conv_mask)
        for transform in (self.channel_add_conv, self.channel_mul_conv):
            if transform is not None:
                nn.init.zeros_(transform[-1].weight)
                nn.init.zeros_(transform[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        context = self.context(x)
        out = x
        if self.channel_mul_conv is not None:
            out = out * self.mul_gate(context)
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context)
        return out

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The context ``c`` (N, C, 1, 1) of ``x``: attention pooling or GAP."""
        if self.conv_mask is not None:
            return attention_pool(x, self.conv_mask)
        return x.mean((2, 3), keepdim=True)

    def mul_gate(self, context: torch.Tensor) -> torch.Tensor:
        """The gate ``sigmoid(T_mul(c))`` (N, C, 1, 1) of the 'mul' fusion."""
        return torch.sigmoid(self.channel_mul_conv(context))

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'context_weights' (N, H, W), the attention pooling's softmax ('att' pooling), and
        'mul_gate' (N, C), the gate of the 'mul' fusion; each present when used (none for
        ``pooling='avg'`` with the 'add' fusion alone: its additive term is no map)."""
        maps = {}
        if self.conv_mask is not None:
            maps['context_weights'] = weights_map(attention_weights(x, self.conv_mask),
                                                  x.shape[2:], 'context weights')
        if self.channel_mul_conv is not None:
            maps['mul_gate'] = channel_map(self.mul_gate(self.context(x)),
                                           'channel gate (mul fusion)')
        return maps

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, reduction={self.reduction}, '
                f'pooling={self.pooling!r}, fusions={self.fusions}')


def _check_fusions(owner: str, fusions) -> tuple:
    """Return ``fusions`` as a tuple in the order of :data:`FUSIONS` if it is a valid subset."""
    if isinstance(fusions, str):
        fusions = (fusions, )
    valid = (isinstance(fusions, (list, tuple)) and len(fusions) > 0
             and all(isinstance(f, str) and f in FUSIONS for f in fusions)
             and len(set(fusions)) == len(fusions))
    if not valid:
        raise ValueError(f'{owner}: fusions must be a non-empty subset of {FUSIONS} without '
                         f'repeats, got {fusions!r}')
    return tuple(f for f in FUSIONS if f in fusions)
