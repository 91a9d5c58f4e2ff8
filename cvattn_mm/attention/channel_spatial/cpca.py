"""Channel prior convolutional attention (CPCANet)."""
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_odd, reduced_channels
from ..maps import AttentionMap, channel_map, spatial_map

PROJECTIONS = ('shared', 'separate')


class CPCAChannelPrior(nn.Module):
    """The channel prior ``sigmoid(fc2(relu(fc1(GAP u)))) + sigmoid(fc2(relu(fc1(GMP u))))``
    (N, C, 1, 1), values in (0, 2); one shared pair of biased 1x1 convs ``fc1`` C -> C', ``fc2``
    C' -> C."""

    def __init__(self, in_channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(in_channels, hidden, 1, bias=True)
        self.fc2 = nn.Conv2d(hidden, in_channels, 1, bias=True)

    def branch(self, pooled: torch.Tensor) -> torch.Tensor:
        """``sigmoid(fc2(relu(fc1(pooled))))`` for one pooled descriptor (N, C, 1, 1)."""
        return torch.sigmoid(self.fc2(F.relu(self.fc1(pooled))))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return (self.branch(u.mean((2, 3), keepdim=True))
                + self.branch(u.amax((2, 3), keepdim=True)))


@register_model()
class CPCA(AttentionModule):
    """Channel prior convolutional attention (Huang et al., "Channel prior convolutional
    attention for medical image segmentation", arXiv:2306.05196; CPCANet).

    ``u = GELU(P_in(x))`` with ``P_in`` a biased 1x1 conv C -> C. Channel prior
    ``c = sigmoid(fc2(relu(fc1(GAP u)))) + sigmoid(fc2(relu(fc1(GMP u))))`` (the same biased
    ``fc1`` C -> C // 4 and ``fc2`` C // 4 -> C for both descriptors; the two sigmoids are
    summed, so ``c`` lies in (0, 2)); ``u' = c * u``. Spatial part: ``d0 = DW5x5(u')``,
    ``d = d0 + sum_{k in (7, 11, 21)} DW_{k x 1}(DW_{1 x k}(d0))`` (depthwise, biased, zero
    'same' padding), ``s = P_sp(d)`` (no sigmoid: the spatial "attention" is unbounded) and
    ``y = P_out(s * u')``.

    The official ``RepBlock`` uses ONE 1x1 conv for ``P_in``, ``P_sp`` and ``P_out``
    (``projection='shared'``, the default here, state-dict keys the official ones); three
    independent 1x1 convs are ``projection='separate'`` (keys ``conv``, ``conv_spatial``,
    ``conv_out``; not the official code).
    Parameters (shared): ``1.5 C^2 + 112.25 C`` for C divisible by 4 (``3 C^2 + ...`` with
    separate convs: C^2 + C per extra conv): 127,040 at C = 256 (258,624 separate).
    Paper position: only inside CPCANet's own block (``x + CPCA(BN(x))``, then
    ``x + FFN(BN(x))``): ``paper_position = 'own_block'``; ``at='paper'`` inserts it at
    ``fallback_position = 'residual_end'`` (not from the paper).

    Deviations: none with the defaults (the official ``ChannelAttention`` + ``RepBlock`` of
    Cuthbert-Huang/CPCANet @550b49a; float64 max abs diff 5e-13 on outputs up to 1.3e3, i.e.
    4e-16 relative, C 4-256, maps 1x1-56x56). The hidden width has a floor,
    ``max(C // reduction, min_channels)`` (the official ``C // 4`` is 0 and crashes for
    C < 4). ``projection='separate'``, other ``reduction``, ``square_kernel`` and
    ``strip_kernels`` are options (``projection='separate'``: three convs instead of the
    official one, 2 (C^2 + C) more parameters). Initialisation: PyTorch's defaults, as the official
    block (CPCANet's network-level init is not reproduced).

    Args:
        in_channels (int): Channels C.
        reduction (int): Divisor of the channel prior's hidden width (official 4).
        min_channels (int): Floor of the hidden width.
        projection (str): ``'shared'`` (official: one 1x1 conv used three times) or
            ``'separate'`` (three 1x1 convs).
        square_kernel (int): Odd size of the square depthwise conv (official 5).
        strip_kernels (tuple[int]): Odd sizes of the 1 x k then k x 1 depthwise strip pairs
            (official (7, 11, 21)).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Huang et al., Channel prior convolutional attention for medical image '
             'segmentation, arXiv:2306.05196')
    paper_position = 'own_block'
    fallback_position = 'residual_end'
    _abbr_ = 'cpca'

    def __init__(self,
                 in_channels: int,
                 reduction: int = 4,
                 min_channels: int = 1,
                 projection: str = 'shared',
                 square_kernel: int = 5,
                 strip_kernels: Tuple[int, ...] = (7, 11, 21),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        hidden = reduced_channels(owner, in_channels, reduction, min_channels)
        self.reduction = reduction
        self.projection = check_choice(owner, 'projection', projection, PROJECTIONS)
        self.square_kernel = check_odd(owner, 'square_kernel', square_kernel)
        if isinstance(strip_kernels, int) or not isinstance(strip_kernels, (tuple, list)):
            raise ValueError(f'{owner}: strip_kernels must be a tuple of odd ints, got '
                             f'{strip_kernels!r}')
        self.strip_kernels = tuple(check_odd(owner, 'strip_kernels', k) for k in strip_kernels)
        if len(set(self.strip_kernels)) != len(self.strip_kernels):
            raise ValueError(f'{owner}: strip_kernels must be distinct, got {strip_kernels!r}')
        c = in_channels
        self.ca = CPCAChannelPrior(c, hidden)
        k = self.square_kernel
        setattr(self, f'dconv{k}_{k}', nn.Conv2d(c, c, k, padding=k // 2, groups=c))
        for k in self.strip_kernels:
            setattr(self, f'dconv1_{k}', nn.Conv2d(c, c, (1, k), padding=(0, k // 2), groups=c))
            setattr(self, f'dconv{k}_1', nn.Conv2d(c, c, (k, 1), padding=(k // 2, 0), groups=c))
        self.conv = nn.Conv2d(c, c, 1)
        if self.projection == 'separate':
            self.conv_spatial = nn.Conv2d(c, c, 1)
            self.conv_out = nn.Conv2d(c, c, 1)
        self.act = nn.GELU()

    def projections(self) -> Tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]:
        """The 1x1 convs ``P_in``, ``P_sp``, ``P_out`` (one module three times if shared)."""
        if self.projection == 'shared':
            return self.conv, self.conv, self.conv
        return self.conv, self.conv_spatial, self.conv_out

    def prior(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``u = GELU(P_in(x))`` and the channel prior ``c`` (N, C, 1, 1) in (0, 2)."""
        u = self.act(self.projections()[0](x))
        return u, self.ca(u)

    def spatial(self, v: torch.Tensor) -> torch.Tensor:
        """The unbounded spatial attention ``s = P_sp(d)`` of ``v = u'`` (N, C, H, W)."""
        k = self.square_kernel
        d0 = getattr(self, f'dconv{k}_{k}')(v)
        d = d0
        for k in self.strip_kernels:
            d = d + getattr(self, f'dconv{k}_1')(getattr(self, f'dconv1_{k}')(d0))
        return self.projections()[1](d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        u, c = self.prior(x)
        v = c * u
        return self.projections()[2](self.spatial(v) * v)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'channel_prior': ``c / 2`` (N, C) in (0, 1) (the prior is a sum of two sigmoids);
        'spatial_attention': ``s`` averaged over C, then min-max normalised to [0, 1] per
        image (``s`` is unbounded; a constant map gives 0)."""
        u, c = self.prior(x)
        v = c * u
        s = spatial_map(self.spatial(v), x.shape, 'spatial attention, mean over C, '
                        'min-max normalised per image (unbounded: no sigmoid)')
        low = s.values.amin((1, 2), keepdim=True)
        span = s.values.amax((1, 2), keepdim=True) - low
        s.values = (s.values - low) / span.clamp_min(torch.finfo(span.dtype).tiny)
        return {'channel_prior': channel_map(c / 2, 'channel prior / 2'),
                'spatial_attention': s}

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, reduction={self.reduction}, '
                f'projection={self.projection!r}, square_kernel={self.square_kernel}, '
                f'strip_kernels={self.strip_kernels}')
