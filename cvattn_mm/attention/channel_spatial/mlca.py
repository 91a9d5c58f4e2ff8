"""Mixed Local Channel Attention."""
from typing import Dict, Tuple

import torch
import torch.nn as nn

from ...registry import register_model
from ..base import AttentionModule
from ..channel.eca import eca_kernel_size
from ..checks import check_choice, check_odd, check_positive_float
from ..maps import AttentionMap, channel_map, spatial_map
from ..size_policy import check_grid_size, fit_to_grid

LOCAL_CONVS = ('sequence', 'per_cell')


@register_model()
class MLCA(AttentionModule):
    """Mixed Local Channel Attention (Wan et al., Engineering Applications of Artificial
    Intelligence 123 (2023) 106442, doi:10.1016/j.engappai.2023.106442; no arXiv).

    ``L = AdaptiveAvgPool(x)`` to a ``local_size`` grid (5 x 5) and ``G = GAP(L)`` (the mean
    of the grid, not of ``x``: they differ when H or W is not a multiple of 5). Local branch:
    the grid is read position-major as one sequence of ``25 C`` values (cell 0's C channels,
    then cell 1's, ...) and a 1-D convolution ``conv_local`` (k taps, no bias, zero padding
    at the two ends of the sequence) slides over it, so the last channels of one cell mix
    with the first channels of the next; ``a_l = sigmoid(conv_local(L))`` (N, C, 5, 5).
    Global branch: ECA on ``G``, ``a_g = sigmoid(conv(G))`` (N, C, 1, 1). The mixed grid
    gate ``m = (1 - w) a_g + w a_l`` (``w = local_weight = 0.5``) is "un-pooled" to (H, W)
    by an adaptive average pool (boundary pixels average two cells when H or W is not a
    multiple of 5; nearest repetition when it is), and ``y = x * m``.
    ``k`` is ECA's adaptive kernel size of ``in_channels`` (``t = int(|log2 C + b| /
    gamma)``, ``k = t`` if odd else ``t + 1``: 5 for C = 128..2047).
    Parameters: ``2 k`` (10 at C = 256).
    Paper position: in place of SE in the MobileNetV3 blocks of the official YOLOv5 code
    (after the depthwise conv's BN). For ResNets this library uses ``residual_end`` (SE's
    place); that choice is not from the paper. On MobileNetV2 the ``residual_end`` preset
    puts it after the depthwise ConvModule (after its activation).

    Deviations: none with the defaults (the official ``MLCA.py``; its conv weights keep
    PyTorch's default initialisation, as here). ``local_conv='per_cell'`` runs the local
    convolution over each cell's C channels separately (zero padding at each cell's ends)
    instead of across cell boundaries. Non-square grids (``local_size=(h, w)``) and an
    explicit ``kernel_size`` are extensions. Under ``torch.jit.trace`` (and so ONNX export)
    the two adaptive poolings are written as averaging matrices with the same values.

    Args:
        in_channels (int): Channels C.
        local_size (int | tuple): The local grid (official: 5).
        gamma (float): ``gamma`` of the adaptive kernel size (> 0, official 2).
        b (float): ``b`` of the adaptive kernel size (>= 0, official 1).
        local_weight (float): Weight ``w`` of the local gate, in [0, 1] (official 0.5).
        kernel_size (int, optional): Odd kernel size of both Conv1d; ``None`` (default) for
            the adaptive one.
        local_conv (str): ``'sequence'`` (official: across cell boundaries) or
            ``'per_cell'``.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Wan et al., Mixed local channel attention for object detection, Engineering '
             'Applications of Artificial Intelligence 123 (2023) 106442, '
             'doi:10.1016/j.engappai.2023.106442 (no arXiv)')
    paper_position = 'residual_end'
    _abbr_ = 'mlca'

    def __init__(self,
                 in_channels: int,
                 local_size=5,
                 gamma: float = 2,
                 b: float = 1,
                 local_weight: float = 0.5,
                 kernel_size: int | None = None,
                 local_conv: str = 'sequence',
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.local_size = check_grid_size(owner, local_size, 'local_size')
        gamma = check_positive_float(owner, 'gamma', gamma)
        b = check_positive_float(owner, 'b', b, allow_zero=True)
        self.local_weight = check_positive_float(owner, 'local_weight', local_weight,
                                                 allow_zero=True)
        if self.local_weight > 1:
            raise ValueError(f'{owner}: local_weight must be in [0, 1], got {local_weight}')
        self.local_conv = check_choice(owner, 'local_conv', local_conv, LOCAL_CONVS)
        if kernel_size is None:
            kernel_size = eca_kernel_size(in_channels, gamma, b)
        else:
            kernel_size = check_odd(owner, 'kernel_size', kernel_size)
        self.kernel_size = kernel_size
        pad = (kernel_size - 1) // 2
        # The official names: `conv` for the global branch, `conv_local` for the local one.
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=pad, bias=False)
        self.conv_local = nn.Conv1d(1, 1, kernel_size, padding=pad, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return x * self.gate(x)

    def gates(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The global gate ``a_g`` (N, C, 1, 1) and the local gate ``a_l`` (N, C, h, w) on
        the local grid."""
        n, c = x.shape[:2]
        gh, gw = self.local_size
        local = fit_to_grid(x, self.local_size, 'pool', type(self).__name__)
        glob = local.mean((2, 3))  # GAP of the grid, as the official code
        a_g = torch.sigmoid(self.conv(glob.view(n, 1, c))).view(n, c, 1, 1)
        seq = local.reshape(n, c, gh * gw).transpose(1, 2)  # (N, cells, C), position-major
        if self.local_conv == 'sequence':
            seq = seq.reshape(n, 1, gh * gw * c)
        else:
            seq = seq.reshape(n * gh * gw, 1, c)
        y = self.conv_local(seq).reshape(n, gh * gw, c).transpose(1, 2)
        return a_g, torch.sigmoid(y).reshape(n, c, gh, gw)

    def unpool(self, grid: torch.Tensor, size) -> torch.Tensor:
        """A grid map (N, C', h, w) "un-pooled" to ``size`` by an adaptive average pool."""
        return fit_to_grid(grid, tuple(size), 'pool', type(self).__name__)

    def mix(self, a_g: torch.Tensor, a_l: torch.Tensor) -> torch.Tensor:
        """The mixed grid gate ``(1 - w) a_g + w a_l`` (N, C, h, w)."""
        return a_g * (1 - self.local_weight) + a_l * self.local_weight

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The gate (N, C, H, W) that multiplies ``x``."""
        return self.unpool(self.mix(*self.gates(x)), x.shape[2:])

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'gate': the gate, mean over C (N, H, W); 'global_gate': ``a_g`` (N, C);
        'local_gate': ``a_l`` un-pooled to (H, W), mean over C (N, H, W)."""
        a_g, a_l = self.gates(x)
        size = x.shape[2:]
        return {
            'gate': spatial_map(self.unpool(self.mix(a_g, a_l), size), x.shape,
                                'mixed gate, mean over C'),
            'global_gate': channel_map(a_g, 'global gate'),
            'local_gate': spatial_map(self.unpool(a_l, size), x.shape,
                                      'local gate, mean over C'),
        }

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, local_size={self.local_size}, '
                f'kernel_size={self.kernel_size}, local_weight={self.local_weight}, '
                f'local_conv={self.local_conv!r}')
