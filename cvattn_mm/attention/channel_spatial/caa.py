"""Context Anchor Attention, PKINet."""
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer
from mmcv.cnn.bricks.norm import infer_abbr
from mmengine.registry import MODELS

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_odd
from ..map_norm import build_map_norm
from ..maps import AttentionMap, channel_map, spatial_map
from ..norm import norm_any_batch

#: The norm and activation of the official ``CAA`` class's constructor defaults (PKINet
#: itself builds its CAAs without them, which is this module's default).
CLASS_DEFAULT_NORM = dict(type='BN', momentum=0.03, eps=0.001)
CLASS_DEFAULT_ACT = dict(type='SiLU')


class _ConvUnit(nn.Module):
    """A convolution with an optional norm and activation, keyed like mmcv's ``ConvModule``
    (``conv``, the norm under its mmcv abbreviation (``bn``, ``gn``, ...), ``activate``).

    The convolution has a bias only without a norm (``ConvModule``'s ``bias='auto'``); a
    batch norm that sees one value per channel in training uses its running statistics.
    """

    def __init__(self, channels: int, kernel_size: Tuple[int, int], groups: int,
                 norm_cfg: Optional[dict], act_cfg: Optional[dict]):
        super().__init__()
        padding = (kernel_size[0] // 2, kernel_size[1] // 2)
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=padding, groups=groups,
                              bias=norm_cfg is None)
        self.norm_name = None
        if norm_cfg is not None:
            kind = norm_cfg['type']
            self.norm_name = infer_abbr(MODELS.get(kind) if isinstance(kind, str) else kind)
            self.add_module(self.norm_name, build_map_norm(norm_cfg, channels))
        self.activate = None if act_cfg is None else build_activation_layer(act_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm_name is not None:
            x = norm_any_batch(getattr(self, self.norm_name), x)
        return x if self.activate is None else self.activate(x)


@register_model()
class CAA(AttentionModule):
    """Context Anchor Attention (Cai et al., Poly Kernel Inception Network for Remote Sensing
    Detection, CVPR 2024, arXiv:2403.06258).

    A gate for every channel and position from the local context:
    ``g = sigmoid(conv2(v(h(conv1(P(x))))))``, where ``P`` is a 7x7 average pool with
    stride 1 and zero padding 3 (the padded zeros counted: the sum is divided by 49 also at
    the border, as ``nn.AvgPool2d(7, 1, 3)``), ``conv1``, ``conv2`` are 1x1 C -> C
    convolutions, ``h`` a depthwise 1 x k_h and ``v`` a depthwise k_v x 1 convolution (both
    with bias, zero padding k // 2); ``y = x * g``.
    Parameters, as PKINet builds it (``norm_cfg=None``, ``act_cfg=None``: ``conv1`` and
    ``conv2`` plain convolutions with bias, the default): ``2 C^2 + (k_h + k_v + 4) C``
    (137,728 at C = 256, k = 11). With the class's constructor defaults (BN + SiLU after
    ``conv1`` and ``conv2``, no bias there): ``2 C^2 + (k_h + k_v + 6) C`` (138,240).
    Paper position: only inside PKINet's ``InceptionBottleneck`` (``own_block``): there the
    gate is computed from the block's pre-conv output and applied to its multi-kernel branch
    ``b`` as ``b + b * g``, with k = 11 + 2 i in block i. ``at='paper'`` inserts CAA at
    ``fallback_position = 'residual_end'`` (gating the residual branch, not from the paper).

    Official code: ``NUST-Machine-Intelligence-Laboratory/PKINet``,
    ``mmrotate/models/backbones/pkinet.py`` (``CAA`` at c1e72da). The state-dict keys are the
    official ones (``conv1.conv.weight``, ``h_conv.conv.bias``, ``conv2.bn.weight``, ...), so
    official checkpoints load unchanged. Initialisation: PKINet's (its backbone's
    ``init_weights``): every convolution ``N(0, 2 / fan_out)`` with
    ``fan_out = k_h k_w C_out / groups`` and bias 0; norms weight 1, bias 0.

    Deviations: the official ``CAA`` returns the gate ``g`` (its block multiplies); this
    module returns ``x * g`` (the gate is :meth:`gate`), and PKINet's ``b + b * g`` on another
    tensor is not reproduced by the plug-in. The official class built on its own (outside
    PKINet) initialises its convolutions with ``ConvModule``'s Kaiming normal over
    ``C_out k_h k_w`` (not divided by the groups: a std ``sqrt(C)`` times smaller for the
    depthwise ``h`` and ``v``); PKINet's backbone re-initialises them as here. The default
    is PKINet's form (no norm, no activation), not the class's constructor defaults
    (``norm_cfg=CLASS_DEFAULT_NORM, act_cfg=CLASS_DEFAULT_ACT`` give those). In training, a
    batch norm that sees one value per channel (batch 1 of a 1x1 map) uses its running
    statistics instead of raising. Even kernel sizes are refused (the official padding
    k // 2 would change the map size).

    Args:
        in_channels (int): Channels C.
        h_kernel_size (int): Odd width k_h of the horizontal depthwise kernel (official 11;
            PKINet uses 11 + 2 i in block i).
        v_kernel_size (int): Odd height k_v of the vertical depthwise kernel (official 11).
        pool_size (int): Odd size of the average pool (official 7).
        norm_cfg (dict, optional): Norm after ``conv1`` and ``conv2`` (PKINet: None; the
            class's default: ``dict(type='BN', momentum=0.03, eps=0.001)``).
        act_cfg (dict, optional): Activation after that norm (PKINet: None; the class's
            default: ``dict(type='SiLU')``).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Cai et al., Poly Kernel Inception Network for Remote Sensing Detection, '
             'CVPR 2024, arXiv:2403.06258')
    paper_position = 'own_block'
    fallback_position = 'residual_end'
    _abbr_ = 'caa'

    def __init__(self,
                 in_channels: int,
                 h_kernel_size: int = 11,
                 v_kernel_size: int = 11,
                 pool_size: int = 7,
                 norm_cfg: Optional[dict] = None,
                 act_cfg: Optional[dict] = None,
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.h_kernel_size = check_odd(owner, 'h_kernel_size', h_kernel_size)
        self.v_kernel_size = check_odd(owner, 'v_kernel_size', v_kernel_size)
        self.pool_size = check_odd(owner, 'pool_size', pool_size)
        c = in_channels
        self.conv1 = _ConvUnit(c, (1, 1), 1, norm_cfg, act_cfg)
        self.h_conv = _ConvUnit(c, (1, self.h_kernel_size), c, None, None)
        self.v_conv = _ConvUnit(c, (self.v_kernel_size, 1), c, None, None)
        self.conv2 = _ConvUnit(c, (1, 1), 1, norm_cfg, act_cfg)
        self.init_special()

    def init_special(self) -> None:
        """PKINet's initialisation: convolutions ``N(0, 2 groups / (k_h k_w C_out))``, bias 0
        (the norms keep weight 1 and bias 0)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0., math.sqrt(2. / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return x * self.gate(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The context ``P(x)``: a k x k average with stride 1, zero padding counted."""
        return F.avg_pool2d(x, self.pool_size, 1, self.pool_size // 2, count_include_pad=True)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The gate ``g`` (N, C, H, W) that multiplies ``x`` (the official ``CAA``'s output)."""
        return torch.sigmoid(self.conv2(self.v_conv(self.h_conv(self.conv1(self.pool(x))))))

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """The gate averaged over C ('gate', (N, H, W)) and over positions ('channel_gate',
        (N, C))."""
        g = self.gate(x)
        return {
            'gate': spatial_map(g, x.shape, 'context anchor gate, mean over C'),
            'channel_gate': channel_map(g.mean((2, 3)), 'context anchor gate, mean over '
                                        'positions'),
        }

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, h_kernel_size={self.h_kernel_size}, '
                f'v_kernel_size={self.v_kernel_size}, pool_size={self.pool_size}')
