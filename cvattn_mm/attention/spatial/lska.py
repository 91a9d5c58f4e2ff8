"""Large Separable Kernel Attention."""
import torch
import torch.nn as nn

from ...registry import register_model
from ..checks import check_choice
from .lka import _LargeKernelBase

#: k_size -> (local kernel, dilated kernel, dilation), the official table.
LSKA_KERNELS = {7: (3, 3, 2), 11: (3, 5, 2), 23: (5, 7, 3), 35: (5, 11, 3), 41: (5, 13, 3),
                53: (5, 17, 3)}


@register_model()
class LSKA(_LargeKernelBase):
    """Large Separable Kernel Attention (Lau et al., Expert Systems with Applications 236,
    121352, 2024, arXiv:2309.01439).

    LKA (:class:`LKA`) with each depthwise kernel factorised into a 1 x k then a k x 1
    depthwise convolution, each with bias:
    ``attn = conv1(conv_spatial_v(conv_spatial_h(conv0v(conv0h(x)))))``, ``out = x * attn``
    (no sigmoid). For ``k_size`` 7, 11, 23, 35, 41, 53 the (local k0, dilated k1, dilation d)
    kernels are (3, 3, 2), (3, 5, 2), (5, 7, 3), (5, 11, 3), (5, 13, 3), (5, 17, 3); padding
    keeps the size. Parameters: ``2 C (k0 + 1) + 2 C (k1 + 1) + C^2 + C``
    (72,960 at C = 256, k 23; 69,888 at k 7; 70,912 at k 11).

    Paper position: only inside VAN's own block (``own_block``); ``at='paper'`` inserts it
    at ``fallback_position = 'residual_end'``.

    Deviations: none (the official ``LSKA`` of StevenLauHKHK/Large-Separable-Kernel-Attention
    ``models/van.py`` @bb2a8d2, same state-dict keys; max abs diff 0 in float64). The default
    ``k_size`` is 23, the released models' (the official constructor's default is 7).
    ``with_projection=True`` adds VAN's ``Attention`` wrapper (``proj_1``, GELU, LSKA,
    ``proj_2``, + x). VAN's initialisation (weights N(0, 2 / fan_out), biases 0).

    Args:
        in_channels (int): Channels C.
        k_size (int): Equivalent kernel size, one of 7, 11, 23, 35, 41, 53.
        with_projection (bool): Wrap in VAN's ``Attention`` (1x1, GELU, LSKA, 1x1, + x).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    paper = ('Lau et al., Large Separable Kernel Attention: Rethinking the Large Kernel '
             'Attention Design in CNN, Expert Systems with Applications 236 (2024), '
             'arXiv:2309.01439')
    _abbr_ = 'lska'

    def __init__(self, in_channels: int, k_size: int = 23, with_projection: bool = False,
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        if isinstance(k_size, bool):
            raise ValueError(f'{owner}: k_size must be one of {tuple(LSKA_KERNELS)}, '
                             f'got {k_size!r}')
        self.k_size = check_choice(owner, 'k_size', k_size, tuple(LSKA_KERNELS))
        k0, k1, d = LSKA_KERNELS[self.k_size]
        c = self.in_channels
        p0, p1 = (k0 - 1) // 2, d * (k1 - 1) // 2
        self.conv0h = nn.Conv2d(c, c, (1, k0), padding=(0, p0), groups=c)
        self.conv0v = nn.Conv2d(c, c, (k0, 1), padding=(p0, 0), groups=c)
        self.conv_spatial_h = nn.Conv2d(c, c, (1, k1), padding=(0, p1), groups=c, dilation=d)
        self.conv_spatial_v = nn.Conv2d(c, c, (k1, 1), padding=(p1, 0), groups=c, dilation=d)
        self._build_projection(with_projection)
        self.init_special()

    def depthwise(self, u: torch.Tensor) -> torch.Tensor:
        """1 x k0, k0 x 1, then the dilated 1 x k1, k1 x 1 (all depthwise)."""
        u = self.conv0v(self.conv0h(u))
        return self.conv_spatial_v(self.conv_spatial_h(u))

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, k_size={self.k_size}, '
                f'with_projection={self.with_projection}')
