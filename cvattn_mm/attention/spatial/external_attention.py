"""External attention (the 2-D block of EANet)."""
import math
from typing import Dict

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_int
from ..maps import AttentionMap, weights_map


@register_model()
class ExternalAttention(AttentionModule):
    """External attention block (Guo et al., TPAMI 2022, arXiv:2105.02358), the official 2-D form.

    ``u = conv1(x)`` (1x1, C -> C, biased), flattened to ``(C, HW)``;
    ``a = M_k u`` (``M_k``: S x C, no bias); ``a`` is softmax-ed over the HW positions, then
    divided by its sum over the S memory slots (``+ 1e-9``), the paper's double normalisation;
    ``y = M_v a`` (``M_v``: C x S, no bias); ``z = ReLU(x + BN(conv2(y)))`` with ``conv2`` a
    1x1 conv C -> C without bias. Cost linear in HW.
    Parameters: ``2 C^2 + C + 2 S C + norm`` (``+ 2C`` for BN).

    Initialisation at construction as the official code: 1x1 convs and ``M_k`` from
    ``N(0, 2 / fan_out)``, norm weight 1, biases 0, ``M_v = M_k^T``; ``init_weights`` applies
    ``init_cfg`` and then re-ties ``M_v = M_k^T`` (unless it loads a checkpoint).
    The normalisations run in fp32 under autocast (``1e-9`` underflows in fp16).

    Deviations: ``M_v`` is an independent parameter, only initialised as ``M_k^T``. In the
    official code a ``.data`` assignment makes ``M_v`` share storage with ``M_k``, so they
    stay transposes while training (tied weights) and the official re-initialisation of
    ``M_v`` (std ``sqrt(2 / C)``) overwrites that of ``M_k``. The official ``conv1`` bias
    keeps PyTorch's default initialisation; here it is 0.

    Args:
        in_channels (int): Channels C.
        memory_size (int): Memory slots S.
        norm_cfg (dict, optional): Norm after ``conv2``; ``None`` for none (``conv2`` then
            gets a bias).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'spatial'
    paper = ('Guo et al., Beyond Self-attention: External Attention using Two Linear Layers '
             'for Visual Tasks, TPAMI 2022, arXiv:2105.02358')
    paper_position = 'late_stages'
    _abbr_ = 'ea'

    def __init__(self,
                 in_channels: int,
                 memory_size: int = 64,
                 norm_cfg: dict | None = dict(type='BN'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        self.memory_size = check_int(type(self).__name__, 'memory_size', memory_size, 1)
        self.conv1 = nn.Conv2d(in_channels, in_channels, 1)
        self.memory_key = nn.Conv1d(in_channels, memory_size, 1, bias=False)
        self.memory_value = nn.Conv1d(memory_size, in_channels, 1, bias=False)
        self.conv2 = nn.Conv2d(in_channels, in_channels, 1, bias=norm_cfg is None)
        self.norm = build_norm_layer(norm_cfg, in_channels)[1] if norm_cfg else None
        self._official_init()

    def _official_init(self):
        for conv in (self.conv1, self.conv2, self.memory_key):
            nn.init.normal_(conv.weight, 0, math.sqrt(2.0 / conv.out_channels))
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        if self.norm is not None:
            nn.init.ones_(self.norm.weight)
            nn.init.zeros_(self.norm.bias)
        self.init_special()

    def init_special(self):
        with torch.no_grad():
            self.memory_value.weight.copy_(self.memory_key.weight.transpose(0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        attn = self.position_softmax(x)
        attn = attn / (1e-9 + attn.sum(dim=1, keepdim=True))  # over memory slots
        y = self.memory_value(attn.to(x.dtype))
        y = self.conv2(y.view(x.shape))
        if self.norm is not None:
            y = self.norm(y)
        return (x + y).relu()

    def position_softmax(self, x: torch.Tensor) -> torch.Tensor:
        """The memory attention ``softmax over positions of M_k conv1(x)`` (N, S, H W), before
        the normalisation over the memory slots."""
        n, c, h, w = x.shape
        u = self.conv1(x).reshape(n, c, h * w)
        return self.memory_key(u).float().softmax(dim=-1)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'memory_attention' (N, H, W): the softmax over positions, mean over memory slots."""
        return {'memory_attention': weights_map(self.position_softmax(x).mean(1), x.shape[2:],
                                                'softmax over positions, mean over memory '
                                                'slots')}

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, memory_size={self.memory_size}'
