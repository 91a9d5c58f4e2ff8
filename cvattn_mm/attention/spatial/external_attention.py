"""External attention (the 2-D block of EANet)."""
import math
from typing import Dict, Tuple

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_int
from ..fast_backward import amp_backward, amp_forward, fast_backward_params, is_plain_layer
from ..map_norm import build_map_norm
from ..maps import AttentionMap, weights_map
from ..pointwise import PointwiseConv2d

Tensor = torch.Tensor


class PointwiseConv1d(nn.Conv1d):
    """A kernel-1 ``nn.Conv1d`` computed as the batched matrix product ``W (C_out, C) @ x
    (N, C, L)`` (on CPU several times faster than the convolution for few output channels).

    Same state-dict keys, hooks and FLOP counting as ``nn.Conv1d``; takes and returns
    (N, C, L) tensors with the convolution's values.

    Args:
        in_channels (int): Input channels C.
        out_channels (int): Output channels C_out.
        bias (bool): Whether to add a learnable bias.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.flatten(1).expand(x.shape[0], -1, -1)
        if self.bias is None:
            return torch.bmm(weight, x)
        return torch.baddbmm(self.bias[:, None], weight, x)


@register_model()
class ExternalAttention(AttentionModule):
    """External attention block (Guo et al., TPAMI 2022, arXiv:2105.02358), the official 2-D form.

    ``u = conv1(x)`` (1x1, C -> C, biased), flattened to ``(C, HW)``;
    ``a = M_k u`` (``M_k``: S x C, no bias); ``a`` is softmax-ed over the HW positions, then
    divided by its sum over the S memory slots (``+ 1e-9``), the paper's double normalisation;
    ``y = M_v a`` (``M_v``: C x S, no bias); ``z = ReLU(x + BN(conv2(y)))`` with ``conv2`` a
    1x1 conv C -> C without bias. Cost linear in HW.
    Parameters: ``2 C^2 + C + 2 S C + norm`` (``+ 2C`` for BN).

    The 1x1 convs are :class:`~cvattn_mm.attention.pointwise.PointwiseConv2d`, the memories
    :class:`PointwiseConv1d` (matrix products). Every memory product has S =
    ``memory_size`` rows or columns, so the gradients of ``conv1`` through ``M_k`` and of
    ``M_v`` through ``conv2`` have rank S: the backward of these two pairs is hand-written
    with products of S-wide factors (``dW_1 = M_k^T (G x^T)``, ``dx = (M_k W_1)^T G``, and
    the same for ``M_v``, ``conv2``) instead of autograd's C-wide ones: fwd+bwd takes about
    half the time of the official code's at 8x256x56x56 and 8x1024x14x14 (CPU). It runs when
    the layers are the module's own types without hooks; it is not twice differentiable, and
    ``CVATTN_FAST_BACKWARD=0`` or :func:`cvattn_mm.attention.fast_backward.set_fast_backward`
    ``(False)`` runs plain autograd instead.

    Initialisation at construction as the official code: 1x1 convs and ``M_k`` from
    ``N(0, 2 / fan_out)``, norm weight 1, biases 0, ``M_v = M_k^T``; ``init_weights`` applies
    ``init_cfg`` and then re-ties ``M_v = M_k^T`` (unless it loads a checkpoint).
    The normalisations run in the promotion of the input dtype and fp32 (fp32 under fp16 or
    bf16 autocast, where ``1e-9`` would underflow; float64 for float64 inputs).

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
        self.conv1 = PointwiseConv2d(in_channels, in_channels)
        self.memory_key = PointwiseConv1d(in_channels, memory_size, bias=False)
        self.memory_value = PointwiseConv1d(memory_size, in_channels, bias=False)
        self.conv2 = PointwiseConv2d(in_channels, in_channels, bias=norm_cfg is None)
        self.norm = build_map_norm(norm_cfg, in_channels) if norm_cfg else None
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

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        attn = self.position_softmax(x)
        attn = attn / (1e-9 + attn.sum(dim=1, keepdim=True))  # over memory slots
        y = self.memory_readout(attn.to(x.dtype), x.shape)
        if self.norm is not None:
            y = self.norm(y)
        return torch.add(x, y).relu_()

    def position_softmax(self, x: Tensor) -> Tensor:
        """The memory attention ``softmax over positions of M_k conv1(x)`` (N, S, H W), before
        the normalisation over the memory slots."""
        logits = self.memory_logits(x)
        return logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=-1)

    def memory_logits(self, x: Tensor) -> Tensor:
        """``M_k conv1(x)`` (N, S, H W) of ``x`` (N, C, H, W)."""
        n, c, h, w = x.shape
        return _pair(x, self.conv1, self.memory_key, (n, c, h * w),
                     (PointwiseConv2d, PointwiseConv1d))

    def memory_readout(self, attn: Tensor, shape: Tuple[int, ...]) -> Tensor:
        """``conv2(M_v attn)`` (N, C, H, W) of the normalised attention ``attn`` (N, S, H W);
        ``shape`` is the input's (N, C, H, W)."""
        return _pair(attn, self.memory_value, self.conv2, shape,
                     (PointwiseConv1d, PointwiseConv2d))

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'memory_attention' (N, H, W): the softmax over positions, mean over memory slots."""
        return {'memory_attention': weights_map(self.position_softmax(x).mean(1), x.shape[2:],
                                                'softmax over positions, mean over memory '
                                                'slots')}

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, memory_size={self.memory_size}'


def _pair(t: Tensor, first: nn.Module, second: nn.Module, shape: Tuple[int, ...],
          types: Tuple[type, type]) -> Tensor:
    """``second(first(t).reshape(shape))``, with :class:`_LowRankPair`'s backward when a
    gradient is needed and the layers are exactly of the ``types`` and have no hooks
    (:func:`~cvattn_mm.attention.fast_backward.is_plain_layer`)."""
    params = None
    if is_plain_layer(first, types[0]) and is_plain_layer(second, types[1]):
        params = fast_backward_params((t,), (first, second))
    if params is not None:
        return _LowRankPair.apply(t, first, second, tuple(shape), *params)
    return second(first(t).reshape(shape))


class _LowRankPair(torch.autograd.Function):
    """Two 1x1 layers in a row, ``out = B (A t + a) + b`` per sample (biases where the layers
    have them), one of which is a memory of S slots: ``M_k conv1(x)`` (``A = W_1``, C x C;
    ``B = M_k``, S x C) or ``conv2(M_v attn)`` (``A = M_v``, C x S; ``B = W_2``, C x C).
    The forward calls both layers.

    Backward, from ``G = dL/d out``: ``T = sum_n G_n t_n^T`` (one batched product, S x C or
    C x S), then ``dB = T A^T + (sum G) a^T``, ``dA = B^T T``, ``da = B^T sum G``,
    ``db = sum G`` and ``dt = (B A)^T G``. The only products over the positions (``T`` and
    ``dt``) have S on one side; autograd's ``dW t^T`` and ``W^T G`` of the C x C layer cost
    ``C / S`` times more. Not twice differentiable.
    """

    @staticmethod
    @amp_forward
    def forward(ctx, t: Tensor, first: nn.Module, second: nn.Module, shape: Tuple[int, ...],
                *params: Tensor) -> Tensor:
        ctx.save_for_backward(t, *params)
        ctx.first_bias, ctx.second_bias = first.bias is not None, second.bias is not None
        return second(first(t).reshape(shape))

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, grad: Tensor):
        t, *params = ctx.saved_tensors
        dtype = t.dtype  # under autocast grad may be of lower precision: work in t's
        first_weight = params[0]
        second_weight = params[1 + ctx.first_bias]
        first_bias = params[1] if ctx.first_bias else None
        a, b = first_weight.flatten(1).to(dtype), second_weight.flatten(1).to(dtype)
        tf = t.flatten(2)  # (N, in, L)
        g = grad.to(dtype).flatten(2)  # (N, out, L)
        needs = ctx.needs_input_grad[4:]
        grads = []
        if any(needs):
            prod = torch.matmul(g, tf.transpose(1, 2)).sum(0)  # T: (out, in)
            g_sum = g.sum((0, 2))  # (out,)
            grads.append(torch.matmul(b.t(), prod))  # dA: (mid, in)
            if first_bias is not None:
                grads.append(torch.mv(b.t(), g_sum))  # da: (mid,)
            grad_b = torch.matmul(prod, a.t())  # dB: (out, mid)
            if first_bias is not None:
                grad_b = grad_b + torch.outer(g_sum, first_bias.to(dtype))
            grads.append(grad_b)
            if ctx.second_bias:
                grads.append(g_sum)  # db
            grads = [gr.view_as(p).to(p.dtype) if need else None
                     for gr, p, need in zip(grads, params, needs)]
        else:
            grads = [None] * len(params)
        grad_t = None
        if ctx.needs_input_grad[0]:
            lhs = torch.matmul(b, a).t()  # (B A)^T: (in, out)
            grad_t = torch.matmul(lhs.expand(g.shape[0], -1, -1), g).view(t.shape)
        return (grad_t, None, None, None, *grads)

