"""Spatial and Channel Synergistic Attention (SCSA)."""
from typing import Dict, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_divisible, check_int, check_odd, check_positive_float
from ..gating import axis_pooled_gates
from ..maps import AttentionMap, channel_map, spatial_map

#: SMSA splits the channels into this many sub-features, one kernel size each.
SMSA_GROUPS = 4


@register_model()
class SCSA(AttentionModule):
    """Spatial and Channel Synergistic Attention (Si et al., 2024, arXiv:2407.05128).

    SMSA (spatial): ``x_h = mean_W(x)`` (N, C, H), ``x_w = mean_H(x)`` (N, C, W); the channels
    form 4 groups, group g filtered by a depthwise 1-D conv of kernel ``k_g`` shared by both
    directions; ``a_h = gate(GN_4(conv(x_h)))``, ``a_w = gate(GN_4(conv(x_w)))``;
    ``x' = x * a_h * a_w``.
    PCSA (channel): ``y = GN_1(down(x'))``; ``q, k, v`` = depthwise 1x1 of y; per head
    ``A = softmax(q k^T / sqrt(C / heads))`` (head_dim x head_dim, contracting the positions
    of y; ``F.scaled_dot_product_attention``, whose fused kernel need not materialise A);
    ``a_c = gate(mean_pos(dropout(A) v))``; ``out = x' * a_c``.
    Parameters: ``C/4 * sum(k_g) + C`` (SMSA convs) ``+ 4C`` (two GN(4)) ``+ 2C`` (GN(1))
    ``+ 3C`` (q, k, v; ``+ 3C`` with qkv_bias) ``+ C^2 ws^2`` (only 'recombination');
    16C with the defaults.

    Deviations (numerically equivalent unless noted):

    * the 4 depthwise convs run as ONE depthwise conv whose smaller kernels are zero-padded
      (centred) to the largest; their weights are stored flat in ``smsa_weight``: the
      official ``local_dwc, global_dwc_s/m/l`` weights flattened and concatenated in that
      order (``smsa_bias`` likewise). Both directions share that one conv call. These two
      and ``qkv_weight`` / ``qkv_bias`` (the per-channel scales of the depthwise 1x1 q, k, v)
      are plain parameters, not layers: no torch layer holds kernels of four sizes in one
      weight. SMSA's backward is hand-written
      (:func:`~cvattn_mm.attention.gating.axis_pooled_gates`, not twice differentiable);
      ``CVATTN_FAST_BACKWARD=0`` or :func:`cvattn_mm.attention.fast_backward.
      set_fast_backward` ``(False)`` runs plain autograd instead.
    * 'recombination' (an undefined method in the official code) moves each window into the
      channels and reduces them by a bias-free 1x1 conv ``C ws^2 -> C``; this is computed as
      the identical ``ws x ws`` conv ``recombine`` with stride ``ws`` (its weight is the 1x1
      weight reshaped).
    * a map smaller than the window along an axis (the official code crashes) is down-sampled
      with the window clipped to that axis (pooling the whole axis; 'recombination' zero-pads
      the map at the bottom/right up to one window). As in the official code, rows/columns
      that do not fill a whole window are left out of the down-sampling.
    * ``window_size=-1`` (global) honours 'max_pool' (the official code always averages);
      'recombination' needs a finite window and rejects -1.
    * the official ``fuse_bn``, ``norm_cfg`` and ``act_cfg`` arguments are dropped: the official
      code ignores them; the norms are GroupNorms fixed by the design (4 groups = the 4
      sub-features of SMSA, 1 group in PCSA, chosen to avoid batch noise) and the module has
      no activation other than its gates.
    * ``head_num`` defaults to 1, the single-head setting of the paper and of its released
      ImageNet configs (the official constructor has no default).

    Args:
        in_channels (int): Channels C; divisible by 4 and by ``head_num``.
        head_num (int): Heads of the channel self-attention.
        window_size (int): Window and stride of the down-sampling; -1 for global pooling.
        group_kernel_sizes (Sequence[int]): 4 odd kernel sizes, one per channel group.
        qkv_bias (bool): Biases in the q, k, v projections.
        down_sample_mode (str): 'avg_pool', 'max_pool' or 'recombination'.
        attn_drop_ratio (float): Dropout on the channel attention matrix.
        gate_layer (str): 'sigmoid', or 'softmax' (over positions of each direction for
            SMSA, over channels for PCSA).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Si et al., SCSA: Exploring the Synergistic Effects Between Spatial and Channel '
             'Attention, arXiv 2024, arXiv:2407.05128')
    paper_position = 'after_mid_conv'
    _abbr_ = 'scsa'

    def __init__(self,
                 in_channels: int,
                 head_num: int = 1,
                 window_size: int = 7,
                 group_kernel_sizes: Sequence[int] = (3, 5, 7, 9),
                 qkv_bias: bool = False,
                 down_sample_mode: str = 'avg_pool',
                 attn_drop_ratio: float = 0.,
                 gate_layer: str = 'sigmoid',
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        name = type(self).__name__
        check_divisible(name, 'in_channels', in_channels, SMSA_GROUPS,
                        'the number of SMSA channel groups')
        self.head_num = check_int(name, 'head_num', head_num, 1)
        check_divisible(name, 'in_channels', in_channels, head_num, 'head_num')
        self.window_size = check_int(name, 'window_size', window_size, -1)
        if window_size == 0:
            raise ValueError(f'{name}: window_size must be -1 (global pooling) or >= 1, got 0')
        if (not isinstance(group_kernel_sizes, (list, tuple))
                or len(group_kernel_sizes) != SMSA_GROUPS):
            raise ValueError(f'{name}: group_kernel_sizes must be a list of {SMSA_GROUPS} odd '
                             f'kernel sizes (one per channel group), got {group_kernel_sizes!r}')
        self.group_kernel_sizes = tuple(check_odd(name, f'group_kernel_sizes[{i}]', k)
                                        for i, k in enumerate(group_kernel_sizes))
        if not isinstance(qkv_bias, bool):
            raise ValueError(f'{name}: qkv_bias must be a bool, got {qkv_bias!r}')
        self.down_sample_mode = check_choice(name, 'down_sample_mode', down_sample_mode,
                                             ('avg_pool', 'max_pool', 'recombination'))
        if window_size == -1 and down_sample_mode == 'recombination':
            raise ValueError(f"{name}: down_sample_mode='recombination' needs a finite "
                             'window_size >= 1, got window_size=-1')
        self.attn_drop_ratio = check_positive_float(name, 'attn_drop_ratio', attn_drop_ratio,
                                                    allow_zero=True)
        if self.attn_drop_ratio >= 1:
            raise ValueError(f'{name}: attn_drop_ratio must be in [0, 1), got {attn_drop_ratio}')
        self.gate_layer = check_choice(name, 'gate_layer', gate_layer, ('sigmoid', 'softmax'))
        self.head_dim = in_channels // head_num
        self.scale = self.head_dim**-0.5

        # SMSA: the four depthwise kernels, flat, and where each tap goes in a (C, k_max) kernel.
        group = in_channels // SMSA_GROUPS
        self.pad = max(self.group_kernel_sizes) // 2
        self.smsa_weight = nn.Parameter(torch.empty(group * sum(self.group_kernel_sizes)))
        self.smsa_bias = nn.Parameter(torch.empty(in_channels))
        self.register_buffer('smsa_index', self._kernel_index(group), persistent=False)
        self.norm_h = build_norm_layer(dict(type='GN', num_groups=SMSA_GROUPS), in_channels)[1]
        self.norm_w = build_norm_layer(dict(type='GN', num_groups=SMSA_GROUPS), in_channels)[1]

        # PCSA.
        if self.down_sample_mode == 'recombination':
            self.recombine = nn.Conv2d(in_channels, in_channels, window_size, stride=window_size,
                                       bias=False)
        self.norm = build_norm_layer(dict(type='GN', num_groups=1), in_channels)[1]
        # Rows: the depthwise 1x1 q, k and v projections (weights of (C, 1, 1, 1) convs).
        self.qkv_weight = nn.Parameter(torch.empty(3, in_channels))
        self.qkv_bias = nn.Parameter(torch.empty(3, in_channels)) if qkv_bias else None
        self.init_special()

    def _kernel_index(self, group: int) -> torch.Tensor:
        """(C, k_max) indices into ``[0, *smsa_weight]``: 0 for the zero taps of a padded kernel."""
        k_max = 2 * self.pad + 1
        index = torch.zeros(SMSA_GROUPS, group, k_max, dtype=torch.long)
        offset = 1
        for g, k in enumerate(self.group_kernel_sizes):
            start = (k_max - k) // 2
            taps = torch.arange(offset, offset + group * k).view(group, k)
            index[g, :, start:start + k] = taps
            offset += group * k
        return index.view(SMSA_GROUPS * group, k_max)

    def init_special(self) -> None:
        """Defaults of the official ``nn.Conv1d``/``nn.Conv2d`` layers: U(-1/sqrt(fan_in), ...)."""
        group = self.in_channels // SMSA_GROUPS
        with torch.no_grad():
            bound_w = torch.cat([torch.full((group * k, ), k**-0.5)
                                 for k in self.group_kernel_sizes])
            bound_b = torch.tensor(self.group_kernel_sizes, dtype=torch.float).rsqrt()
            self.smsa_weight.copy_(torch.rand_like(self.smsa_weight).mul_(2).sub_(1) * bound_w)
            self.smsa_bias.copy_(torch.rand_like(self.smsa_bias).mul_(2).sub_(1)
                                 * bound_b.repeat_interleave(group))
            # The depthwise 1x1 convs have fan_in 1: U(-1, 1).
            nn.init.uniform_(self.qkv_weight, -1., 1.)
            if self.qkv_bias is not None:
                nn.init.uniform_(self.qkv_bias, -1., 1.)

    def _gate(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.softmax(dim) if self.gate_layer == 'softmax' else x.sigmoid()

    def _down_sample(self, x: torch.Tensor) -> torch.Tensor:
        ws = self.window_size
        if ws == -1:
            if self.down_sample_mode == 'max_pool':
                return x.amax((2, 3), keepdim=True)
            return x.mean((2, 3), keepdim=True)
        h, w = x.shape[2:]
        if self.down_sample_mode == 'recombination':
            if h < ws or w < ws:  # zeros up to one window: the top-left part of the kernel
                x = F.pad(x, (0, max(ws - w, 0), 0, max(ws - h, 0)))
            return self.recombine(x)
        # A window larger than the map is clipped to it along that axis.
        window = (min(ws, h), min(ws, w))
        if self.down_sample_mode == 'avg_pool':
            return F.avg_pool2d(x, window, window)
        return F.max_pool2d(x, window, window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = axis_pooled_gates(x, self.smsa_gates, self)
        return x * self.channel_gate(x)

    def smsa_gates(self, z_h: torch.Tensor, z_w: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        """SMSA's gates ``a_h`` (N, C, H, 1) and ``a_w`` (N, C, 1, W) of the row means ``z_h``
        (N, C, H, 1) and the column means ``z_w`` (N, C, 1, W)."""
        c, h, pad = z_h.shape[1], z_h.shape[2], self.pad
        # Both directions in one depthwise conv, separated by `pad` zeros.
        seq = torch.cat((F.pad(z_h[..., 0], (0, pad)), z_w[:, :, 0]), dim=2)  # (N, C, H+pad+W)
        kernel = F.pad(self.smsa_weight, (1, 0))[self.smsa_index].unsqueeze(1)  # (C, 1, k_max)
        s = F.conv1d(seq, kernel, self.smsa_bias, padding=pad, groups=c)
        a_h = self._gate(self.norm_h(s[..., :h]), -1)
        a_w = self._gate(self.norm_w(s[..., h + pad:]), -1)
        return a_h.unsqueeze(3), a_w.unsqueeze(2)

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """PCSA's gate (N, C, 1, 1): channel self-attention on the down-sampled map, one
        matrix per head."""
        n, c = x.shape[:2]
        y = self.norm(self._down_sample(x)).flatten(2)  # (N, C, L)
        qkv = y.unsqueeze(1) * self.qkv_weight[:, :, None]  # (N, 3, C, L)
        if self.qkv_bias is not None:
            qkv = qkv + self.qkv_bias[:, :, None]
        q, k, v = qkv.reshape(n, 3, self.head_num, self.head_dim, -1).unbind(1)
        drop = self.attn_drop_ratio if self.training else 0.
        # (N, heads, head_dim, L): the channels are the tokens, the positions their features.
        a_c = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        return self._gate(a_c.mean(3).reshape(n, c, 1, 1), 1)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'spatial_gate', SMSA's ``a_h a_w`` averaged over C (N, H, W), and 'channel_gate',
        PCSA's gate (N, C), computed on the SMSA output as in the forward."""
        a_h, a_w = self.smsa_gates(x.mean(3, keepdim=True), x.mean(2, keepdim=True))
        return {'spatial_gate': spatial_map(a_h * a_w, x.shape,
                                            'SMSA gate a_h x a_w, mean over C'),
                'channel_gate': channel_map(self.channel_gate(x * a_h * a_w),
                                            'PCSA channel gate')}

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, head_num={self.head_num}, '
                f'window_size={self.window_size}, group_kernel_sizes={self.group_kernel_sizes}, '
                f'down_sample_mode={self.down_sample_mode!r}, gate_layer={self.gate_layer!r}')
