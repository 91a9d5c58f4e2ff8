"""Shuffle attention (SA-Net)."""
from typing import Dict, Tuple

import torch
import torch.nn as nn

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_divisible, check_int, check_positive_float
from ..maps import AttentionMap, channel_map, spatial_map


@register_model()
class ShuffleAttention(AttentionModule):
    """Shuffle attention (Zhang and Yang, SA-Net, ICASSP 2021, arXiv:2102.00240).

    The channels are split into ``G`` groups (``x`` viewed as (N G, C/G, H, W)) and each group
    into two halves ``x0``, ``x1`` of ``k = C/2G`` channels. Channel half:
    ``x0 * sigmoid(w_c GAP(x0) + b_c)``; spatial half: ``x1 * sigmoid(w_s GN(x1) + b_s)``,
    where GN is a group norm with ``k`` groups of one channel (an instance norm with its own
    affine) and ``w_c, b_c, w_s, b_s`` are per-channel (k values each, shared by the groups).
    The halves are concatenated back to (N, C, H, W), then shuffled with 2 groups: output
    channel ``2i`` is channel ``i``, output channel ``2i + 1`` is channel ``C/2 + i``.
    Parameters: ``4k`` (``cweight, cbias, sweight, sbias``) ``+ 2k`` (the GN's affine)
    ``= 3C/G`` (12 at C = 256, G = 64).
    Paper position: on the residual branch after its last norm, before the addition
    (after bn3 in the official ``SABottleneck``).

    At initialisation (official: ``w_c = w_s = 0``, ``b_c = b_s = 1``) every gate is
    ``sigmoid(1) ~ 0.731`` and the output is ``sigmoid(1)`` times the shuffled input. The
    module is not an identity at initialisation: inserting it into a pretrained backbone
    permutes conv3's output channels against the shortcut (use the insertion's
    ``identity_init`` there).

    Deviations: none with the defaults at ``C >= 2G`` (every ResNet-50 block: C >= 256). The
    official code only works when ``C`` is a multiple of ``2G``; here, for ``C < 2G``, the
    group count is reduced to ``C // 2`` (one channel per half, e.g. 32 groups at C = 64)
    instead; ``clamp_groups=False`` raises a ValueError as the official code fails. ``C``
    must be a multiple of twice the (reduced) group count. The state-dict keys are the
    official ``sa_layer``'s (``cweight``, ``cbias``, ``sweight``, ``sbias``, ``gn.*``).
    Popular copies (External-Attention-pytorch) default to ``G = 8``: pass ``groups=8``.

    Args:
        in_channels (int): Channels C.
        groups (int): Groups G (official: 64).
        clamp_groups (bool): Reduce G to ``C // 2`` when ``C < 2G`` (default); ``False``
            raises instead.
        eps (float): The group norm's epsilon (official: 1e-5).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Zhang and Yang, SA-Net: Shuffle Attention for Deep Convolutional Neural Networks, '
             'ICASSP 2021, arXiv:2102.00240')
    paper_position = 'residual_end'
    _abbr_ = 'sa'

    def __init__(self,
                 in_channels: int,
                 groups: int = 64,
                 clamp_groups: bool = True,
                 eps: float = 1e-5,
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.groups = check_int(owner, 'groups', groups, 1)
        if not isinstance(clamp_groups, bool):
            raise ValueError(f'{owner}: clamp_groups must be a bool, got {clamp_groups!r}')
        self.clamp_groups = clamp_groups
        self.eps = check_positive_float(owner, 'eps', eps)
        check_divisible(owner, 'in_channels', in_channels, 2, 'the two halves of a group')
        effective = min(groups, in_channels // 2) if clamp_groups else groups
        check_divisible(owner, 'in_channels', in_channels, 2 * effective,
                        '2 * groups (two halves per group)')
        #: The group count used (``groups``, or ``C // 2`` when clamped).
        self.num_groups = effective
        k = in_channels // (2 * effective)
        self.cweight = nn.Parameter(torch.empty(1, k, 1, 1))
        self.cbias = nn.Parameter(torch.empty(1, k, 1, 1))
        self.sweight = nn.Parameter(torch.empty(1, k, 1, 1))
        self.sbias = nn.Parameter(torch.empty(1, k, 1, 1))
        self.gn = nn.GroupNorm(k, k, eps=self.eps)
        self.init_special()

    def init_special(self) -> None:
        """The official initialisation: zero weights, unit biases (the GN keeps 1 and 0)."""
        nn.init.zeros_(self.cweight)
        nn.init.ones_(self.cbias)
        nn.init.zeros_(self.sweight)
        nn.init.ones_(self.sbias)

    def _halves(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = x.shape
        grouped = x.reshape(n * self.num_groups, c // self.num_groups, h, w)
        return grouped.chunk(2, dim=1)

    def gates(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The gates of the two halves of every group: the channel gate (N G, k, 1, 1) of
        ``x0`` and the spatial gate (N G, k, H, W) of ``x1``."""
        x0, x1 = self._halves(x)
        pooled = torch.mean(x0, (2, 3), keepdim=True,
                            dtype=torch.promote_types(x.dtype, torch.float32)).to(x.dtype)
        channel_gate = torch.sigmoid(self.cweight * pooled + self.cbias)
        spatial_gate = torch.sigmoid(self.sweight * self.gn(x1) + self.sbias)
        return channel_gate, spatial_gate

    def shuffle(self, y: torch.Tensor) -> torch.Tensor:
        """Channel shuffle with 2 groups: output channel ``2i + s`` is ``y``'s ``s C/2 + i``."""
        n, c, h, w = y.shape
        return y.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        channel_gate, spatial_gate = self.gates(x)
        x0, x1 = self._halves(x)
        y = torch.cat((x0 * channel_gate, x1 * spatial_gate), 1)
        return self.shuffle(y.reshape(x.shape))

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``channel_gate``: per input channel (N, C), the mean over H, W of the gate that
        multiplies it (the channel gate for the first half of each group, the spatial gate's
        mean for the second half), before the shuffle. ``spatial_gate``: the spatial gate
        averaged over the second halves (N, H, W)."""
        n, c, h, w = x.shape
        channel_gate, spatial_gate = self.gates(x)
        per_channel = torch.cat((channel_gate.flatten(1), spatial_gate.mean((2, 3))), 1)
        spatial = spatial_gate.reshape(n, -1, h, w)
        return {'channel_gate': channel_map(per_channel.reshape(n, c), 'channel gate'),
                'spatial_gate': spatial_map(spatial, x.shape, 'spatial gate')}

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, groups={self.groups}, '
                f'num_groups={self.num_groups}, clamp_groups={self.clamp_groups}')
