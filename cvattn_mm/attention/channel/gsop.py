"""Global Second-order Pooling block (GSoP-Net1)."""
from typing import Dict

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from torch.autograd.function import once_differentiable

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_int
from ..fast_backward import amp_backward, amp_forward, fast_backward_params
from ..maps import AttentionMap, channel_map
from ..norm import norm_any_batch
from ..pointwise import PointwiseConv2d


class RowConv2d(nn.Conv2d):
    """GSoP's row-wise convolution: a ``(d, 1)`` kernel with ``d`` groups, ``d -> k d``, with
    bias, computed as a batched matrix product.

    An ``nn.Conv2d`` (same parameters, state-dict keys and NCHW input), so tools that wrap or
    swap convolutions see an ordinary conv. On an input whose height is the kernel's
    (``(N, d, d, W)``: a covariance matrix viewed as a map), output channel ``k i + m`` is
    ``sum_j weight[k i + m, 0, j, 0] x[:, i, j, :] + bias[k i + m]``: one product of row
    ``i`` with its ``k`` filters, about 10x faster on CPU than the grouped convolution (whose
    backward is slow). Any other input, and any call under ``torch.jit.trace`` (or an ONNX
    export), goes to the convolution.

    Args:
        dim (int): Rows d (the input channels and the kernel height).
        multiplier (int): Filters k per row.
    """

    def __init__(self, dim: int, multiplier: int = 4):
        super().__init__(dim, multiplier * dim, (dim, 1), groups=dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or x.shape[2] != self.kernel_size[0]:
            return super().forward(x)  # the conv: valid at every size (for a traced graph)
        n, d, h, w = x.shape
        filters = self.weight.view(d, -1, h)  # (row i, filter k, column j)
        out = torch.einsum('ikj,nijw->nikw', filters, x).reshape(n, -1, 1, w)
        return out + self.bias[:, None, None]


class _SampledGate(torch.autograd.Function):
    """``y = x * gate_fn(x[:, :, ::s, ::s])`` with a hand-written backward (the gate network
    under autograd): ``dL/dg = sum_{H,W} G x`` in a buffer of x's size that then holds
    ``dL/dx = G g``, to which the samples' gradient is added in place at the sampled
    positions. Autograd writes a product for ``dL/dg``, another for ``G g``, a zero-filled
    map for the samples' gradient and their sum."""

    @staticmethod
    @amp_forward
    def forward(ctx, x: torch.Tensor, gate_fn, stride: int, *params) -> torch.Tensor:
        samples = (x[:, :, ::stride, ::stride] if stride > 1 else x).detach()
        samples.requires_grad_(ctx.needs_input_grad[0])
        with torch.enable_grad():
            gate = gate_fn(samples)
        ctx.save_for_backward(x)
        ctx.samples, ctx.params, ctx.gate, ctx.stride = samples, params, gate, stride
        return x * gate.detach()

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, = ctx.saved_tensors
        s, gate = ctx.stride, ctx.gate
        buffer = torch.mul(grad, x)
        grad_gate = buffer.sum((2, 3), keepdim=True)
        inputs = (ctx.samples, ) + ctx.params
        wanted = [t for t in inputs if t.requires_grad]
        found = iter(torch.autograd.grad(gate, wanted, grad_gate.to(gate.dtype),
                                         allow_unused=True))
        grads = [next(found) if t.requires_grad else None for t in inputs]
        grad_x = None
        if ctx.needs_input_grad[0] and s == 1:
            # the samples are x: their gradient (a fresh tensor of x's size) takes G g
            grad_x = grads[0].to(buffer.dtype).addcmul_(grad, gate.detach())
        elif ctx.needs_input_grad[0]:
            grad_x = torch.mul(grad, gate.detach(), out=buffer)
            grad_x[:, :, ::s, ::s] += grads[0].to(grad_x.dtype)
        params = tuple(g if ctx.needs_input_grad[3 + i] else None
                       for i, g in enumerate(grads[1:]))
        return (grad_x, None, None) + params


@register_model()
class GSoP(AttentionModule):
    """GSoP block of GSoP-Net1 (Gao et al., CVPR 2019, arXiv:1811.12006), channel mode.

    A channel gate from the covariance of a reduced copy of the input:

    * ``z = ReLU(BN(Conv1x1_{C -> d, bias, stride s}(ReLU(x))))`` (the first ReLU is not in
      place: ``x`` itself is kept), viewed as (N, d, M) with ``M = H' W'``;
    * ``Sigma = (1/M) sum_m (z_m - mu)(z_m - mu)^T`` (N, d, d), the biased covariance of the
      ``d`` reduced channels over the positions (the paper's ``z I_bar z^T`` with
      ``I_bar = (1/M)(I - (1/M) 1 1^T)``), computed in ``promote_types(dtype, float32)``
      with autocast off and cast back;
    * row-wise normalisation: ``P = BN_d(Sigma`` viewed as (N, d, d, 1)), i.e. channel ``i``
      of the batch norm is row ``i`` of ``Sigma``;
    * row-wise convolution: a ``(d, 1)`` kernel with ``d`` groups, ``d -> 4d`` with bias:
      each row gets 4 filters of length ``d`` -> (N, 4d, 1, 1);
    * ``g = sigmoid(Conv1x1_{4d -> C, bias}(r))`` (no activation before it); ``y = x * g``.

    Parameters: ``C d + d`` (reduction conv) ``+ 2d`` (its BN) ``+ 2d`` (row BN) ``+ 4d^2 +
    4d`` (row conv) ``+ 4d C + C`` (last conv) ``= 5 C d + 4 d^2 + 9 d + C``; 230,784 at
    C = 256, d = 128.
    Paper position: the residual branch's end (after its last norm, before the addition) of
    the *last* block of each stage only (``stage_last_residual_end``; 4 blocks in
    ResNet-50), as in the official ``main.py``.

    Initialisation: as the official ResNet's initialisation loop, which re-initialises every
    convolution of the network, the block's included: the three conv weights are drawn
    ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``; the conv biases keep PyTorch's
    default initialisation; the batch norms weight 1, bias 0.

    The training backward of ``x * g`` is hand-written (:class:`_SampledGate`; the gate
    network runs under autograd) and not twice differentiable; ``CVATTN_FAST_BACKWARD=0`` or
    :func:`cvattn_mm.attention.fast_backward.set_fast_backward` ``(False)`` runs plain
    autograd instead.

    Deviations:

    * ``reduce_stride`` defaults to 1. The official block uses stride 2 in the stage whose
      bottleneck width is 64 (ResNet's first stage, 56x56 maps) and 1 elsewhere; a module does
      not know its stage, so that choice is the config's:
      ``configs/classification/resnet50/resnet50-gsop-official_8xb32_in1k.py`` passes
      ``reduce_stride=2`` to the first stage's block.
    * The covariance subtracts the mean instead of multiplying by the official M x M
      centring matrix repeated per sample (the same function, O(d M) instead of O(M^2)
      memory), and runs in ``promote_types(dtype, float32)`` outside autocast (the official
      code computes it in the input's dtype, with a centring matrix built in float32 and
      cast, so its float64 results carry float32 roundings of 1/M: ~1e-8 relative; with the
      matrix built in float64 the two agree to 5e-15). Its gradient is autograd's, which
      equals the official hand-written backward of ``CovpoolLayer``.
    * Layers (the official names, parameter shapes and values): ``conv_for_DR`` is a 1x1
      conv of stride 1 (a :class:`~cvattn_mm.attention.pointwise.PointwiseConv2d`) and the
      stride is taken by subsampling x before the first ReLU (the positions a 1x1 conv of
      stride s reads: the same values, with the ReLU and its backward on ``1 / s^2`` of x);
      ``row_conv_group`` is a :class:`RowConv2d` (the grouped conv as a batched product).
    * In training, a batch norm that sees one value per channel (batch 1 on a 1x1 reduced
      map, or ``att_dim=1``) uses its running statistics instead of raising.
    * Not implemented: the official file's position (spatial) mode ``'2'`` (an 8x8-pooled
      position covariance) and its fusions ``'+'``, ``'M'``, ``'&'`` with the channel mode;
      GSoP-Net2's iSQRT-COV pooling at the end of the network (a head, not this block).
      The official network also sets layer4's stride to 1 (a change of the network, not of
      the block; not made by the configs).

    Args:
        in_channels (int): Channels C.
        att_dim (int): Width d of the reduced features and of the covariance (official 128).
        reduce_stride (int): Stride s of the reduction conv (official: 2 in ResNet's first
            stage, 1 elsewhere).
        norm_cfg (dict): The reduction's norm and the row norm (official: BN).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel'
    paper = ('Gao et al., Global Second-order Pooling Convolutional Networks, CVPR 2019, '
             'arXiv:1811.12006')
    paper_position = 'stage_last_residual_end'
    _abbr_ = 'gsop'

    def __init__(self,
                 in_channels: int,
                 att_dim: int = 128,
                 reduce_stride: int = 1,
                 norm_cfg: dict = dict(type='BN'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.att_dim = d = check_int(owner, 'att_dim', att_dim, 1)
        self.reduce_stride = check_int(owner, 'reduce_stride', reduce_stride, 1)
        # the official block's layer names (its state-dict keys)
        self.relu_normal = nn.ReLU()
        # the stride is taken by subsampling x before the ReLU (see reduce): a 1x1 conv with
        # stride s reads the same positions
        self.conv_for_DR = PointwiseConv2d(in_channels, d)
        self.bn_for_DR = build_norm_layer(norm_cfg, d)[1]
        self.relu = nn.ReLU()
        self.row_bn = build_norm_layer(norm_cfg, d)[1]
        # row-wise conv as a grouped conv: group i sees row i of the covariance
        self.row_conv_group = RowConv2d(d, 4)
        self.fc_adapt_channels = PointwiseConv2d(4 * d, in_channels)
        self.init_special()

    def init_special(self) -> None:
        """The official ResNet's initialisation of the block's convs (kaiming normal, fan
        out, ReLU gain; biases and batch norms keep PyTorch's defaults)."""
        for conv in (self.conv_for_DR, self.row_conv_group, self.fc_adapt_channels):
            nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        params = fast_backward_params((x, ), self)
        if params is None:
            return x * self.channel_gate(x)
        return _SampledGate.apply(x, self.gate_of_samples, self.reduce_stride, *params)

    def subsample(self, x: torch.Tensor) -> torch.Tensor:
        """The positions of ``x`` that the reduction conv (1x1, stride s) reads:
        ``x[:, :, ::s, ::s]``, (N, C, ceil(H / s), ceil(W / s))."""
        s = self.reduce_stride
        return x[:, :, ::s, ::s] if s > 1 else x

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The reduced features ``z`` (N, d, ceil(H / s), ceil(W / s)) of ``x``.

        The positions are taken before the ReLU (which commutes with the subsampling), so
        that the ReLU and its backward run on ``1 / s^2`` of x."""
        return self.reduce_samples(self.subsample(x))

    def reduce_samples(self, samples: torch.Tensor) -> torch.Tensor:
        """``ReLU(BN(conv_for_DR(ReLU(samples))))`` on :meth:`subsample`'s output."""
        z = self.conv_for_DR(self.relu_normal(samples))
        return self.relu(norm_any_batch(self.bn_for_DR, z))

    @staticmethod
    def covariance(z: torch.Tensor) -> torch.Tensor:
        """The biased covariance (N, d, d) of ``z`` (N, d, H', W') over its positions,
        computed in ``promote_types(z.dtype, float32)`` with autocast off, cast back."""
        flat = z.flatten(2).to(torch.promote_types(z.dtype, torch.float32))
        with torch.autocast(z.device.type, enabled=False):
            centred = flat - flat.mean(2, keepdim=True)
            cov = torch.matmul(centred, centred.transpose(1, 2)) / flat.shape[2]
        return cov.to(z.dtype)

    def gate_of_samples(self, samples: torch.Tensor) -> torch.Tensor:
        """The gate (N, C, 1, 1) from :meth:`subsample`'s output: the covariance of the
        reduced features, row-normalised, row-convolved, projected to C channels, sigmoid."""
        cov = self.covariance(self.reduce_samples(samples))
        rows = norm_any_batch(self.row_bn, cov[..., None])  # (N, d, d, 1): channel i = row i
        return torch.sigmoid(self.fc_adapt_channels(self.row_conv_group(rows)))

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """The gate (N, C, 1, 1) that multiplies ``x``."""
        return self.gate_of_samples(self.subsample(x))

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``channel_gate``: the gate (N, C) that multiplies ``x``."""
        return {'channel_gate': channel_map(self.channel_gate(x), 'channel gate')}

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, att_dim={self.att_dim}, '
                f'reduce_stride={self.reduce_stride}')
