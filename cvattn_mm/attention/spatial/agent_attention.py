"""Agent attention (Agent Transformer): softmax attention through a few pooled agent tokens."""
import math
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_divisible, check_int
from ..maps import AttentionMap, query_weight_maps
from ..size_policy import fit_to_grid

#: The side of the official agent-key and query-agent bias tables (``an_bias``, ``na_bias``),
#: bilinearly resized to the key and query grids.
TABLE_SIZE = 7
#: ``'resize'`` (default): the per-row / per-column bias tables are resized to the map;
#: ``'strict'``: the official code, only for H = W = ``bias_size``.
AGENT_SIZE_POLICIES = ('resize', 'strict')


def resize_along(table: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``table`` resized to ``size`` entries along ``dim`` by 1-D linear interpolation
    (``align_corners=False``); itself when it already has that size."""
    if table.shape[dim] == size:
        return table
    last = table.dim() - 1  # non-negative axes: the ONNX exporter writes them as given
    moved = table.movedim(dim, last)
    lead = moved.shape[:last]
    resized = F.interpolate(moved.reshape(1, -1, moved.shape[last]), size=size, mode='linear',
                            align_corners=False)
    return resized.reshape(*lead, size).movedim(last, dim)


@register_model()
class AgentAttention(AttentionModule):
    """Agent attention (Han et al., Agent Attention: On the Integration of Softmax and Linear
    Attention, ECCV 2024, arXiv:2312.08874), the ``AgentAttention`` of Agent-PVT.

    On the tokens ``x`` (N, S, C) of the map (S = H W, row-major): ``q = W_q x`` (C -> C),
    ``k, v = W_kv x`` (C -> 2C; with ``sr_ratio`` r > 1 from ``LN(Conv_{r x r, stride r}(x))``
    on the key grid H_k x W_k = floor(H / r) x floor(W / r), else H_k, W_k = H, W). The agent
    tokens ``A`` (N, n, C) are q adaptive-average-pooled to a sqrt(n) x sqrt(n) grid. Per
    head (h heads of width d = C / h, scale d^-1/2):
    ``V_A = softmax(scale A K^T + B_1) V`` (the agents gather from the keys),
    ``O = softmax(scale Q A^T + B_2) V_A`` (the queries read the agents); then
    ``out = W_o (O + DW3x3(v as a map)) + b_o``, the depthwise 3x3 conv (with bias) on v
    bilinearly upsampled to H x W when r > 1. The biases:
    ``B_1[a, (i, j)] = Up(an)[a, i, j] + ah[a, i] + aw[a, j]`` over the key grid and
    ``B_2[(i, j), a] = Up(na)[a, i, j] + ha[i, a] + wa[j, a]`` over the query grid, with
    ``an``, ``na`` (h, n, 7, 7) tables bilinearly resized (``align_corners=False``) and
    ``ah``, ``aw``, ``ha``, ``wa`` one value per head, agent and row / column.
    Softmaxes in at least float32.

    Parameters: ``4 C^2 + C`` (q, kv, proj) ``+ 10 C`` (dwc) ``+ 2 h n 49`` (an, na)
    ``+ 2 h n (s + s_k)`` (ah, aw, ha, wa; s = ``bias_size``, s_k = s // r), plus
    ``3 C`` with ``qkv_bias`` and ``r^2 C^2 + 3 C`` (sr conv and LN) with r > 1:
    325,328 at C = 256 with the defaults.

    Paper position: only inside its own transformer block (``own_block``: Agent-PVT and
    Agent-Swin, ``x + Attn(LN(x))`` with an MLP). ``at='paper'`` inserts it at
    ``fallback_position = 'late_stages'`` (after the last two stages), where its output
    replaces the stage output (no hidden residual, as the official module).

    Size policy: the official ``ah``, ``aw``, ``ha``, ``wa`` have one entry per row / column
    of the square window it is built for (``num_patches``), so another H or W breaks
    broadcasting. Here they are stored at the reference size ``bias_size`` (s, and s // r on
    the key grid) and, with ``size_policy='resize'`` (default), resized along their spatial
    axis to the actual H, W (H_k, W_k) by linear interpolation (``align_corners=False``); on
    H = W = s nothing is resized: the official computation. ``size_policy='strict'`` raises a
    ``ValueError`` naming the expected size unless H = W = s (the official code at
    ``num_patches = s^2``). The 7x7 tables and the agent pooling are size-agnostic in the
    official code already; the adaptive pooling also works on maps smaller than the agent
    grid (it repeats positions, e.g. a 1x1 map gives n equal agents).

    Initialisation: Agent-PVT's: linear weights truncated normal (std 0.02, cut at +-2),
    linear biases 0, the LN 1 and 0 (the network's ``_init_weights``), the six bias tables
    truncated normal std 0.02 (the class), the convs PyTorch's default.

    Deviations: none from the official ``AgentAttention`` (LeapLabTHU/Agent-Attention
    ``agent_transformer/models/agent_pvt.py`` @207ce3e, ``num_patches = bias_size^2``) at
    H = W = ``bias_size``, in both size policies: max abs diff 0 in float64 (sr_ratio 1, 2,
    4, 8), the same state-dict keys; ``ah_bias``, ``aw_bias`` are stored (h, n, s_k),
    ``ha_bias``, ``wa_bias`` (h, s, n), the official shapes without their unit axes (5-D
    parameters break ``Module.to(memory_format=torch.channels_last)``); official state dicts
    load as they are (a load hook reshapes). Other sizes (``'resize'``, the official code
    raises): the row / column tables are linearly resized; with r > 1 a map side smaller than
    r is zero-padded at its end to r (official: a conv error), and non-multiples of r use the
    floor key grid (official: a reshape error). The official attention and output dropouts
    (default 0) are not included; the official ``qk_scale`` argument (ignored there) neither.

    Args:
        in_channels (int): Channels C, a multiple of ``num_heads``.
        num_heads (int): Heads h.
        agent_num (int): Agent tokens n, a perfect square (the pooled grid sqrt(n) x sqrt(n)).
        sr_ratio (int): Spatial reduction r of keys and values (1: none).
        qkv_bias (bool): Biases in the q and kv projections (official default False;
            Agent-PVT's networks pass True).
        bias_size (int): The reference side s of the row / column bias tables (official:
            ``sqrt(num_patches)``), >= ``sr_ratio``.
        size_policy (str): ``'resize'`` or ``'strict'`` (see Size policy).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'spatial'
    paper = ('Han et al., Agent Attention: On the Integration of Softmax and Linear '
             'Attention, ECCV 2024, arXiv:2312.08874')
    paper_position = 'own_block'
    fallback_position = 'late_stages'
    _abbr_ = 'agent'

    def __init__(self,
                 in_channels: int,
                 num_heads: int = 8,
                 agent_num: int = 49,
                 sr_ratio: int = 1,
                 qkv_bias: bool = False,
                 bias_size: int = 14,
                 size_policy: str = 'resize',
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        c = self.in_channels
        self.num_heads = check_int(owner, 'num_heads', num_heads, 1)
        check_divisible(owner, 'in_channels', c, self.num_heads, 'num_heads')
        self.agent_num = check_int(owner, 'agent_num', agent_num, 1)
        self.pool_size = math.isqrt(self.agent_num)
        if self.pool_size ** 2 != self.agent_num:
            raise ValueError(f'{owner}: agent_num must be a perfect square (the agents are '
                             f'pooled to a sqrt(n) x sqrt(n) grid), got {agent_num}')
        self.sr_ratio = check_int(owner, 'sr_ratio', sr_ratio, 1)
        if not isinstance(qkv_bias, bool):
            raise ValueError(f'{owner}: qkv_bias must be True or False, got {qkv_bias!r}')
        self.qkv_bias = qkv_bias
        self.bias_size = check_int(owner, 'bias_size', bias_size, self.sr_ratio)
        self.size_policy = check_choice(owner, 'size_policy', size_policy,
                                        AGENT_SIZE_POLICIES)
        self.head_dim = c // self.num_heads
        self.scale = self.head_dim ** -0.5
        h, n, s, sk = self.num_heads, self.agent_num, self.bias_size, self.bias_size // sr_ratio

        self.q = nn.Linear(c, c, bias=qkv_bias)
        self.kv = nn.Linear(c, 2 * c, bias=qkv_bias)
        self.proj = nn.Linear(c, c)
        if self.sr_ratio > 1:
            self.sr = nn.Conv2d(c, c, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(c)
        self.dwc = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.an_bias = nn.Parameter(torch.zeros(h, n, TABLE_SIZE, TABLE_SIZE))
        self.na_bias = nn.Parameter(torch.zeros(h, n, TABLE_SIZE, TABLE_SIZE))
        # official shapes (1, h, n, s_k, 1), (1, h, n, 1, s_k), (1, h, s, 1, n), (1, h, 1, s, n)
        # without their unit axes (5-D parameters break Module.to(memory_format=...))
        self.ah_bias = nn.Parameter(torch.zeros(h, n, sk))
        self.aw_bias = nn.Parameter(torch.zeros(h, n, sk))
        self.ha_bias = nn.Parameter(torch.zeros(h, s, n))
        self.wa_bias = nn.Parameter(torch.zeros(h, s, n))
        self.init_special()

    def init_special(self) -> None:
        """Agent-PVT's initialisation (see the class docstring; timm's and PyTorch's
        ``trunc_normal_`` cut at +-2 absolute, i.e. 100 std: in effect a normal)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for table in (self.an_bias, self.na_bias, self.ah_bias, self.aw_bias, self.ha_bias,
                      self.wa_bias):
            nn.init.trunc_normal_(table, std=0.02)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Accept the official 5-D shapes of the row / column tables."""
        for name in ('ah_bias', 'aw_bias', 'ha_bias', 'wa_bias'):
            value, param = state_dict.get(prefix + name), getattr(self, name)
            if value is not None and value.dim() == 5 and value.numel() == param.numel():
                state_dict[prefix + name] = value.reshape(param.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def check_size(self, hw: Tuple[int, int]) -> None:
        """With ``size_policy='strict'``, raise unless the map is ``bias_size`` square."""
        if self.size_policy == 'strict' and tuple(hw) != (self.bias_size, self.bias_size):
            raise ValueError(f"{type(self).__name__} with size_policy='strict' was built for "
                             f'{self.bias_size}x{self.bias_size} maps (bias_size='
                             f'{self.bias_size}) but got {hw[0]}x{hw[1]}; '
                             "size_policy='resize' resizes the bias tables to any size")

    def projections(self, x: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Tuple[int, int]]:
        """``q`` (N, S, C), ``k``, ``v`` (N, S_k, C) of the map ``x`` and the key grid."""
        tokens = x.flatten(2).transpose(1, 2)
        q = self.q(tokens)
        if self.sr_ratio > 1:
            r = self.sr_ratio
            pad_h, pad_w = max(r - x.shape[2], 0), max(r - x.shape[3], 0)
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h))
            reduced = self.sr(x)
            key_hw = (reduced.shape[2], reduced.shape[3])
            tokens = self.norm(reduced.flatten(2).transpose(1, 2))
        else:
            key_hw = (x.shape[2], x.shape[3])
        k, v = self.kv(tokens).chunk(2, dim=-1)
        return q, k, v, key_hw

    def agent_tokens(self, q: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """The agents (N, n, C): ``q`` as a map, adaptive-average-pooled to sqrt(n) x
        sqrt(n), row-major."""
        n, _, c = q.shape
        q_map = q.transpose(1, 2).reshape(n, c, hw[0], hw[1])
        pooled = fit_to_grid(q_map, (self.pool_size, self.pool_size), 'pool',
                             type(self).__name__)
        return pooled.flatten(2).transpose(1, 2)

    def position_biases(self, hw: Tuple[int, int], key_hw: Tuple[int, int]
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``B_1`` (1, h, n, S_k) of the agents over the keys and ``B_2`` (1, h, S, n) of
        the queries over the agents."""
        h, n = self.num_heads, self.agent_num
        bias1 = F.interpolate(self.an_bias, size=key_hw, mode='bilinear',
                              align_corners=False).reshape(1, h, n, -1)
        ah = resize_along(self.ah_bias, 2, key_hw[0])
        aw = resize_along(self.aw_bias, 2, key_hw[1])
        bias1 = bias1 + (ah[:, :, :, None] + aw[:, :, None, :]).reshape(1, h, n, -1)
        bias2 = F.interpolate(self.na_bias, size=hw, mode='bilinear',
                              align_corners=False).reshape(1, h, n, -1).transpose(2, 3)
        ha = resize_along(self.ha_bias, 1, hw[0])
        wa = resize_along(self.wa_bias, 1, hw[1])
        bias2 = bias2 + (ha[:, :, None, :] + wa[:, None, :, :]).reshape(1, h, -1, n)
        return bias1, bias2

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(N, L, C) -> (N, h, L, d)."""
        return t.reshape(t.shape[0], t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    @staticmethod
    def _softmax(logits: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(logits.dtype, torch.float32)
        return logits.to(dtype).softmax(-1)

    def attention(self, q: torch.Tensor, k: torch.Tensor, agents: torch.Tensor,
                  hw: Tuple[int, int], key_hw: Tuple[int, int]
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The two softmaxes per head: the agents over the keys (N, h, n, S_k) and the
        queries over the agents (N, h, S, n)."""
        bias1, bias2 = self.position_biases(hw, key_hw)
        qh, kh, ah = self._heads(q), self._heads(k), self._heads(agents)
        agent_attn = self._softmax((ah * self.scale) @ kh.transpose(-2, -1) + bias1)
        query_attn = self._softmax((qh * self.scale) @ ah.transpose(-2, -1) + bias2)
        return agent_attn, query_attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        n, c, height, width = x.shape
        hw = (height, width)
        self.check_size(hw)
        q, k, v, key_hw = self.projections(x)
        agent_attn, query_attn = self.attention(q, k, self.agent_tokens(q, hw), hw, key_hw)
        vh = self._heads(v)
        agent_v = agent_attn.to(vh.dtype) @ vh
        out = (query_attn.to(vh.dtype) @ agent_v).transpose(1, 2).reshape(n, -1, c)
        v_map = v.transpose(1, 2).reshape(n, c, key_hw[0], key_hw[1])
        if self.sr_ratio > 1:
            v_map = F.interpolate(v_map, size=hw, mode='bilinear', align_corners=False)
        out = out + self.dwc(v_map).flatten(2).transpose(1, 2)
        return self.proj(out).transpose(1, 2).reshape(n, c, height, width)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'centre_query' and 'mean_over_queries' (N, H_k, W_k): the weights with which the
        queries read the keys through the agents, ``softmax_2 softmax_1`` (each row sums to
        1), averaged over the heads: the centre query's row and the mean over the queries.
        The forward applies the same two softmaxes in turn."""
        hw = (x.shape[2], x.shape[3])
        self.check_size(hw)
        q, k, _, key_hw = self.projections(x)
        agent_attn, query_attn = self.attention(q, k, self.agent_tokens(q, hw), hw, key_hw)
        weights = (query_attn @ agent_attn).mean(1)
        return query_weight_maps(weights, hw, key_hw, 'agent attention (through the agents)')

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, num_heads={self.num_heads}, '
                f'agent_num={self.agent_num}, sr_ratio={self.sr_ratio}, '
                f'qkv_bias={self.qkv_bias}, bias_size={self.bias_size}, '
                f'size_policy={self.size_policy!r}')
