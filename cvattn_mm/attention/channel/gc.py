"""Global Context block (GCNet)."""
from typing import Sequence

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer, build_norm_layer

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, reduced_channels
from ..pointwise import pointwise
from .context_pooling import attention_pool, init_mask_conv, mask_conv

FUSIONS = ('add', 'mul')


@register_model()
class GC(AttentionModule):
    """Global Context block (Cao et al., ICCVW 2019, arXiv:1904.11492).

    ``c = sum_j softmax_j(W_k x) x_j`` (attention pooling; ``pooling='avg'``: ``c = GAP(x)``),
    ``T(c) = W2 ReLU(LN(W1 c))`` with ``W1: C -> C/r``, ``W2: C/r -> C`` biased 1x1 convs and the
    LayerNorm over ``(C/r, 1, 1)``; ``y = x * sigmoid(T_mul(c)) + T_add(c)`` for the chosen fusions
    (default ``'add'`` only: ``y = x + T_add(c)``). ``W2`` of every transform is zero-initialised,
    as in the official code, so the default block starts as the identity.
    Parameters: ``C`` (``W_k``, 'att' only) plus ``2 * C * C/r + 3 * C/r + C`` per fusion.
    Paper position: after the last norm of every residual block of stages c3-c5.

    Deviations: ``W_k`` has no bias (the official one has; the softmax cancels it, so it never
    gets a gradient): one parameter fewer. A LayerNorm over a hidden width of 1 (r <= C < 2r
    with ``min_channels=1``) outputs a constant: it is rejected instead of built. Otherwise
    state-dict compatible with mmcv's ``ContextBlock`` (same submodule names and shapes: drop
    its ``conv_mask.bias``).

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
        hidden = reduced_channels('GC', in_channels, reduction, min_channels)
        self.reduction = reduction
        self.pooling = check_choice('GC', 'pooling', pooling, ('att', 'avg'))
        self.fusions = _check_fusions(fusions)
        if not isinstance(norm_cfg, dict) or 'type' not in norm_cfg:
            raise ValueError(f"GC: norm_cfg must be a dict with a 'type', got {norm_cfg!r}")
        is_ln = norm_cfg['type'] in ('LN', 'LayerNorm')
        if is_ln and hidden < 2:
            raise ValueError(f'GC: reduction={reduction} leaves a hidden width of 1 for '
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
                nn.Conv2d(in_channels, hidden, 1), norm, build_activation_layer(act_cfg),
                nn.Conv2d(hidden, in_channels, 1))
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
        if self.conv_mask is not None:
            context = attention_pool(x, self.conv_mask)  # (N, C)
        else:
            context = x.mean((2, 3))
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(_transform(self.channel_mul_conv, context))
        if self.channel_add_conv is not None:
            out = out + _transform(self.channel_add_conv, context)
        return out

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, reduction={self.reduction}, '
                f'pooling={self.pooling!r}, fusions={self.fusions}')


def _transform(transform: nn.Sequential, context: torch.Tensor) -> torch.Tensor:
    """``conv, norm, act, conv`` on pooled vectors (N, C) -> (N, C, 1, 1), convs as matmuls."""
    conv1, norm, act, conv2 = transform
    hidden = act(norm(pointwise(conv1, context)[:, :, None, None]))  # (N, C/r, 1, 1)
    return pointwise(conv2, hidden.flatten(1))[:, :, None, None]


def _check_fusions(fusions) -> tuple:
    """Return ``fusions`` as a tuple in the order of :data:`FUSIONS` if it is a valid subset."""
    if isinstance(fusions, str):
        fusions = (fusions, )
    valid = (isinstance(fusions, (list, tuple)) and len(fusions) > 0
             and all(isinstance(f, str) and f in FUSIONS for f in fusions)
             and len(set(fusions)) == len(fusions))
    if not valid:
        raise ValueError(f'GC: fusions must be a non-empty subset of {FUSIONS} without '
                         f'repeats, got {fusions!r}')
    return tuple(f for f in FUSIONS if f in fusions)
