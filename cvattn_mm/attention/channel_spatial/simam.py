"""SimAM: parameter-free attention from an energy function."""
from typing import Dict, Tuple

import torch
from torch.autograd.function import once_differentiable

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_positive_float
from ..fast_backward import amp_backward, amp_forward, fast_backward_params, is_tracing
from ..maps import AttentionMap, channel_map, spatial_map


@register_model()
class SimAM(AttentionModule):
    """SimAM, a simple parameter-free attention module (Yang et al., ICML 2021, PMLR 139).

    Every neuron is weighted by the inverse of its minimal energy within its channel:
    with ``n = H * W - 1``, ``mu`` and ``d = (x - mu) ** 2`` per channel,
    ``v = sum_HW(d) / n`` and ``y = x * sigmoid(d / (4 * (v + lambda)) + 0.5)``.
    Parameters: 0.

    A map with one position (``H * W = 1``, so ``n = 0`` and ``d = 0``) has ``v = 0`` by
    definition (no NaN): ``y = x * sigmoid(0.5)``, the value of a neuron equal to its mean.

    The paper's default ``lambda = 1e-4`` is the default here; the released ImageNet and
    COCO models were trained with ``lambda = 0.1`` (pass ``e_lambda=0.1`` to reproduce them).
    The paper puts the module after the 3x3 conv of each residual branch, before its BN.

    Deviations: ``H * W = 1`` gives ``x * sigmoid(0.5)`` where the official code gives NaN.
    The forward works in place and the backward is hand-written (``_SimAM``, not twice
    differentiable), except under ``torch.jit`` tracing and ``torch.compile``;
    ``CVATTN_FAST_BACKWARD=0`` or :func:`cvattn_mm.attention.fast_backward.set_fast_backward`
    ``(False)`` runs plain autograd instead.

    Args:
        in_channels (int | None): Channels C, checked on the input if given; the module
            works for any C (``None``).
        e_lambda (float): Regulariser ``lambda > 0`` of the energy.
        init_cfg (dict, optional): mmengine initialisation config (nothing to initialise).

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Yang et al., SimAM: A Simple, Parameter-Free Attention Module for '
             'Convolutional Neural Networks, ICML 2021, PMLR 139')
    paper_position = 'before_mid_norm'
    _abbr_ = 'simam'

    def __init__(self,
                 in_channels: int | None = None,
                 e_lambda: float = 1e-4,
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        self.e_lambda = check_positive_float(type(self).__name__, 'e_lambda', e_lambda)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if fast_backward_params((x,), self) is not None:
            return _SimAM.apply(x, _scale(x), 4 * self.e_lambda)
        return x * self.gate(x)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The gate ``sigmoid(d / (4 (v + lambda)) + 0.5)`` (N, C, H, W); in place (one new
        tensor) when no gradient is recorded and nothing traces the call."""
        centred = x - x.mean((2, 3), keepdim=True)
        if not torch.is_grad_enabled() and not is_tracing():
            return _gate_(centred, _scale(x), 4 * self.e_lambda)[0]
        d = centred.square()
        inv = 1 / (d.mean((2, 3), keepdim=True) * _scale(x) + 4 * self.e_lambda)
        return torch.sigmoid(d * inv + 0.5)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'gate', the gate averaged over C (N, H, W), and 'channel_mean', averaged over the
        positions (N, C)."""
        gate = self.gate(x)
        return {'gate': spatial_map(gate, x.shape, 'energy gate, mean over C'),
                'channel_mean': channel_map(gate.mean((2, 3), keepdim=True),
                                            'energy gate, mean over positions')}

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, e_lambda={self.e_lambda}'


def _scale(x: torch.Tensor) -> float:
    """``4 H W / max(n, 1)``: ``1 / (4 (v + lambda)) = 1 / (mean(d) * scale + 4 lambda)``.

    ``v = sum(d) / max(n, 1) = mean(d) * H W / max(n, 1)``: a mean does not overflow in
    float16 where a sum can. ``max(n, 1) = n + 1 // (H W)`` (H W >= 1), written without a
    comparison so that a traced graph stays valid for any size.
    """
    hw = x.shape[2] * x.shape[3]
    return 4 * hw / (hw - 1 + 1 // hw)


def _gate_(centred: torch.Tensor, scale: float, bias: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``sigmoid(d * inv + 0.5)`` with ``d = centred ** 2``, in place in ``centred``; and
    ``inv = 1 / (mean(d) * scale + bias)`` (N, C, 1, 1)."""
    d = centred.square_()
    inv = torch.reciprocal(d.mean((2, 3), keepdim=True).mul_(scale).add_(bias))
    return d.mul_(inv).add_(0.5).sigmoid_(), inv


class _SimAM(torch.autograd.Function):
    """SimAM's forward in place in two tensors of the size of ``x`` (autograd's needs six),
    and its backward in closed form. With ``xc = x - mu``, ``s`` the gate, ``g = dL/dy``,
    ``q = g x s (1 - s)``, ``n = H W``:

    ``dL/dx = g s + 2 xc (q inv - scale inv^2 sum(q xc^2) / n) - 2 inv sum(q xc) / n``

    (sums per channel; the term of ``sum(xc) = 0`` is left out). Not twice differentiable.
    """

    @staticmethod
    @amp_forward
    def forward(ctx, x: torch.Tensor, scale: float, bias: float) -> torch.Tensor:
        mu = x.mean((2, 3), keepdim=True)
        gate, inv = _gate_(x - mu, scale, bias)
        ctx.save_for_backward(x, mu, gate, inv)
        ctx.scale = scale
        return x * gate

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, mu, gate, inv = ctx.saved_tensors
        n = x.shape[2] * x.shape[3]
        q = torch.rsub(gate, 1).mul_(gate).mul_(grad).mul_(x)  # dL/dt
        centred = x - mu
        buffer = q * centred
        sum_qx = buffer.sum((2, 3), keepdim=True)
        sum_qd = buffer.mul_(centred).sum((2, 3), keepdim=True)
        # dL/dd = q inv + c1, then times 2 xc; the mean's share: -2 inv sum(q xc) / n.
        c1 = inv.square().mul_(sum_qd).mul_(-ctx.scale / n)
        grad_x = torch.mul(grad, gate, out=buffer)
        grad_x.add_(q.mul_(inv).add_(c1).mul_(centred), alpha=2)
        grad_x.sub_(inv.mul(sum_qx).mul_(2 / n))
        return grad_x, None, None
