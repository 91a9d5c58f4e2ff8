"""Self-calibrated convolution (SCNet)."""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import register_model
from ..checks import check_choice, check_int
from ..conv_replacement import ConvReplacement
from ..map_norm import build_map_norm
from ..maps import AttentionMap, spatial_map
from ..norm import norm_any_batch


@register_model()
class SCConv(ConvReplacement):
    """Self-calibrated convolution (Liu et al., CVPR 2020, doi:10.1109/CVPR42600.2020.01011).

    Replaces the 3x3 convolution of a residual block (``conv2`` of a Bottleneck). The input
    is split into two halves of ``C_in / 2`` channels, ``x_a`` (the first) and ``x_b``:

    * ``out_a = K1(x_a)``: a plain 3x3 conv;
    * ``T = sigmoid(x_b + Up(BN(K2(AvgPool_r(x_b)))))``: the self-calibration gate, with
      ``Up`` a nearest resize to the size of ``x_b``;
    * ``out_b = K4(BN(K3(x_b)) * T)``;
    * ``out = cat(out_a, out_b)`` (N, C_out, H_out, W_out).

    K1 and K4 (``C_in / 2 -> C_out / 2``) take the replaced conv's stride; K2 and K3
    (``C_in / 2 -> C_in / 2``) have stride 1. All four are 3x3 with the replaced conv's
    dilation (padding = dilation) and groups (the block's cardinality), without bias, as in
    the official code. In the official ``SCBottleneck`` K1 and K4 end with a BN and each half
    with a ReLU; here the host's norm after the replaced conv and its ReLU play that role
    (both act per channel, so this is exact), and the official pair of 1x1 convs
    ``conv1_a`` / ``conv1_b`` is the host's ``conv1`` with its output split in two.
    Parameters: ``9/g (C_in C_out / 2 + C_in^2 / 2) + 2 C_in``, i.e. for ``C_in = C_out =
    C`` the replaced conv ``9 C^2 / g`` plus the two inner BNs ``2C`` (590,336 at C = 256).
    Paper position: in place of the 3x3 conv of every Bottleneck (SCNet), keeping the host's
    norm and ReLU after it.

    The unit is block-diagonal between the halves (``out_a`` never sees ``x_b``), so it
    cannot start as the replaced dense conv (:meth:`init_from_conv` raises).
    :meth:`init_special` is the official SCNet initialisation: Kaiming normal
    (``fan_out``, ReLU gain) for the four convs, the norms at weight 1 and bias 0.

    Deviations:

    * The average pool uses ceil mode by default (the last, partial window averages the
      positions it covers), so that every map size >= 1 works; the official pool uses floor
      mode, which ignores the last ``H mod r`` rows and ``W mod r`` columns in the pooled
      context and gives an empty tensor below ``r``. Both agree when ``r`` divides H and W
      (ResNet-50 at 224: 56 and 28, but not 14 and 7). ``ceil_mode=False`` reproduces the
      official pool and raises a ``ValueError`` on maps smaller than ``r``.
    * ``Up``: the official code (and the default) resizes with nearest; the paper's text
      describes a bilinear interpolation (as Papers with Code quotes it; not checked on the
      PDF), which ``upsample_mode='bilinear'`` (align_corners=False) computes.
    * ``C_in != C_out`` (not in the official code, where both halves keep their width): K2
      and K3 keep ``C_in / 2`` channels (the gate multiplies them) and K1, K4 map
      ``C_in / 2 -> C_out / 2``.
    * In training, a batch norm that sees one value per channel (batch 1 on a 1x1 pooled map)
      uses its running statistics instead of raising.

    Args:
        in_channels (int): Input channels of the replaced conv (even).
        out_channels (int | None): Output channels of the replaced conv (even; ``None``:
            ``in_channels``).
        kernel_size (int): Kernel size of the replaced conv (3).
        stride (int): Stride of the replaced conv (K1 and K4).
        padding (int | None): Padding of the replaced conv: the size-keeping ``dilation``.
        dilation (int): Dilation of the replaced conv (all four convs, as in the official code).
        groups (int): Groups of the replaced conv (all four convs; must divide both halves).
        bias (bool): Must be False (the official convs have none).
        pooling_r (int): Kernel and stride r of the average pool (official: 4).
        ceil_mode (bool): Ceil-mode pooling (default); False is the official floor mode.
        upsample_mode (str): ``'nearest'`` (official) or ``'bilinear'`` (the paper's text).
        norm_cfg (dict): Norm after K2 and after K3 (official: BN).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride)).
    """

    family = 'spatial'
    paper = ('Liu et al., Improving Convolutional Networks with Self-Calibrated Convolutions, '
             'CVPR 2020, doi:10.1109/CVPR42600.2020.01011 (no arXiv)')
    _abbr_ = 'scconv'
    takes_groups = True
    takes_dilation = True
    no_conv_init = ('the unit is block-diagonal between the halves (out_a never sees x_b), so '
                    'the cross-half weights of a dense conv cannot be represented')

    def __init__(self,
                 in_channels: int,
                 out_channels: Optional[int] = None,
                 kernel_size: int = 3,
                 stride: int = 1,
                 padding: Optional[int] = None,
                 dilation: int = 1,
                 groups: int = 1,
                 bias: bool = False,
                 pooling_r: int = 4,
                 ceil_mode: bool = True,
                 upsample_mode: str = 'nearest',
                 norm_cfg: dict = dict(type='BN'),
                 init_cfg=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, init_cfg=init_cfg)
        name = type(self).__name__
        for what, channels in (('in_channels', in_channels),
                               ('out_channels', self.out_channels)):
            if channels % (2 * self.groups):
                raise ValueError(f'{name}: {what}={channels} must be divisible by 2 * groups = '
                                 f'{2 * self.groups} (two halves, each split in groups='
                                 f'{self.groups})')
        self.pooling_r = check_int(name, 'pooling_r', pooling_r, 1)
        if not isinstance(ceil_mode, bool):
            raise ValueError(f'{name}: ceil_mode must be True or False, got {ceil_mode!r}')
        self.ceil_mode = ceil_mode
        self.upsample_mode = check_choice(name, 'upsample_mode', upsample_mode,
                                          ('nearest', 'bilinear'))
        half_in, half_out = in_channels // 2, self.out_channels // 2
        self.half_in = half_in

        def conv(out, stride):
            return nn.Conv2d(half_in, out, 3, stride, self.padding, self.dilation, self.groups,
                             bias=False)

        self.k1 = conv(half_out, self.stride)
        # count_include_pad=False: the partial windows of ceil mode average the positions
        # they cover (what avg_pool2d does with padding 0 anyway; explicit for ONNX)
        self.pool = nn.AvgPool2d(self.pooling_r, self.pooling_r, ceil_mode=ceil_mode,
                                 count_include_pad=False)
        self.k2 = conv(half_in, 1)
        self.k2_norm = build_map_norm(norm_cfg, half_in)
        self.k3 = conv(half_in, 1)
        self.k3_norm = build_map_norm(norm_cfg, half_in)
        self.k4 = conv(half_out, self.stride)
        self.init_special()

    def init_special(self) -> None:
        """The official SCNet initialisation: Kaiming normal (``fan_out``, ReLU gain) for
        K1 to K4, in that order; the norms at weight 1 and bias 0."""
        for conv in (self.k1, self.k2, self.k3, self.k4):
            nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')
        for norm in (self.k2_norm, self.k3_norm):
            if getattr(norm, 'weight', None) is not None:
                nn.init.ones_(norm.weight)
            if getattr(norm, 'bias', None) is not None:
                nn.init.zeros_(norm.bias)

    def check_input(self, x: torch.Tensor) -> None:
        """As :meth:`ConvReplacement.check_input`; in floor mode (``ceil_mode=False``) the
        map must be at least ``pooling_r`` on each side."""
        super().check_input(x)
        if (not self.ceil_mode and not torch.jit.is_tracing()
                and min(x.shape[-2:]) < self.pooling_r):
            raise ValueError(f'{type(self).__name__}: ceil_mode=False (the official floor-mode '
                             f'pooling) needs maps of at least pooling_r={self.pooling_r} per '
                             f'side, got {tuple(x.shape[-2:])}; use ceil_mode=True')

    def halves(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(x_a, x_b)``: the first and the second half of the input channels."""
        return x[:, :self.half_in], x[:, self.half_in:]

    def calibration(self, x_b: torch.Tensor) -> torch.Tensor:
        """The self-calibration gate ``T = sigmoid(x_b + Up(BN(K2(AvgPool_r(x_b)))))``
        (N, C_in / 2, H, W) that multiplies ``BN(K3(x_b))``."""
        context = norm_any_batch(self.k2_norm, self.k2(self.pool(x_b)))
        if self.upsample_mode == 'nearest':
            up = F.interpolate(context, size=x_b.shape[-2:], mode='nearest')
        else:
            up = F.interpolate(context, size=x_b.shape[-2:], mode='bilinear',
                               align_corners=False)
        return torch.sigmoid(x_b + up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x_a, x_b = self.halves(x)
        out_a = self.k1(x_a)
        out_b = self.k4(norm_any_batch(self.k3_norm, self.k3(x_b)) * self.calibration(x_b))
        return torch.cat((out_a, out_b), 1)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``calibration_gate``: the gate ``T`` of :meth:`calibration` on the input grid,
        averaged over the channels of the calibrated half."""
        x_b = self.halves(x)[1]
        return {'calibration_gate': spatial_map(self.calibration(x_b), x.shape,
                                                'self-calibration gate (mean over x_b)')}

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, pooling_r={self.pooling_r}, '
                f'ceil_mode={self.ceil_mode}, upsample_mode={self.upsample_mode!r}')
