"""GCNet's attention pooling (shared by GC and SimplifiedNonLocal).

One 1x1 convolution ``W_k: C -> 1`` scores every position, a softmax over all ``H * W``
positions turns the scores into weights, and the weighted sum of ``x`` is a global context
vector per sample (Cao et al., arXiv:1904.11492, eq. 2-3). The transforms that follow act on
that (N, C) vector (:func:`~cvattn_mm.attention.pointwise.pointwise` applies their 1x1
convolutions as matrix products).
"""
import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable


def mask_conv(in_channels: int) -> nn.Conv2d:
    """The context-modelling convolution ``W_k: C -> 1`` (initialise it with init_mask_conv).

    No bias: a constant added to every score cancels in the softmax, so it would never
    receive a gradient (the official code has one; it changes nothing).
    """
    return nn.Conv2d(in_channels, 1, 1, bias=False)


def init_mask_conv(conv: nn.Conv2d) -> None:
    """Kaiming normal, fan-in, as ``kaiming_init(conv_mask, mode='fan_in')`` in GCNet."""
    nn.init.kaiming_normal_(conv.weight, mode='fan_in', nonlinearity='relu')


def attention_weights(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Softmax over all positions of ``conv(x)``: (N, C, H, W) -> (N, 1, H * W).

    The C -> 1 convolution is applied as ``W_k (1, C) @ x (N, C, HW)``: ``x.flatten(2)`` is a
    view for both contiguous and channels_last inputs (H and W are adjacent in both), and
    the product is as fast as the convolution forward while its backward avoids oneDNN's
    slow single-output-channel convolution backward.
    """
    return _weights(x.flatten(2), conv.weight)


def attention_pool(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Attention-weighted sum of ``x`` over all positions: (N, C, H, W) -> (N, C).

    One batched matmul in the order ``(N, 1, HW) @ (N, HW, C)`` (on CPU about 2x faster
    than ``(N, C, HW) @ (N, HW, 1)``). When a gradient is needed, :class:`_AttentionPool`
    computes the same values with a hand-written backward; otherwise plain ops run (also
    what FLOP counters trace).
    """
    if torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad):
        return _AttentionPool.apply(x, conv.weight)
    return _pool(x.flatten(2), _weights(x.flatten(2), conv.weight))


def _weights(xf: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(N, 1, HW) weights; ``W_k`` expanded to a batch so that FLOP counters see a bmm."""
    scores = torch.matmul(weight.flatten(1).expand(xf.shape[0], 1, -1), xf)
    return scores.softmax(-1)


def _pool(xf: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return torch.matmul(weights, xf.transpose(1, 2))[:, 0]  # (N, C)


class _AttentionPool(torch.autograd.Function):
    """``c = x p^T`` with ``p = softmax(W_k x)`` over positions, for (N, C, HW) maps ``x``.

    Backward, from ``g = dL/dc`` (N, C):

    * ``dL/dp = g^T x``, ``dL/ds = p * (dL/dp - <p, dL/dp>)`` (softmax) and ``dL/dW_k =
      sum_n dL/ds x^T``: batched matmuls reading ``x``, nothing of its size is written;
    * ``dL/dx = g p + W_k^T dL/ds`` (two outer products) is one matmul with an inner
      dimension of 2, ``[g, W_k^T] (C, 2) @ [p; dL/ds] (2, HW)``, written once in the memory
      format of ``x`` (autograd writes both terms, one of them transposed, and adds them).

    Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xf = x.flatten(2)
        weights = _weights(xf, weight)
        ctx.save_for_backward(x, weight, weights)
        return _pool(xf, weights)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight, weights = ctx.saved_tensors
        xf = x.flatten(2)
        # Under autocast the outputs may be of lower precision than x: work in x's dtype.
        grad = grad.to(x.dtype)[:, None]  # (N, 1, C)
        weights = weights.to(x.dtype)
        w = weight.flatten(1).to(x.dtype)  # (1, C)
        grad_weights = torch.matmul(grad, xf)  # (N, 1, HW)
        grad_scores = weights * (grad_weights - (weights * grad_weights).sum(-1, keepdim=True))
        grad_weight = torch.matmul(grad_scores, xf.transpose(1, 2)).sum(0)  # (1, C)
        lhs = torch.cat((grad, w.expand_as(grad)), 1)  # (N, 2, C)
        rhs = torch.cat((weights, grad_scores), 1)  # (N, 2, HW)
        if xf.stride(1) == 1 and xf.size(1) > 1:  # channels_last: write (N, HW, C)
            grad_x = torch.matmul(rhs.transpose(1, 2), lhs).transpose(1, 2)
        else:
            grad_x = torch.matmul(lhs.transpose(1, 2), rhs)
        return grad_x.unflatten(2, x.shape[2:]), grad_weight.view_as(weight).to(weight.dtype)
