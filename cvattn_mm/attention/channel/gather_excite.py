"""Gather-Excite."""
from collections import OrderedDict
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_int, reduced_channels
from ..fast_backward import is_tracing
from ..gating import pooled_gate
from ..map_norm import build_map_norm
from ..maps import AttentionMap, channel_map, spatial_map
from ..norm import norm_any_batch
from ..pointwise import PointwiseConv2d
from ..size_policy import check_grid_size, check_size_policy, fit_to_grid

#: The paper's operator pairs: parameter-free, parametric gather, parametric gather and excite.
VARIANTS = ('theta_minus', 'theta', 'theta_plus')


class FullDepthwiseConv2d(nn.Conv2d):
    """A depthwise convolution whose kernel covers the whole map: one weighted sum per
    channel, ``(N, C, k_h, k_w) -> (N, C, 1, 1)`` (groups C, no bias, no padding).

    It is an ``nn.Conv2d`` (state-dict keys, hooks, ``init_cfg`` layers and the tools that
    swap convolutions see an ordinary depthwise conv). On an input of the kernel's size, in
    eager mode, it computes the per-channel dot products as a product and a sum in
    ``promote_types(dtype, float32)`` and returns the conv's dtype (also under autocast):
    the same values without oneDNN's depthwise conv, whose forward with a kernel of the
    map's size is slow on CPU. Under tracing (FLOP counters, ``jit.trace``, ONNX,
    ``torch.compile``) and on other sizes it is the conv.

    Args:
        channels (int): C.
        kernel_size (tuple): ``(k_h, k_w)``, the size of the maps it reduces.
    """

    def __init__(self, channels: int, kernel_size):
        super().__init__(channels, channels, kernel_size, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_tracing() or tuple(x.shape[-2:]) != self.kernel_size:
            return super().forward(x)
        device = x.device.type
        if torch.is_autocast_enabled(device):  # the conv's output dtype under autocast
            dtype = torch.get_autocast_dtype(device)
        else:
            dtype = torch.promote_types(x.dtype, self.weight.dtype)
        acc = torch.promote_types(dtype, torch.float32)
        out = (x.to(acc) * self.weight.to(acc).squeeze(1)).sum((2, 3), keepdim=True)
        return out.to(dtype)


@register_model()
class GatherExcite(AttentionModule):
    """Gather-Excite (Hu et al., NeurIPS 2018, arXiv:1810.12348).

    ``y = x * sigmoid(excite(gather(x)))``, the gate resized (nearest) to H x W. The gather
    aggregates each channel over a spatial extent ``e`` (``extent``; 0 is the whole map):

    * ``variant='theta_minus'`` (GE-theta-minus, no parameters): global, the channel means,
      ``y = x * sigmoid(GAP(x))``; extent e: average pooling with a ``(2e - 1)`` window,
      stride e and padding ``e - 1`` (``ceil(H/e) x ceil(W/e)`` cells; the padded zeros are
      not counted).
    * ``variant='theta'`` (GE-theta): global, a depthwise conv whose kernel is the whole map
      (``grid_size``, see below) and a BN, ``(N, C, 1, 1)``; extent e (a power of two):
      ``log2(e)`` depthwise 3x3 stride-2 convs (padding 1), each followed by a BN, with a
      ReLU between them. The excite is the identity.
    * ``variant='theta_plus'`` (GE-theta-plus): theta's gather, then ReLU, and SE's excite:
      ``1x1 conv C -> C/r`` (biased), ReLU, ``1x1 conv C/r -> C`` (biased).

    Parameters: theta-minus ``0``; theta global ``C g_h g_w + 2C``, extent e
    ``log2(e) (9C + 2C)``; theta-plus: theta's ``+ 2 C C/r + C/r + C``. At C = 256:
    0 / 803,328 (global, 56x56 grid) / 8,448 (extent 8) / 811,792 (theta-plus global, 56x56).
    Paper position: on the residual branch after its last norm, before the addition (the
    official block scales the residual by the gate and adds the shortcut, Caffe's ``Axpy``).

    Size policy (global theta and theta-plus only: the official kernel is the feature size,
    56/28/14/7 in the four stages of a ResNet-50 at 224x224): the kernel is ``grid_size``;
    ``size_policy='pool'`` adaptive-average-pools other map sizes to the grid (on the grid
    size itself it is the official computation), ``'strict'`` raises for any other size
    (:mod:`~cvattn_mm.attention.size_policy`). theta-minus and the extent variants take any
    size. The initialisation is the official one: gather convs ``msra`` (He normal, fan in),
    excite convs normal with std 0.01 and zero biases, BNs weight 1 and bias 0. (The
    prototxts also train the excite biases at twice the learning rate without weight decay
    and every BN without weight decay: training settings of the whole network, not set
    here.)

    Deviations: with ``grid_size`` the feature size and the defaults, none from the
    official prototxts (hujie-frank/GENet ``RN50-GEPF``, ``-GEP``, ``-GEPP``: the global
    variants; the BN momentum there is Caffe's 0.95, PyTorch's 0.05:
    ``norm_cfg=dict(type='BN', momentum=0.05)``). The default ``grid_size=7`` pools larger
    maps to 7x7 first (a size-agnostic theta gather; the official ResNet-50 uses 56/28/14/7,
    see the ``resnet50-ge-theta-plus`` config). The extent variants have no official code,
    only figures (``GEPF8``, ``GEP8``, a "15x15, stride 8" pooling and "Interpolation"): as
    timm, the interpolation is nearest and the pooling does not count the padding; theta-plus
    with an extent (not in the paper) is theta's extent gather, ReLU and the excite MLP on the
    cells. timm's ``GatherExcite`` has no ReLU after the theta-plus gather. In training, a BN
    that sees one value per channel (batch 1 of a 1x1 gather) uses its running statistics
    instead of raising. The global theta-minus forward has a hand-written backward
    (:func:`~cvattn_mm.attention.gating.pooled_gate`), not twice differentiable;
    ``CVATTN_FAST_BACKWARD=0`` runs plain autograd.

    State-dict keys are timm's (``gather.conv1``, ``gather.norm1``, ..., ``mlp.fc1``,
    ``mlp.fc2``).

    Args:
        in_channels (int): Channels C.
        variant (str): ``'theta_minus'`` (the default: parameter-free and size-agnostic,
            the paper's ResNet-50 that outperforms ResNet-101), ``'theta'`` or
            ``'theta_plus'`` (the paper's best, size-bound when global).
        extent (int): 0 (global, the official prototxts) or the extent e >= 2 (8 in the
            official figures); a power of two for theta and theta-plus.
        grid_size (int | tuple): The kernel of the global theta / theta-plus gather (the
            map size it was built for); unused by the other variants.
        size_policy (str): ``'pool'`` or ``'strict'`` (global theta / theta-plus).
        reduction (int): theta-plus excite width divisor r (16).
        min_channels (int): Floor of the excite width.
        norm_cfg (dict): Norm after each gather conv (official: BN).
        act_cfg (dict): Activation between the gather convs and in theta-plus (ReLU).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel'
    paper = ('Hu et al., Gather-Excite: Exploiting Feature Context in Convolutional Neural '
             'Networks, NeurIPS 2018, arXiv:1810.12348')
    paper_position = 'residual_end'
    _abbr_ = 'ge'

    def __init__(self,
                 in_channels: int,
                 variant: str = 'theta_minus',
                 extent: int = 0,
                 grid_size=7,
                 size_policy: str = 'pool',
                 reduction: int = 16,
                 min_channels: int = 1,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='ReLU'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.variant = check_choice(owner, 'variant', variant, VARIANTS)
        self.extent = check_int(owner, 'extent', extent, 0)
        if self.extent == 1:
            raise ValueError(f'{owner}: extent must be 0 (global) or >= 2, got 1')
        parametric = variant != 'theta_minus'
        if parametric and self.extent & (self.extent - 1):
            raise ValueError(f'{owner}: extent must be 0 or a power of two for '
                             f"variant={variant!r} (log2(e) stride-2 convs), got {extent}")
        self.grid_size = check_grid_size(owner, grid_size)
        self.size_policy = check_size_policy(owner, size_policy)
        self.reduction = reduction
        self.gather = self._gather_layers(norm_cfg, act_cfg) if parametric else None
        self.mlp = None
        if variant == 'theta_plus':
            hidden = reduced_channels(owner, in_channels, reduction, min_channels)
            self.mlp = nn.Sequential(OrderedDict(
                fc1=PointwiseConv2d(in_channels, hidden), act=build_activation_layer(act_cfg),
                fc2=PointwiseConv2d(hidden, in_channels)))
        self.init_special()

    def _gather_layers(self, norm_cfg: dict, act_cfg: dict) -> nn.Sequential:
        """theta's gather: conv, norm (and activation) per stage; ReLU after the last norm
        in theta-plus (the official ``gather/relu``)."""
        c = self.in_channels
        if self.extent == 0:
            convs = [FullDepthwiseConv2d(c, self.grid_size)]
        else:
            convs = [nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c, bias=False)
                     for _ in range(self.extent.bit_length() - 1)]
        layers = OrderedDict()
        for i, conv in enumerate(convs, 1):
            layers[f'conv{i}'] = conv
            layers[f'norm{i}'] = build_map_norm(norm_cfg, c)
            if i < len(convs) or self.variant == 'theta_plus':
                layers[f'act{i}'] = build_activation_layer(act_cfg)
        return nn.Sequential(layers)

    def init_special(self) -> None:
        """The official initialisation: the gather convs He normal (Caffe's ``msra``, fan
        in), the excite convs normal with std 0.01 and zero biases."""
        if self.gather is not None:
            for layer in self.gather:
                if isinstance(layer, nn.Conv2d):
                    nn.init.kaiming_normal_(layer.weight, mode='fan_in', nonlinearity='relu')
        if self.mlp is not None:
            for fc in (self.mlp.fc1, self.mlp.fc2):
                nn.init.normal_(fc.weight, std=0.01)
                nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.gather is None and self.extent == 0:
            return pooled_gate(x, torch.sigmoid, self)
        return x * self.gate(x)

    def gather_context(self, x: torch.Tensor) -> torch.Tensor:
        """The gather: (N, C, 1, 1) global, (N, C, ceil(H/e), ceil(W/e)) with an extent e."""
        if self.gather is None:
            if self.extent == 0:
                return x.mean((2, 3), keepdim=True)
            e = self.extent
            return F.avg_pool2d(x, 2 * e - 1, e, e - 1, count_include_pad=False)
        if self.extent == 0:
            x = fit_to_grid(x, self.grid_size, self.size_policy, type(self).__name__)
        for layer in self.gather:
            x = norm_any_batch(layer, x)  # a plain call for the convs and activations
        return x

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The gate that multiplies ``x``: ``sigmoid(excite(gather(x)))``, (N, C, 1, 1)
        global, resized to (N, C, H, W) with an extent (nearest: the sigmoid and the resize
        commute)."""
        context = self.gather_context(x)
        if self.mlp is not None:
            context = self.mlp(context)
        gate = torch.sigmoid(context)
        if self.extent:
            gate = F.interpolate(gate, size=x.shape[-2:], mode='nearest')
        return gate

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``channel_gate``: the gate (N, C) (its mean over the positions with an extent);
        with an extent also ``spatial_gate``: its mean over the channels (N, H, W)."""
        gate = self.gate(x)
        if not self.extent:
            return {'channel_gate': channel_map(gate, 'channel gate')}
        return {'channel_gate': channel_map(gate.mean((2, 3)), 'gate, mean over positions'),
                'spatial_gate': spatial_map(gate, x.shape, 'gate, mean over channels')}

    def extra_repr(self) -> str:
        text = f'in_channels={self.in_channels}, variant={self.variant!r}, extent={self.extent}'
        if self.gather is not None and self.extent == 0:
            text += f', grid_size={self.grid_size}, size_policy={self.size_policy!r}'
        if self.mlp is not None:
            text += f', reduction={self.reduction}'
        return text
