"""GCNet's attention pooling (shared by GC and SimplifiedNonLocal).

One 1x1 convolution ``W_k: C -> 1`` scores every position, a softmax over all ``H * W``
positions turns the scores into weights, and the weighted sum of ``x`` is a global context
vector per sample (Cao et al., arXiv:1904.11492, eq. 2-3). The transforms that follow act on
that (N, C, 1, 1) vector.
"""
import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from ..fast_backward import amp_backward, amp_forward, fast_backward_params, is_plain_layer
from ..pointwise import PointwiseConv2d


def mask_conv(in_channels: int) -> PointwiseConv2d:
    """The context-modelling convolution ``W_k: C -> 1`` (initialise it with init_mask_conv).

    A :class:`~cvattn_mm.attention.pointwise.PointwiseConv2d`: its scores are ``W_k (1, C) @
    x (N, C, H W)``, whose backward avoids oneDNN's slow backward of a one-output-channel
    convolution. No bias: a constant added to every score cancels in the softmax, so it
    would never receive a gradient (the official code has one; it changes nothing).
    """
    return PointwiseConv2d(in_channels, 1, bias=False)


def init_mask_conv(conv: nn.Conv2d) -> None:
    """Kaiming normal, fan-in, as ``kaiming_init(conv_mask, mode='fan_in')`` in GCNet."""
    nn.init.kaiming_normal_(conv.weight, mode='fan_in', nonlinearity='relu')


def attention_weights(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Softmax over all positions of ``conv(x)``: (N, C, H, W) -> (N, 1, H * W)."""
    return conv(x).flatten(2).softmax(-1)


def attention_pool(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Attention-weighted sum of ``x`` over all positions: (N, C, H, W) -> (N, C, 1, 1).

    ``conv`` (``W_k: C -> 1``) is called as a module. The sum is one batched matmul in the
    order ``(N, 1, HW) @ (N, HW, C)`` (on CPU about 2x faster than ``(N, C, HW) @ (N, HW,
    1)``). When a gradient is needed and ``conv`` is :func:`mask_conv`'s layer without hooks,
    :class:`_AttentionPool` computes the same values with a hand-written backward; otherwise
    autograd differentiates the plain ops (also what tracing and FLOP counters see).
    """
    params = fast_backward_params((x,), conv) if _has_fast_backward(conv) else None
    if params is not None:
        return _AttentionPool.apply(x, conv, *params)
    return _pool(x.flatten(2), attention_weights(x, conv))


def _has_fast_backward(conv: nn.Module) -> bool:
    """Whether :class:`_AttentionPool`'s backward is the gradient of ``conv``: a plain
    :class:`PointwiseConv2d` without bias (:func:`~cvattn_mm.attention.fast_backward.
    is_plain_layer`)."""
    return is_plain_layer(conv, PointwiseConv2d) and conv.bias is None


def _pool(xf: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N, C, HW) maps pooled with (N, 1, HW) weights: (N, C, 1, 1)."""
    return torch.matmul(weights, xf.transpose(1, 2)).view(xf.shape[0], -1, 1, 1)


class _AttentionPool(torch.autograd.Function):
    """``c = x p^T`` with ``p = softmax(W_k x)`` over positions, for (N, C, HW) maps ``x``.

    The forward calls the layer ``W_k``. Backward, from ``g = dL/dc`` (N, C):

    * ``dL/dp = g^T x``, ``dL/ds = p * (dL/dp - <p, dL/dp>)`` (softmax) and ``dL/dW_k =
      sum_n dL/ds x^T``: batched matmuls reading ``x``, nothing of its size is written;
    * ``dL/dx = g p + W_k^T dL/ds`` (two outer products) is one matmul with an inner
      dimension of 2, ``[g, W_k^T] (C, 2) @ [p; dL/ds] (2, HW)``, written once in the memory
      format of ``x`` (autograd writes both terms, one of them transposed, and adds them).

    Not twice differentiable.
    """

    @staticmethod
    @amp_forward
    def forward(ctx, x: torch.Tensor, conv: PointwiseConv2d, weight: torch.Tensor
                ) -> torch.Tensor:
        weights = attention_weights(x, conv)
        ctx.save_for_backward(x, weight, weights)
        return _pool(x.flatten(2), weights)

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight, weights = ctx.saved_tensors
        xf = x.flatten(2)
        # Under autocast the outputs may be of lower precision than x: work in x's dtype.
        grad = grad.to(x.dtype).flatten(1)[:, None]  # (N, 1, C)
        weights = weights.to(x.dtype)
        grad_weights = torch.matmul(grad, xf)  # (N, 1, HW)
        grad_scores = weights * (grad_weights - (weights * grad_weights).sum(-1, keepdim=True))
        grad_x = grad_weight = None
        if ctx.needs_input_grad[2]:
            grad_weight = torch.matmul(grad_scores, xf.transpose(1, 2)).sum(0)  # (1, C)
            grad_weight = grad_weight.view_as(weight).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            w = weight.flatten(1).to(x.dtype)  # (1, C)
            lhs = torch.cat((grad, w.expand_as(grad)), 1)  # (N, 2, C)
            rhs = torch.cat((weights, grad_scores), 1)  # (N, 2, HW)
            if xf.stride(1) == 1 and xf.size(1) > 1:  # channels_last: write (N, HW, C)
                grad_x = torch.matmul(rhs.transpose(1, 2), lhs).transpose(1, 2)
            else:
                grad_x = torch.matmul(lhs.transpose(1, 2), rhs)
            grad_x = grad_x.unflatten(2, x.shape[2:]).to(x.dtype)
        return grad_x, None, grad_weight
