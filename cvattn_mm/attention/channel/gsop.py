"""Global Second-order Pooling block (GSoP-Net1)."""
import math
from typing import Dict

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_int
from ..fast_backward import amp_backward, amp_forward, fast_backward_params
from ..map_norm import build_map_norm
from ..maps import AttentionMap, channel_map, spatial_map
from ..norm import norm_any_batch
from ..pointwise import PointwiseConv2d
from ..size_policy import check_grid_size, fit_to_grid

#: ``mode`` values; the official code's names are ``main.py``'s ``att_manner`` (the block's
#: ``attention`` strings '1', '2', '+', 'M', '&').
MODES = ('channel', 'position', 'fusion_avg', 'fusion_max', 'fusion_concat')


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
    positions (for s = 1 the samples are x, and their gradient takes ``G g`` in place).
    Autograd writes a product for ``dL/dg``, another for ``G g``, a zero-filled map for the
    samples' gradient and their sum."""

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
    """GSoP block of GSoP-Net1 (Gao et al., CVPR 2019, arXiv:1811.12006).

    ``mode='channel'`` (the default, the paper's block): a channel gate from the covariance
    of a reduced copy of the input:

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

    The official file's other modes (``main.py``'s ``att_manner``; its README reports the
    channel mode only), each as the official code computes it:

    * ``'position'`` (official ``'2'``): ``u = BN(Conv1x1_{C -> d, bias}(ReLU(x)))`` (no
      ReLU after the BN), adaptive-average-pooled to a ``g_h x g_w`` grid
      (``position_grid``, official 8 x 8; P = g_h g_w positions),
      ``Sigma_pos = u^T I_hat u`` (N, P, P) with the official
      ``I_hat = (1/P) I_d - (1/P^2) 1 1^T`` (its centring uses the number of positions over
      the d channels: a covariance of the positions only when d = P), row BN over P rows,
      row conv P -> 4P, ReLU, ``Conv1x1_{4P -> P, bias}``, sigmoid, viewed as
      (N, 1, g_h, g_w) and adaptive-average-pooled to (H, W) (the official "unpool":
      windows replicate the grid cells); ``y = ReLU(x * a)``. Parameters
      ``C d + 3d + 8 P^2 + 7 P`` (33,216 + 259 d at C = 256 and 8 x 8; 66,368 at d = 128).
    * ``'fusion_avg'`` (official ``'+'``; a sum): ``y = x * g + ReLU(x * a)``.
    * ``'fusion_max'`` (official ``'M'``): ``y = max(x * g, ReLU(x * a))``.
    * ``'fusion_concat'`` (official ``'&'``, "a weighted spatial concat"):
      ``y = BN_C(K_1(x * g) + K_2(ReLU(x * a)))``, ``K_1``, ``K_2`` biased ``(k, 1)`` convs
      C -> C with ``G = C / 64`` groups, ``k = 2 f + 5``, padding ``(f + 2, 0)``,
      ``f = int(log2(32 / G))``; needs C a multiple of 64 (and k >= 1: C < 16384).
      Parameters: the channel and position branches' ``+ 2 (64 C k + C) + 2 C``.

    Paper position: the residual branch's end (after its last norm, before the addition) of
    the *last* block of each stage only (``stage_last_residual_end``; 4 blocks in
    ResNet-50), as in the official ``main.py``.

    Initialisation: as the official ResNet's initialisation loop, which re-initialises every
    convolution of the network, the block's included: every conv weight (three in channel
    mode) is drawn ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``; the conv
    biases keep PyTorch's default initialisation; the batch norms weight 1, bias 0.

    In channel mode the training backward of ``x * g`` is hand-written
    (:class:`_SampledGate`; the gate network runs under autograd) and not twice
    differentiable (the other modes use plain autograd); ``CVATTN_FAST_BACKWARD=0`` or
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
    * The position branch pools to the grid and back with averaging matrices (the values
      of the official ``adaptive_avg_pool2d`` calls, exportable to ONNX at any size; a
      traced or exported graph is specialised to the traced H x W); its covariance also
      runs in ``promote_types(dtype, float32)`` outside autocast.
    * Not implemented: GSoP-Net2's iSQRT-COV pooling at the end of the network (a head, not
      this block). The official network also sets layer4's stride to 1 (a change of the
      network, not of the block; not made by the configs).

    Args:
        in_channels (int): Channels C.
        att_dim (int): Width d of the reduced features and of the covariance (official 128).
        reduce_stride (int): Stride s of the channel branch's reduction conv (official: 2 in
            ResNet's first stage, 1 elsewhere).
        mode (str): ``'channel'`` (default), ``'position'``, ``'fusion_avg'``,
            ``'fusion_max'`` or ``'fusion_concat'`` (see above).
        position_grid (int | tuple[int, int]): Grid g of the position branch (official 8).
        norm_cfg (dict): The reductions' norms, the row norms and the concat fusion's norm
            (official: BN).
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
                 mode: str = 'channel',
                 position_grid=8,
                 norm_cfg: dict = dict(type='BN'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.att_dim = d = check_int(owner, 'att_dim', att_dim, 1)
        self.reduce_stride = check_int(owner, 'reduce_stride', reduce_stride, 1)
        self.mode = check_choice(owner, 'mode', mode, MODES)
        self.position_grid = check_grid_size(owner, position_grid, 'position_grid')
        # the official block's layer names (its state-dict keys), built for the mode's branches
        self.relu_normal = nn.ReLU()
        self.relu = nn.ReLU()
        if self.mode != 'position':
            # the stride is taken by subsampling x before the ReLU (see reduce): a 1x1 conv
            # with stride s reads the same positions
            self.conv_for_DR = PointwiseConv2d(in_channels, d)
            self.bn_for_DR = build_map_norm(norm_cfg, d)
            self.row_bn = build_map_norm(norm_cfg, d)
            # the row-wise conv: a grouped conv whose group i sees row i of the covariance
            self.row_conv_group = RowConv2d(d, 4)
            self.fc_adapt_channels = PointwiseConv2d(4 * d, in_channels)
        if self.mode != 'channel':
            p = self.position_grid[0] * self.position_grid[1]
            self.conv_for_DR_spatial = PointwiseConv2d(in_channels, d)
            self.bn_for_DR_spatial = build_map_norm(norm_cfg, d)
            self.row_bn_for_spatial = build_map_norm(norm_cfg, p)
            self.row_conv_group_for_spatial = RowConv2d(p, 4)
            self.fc_adapt_channels_for_spatial = PointwiseConv2d(4 * p, p)
        if self.mode == 'fusion_concat':
            groups = in_channels // 64
            factor = int(math.log(32 / groups, 2)) if groups else 0
            if in_channels % 64 or 2 * factor + 5 < 1:
                raise ValueError(f"{owner}: mode='fusion_concat' needs in_channels a multiple "
                                 f'of 64 below 16384 (its convs have in_channels / 64 groups '
                                 f'and kernel height 2 int(log2(32 / groups)) + 5 >= 1), got '
                                 f'{in_channels}')
            kernel, padding = (2 * factor + 5, 1), (factor + 2, 0)
            self.dilate_conv_for_concat1 = nn.Conv2d(in_channels, in_channels, kernel,
                                                     padding=padding, groups=groups)
            self.dilate_conv_for_concat2 = nn.Conv2d(in_channels, in_channels, kernel,
                                                     padding=padding, groups=groups)
            self.bn_for_concat = build_map_norm(norm_cfg, in_channels)
        self.init_special()

    def init_special(self) -> None:
        """The official ResNet's initialisation of the block's convs (kaiming normal, fan
        out, ReLU gain; biases and batch norms keep PyTorch's defaults)."""
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.mode == 'channel':
            params = fast_backward_params((x, ), self)
            if params is None:
                return x * self.channel_gate(x)
            return _SampledGate.apply(x, self.gate_of_samples, self.reduce_stride, *params)
        if self.mode == 'position':
            return self.relu_normal(x * self.position_gate(x))
        by_channel = x * self.channel_gate(x)
        by_position = self.relu(x * self.position_gate(x))
        if self.mode == 'fusion_avg':
            return by_channel + by_position
        if self.mode == 'fusion_max':
            return torch.maximum(by_channel, by_position)
        fused = self.dilate_conv_for_concat1(by_channel) + self.dilate_conv_for_concat2(
            by_position)
        return norm_any_batch(self.bn_for_concat, fused)

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

    @staticmethod
    def position_covariance(u: torch.Tensor) -> torch.Tensor:
        """The official ``cov_feature`` of ``u`` (N, d, g_h, g_w): ``u^T I_hat u`` (N, P, P)
        with ``I_hat = (1/P) I_d - (1/P^2) 1 1^T``, P = g_h g_w, written as
        ``(u^T u - s s^T / P) / P`` with ``s`` the sums over the d channels; computed in
        ``promote_types(u.dtype, float32)`` with autocast off, cast back."""
        flat = u.flatten(2).to(torch.promote_types(u.dtype, torch.float32))
        count = flat.shape[2]
        with torch.autocast(u.device.type, enabled=False):
            sums = flat.sum(1)  # (N, P)
            gram = torch.matmul(flat.transpose(1, 2), flat)
            cov = (gram - sums[:, :, None] * sums[:, None, :] / count) / count
        return cov.to(u.dtype)

    def position_gate(self, x: torch.Tensor) -> torch.Tensor:
        """The position gate (N, 1, H, W) of the position branch (modes other than
        ``'channel'``)."""
        u = self.conv_for_DR_spatial(self.relu_normal(x))
        u = norm_any_batch(self.bn_for_DR_spatial, u)
        u = fit_to_grid(u, self.position_grid, 'pool', type(self).__name__)
        rows = norm_any_batch(self.row_bn_for_spatial, self.position_covariance(u)[..., None])
        a = self.relu(self.row_conv_group_for_spatial(rows))
        a = torch.sigmoid(self.fc_adapt_channels_for_spatial(a))
        a = a.view(a.shape[0], 1, *self.position_grid)
        return fit_to_grid(a, tuple(x.shape[2:]), 'pool', type(self).__name__)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``channel_gate``: the gate (N, C) that multiplies ``x`` (modes with the channel
        branch); ``position_gate``: the gate (N, H, W) of the position branch (modes with
        it; the forward multiplies x by it before a ReLU)."""
        maps = {}
        if self.mode != 'position':
            maps['channel_gate'] = channel_map(self.channel_gate(x), 'channel gate')
        if self.mode != 'channel':
            maps['position_gate'] = spatial_map(self.position_gate(x), x.shape,
                                                'position gate')
        return maps

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, att_dim={self.att_dim}, '
                f'reduce_stride={self.reduce_stride}, mode={self.mode!r}, '
                f'position_grid={self.position_grid}')
