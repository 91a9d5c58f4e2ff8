"""GCNet's attention pooling (shared by GC and SimplifiedNonLocal).

One 1x1 convolution ``W_k: C -> 1`` scores every position, a softmax over all ``H * W``
positions turns the scores into weights, and the weighted sum of ``x`` is a global context
vector per sample (Cao et al., arXiv:1904.11492, eq. 2-3). The transforms that follow act on
that (N, C) vector; :func:`pointwise` applies their 1x1 convolutions as matrix products.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


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
    """Softmax over all positions of ``conv(x)``: (N, C, H, W) -> (N, 1, H * W)."""
    return conv(x).flatten(2).softmax(-1)


def attention_pool(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Attention-weighted sum of ``x`` over all positions: (N, C, H, W) -> (N, C).

    ``x.flatten(2)`` is a view for both contiguous and channels_last inputs (H and W are
    adjacent in both). One batched matmul does the weighted sum, as ``(N, 1, HW) @ (N, HW, C)``:
    on CPU this order was about 10x faster than ``(N, C, HW) @ (N, HW, 1)`` at C=256, 56x56.
    """
    weights = attention_weights(x, conv)  # (N, 1, HW)
    return torch.matmul(weights, x.flatten(2).transpose(1, 2))[:, 0]


def pointwise(conv: nn.Conv2d, v: torch.Tensor) -> torch.Tensor:
    """A 1x1 ``conv`` applied to pooled vectors ``v`` (N, C_in) -> (N, C_out).

    On a 1 x 1 map a 1x1 convolution is a matrix product: ``F.linear`` with the conv's
    weight viewed as a matrix (a view also for channels_last weights) skips the convolution
    dispatch and is about 2x faster on CPU. The module stays an ``nn.Conv2d`` so that its
    state-dict keys and shapes, ``init_cfg`` layers and FLOP counters are those of a conv.
    """
    return F.linear(v, conv.weight.flatten(1), conv.bias)

