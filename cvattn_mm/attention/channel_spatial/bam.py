"""Bottleneck Attention Module."""
from typing import Dict, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer
from torch.autograd.function import once_differentiable
from torch.nn.modules import module as module_hooks

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_int, reduced_channels
from ..fast_backward import amp_backward, amp_forward, fast_backward_params, is_tracing
from ..map_norm import build_map_norm
from ..maps import AttentionMap, channel_map, spatial_map
from ..norm import norm_any_batch
from ..pointwise import PointwiseConv2d


@register_model()
class BAM(AttentionModule):
    """Bottleneck Attention Module (Park et al., BMVC 2018, arXiv:1807.06514).

    ``y = x * (1 + sigmoid(Mc(x) + Ms(x)))`` (``fusion='add'``, the paper) or
    ``y = x * (1 + sigmoid(Mc(x) * Ms(x)))`` (``fusion='mul'``, the official code), with the
    channel branch ``Mc = W2 act(BN(W1 GAP(x)))`` (C -> C/r -> C, C x 1 x 1) and the spatial
    branch ``Ms = conv1x1(f_n(...f_1(f_0(x))))`` (1 x H x W), where ``f_0`` is a 1x1 conv
    C -> C/r and ``f_1..f_n`` (n = ``num_dilated``) are 3x3 convs with dilation d and padding
    d (which keeps every H x W), each followed by BN and act; the last 1x1 conv maps C/r -> 1.
    Parameters, h = C/r: ``2 * C * h + C + 2 * h`` (channel) plus
    ``C * h + 2 * h + n * (9 * h * h + 2 * h) + h + 1`` (spatial), with BN as the norm.

    Deviations: the convs/FC followed by a norm have no bias (a bias before a batch norm is
    cancelled by it; the official code has them: ``(2 + n) * h`` more parameters). The
    official code pools with a square ``H x H`` window (wrong on non-square maps); here GAP.
    In training, a batch norm that sees one value per channel (batch 1 in the channel branch,
    or batch 1 of a 1x1 map) uses its running statistics instead of raising.

    Speed: the 1x1 convs are :class:`~cvattn_mm.attention.pointwise.PointwiseConv2d` layers,
    and with gradients the block runs as one Function with a hand-written backward
    (``_BAMFunction``; the branches inside it are differentiated by autograd) that writes
    three tensors of the size of ``x`` in forward+backward where autograd writes 12 ('add')
    or 14 ('mul'). It is not twice differentiable; ``CVATTN_FAST_BACKWARD=0`` or
    :func:`cvattn_mm.attention.fast_backward.set_fast_backward` ``(False)`` runs plain
    autograd instead.

    Args:
        in_channels (int): Channels C.
        reduction (int): Bottleneck divisor r; the hidden width is ``max(C // r, min_channels)``.
        dilation (int): Dilation d (and padding) of the 3x3 convs of the spatial branch.
        num_dilated (int): Number n of dilated 3x3 convs.
        fusion (str): ``'add'`` (paper) or ``'mul'`` (official code) of the two branches.
        min_channels (int): Floor of the hidden width.
        norm_cfg (dict): Norm after each hidden layer.
        act_cfg (dict): Activation after each norm.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Park et al., BAM: Bottleneck Attention Module, BMVC 2018, arXiv:1807.06514')
    paper_position = 'between_stages'
    _abbr_ = 'bam'

    def __init__(self,
                 in_channels: int,
                 reduction: int = 16,
                 dilation: int = 4,
                 num_dilated: int = 2,
                 fusion: str = 'add',
                 min_channels: int = 1,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='ReLU'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        hidden = reduced_channels(owner, in_channels, reduction, min_channels)
        self.dilation = check_int(owner, 'dilation', dilation, 1)
        self.num_dilated = check_int(owner, 'num_dilated', num_dilated, 0)
        self.fusion = check_choice(owner, 'fusion', fusion, ('add', 'mul'))
        self.reduction = reduction

        self.channel_fc1 = PointwiseConv2d(in_channels, hidden, bias=False)
        self.channel_norm = build_map_norm(norm_cfg, hidden)
        self.channel_act = build_activation_layer(act_cfg)
        self.channel_fc2 = PointwiseConv2d(hidden, in_channels)

        convs = [PointwiseConv2d(in_channels, hidden, bias=False)]
        convs += [
            nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation, bias=False)
            for _ in range(num_dilated)
        ]
        self.spatial_convs = nn.ModuleList(convs)
        self.spatial_norms = nn.ModuleList(
            build_map_norm(norm_cfg, hidden) for _ in range(num_dilated + 1))
        self.spatial_acts = nn.ModuleList(
            build_activation_layer(act_cfg) for _ in range(num_dilated + 1))
        self.spatial_out = PointwiseConv2d(hidden, 1)

    def channel_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """The channel logits ``Mc`` (N, C, 1, 1) of the average-pooled ``x`` (N, C, 1, 1)."""
        hidden = norm_any_batch(self.channel_norm, self.channel_fc1(pooled))
        return self.channel_fc2(self.channel_act(hidden))

    def spatial_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial logits ``Ms`` (N, 1, H, W) of ``x``."""
        return self.spatial_tail(self.spatial_convs[0](x))

    def spatial_tail(self, h: torch.Tensor) -> torch.Tensor:
        """``Ms`` (N, 1, H, W) from the output ``h`` (N, C/r, H, W) of the first 1x1 conv."""
        # Sequential layers of one branch (not parallel branches): nothing to batch.
        for i, (norm, act) in enumerate(zip(self.spatial_norms, self.spatial_acts, strict=True)):
            h = act(norm_any_batch(norm, self.spatial_convs[i](h) if i else h))
        return self.spatial_out(h)

    def branch_logits(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The channel logits ``Mc`` (N, C, 1, 1) and the spatial logits ``Ms`` (N, 1, H, W)."""
        return self.channel_logits(x.mean((2, 3), keepdim=True)), self.spatial_logits(x)

    def fuse(self, mc: torch.Tensor, ms: torch.Tensor) -> torch.Tensor:
        """The attention logits (N, C, H, W) of the branch logits: ``Mc + Ms`` or ``Mc * Ms``."""
        return mc + ms if self.fusion == 'add' else mc * ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        params = fast_backward_params((x, ), self)
        if params is not None:
            return _BAMFunction.apply(x, self, *params)
        mc, ms = self.branch_logits(x)
        if torch.is_grad_enabled() or is_tracing():  # one graph in any grad mode
            return x + x * torch.sigmoid(self.fuse(mc, ms))
        return _gate(x, mc, ms, self.fusion == 'mul')

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'channel_gate' ``sigmoid(Mc)`` (N, C), 'spatial_gate' ``sigmoid(Ms)`` (N, H, W) and
        'combined_gate', the applied ``sigmoid(fuse(Mc, Ms))`` averaged over C (N, H, W)."""
        mc, ms = self.branch_logits(x)
        op = '+' if self.fusion == 'add' else '*'
        return {
            'channel_gate': channel_map(torch.sigmoid(mc), 'channel branch sigmoid(Mc)'),
            'spatial_gate': spatial_map(torch.sigmoid(ms), x.shape,
                                        'spatial branch sigmoid(Ms)'),
            'combined_gate': spatial_map(torch.sigmoid(self.fuse(mc, ms)), x.shape,
                                         f'sigmoid(Mc {op} Ms), mean over C'),
        }

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, reduction={self.reduction}, '
                f'dilation={self.dilation}, num_dilated={self.num_dilated}, '
                f'fusion={self.fusion!r}')


def _empty_like(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A new tensor shaped as ``x``, channels_last if ``x`` is, else contiguous (so that
    ``flatten(2)`` is a view of it)."""
    channels_last = (x.is_contiguous(memory_format=torch.channels_last)
                     and not x.is_contiguous())
    return torch.empty_like(x, dtype=dtype, memory_format=torch.channels_last
                            if channels_last else torch.contiguous_format)


def _sigmoid_logits(x: torch.Tensor, mc: torch.Tensor, ms: torch.Tensor,
                    mul: bool) -> torch.Tensor:
    """``sigmoid(Mc * Ms)`` or ``sigmoid(Mc + Ms)`` as a new tensor of the shape, memory
    format and (promoted) dtype of ``x * (Mc + Ms)``."""
    dtype = torch.promote_types(x.dtype, torch.promote_types(mc.dtype, ms.dtype))
    return (torch.mul if mul else torch.add)(mc, ms, out=_empty_like(x, dtype)).sigmoid_()


def _gate(x: torch.Tensor, mc: torch.Tensor, ms: torch.Tensor, mul: bool) -> torch.Tensor:
    """``x + x * sigmoid(Mc * Ms or Mc + Ms)`` written into one new tensor of the size of x."""
    gate = _sigmoid_logits(x, mc, ms, mul)
    return torch.addcmul(x, x, gate, out=gate)


def _hand_differentiable(layer: nn.Module) -> bool:
    """Whether ``layer`` is a bias-free :class:`PointwiseConv2d` without hooks: the layer
    whose gradients :class:`_BAMFunction` computes by hand."""
    hooks = (layer._forward_hooks, layer._forward_pre_hooks, layer._backward_hooks,
             layer._backward_pre_hooks, module_hooks._global_forward_hooks,
             module_hooks._global_forward_pre_hooks, module_hooks._global_backward_hooks,
             module_hooks._global_backward_pre_hooks)
    return type(layer) is PointwiseConv2d and layer.bias is None and not any(hooks)


class _BAMFunction(torch.autograd.Function):
    """BAM's block ``y = x (1 + s)``, ``s = sigmoid(a)``, ``a = Mc * Ms`` or ``Mc + Ms``.

    The branches run under autograd inside, from leaves: the pooled ``x`` (channel) and the
    output ``h`` of the first 1x1 conv (spatial) if that conv is :func:`_hand_differentiable`,
    else ``x`` itself (the conv is then differentiated by autograd too).

    Backward from ``g = dL/dy``: ``dL/da = g s (1 - s) x``, summed over C (times ``Mc`` for
    'mul') for ``dL/dMs`` and over H, W (times ``Ms``) for ``dL/dMc``; the branches give the
    gradients of the leaves and of their parameters;
    ``dL/dx = g (1 + s) + dL/dpooled / (H W) + W^T dL/dh`` (``W`` the first conv's weight;
    the batched product accumulates into the buffer of the first term) and
    ``dL/dW = sum_n dL/dh_n x_n^T``. New tensors of the size of ``x``: ``s`` and ``y`` in
    forward, ``dL/dx`` in backward, which computes ``dL/da`` in the buffer of ``s`` (a second
    backward, with ``retain_graph``, recomputes ``s``).
    """

    @staticmethod
    @amp_forward
    def forward(ctx, x: torch.Tensor, module: BAM, *params) -> torch.Tensor:
        first = module.spatial_convs[0]
        ctx.by_hand = _hand_differentiable(first)
        x_ = x.detach()
        pooled = x_.mean((2, 3), keepdim=True).requires_grad_()
        with torch.enable_grad():
            if ctx.by_hand:
                with torch.no_grad():
                    h = first(x_)
                ctx.leaf = h.requires_grad_()
            else:
                ctx.leaf = x_.requires_grad_()
                h = first(ctx.leaf)
            ctx.mc = module.channel_logits(pooled)
            ctx.ms = module.spatial_tail(h)
        ctx.save_for_backward(x)
        ctx.pooled, ctx.params, ctx.first_weight = pooled, params, first.weight
        ctx.mul = module.fusion == 'mul'
        # s, kept for the first backward, which overwrites it
        ctx.gate = _sigmoid_logits(x, ctx.mc.detach(), ctx.ms.detach(), ctx.mul)
        return torch.addcmul(x, x, ctx.gate, out=_empty_like(x, ctx.gate.dtype))

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, = ctx.saved_tensors
        mc, ms = ctx.mc.detach(), ctx.ms.detach()
        n, c, h, w = x.shape
        need_x = ctx.needs_input_grad[0]
        gate = getattr(ctx, 'gate', None)
        if gate is None:  # retain_graph: the first backward consumed s
            gate = _sigmoid_logits(x, mc, ms, ctx.mul)
        else:
            del ctx.gate
        grad_x = torch.addcmul(grad, grad, gate, out=_empty_like(gate, gate.dtype)) if (
            need_x) else None
        grad_a = torch.ops.aten.sigmoid_backward.grad_input(grad, gate, grad_input=gate)
        grad_a = grad_a.mul_(x).flatten(2)  # (N, C, H W): a view in both memory formats
        if ctx.mul:  # row vector times matrix (matrix times vector is ~4x slower in bmm)
            grad_mc = torch.bmm(ms.to(grad_a.dtype).reshape(n, 1, h * w), grad_a.transpose(1, 2))
            grad_ms = torch.bmm(mc.to(grad_a.dtype).reshape(n, 1, c), grad_a)
        else:
            grad_mc, grad_ms = grad_a.sum(2), grad_a.sum(1)
        del grad_a, gate
        hand_weight = ctx.by_hand and ctx.first_weight.requires_grad
        inputs = [ctx.pooled, ctx.leaf, *ctx.params]
        wanted = [need_x, need_x or hand_weight] + [
            p.requires_grad and not (ctx.by_hand and p is ctx.first_weight) for p in ctx.params]
        found = iter(torch.autograd.grad(
            (ctx.mc, ctx.ms), [t for t, want in zip(inputs, wanted) if want],
            (grad_mc.reshape(mc.shape).to(mc.dtype), grad_ms.reshape(ms.shape).to(ms.dtype)),
            retain_graph=True, allow_unused=True))
        grads = [next(found) if want else None for want in wanted]
        grad_pooled, grad_leaf, grad_params = grads[0], grads[1], grads[2:]
        if need_x:
            if ctx.by_hand:  # += W^T dL/dh, accumulated by the product itself
                weight_t = ctx.first_weight.flatten(1).t().to(grad_x.dtype).expand(n, -1, -1)
                grad_x.flatten(2).baddbmm_(weight_t, grad_leaf.reshape(n, -1, h * w).to(
                    grad_x.dtype))
            else:
                grad_x.add_(grad_leaf.to(grad_x.dtype))
            grad_x.add_(grad_pooled.to(grad_x.dtype) / (h * w))
        if hand_weight:
            grad_weight = torch.bmm(grad_leaf.reshape(n, -1, h * w),
                                    x.flatten(2).transpose(1, 2).to(grad_leaf.dtype)).sum(0)
            grad_params = [grad_weight.view_as(p).to(p.dtype) if p is ctx.first_weight else g
                           for p, g in zip(ctx.params, grad_params)]
        grad_params = [g if ctx.needs_input_grad[2 + i] else None
                       for i, g in enumerate(grad_params)]
        return (grad_x, None, *grad_params)
