"""Multi-head external attention (the token form of EANet, for transformer blocks)."""
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_divisible, check_int, check_positive_float
from ..maps import AttentionMap, weights_map


class LayoutLinear(nn.Linear):
    """An ``nn.Linear`` computed in the memory layout of its input.

    It takes ``(..., in_features)`` and returns ``(..., out_features)`` with the values of
    ``nn.Linear`` (same state-dict keys, hooks, FLOP counting). When the feature axis of the
    input is not its innermost axis in memory (the (B, L, C) transposed view of a
    channel-first (B, C, L) map, or a head split of it), the product runs as ``W @ X`` over
    the memory order (a batched matmul, or a kernel-1 convolution when ``out_features``
    exceeds the columns per batch element, which keeps the weight gradient one matrix),
    without copying the input, and the output has the input's layout: a chain of such
    layers on a channel-first map never transposes it, and reductions over the positions
    read them contiguously.

    Args:
        in_features (int): Input width.
        out_features (int): Output width.
        bias (bool): Whether to add a learnable bias.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.stride(-1) == 1:
            return F.linear(x, self.weight, self.bias)
        order = sorted(range(x.dim()), key=x.stride, reverse=True)  # outermost axis first
        dense = x.permute(order)
        if not dense.is_contiguous():  # overlapping or gapped strides: no matrix view
            return F.linear(x, self.weight, self.bias)
        axis = order.index(x.dim() - 1)
        outer, inner = dense.shape[:axis], dense.shape[axis + 1:]
        batch, rest = outer.numel(), inner.numel()
        mats = dense.reshape(batch, self.in_features, rest)
        if self.out_features > rest:
            # A batched product's weight gradient would be one (out, in) matrix per batch
            # element, larger than the output; the convolution accumulates into one.
            out = F.conv1d(mats, self.weight[:, :, None], self.bias)
        elif self.bias is None:
            out = torch.bmm(self.weight.expand(batch, -1, -1), mats)
        else:
            out = torch.baddbmm(self.bias[:, None], self.weight.expand(batch, -1, -1), mats)
        out = out.view(*outer, self.out_features, *inner)
        return out.permute([order.index(i) for i in range(x.dim())])


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

    ``forward_tokens`` takes (B, L, C) tokens; ``forward`` takes NCHW and runs the token form
    on the (N, H W, C) view of the map: its linear layers are :class:`LayoutLinear`, so the
    map stays channel-first throughout (no transposed copy; the softmax over positions reads
    them contiguously). Both return the attention output only: no hidden residual (the
    transformer block adds its own).
    The normalisations run in the promotion of the input dtype and fp32 (fp32 under fp16 or
    bf16 autocast, where ``1e-9`` would underflow; float64 for float64 inputs).

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
        owner = type(self).__name__
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
        self.trans_dims = LayoutLinear(in_channels, in_channels * coef)
        self.memory_key = LayoutLinear(self.head_dim, self.memory_size)
        self.memory_value = LayoutLinear(self.memory_size, self.head_dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = LayoutLinear(in_channels * coef, in_channels)
        self.proj_drop = nn.Dropout(proj_drop)

    @staticmethod
    def _softmax(logits: torch.Tensor, pos_dim: int) -> torch.Tensor:
        """Softmax over the positions, in the promotion of the logits' dtype and fp32, computed
        where they are innermost in memory (the channel-first layout of ``forward``) so that
        it reads them contiguously."""
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        last = logits.dim() - 1  # non-negative axes: the ONNX exporter's permutations need them
        if logits.stride(pos_dim) == 1 and logits.stride(last) != 1:
            return logits.movedim(pos_dim, last).softmax(last).movedim(last, pos_dim)
        return logits.softmax(pos_dim)

    @classmethod
    def _normalise(cls, attn: torch.Tensor, pos_dim: int, slot_dim: int) -> torch.Tensor:
        """Double normalisation: softmax over positions, then l1 over memory slots."""
        attn = cls._softmax(attn, pos_dim)
        norm = attn.sum(dim=slot_dim, keepdim=True).add_(1e-9)
        # In place without autograd (the softmax's backward needs its output).
        return attn / norm if torch.is_grad_enabled() else attn.div_(norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        n, c, h, w = x.shape
        y = self.forward_tokens(x.flatten(2).transpose(1, 2))  # (N, L, C) views
        return y.transpose(1, 2).unflatten(2, (h, w))

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The token form: (B, L, C) -> (B, L, C)."""
        if x.dim() != 3 or x.shape[-1] != self.in_channels:
            raise ValueError(f'{type(self).__name__}.forward_tokens expects (B, L, C) '
                             f'tokens with C={self.in_channels}, got shape {tuple(x.shape)}')
        logits = self.memory_logits(x)
        attn = self.attn_drop(self._normalise(logits, 1, -1).to(logits.dtype))
        y = self.memory_value(attn).flatten(2)  # (B, L, a C)
        return self.proj_drop(self.proj(y))

    def memory_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The logits ``M_k e + b_k`` (B, L, H', S) of the tokens ``x`` (B, L, C): per head,
        over the S memory slots."""
        e = self.trans_dims(x).unflatten(-1, (self.total_heads, self.head_dim))
        return self.memory_key(e)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'memory_attention' (N, H, W): the softmax over positions, mean over heads and
        slots."""
        attn = self._softmax(self.memory_logits(x.flatten(2).transpose(1, 2)), 1)
        return {'memory_attention': weights_map(
            attn.mean((2, 3)), x.shape[2:], 'softmax over positions, mean over heads and slots')}

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, num_heads={self.num_heads}, '
                f'coef={self.coef}, memory_size={self.memory_size}')

