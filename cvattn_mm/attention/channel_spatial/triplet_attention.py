"""Triplet Attention."""
from typing import Dict, Tuple

import torch
import torch.nn as nn

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_odd
from ..gating import pooled_gates_sum
from ..map_norm import build_map_norm
from ..maps import AttentionMap, spatial_map


def _z_pool(max_: torch.Tensor, mean: torch.Tensor, dim: int,
            transpose: bool = False) -> torch.Tensor:
    """The ``keepdim`` max and mean over ``dim`` as two channels: (N, 2, <the other axes>),
    with the two other axes swapped if ``transpose``."""
    maps = (max_.squeeze(dim), mean.squeeze(dim))
    if transpose:
        maps = tuple(m.transpose(1, 2) for m in maps)
    z = torch.stack(maps, dim=1)
    if z.requires_grad and z.is_cpu:
        # oneDNN's input gradient of a 2 -> 1 channel conv is 2-4x faster on an NHWC input
        # (measured on CPU); the copy is of the small pooled map, the values are unchanged.
        z = z.contiguous(memory_format=torch.channels_last)
    return z


@register_model()
class TripletAttention(AttentionModule):
    """Triplet Attention (Misra et al., WACV 2021, arXiv:2010.03045).

    Three branches share one recipe, ``g = sigmoid(BN(conv_kxk(Zpool(x))))`` with
    ``Zpool = [max, mean]`` over one axis and a 2 -> 1 conv without bias, each on one plane:
    ``g_cw`` pools over H (a (C, W) map), ``g_hc`` over W (an (H, C) map), ``g_hw`` over C
    (an (H, W) map). ``y = x * (g_cw + g_hc + g_hw) / 3`` (``no_spatial``: the first two, / 2),
    the gates broadcast over the pooled axis. This equals the paper's rotate -> gate ->
    rotate back branches without permuting x: only the small pooled maps are laid out in the
    paper's orientations (the (C, H) map of the W pool is transposed to (H, C)), so kernels
    keep the official layout.
    Parameters: ``b * (2 * k * k + 2)`` with ``b = 3`` branches (2 if ``no_spatial``), i.e.
    300 for ``k = 7``, independent of C.

    Deviations: the official ResNet initialiser zero-initialises the BN weight of the (H, W)
    branch (a rule inherited from CBAM's code, not in the paper); here every BN starts at the
    standard weight 1. The default BN momentum 0.01 is the official code's. The backward is
    hand-written (:func:`~cvattn_mm.attention.gating.pooled_gates_sum`); a max pool's gradient
    goes to one maximal element, as with the official code's ``torch.max``, and it is not
    twice differentiable. ``CVATTN_FAST_BACKWARD=0`` or
    :func:`cvattn_mm.attention.fast_backward.set_fast_backward` ``(False)`` runs plain
    autograd instead.

    Args:
        in_channels (int | None): Channels C, checked on the input if given; the module
            works for any C (``None``).
        kernel_size (int): Odd size k of the three convolutions.
        no_spatial (bool): Drop the (H, W) branch.
        norm_cfg (dict): Norm after each convolution (one channel).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Misra et al., Rotate to Attend: Convolutional Triplet Attention Module, '
             'WACV 2021, arXiv:2010.03045')
    paper_position = 'residual_end'
    _abbr_ = 'triplet_attention'

    def __init__(self,
                 in_channels: int | None = None,
                 kernel_size: int = 7,
                 no_spatial: bool = False,
                 norm_cfg: dict = dict(type='BN', momentum=0.01),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.kernel_size = check_odd(owner, 'kernel_size', kernel_size)
        self.no_spatial = check_choice(owner, 'no_spatial', no_spatial, (False, True))
        pad = kernel_size // 2
        self.conv_cw = nn.Conv2d(2, 1, kernel_size, padding=pad, bias=False)
        self.bn_cw = build_map_norm(norm_cfg, 1)
        self.conv_hc = nn.Conv2d(2, 1, kernel_size, padding=pad, bias=False)
        self.bn_hc = build_map_norm(norm_cfg, 1)
        if not no_spatial:
            self.conv_hw = nn.Conv2d(2, 1, kernel_size, padding=pad, bias=False)
            self.bn_hw = build_map_norm(norm_cfg, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        scale = 1 / len(self.pooled_axes)

        def scaled_gates(*descriptors):
            return tuple(gate * scale for gate in self.gates(*descriptors))

        return pooled_gates_sum(x, scaled_gates, self, self.pooled_axes,
                                ('max', 'mean'))

    @property
    def pooled_axes(self) -> Tuple[Tuple[int], ...]:
        """The axis each branch pools over, in the order of :meth:`gates`: H, W (and C)."""
        return ((2,), (3,)) if self.no_spatial else ((2,), (3,), (1,))

    def gates(self, *descriptors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The branch gates of the ``keepdim`` max and mean of ``x`` over H, over W and (unless
        ``no_spatial``) over C: ``g_cw`` (N, C, 1, W), ``g_hc`` (N, C, H, 1), ``g_hw``
        (N, 1, H, W)."""
        # Pooled over H: a (C, W) map -> gate (N, 1, C, W) -> (N, C, 1, W).
        g_cw = torch.sigmoid(self.bn_cw(self.conv_cw(_z_pool(*descriptors[:2], 2))))
        # Pooled over W: the paper convolves the (H, C) map -> gate (N, 1, H, C) -> (N, C, H, 1).
        g_hc = torch.sigmoid(self.bn_hc(self.conv_hc(_z_pool(*descriptors[2:4], 3, True))))
        gates = (g_cw.transpose(1, 2), g_hc.permute(0, 3, 2, 1))
        if self.no_spatial:
            return gates
        # Pooled over C: an (H, W) map -> gate (N, 1, H, W).
        g_hw = torch.sigmoid(self.bn_hw(self.conv_hw(_z_pool(*descriptors[4:6], 1))))
        return gates + (g_hw,)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """The branch gates 'cw_gate' (pooled over H), 'hc_gate' (over W), 'hw_gate' (over C,
        unless ``no_spatial``) and their mean 'gate', each averaged over C (N, H, W)."""
        descriptors = [pool for d in self.pooled_axes
                       for pool in (x.amax(d, keepdim=True), x.mean(d, keepdim=True))]
        gates = self.gates(*descriptors)
        titles = {'cw': 'C-W branch (pooled over H)', 'hc': 'H-C branch (pooled over W)',
                  'hw': 'H-W branch (pooled over C)'}
        maps = {f'{key}_gate': spatial_map(gate, x.shape, f'{titles[key]}, mean over C')
                for key, gate in zip(titles, gates)}
        maps['gate'] = spatial_map(sum(gates) / len(gates), x.shape,
                                   'mean of the branches, mean over C')
        return maps

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, kernel_size={self.kernel_size}, '
                f'no_spatial={self.no_spatial}')
