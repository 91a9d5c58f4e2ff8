"""PointwiseConv2d: a 1x1 convolution whose forward takes the matrix-product route."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .fast_backward import is_tracing


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution computed as a matrix product.

    It is an ``nn.Conv2d`` (kernel 1, stride 1, no padding), so its state-dict keys and
    shapes, ``init_cfg`` layers, FLOP counters, hooks and the tools that wrap or swap
    convolutions see an ordinary conv; it takes and returns (N, C, H, W) tensors. Only the
    kernel differs, and the values are the same:

    * on 1x1 maps (pooled vectors) it is ``F.linear`` on the (N, C) view, about 2x faster
      on CPU than the convolution dispatch (while tracing, ``F.linear`` on the (N, H W, C)
      tokens: one graph valid for every map size, with the same values on 1x1 maps);
    * on larger maps it is ``W (C_out, C) @ x (N, C, H W)``: ``x.flatten(2)`` is a view for
      contiguous and channels_last inputs, and the product's backward avoids oneDNN's slow
      backward of convolutions with few output channels (e.g. the C -> 1 scores of GCNet's
      attention pooling and of scSE's spatial gate).

    Args:
        in_channels (int): Input channels C.
        out_channels (int): Output channels C_out.
        bias (bool): Whether to add a learnable bias.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        weight = self.weight.flatten(1)  # a view also for channels_last weights
        if is_tracing():
            tokens = F.linear(x.flatten(2).transpose(1, 2), weight, self.bias)
            return tokens.transpose(1, 2).reshape(n, -1, h, w)
        if h == 1 and w == 1:
            return F.linear(x.flatten(1), weight, self.bias)[:, :, None, None]
        # the weight expanded to a batch, so that FLOP counters see a batched matmul
        weight, x = weight.expand(n, -1, -1), x.flatten(2)
        if self.bias is None:
            return torch.matmul(weight, x).view(n, -1, h, w)
        return torch.baddbmm(self.bias[:, None], weight, x).view(n, -1, h, w)
