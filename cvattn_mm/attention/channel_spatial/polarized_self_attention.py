"""Polarized self-attention (channel-only and spatial-only branches)."""
from typing import Dict

import torch
import torch.nn as nn

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_int, reduced_channels
from ..map_norm import build_map_norm
from ..maps import AttentionMap, channel_map, spatial_map
from ..norm import norm_any_batch
from ..pointwise import PointwiseConv2d


@register_model()
class PolarizedSelfAttention(AttentionModule):
    """Polarized self-attention (Liu et al., arXiv:2107.00782), parallel or sequential.

    Registered as ``PolarizedSelfAttention`` only: ``PSA`` also names EPSANet's pyramid split
    attention and mmseg's PSANet head, and stays an ambiguous name.

    With d = C / 2 (``reduction``), S = H W, all 1x1 convs bias-free:

    * channel-only branch: ``w = softmax_S(W_q x)`` (``conv_q_right``, C -> 1),
      ``z = W_v x w`` (``conv_v_right``, C -> d, the w-weighted sum over positions),
      ``A_ch = sigmoid(LN_C(W_z z))`` (``conv_up``, d -> C; ``norm``: LayerNorm over C);
    * spatial-only branch: ``q = softmax_d(GAP(W_q' x))`` (``conv_q_left``, C -> d),
      ``v = W_v' x`` (``conv_v_left``, C -> d), ``A_sp = sigmoid(q^T v)`` (1 x H x W);
    * ``mode='parallel'``: ``out = A_ch(x) x + A_sp(x) x``;
      ``mode='sequential'``: ``y = A_ch(x) x``, ``out = A_sp(y) y``.

    ``form='official'`` computes the official code (DeLightCMU/PSA,
    ``semantic-segmentation/network/PSA.py`` @20e307a), whose two classes differ from the
    paper and from each other:

    * ``PSA_p`` (``mode='parallel'``): no LayerNorm after ``conv_up``; the spatial branch
      does not softmax the pooled query, but softmaxes the product ``q^T v`` over S before
      the sigmoid;
    * ``PSA_s`` (``mode='sequential'``): ``conv_up`` is a bottleneck d -> d / 4 (bias),
      LayerNorm, ReLU, -> C (bias); the spatial branch softmaxes ``v`` over S per channel and
      does not softmax the pooled query.

    Parameters (C even, d = C / 2): paper form ``4 C d + C + 2 C`` (both modes; 131,840 at
    C = 256); official parallel ``4 C d + C`` (131,328); official sequential
    ``3 C d + C + d e + e + 2 e + e C + C`` with e = d / 4 (111,200).
    Paper position: ``after_mid_conv`` (the official HRNet puts ``PSA_s`` in every
    BasicBlock after conv1-bn1-relu, before conv2).

    Initialisation (official): the four q/v convs Kaiming-normal (fan_in, ReLU gain);
    ``conv_up`` and the norm keep PyTorch's defaults.

    Deviations: the paper form is the default (the official code is ``form='official'``);
    the default mode is ``'sequential'``, the one the official HRNet uses. The equations of
    the paper form follow the spec's reading (the public External-Attention-pytorch copy
    without its biases). Both forms compute ``GAP(W_q' x)`` as ``W_q'(GAP(x))`` and
    ``W_v x w`` as ``W_v(x w)`` (the same function for bias-free convs: the convs run on
    pooled vectors, not on the full map; hooks on them see (N, C, 1, 1) inputs). Softmaxes
    run in ``promote_types(dtype, float32)``. Official widths are ``C // 2`` and
    ``(C // 2) // 4`` (zero for C < 8, where the official code fails); here
    ``max(C // reduction, min_channels)`` and ``max(d // bottleneck_ratio, min_channels)``.
    The LayerNorm is a :class:`~cvattn_mm.attention.map_norm.ChannelLayerNorm` (keys
    ``norm.weight`` / ``conv_up.1.norm.weight`` of shape (width,); the official
    ``nn.LayerNorm([e, 1, 1])`` has (e, 1, 1)); the other state-dict keys are the official
    ones.

    Args:
        in_channels (int): Channels C.
        mode (str): ``'sequential'`` (default) or ``'parallel'``.
        form (str): ``'paper'`` (default) or ``'official'`` (``PSA_s`` / ``PSA_p``).
        reduction (int): d = max(C // reduction, min_channels) (official: 2).
        bottleneck_ratio (int): Bottleneck divisor of the official sequential ``conv_up``
            (official: 4; used only there).
        min_channels (int): Floor of the reduced widths.
        norm_cfg (dict): The norm after ``conv_up`` (paper) or inside it (official
            sequential); official: LayerNorm, eps 1e-5.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Liu et al., Polarized Self-Attention: Towards High-quality Pixel-wise '
             'Regression, arXiv:2107.00782')
    paper_position = 'after_mid_conv'
    _abbr_ = 'psa'

    def __init__(self,
                 in_channels: int,
                 mode: str = 'sequential',
                 form: str = 'paper',
                 reduction: int = 2,
                 bottleneck_ratio: int = 4,
                 min_channels: int = 1,
                 norm_cfg: dict = dict(type='LN', eps=1e-5),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.mode = check_choice(owner, 'mode', mode, ('sequential', 'parallel'))
        self.form = check_choice(owner, 'form', form, ('paper', 'official'))
        self.bottleneck_ratio = check_int(owner, 'bottleneck_ratio', bottleneck_ratio, 1)
        self.reduction = reduction
        self.min_channels = min_channels
        self.channels = reduced_channels(owner, in_channels, reduction, min_channels)
        d = self.channels
        self.conv_q_right = PointwiseConv2d(in_channels, 1, bias=False)
        self.conv_v_right = PointwiseConv2d(in_channels, d, bias=False)
        self.conv_q_left = PointwiseConv2d(in_channels, d, bias=False)
        self.conv_v_left = PointwiseConv2d(in_channels, d, bias=False)
        if form == 'official' and mode == 'sequential':
            e = max(d // self.bottleneck_ratio, min_channels)
            self.conv_up = nn.Sequential(PointwiseConv2d(d, e), build_map_norm(norm_cfg, e),
                                         nn.ReLU(inplace=True), PointwiseConv2d(e, in_channels))
        else:
            self.conv_up = PointwiseConv2d(d, in_channels, bias=False)
        self.norm = build_map_norm(norm_cfg, in_channels) if form == 'paper' else None
        self.init_special()

    def init_special(self) -> None:
        """The official initialisation: Kaiming normal (fan_in) on the q and v convs."""
        for conv in (self.conv_q_right, self.conv_v_right, self.conv_q_left, self.conv_v_left):
            nn.init.kaiming_normal_(conv.weight, mode='fan_in', nonlinearity='relu')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.mode == 'parallel':
            return x * self.channel_gate(x) + x * self.spatial_gate(x)
        y = x * self.channel_gate(x)
        return y * self.spatial_gate(y)

    def _up(self, z: torch.Tensor) -> torch.Tensor:
        if isinstance(self.conv_up, nn.Sequential):
            conv1, norm, relu, conv2 = self.conv_up
            return conv2(relu(norm_any_batch(norm, conv1(z))))
        z = self.conv_up(z)
        return z if self.norm is None else norm_any_batch(self.norm, z)

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """The channel-only gate ``A_ch`` (N, C, 1, 1)."""
        n, c, h, w = x.shape
        wide = torch.promote_types(x.dtype, torch.float32)
        weights = torch.softmax(self.conv_q_right(x).reshape(n, 1, h * w).to(wide), 2)
        # sum_s x_s w_s, then W_v: the same as W_v x w for the bias-free W_v
        pooled = torch.matmul(x.reshape(n, c, h * w).to(wide), weights.transpose(1, 2))
        z = self.conv_v_right(pooled.to(x.dtype)[:, :, :, None])
        return torch.sigmoid(self._up(z))

    def spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial-only gate ``A_sp`` (N, 1, H, W) of ``x`` (in sequential mode the
        forward calls it on ``A_ch(x) x``)."""
        n, _, h, w = x.shape
        wide = torch.promote_types(x.dtype, torch.float32)
        # GAP(W_q' x) computed as W_q'(GAP(x))
        query = self.conv_q_left(x.mean((2, 3), keepdim=True)).reshape(n, 1, -1).to(wide)
        value = self.conv_v_left(x).reshape(n, self.channels, h * w)
        if self.form == 'paper':
            scores = torch.matmul(torch.softmax(query, 2), value.to(wide))
        elif self.mode == 'parallel':
            scores = torch.softmax(torch.matmul(query, value.to(wide)), 2)
        else:
            scores = torch.matmul(query, torch.softmax(value.to(wide), 2))
        return torch.sigmoid(scores.to(x.dtype)).reshape(n, 1, h, w)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``channel_gate`` (N, C) and ``spatial_gate`` (N, H, W): in sequential mode the
        spatial gate is that of ``A_ch(x) x``, as in the forward."""
        gate = self.channel_gate(x)
        spatial = self.spatial_gate(x if self.mode == 'parallel' else x * gate)
        return {'channel_gate': channel_map(gate, 'channel-only gate'),
                'spatial_gate': spatial_map(spatial, x.shape, 'spatial-only gate')}

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, mode={self.mode!r}, form={self.form!r}, '
                f'channels={self.channels}')
