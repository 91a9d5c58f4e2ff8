"""Multi-head external attention (the token form of EANet, for transformer blocks)."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_divisible, check_int, check_positive_float


@register_model()
class MultiHeadExternalAttention(AttentionModule):
    """Multi-head external attention (Guo et al., TPAMI 2022, arXiv:2105.02358).

    The token mixer of EAMLP, as in the official ``multi_head_attention_torch.py``: tokens
    ``x`` (L, C) are expanded to ``E = x W_in + b_in`` (C -> a C, a = ``coef``) and split into
    ``H' = a * num_heads`` heads of width ``d = C / num_heads``; per head,
    ``A = M_k e + b_k`` over ``S`` memory slots (``M_k``: S x d, shared by all heads), softmax
    over the L tokens, divided by its sum over S (``+ 1e-9``); ``y = M_v A + b_v``
    (``M_v``: d x S); the heads are concatenated and projected back ``a C -> C``.
    Parameters: ``2 a C^2 + a C + C + 2 S d + S + d``.

    ``forward`` takes NCHW and runs the same math in channel-first layout (1x1 convs over the
    linear weights, no transposes); ``forward_tokens`` takes (B, L, C) tokens. Both return the
    attention output only: no hidden residual (the transformer block adds its own).
    The normalisations run in fp32 under autocast (``1e-9`` underflows in fp16).

    Deviations: none (``attn_drop``/``proj_drop`` as the official code; ``memory_size``
    defaults to the official ``256 // coef``).

    Args:
        in_channels (int): Channels C (token width); divisible by ``num_heads``.
        num_heads (int): Heads before the expansion; the memories see ``coef * num_heads``.
        coef (int): Width expansion a of the heads.
        memory_size (int, optional): Memory slots S; ``None`` means ``256 // coef``.
        attn_drop (float): Dropout on the attention map.
        proj_drop (float): Dropout after the output projection.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W); ``forward_tokens``: (B, L, C) -> (B, L, C).
    """

    family = 'spatial'
    paper = ('Guo et al., Beyond Self-attention: External Attention using Two Linear Layers '
             'for Visual Tasks, TPAMI 2022, arXiv:2105.02358')
    paper_position = 'late_stages'
    _abbr_ = 'mhea'

    def __init__(self,
                 in_channels: int,
                 num_heads: int = 8,
                 coef: int = 4,
                 memory_size: int | None = None,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.,
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = 'MultiHeadExternalAttention'
        self.num_heads = check_int(owner, 'num_heads', num_heads, 1)
        check_divisible(owner, 'in_channels', in_channels, num_heads, 'num_heads')
        self.coef = check_int(owner, 'coef', coef, 1)
        if memory_size is None:
            memory_size = max(256 // coef, 1)
        self.memory_size = check_int(owner, 'memory_size', memory_size, 1)
        for name, p in (('attn_drop', attn_drop), ('proj_drop', proj_drop)):
            if check_positive_float(owner, name, p, allow_zero=True) >= 1:
                raise ValueError(f'{owner}: {name} must be < 1, got {p}')
        self.head_dim = in_channels // num_heads
        self.total_heads = num_heads * coef
        self.trans_dims = nn.Linear(in_channels, in_channels * coef)
        self.memory_key = nn.Linear(self.head_dim, self.memory_size)
        self.memory_value = nn.Linear(self.memory_size, self.head_dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(in_channels * coef, in_channels)
        self.proj_drop = nn.Dropout(proj_drop)

    @staticmethod
    def _normalise(attn: torch.Tensor, pos_dim: int, slot_dim: int) -> torch.Tensor:
        """Double normalisation: softmax over positions, then l1 over memory slots."""
        attn = attn.float().softmax(dim=pos_dim)
        norm = attn.sum(dim=slot_dim, keepdim=True).add_(1e-9)
        # In place without autograd (the softmax's backward needs its output).
        return attn / norm if torch.is_grad_enabled() else attn.div_(norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        n, c, h, w = x.shape
        e = F.conv2d(x, self.trans_dims.weight[:, :, None, None], self.trans_dims.bias)
        e = e.reshape(n * self.total_heads, self.head_dim, h * w)
        # The memory units as one weight matrix for all heads: (S, d) @ (N H', d, L) (a
        # batched matmul about 2x faster on CPU than the equivalent 1x1 conv1d).
        attn = _affine(self.memory_key, e)
        attn = self.attn_drop(self._normalise(attn, -1, 1).to(e.dtype))  # (N H', S, L)
        y = _affine(self.memory_value, attn).view(n, self.coef * c, h, w)
        y = F.conv2d(y, self.proj.weight[:, :, None, None], self.proj.bias)
        return self.proj_drop(y)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The token form: (B, L, C) -> (B, L, C)."""
        if x.dim() != 3 or x.shape[-1] != self.in_channels:
            raise ValueError(f'MultiHeadExternalAttention.forward_tokens expects (B, L, C) '
                             f'tokens with C={self.in_channels}, got shape {tuple(x.shape)}')
        b, length, c = x.shape
        e = self.trans_dims(x).view(b, length, self.total_heads, self.head_dim)
        attn = self.memory_key(e)  # (B, L, H', S)
        attn = self.attn_drop(self._normalise(attn, 1, -1).to(e.dtype))
        y = self.memory_value(attn).reshape(b, length, self.coef * c)
        return self.proj_drop(self.proj(y))

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, num_heads={self.num_heads}, '
                f'coef={self.coef}, memory_size={self.memory_size}')


def _affine(linear: nn.Linear, t: torch.Tensor) -> torch.Tensor:
    """``linear`` over the middle axis of ``t`` (B, in, L) -> (B, out, L). The weight is
    expanded to a batch: ``matmul`` would fold a 2-D @ 3-D product into one matrix product
    of transposes, copying ``t`` and returning a transposed result."""
    out = torch.matmul(linear.weight.expand(t.shape[0], -1, -1), t)
    return out if linear.bias is None else out + linear.bias[:, None]
