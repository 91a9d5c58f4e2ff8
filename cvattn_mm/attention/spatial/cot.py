"""Contextual Transformer block (CoT): a replacement of the 3x3 conv of a residual block."""
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import register_model
from ..checks import check_choice, check_divisible, check_int, check_odd, reduced_channels
from ..conv_replacement import ConvReplacement
from ..maps import AttentionMap, channel_map
from ..norm import norm_any_batch
from ..pointwise import PointwiseConv2d


@register_model()
class CoT(ConvReplacement):
    """Contextual Transformer block (Li et al., Contextual Transformer Networks for Visual
    Recognition, TPAMI 2022, arXiv:2107.12292): the ``CotLayer`` of CoTNet, in place of the
    3x3 conv (and its norm and activation) of a residual block.

    With ``C`` = in_channels, ``C'`` = out_channels, ``k`` = kernel_size, ``G = C' / s``
    (``s`` = ``share_planes``):

    * static context ``k1 = ReLU(BN(Conv_kxk, groups g(x)))`` (``C -> C'``, ``g`` =
      ``key_groups``, no bias);
    * local weights ``w = GN_G(Conv1x1(ReLU(BN(Conv1x1([x; k1])))))``: ``C + C' -> C' / e``
      (no bias, ``e`` = ``embed_reduction``) then ``C' / e -> k^2 G`` (bias), group norm with
      ``G`` groups; viewed as ``(G, k^2, H, W)`` (channel ``g k^2 + j``: group ``g``, window
      offset ``j``);
    * values ``v = BN(Conv1x1(x))`` (``C -> C'``, no bias);
    * dynamic context ``k2 = SiLU(BN(a))`` with the local aggregation
      ``a_c(p) = sum_j w_{c mod G}(p, j) v_c(p + d_j)`` over the zero-padded ``k x k`` window
      (the official CuPy ``aggregation_zeropad``: channel ``c`` uses weight group
      ``c mod G``), computed as a sum over the ``k^2`` shifted views of the padded ``v``
      (on one CPU thread, N = 8, C = 64-256 on 56x56 to 14x14 maps: forward 3.6 to 6 times,
      forward plus backward 1.4 to 2.9 times faster than ``F.unfold``, which writes ``k^2``
      copies of ``v``; at C = 512, 7x7 unfold's backward is faster; it traces and exports to
      ONNX as slices);
    * fusion (split attention, radix 2): ``z = GAP(k2 + k1)``,
      ``l = Conv1x1(ReLU(BN(Conv1x1(z))))`` (``C' -> A -> 2 C'``, both with bias,
      ``A = max(2 C' // r, m)``, ``r`` = ``reduction``, ``m`` = ``min_channels``), viewed as
      ``(C', 2)`` (entries ``2c``, ``2c + 1`` belong to channel ``c``),
      ``a = softmax`` over the 2 entries; ``y = a_0 k2 + a_1 k1``.

    A stride of 2 is a 3x3 average pool with stride 2 and padding 1 (zeros counted in the
    mean, ``count_include_pad=True``, as the official ``Bottleneck``'s ``avd``) before the
    layer, which then runs at stride 1: the output has the replaced conv's size
    ``ceil(H / 2)``.

    Parameters (``C = C'``, defaults, ``k = 3``): ``9 C^2 / 4 + 2C`` (key) ``+ C^2 + C +
    (C / 2)(9 C / 8) + 9 C / 8 + 9 C / 4`` (embed) ``+ C^2 + 2C`` (value) ``+ 2C`` (BN)
    ``+ (C + 3) A + 2 C A + 2C`` (fusion), ``A = max(C / 2, 32)``: 417,248 at C = 256
    (the replaced 3x3 conv has 589,824 and its BN 512).
    Paper position: in place of the 3x3 conv of every Bottleneck, with its norm and
    activation (``absorbs_norm``: the insertion swaps the host's norm after the conv for
    ``nn.Identity``).

    The state-dict keys are the official ``CotLayer``'s (``key_embed.*``, ``embed.*``,
    ``conv1x1.*``, ``bn``, ``se.*``); the official code has no initialisation of its own
    (its ResNet's Kaiming init of every conv applies to the host's convs alike).

    Deviations: none with the defaults for ``out_channels = in_channels`` and stride 1 or 2,
    up to the host block: mmpretrain's and mmdet's (and torchvision's) ``Bottleneck`` apply
    one shared ``ReLU`` after ``norm2``, which stays after the replaced ``conv2``, where the
    official CoTNet ``Bottleneck`` has no activation after ``CotLayer``. So the host computes
    ``ReLU(y)``: ``k1 >= 0`` and ``SiLU >= -0.2785``, so ``y >= -0.2785 a_0 > -0.2785`` and
    the ReLU changes only outputs in ``(-0.2785, 0)`` (by less than 0.2785); no option of the
    module removes it (the insertion would have to wrap the block).
    Extensions (the official layer is ``C -> C`` with stride 1, after the block's pool): an
    ``out_channels`` other than ``in_channels`` maps ``C -> C'`` in the key and value convs,
    the first embed conv takes ``C + C'`` channels and the rest is sized by ``C'`` (with
    ``C' = C`` this is the official layer); kernel sizes other than 3 (odd) size the key conv
    and the aggregation window as the official ``CotLayer(dim, kernel_size)`` does. Not
    taken: ``groups > 1`` of the replaced conv (CoTNeXt's ``CoXtLayer`` is another layer;
    the key conv's groups are ``key_groups`` whatever the replaced conv's), dilation (the
    official layer has none), strides other than 1 and 2 (the official pool is 3x3/2), and a
    conv bias. In training, a batch norm that sees one value per channel (batch 1 of the
    pooled fusion vector or of a 1x1 map) uses its running statistics instead of raising.
    Exact init from the replaced conv: impossible (``no_conv_init``).

    Args:
        in_channels (int): Input channels C of the replaced conv.
        out_channels (int | None): Output channels C' (``None``: C); a multiple of
            ``share_planes`` and ``key_groups``.
        kernel_size (int): The replaced conv's kernel k (odd): the key conv's kernel and the
            aggregation window.
        stride (int): 1 or 2 (2: the 3x3/2 average pool first).
        padding (int | None): Must be the size-keeping ``(k - 1) // 2``.
        dilation (int): Must be 1.
        groups (int): Must be 1.
        bias (bool): Must be False.
        key_groups (int): Groups of the key conv (official 4).
        share_planes (int): Channels sharing one aggregation weight: ``G = C' / share_planes``
            weight groups (official 8).
        embed_reduction (int): Width ``C' / embed_reduction`` of the embed's hidden layer
            (official 2).
        reduction (int): The fusion's hidden width is ``max(2 C' // reduction,
            min_channels)`` (official 4).
        min_channels (int): Its floor (official 32).
        init_cfg (dict | list[dict], optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C', ceil(H / stride), ceil(W / stride)).
    """

    family = 'spatial'
    paper = ('Li et al., Contextual Transformer Networks for Visual Recognition, TPAMI 2022, '
             'arXiv:2107.12292')
    _abbr_ = 'cot'
    kernel_sizes = None  # any odd kernel (checked below)
    absorbs_norm = True
    no_conv_init = ('its key conv is grouped (key_groups) where the replaced conv is dense, '
                    'and its output is a softmax blend of the key with a locally aggregated '
                    'value, which no choice of weights reduces to a conv')
    radix = 2

    def __init__(self,
                 in_channels: int,
                 out_channels: Optional[int] = None,
                 kernel_size: int = 3,
                 stride: int = 1,
                 padding: Optional[int] = None,
                 dilation: int = 1,
                 groups: int = 1,
                 bias: bool = False,
                 key_groups: int = 4,
                 share_planes: int = 8,
                 embed_reduction: int = 2,
                 reduction: int = 4,
                 min_channels: int = 32,
                 init_cfg=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, init_cfg=init_cfg)
        owner = type(self).__name__
        check_odd(owner, 'kernel_size', kernel_size)
        check_choice(owner, 'stride', self.stride, (1, 2))
        self.key_groups = check_int(owner, 'key_groups', key_groups, 1)
        self.share_planes = check_int(owner, 'share_planes', share_planes, 1)
        self.embed_reduction = check_int(owner, 'embed_reduction', embed_reduction, 1)
        c_in, c_out, k = in_channels, self.out_channels, self.kernel_size
        check_divisible(owner, 'in_channels', c_in, self.key_groups, 'key_groups')
        check_divisible(owner, 'out_channels', c_out, self.key_groups, 'key_groups')
        check_divisible(owner, 'out_channels', c_out, self.share_planes, 'share_planes')
        if self.embed_reduction > c_out:
            raise ValueError(f'{owner}: embed_reduction={embed_reduction} is larger than '
                             f'out_channels={c_out}')
        self.weight_groups = c_out // self.share_planes
        self.hidden = reduced_channels(owner, self.radix * c_out, reduction, min_channels)
        self.reduction, self.min_channels = reduction, min_channels

        self.avd = nn.AvgPool2d(3, 2, padding=1) if self.stride == 2 else None
        self.key_embed = nn.Sequential(
            nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=self.key_groups, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
        embed_width = c_out // self.embed_reduction
        self.embed = nn.Sequential(
            nn.Conv2d(c_in + c_out, embed_width, 1, bias=False), nn.BatchNorm2d(embed_width),
            nn.ReLU(inplace=True), nn.Conv2d(embed_width, k * k * self.weight_groups, 1),
            nn.GroupNorm(self.weight_groups, k * k * self.weight_groups))
        self.conv1x1 = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False),
                                     nn.BatchNorm2d(c_out))
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU(inplace=True)
        self.se = nn.Sequential(
            PointwiseConv2d(c_out, self.hidden), nn.BatchNorm2d(self.hidden),
            nn.ReLU(inplace=True), PointwiseConv2d(self.hidden, self.radix * c_out))

    @staticmethod
    def _run(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """``layers`` one by one, each batch norm through :func:`norm_any_batch`."""
        for layer in layers:
            x = norm_any_batch(layer, x) if isinstance(layer, nn.BatchNorm2d) else layer(x)
        return x

    def static_context(self, x: torch.Tensor) -> torch.Tensor:
        """The static context ``k1 = ReLU(BN(key conv(x)))`` (N, C', H, W) of the (pooled)
        input."""
        return self._run(self.key_embed, x)

    def local_weights(self, x: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """The aggregation weights ``w`` (N, G, k^2, H, W) from ``[x; k1]``."""
        w = self._run(self.embed, torch.cat([x, key], dim=1))
        n, _, h, wd = w.shape
        return w.reshape(n, self.weight_groups, self.kernel_size**2, h, wd)

    def aggregate(self, value: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The local aggregation ``a_c(p) = sum_j w_{c mod G}(p, j) v_c(p + d_j)`` over the
        zero-padded ``k x k`` window, as a sum over the ``k^2`` shifted views of the padded
        ``value``."""
        n, c, h, w = value.shape
        k, g = self.kernel_size, self.weight_groups
        p = (k - 1) // 2
        padded = F.pad(value, (p, p, p, p)).reshape(n, c // g, g, h + 2 * p, w + 2 * p)
        weights = weights.unsqueeze(1)  # (N, 1, G, k^2, H, W): one weight per c mod G
        out = None
        for i in range(k):
            for j in range(k):
                term = padded[..., i:i + h, j:j + w] * weights[:, :, :, i * k + j]
                out = term if out is None else out + term
        return out.reshape(n, c, h, w)

    def dynamic_context(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The dynamic context ``k2 = SiLU(BN(aggregate(BN(Conv1x1(x)), w)))``."""
        value = self._run(self.conv1x1, x)
        out = self.aggregate(value, weights).to(value.dtype)
        return self.act(norm_any_batch(self.bn, out))

    def fusion_weights(self, dynamic: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """The split-attention weights ``a`` (N, C', 2): ``[..., 0]`` multiplies the dynamic
        context ``k2``, ``[..., 1]`` the static ``k1``; a softmax over the last axis, in
        ``promote_types(dtype, float32)``."""
        pooled = (dynamic + key).mean((2, 3), keepdim=True)
        logits = self._run(self.se, pooled).reshape(pooled.shape[0], -1, self.radix)
        dtype = torch.promote_types(logits.dtype, torch.float32)
        return torch.softmax(logits.to(dtype), dim=2).to(dynamic.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.avd is not None:
            x = self.avd(x)
        key = self.static_context(x)
        dynamic = self.dynamic_context(x, self.local_weights(x, key))
        attn = self.fusion_weights(dynamic, key)
        return dynamic * attn[..., 0, None, None] + key * attn[..., 1, None, None]

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``dynamic_context_weight``: the fusion weight ``a_0`` (N, C') of the dynamic
        context (the static context gets ``1 - a_0``); ``centre_share``: per position, the
        share of the window centre in the absolute aggregation weights,
        ``|w_g(p, centre)| / sum_j |w_g(p, j)|``, averaged over the ``G`` weight groups
        (N, H', W'), in [0, 1] (1: the position keeps its own value only)."""
        self.check_input(x)
        if self.avd is not None:
            x = self.avd(x)
        key = self.static_context(x)
        weights = self.local_weights(x, key)
        attn = self.fusion_weights(self.dynamic_context(x, weights), key)
        magnitude = weights.abs()
        total = magnitude.sum(2).clamp_min(torch.finfo(magnitude.dtype).tiny)
        share = (magnitude[:, :, self.kernel_size**2 // 2] / total).mean(1)
        return {'dynamic_context_weight': channel_map(attn[..., 0],
                                                      'fusion weight of the dynamic context'),
                'centre_share': AttentionMap('spatial', share,
                                             'share of the centre in the local weights')}

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, key_groups={self.key_groups}, '
                f'share_planes={self.share_planes}, embed_reduction={self.embed_reduction}, '
                f'hidden={self.hidden}')
