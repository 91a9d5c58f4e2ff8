"""Gated Channel Transformation."""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_positive_float
from ..fast_backward import amp_backward, amp_forward, fast_backward_params, is_tracing
from ..maps import AttentionMap, channel_map


@register_model()
class GCT(AttentionModule):
    """Gated Channel Transformation (Yang et al., CVPR 2020, arXiv:1909.11519).

    Not the Gaussian Context Transformer (Ruan et al., CVPR 2021), a different channel
    attention module with the same acronym.

    Per channel c, a global context embedding, a normalisation across the channels and a
    gate. Mode ``'l2'`` (default): ``s_c = alpha_c sqrt(sum_{H,W} x_c^2 + eps)`` (a sum, not a
    mean), ``n_c = gamma_c / sqrt(mean_C(s^2) + eps)``; mode ``'l1'``:
    ``s_c = alpha_c sum_{H,W} |x_c|`` (``sum_{H,W} x_c`` with ``after_relu=True``, for
    non-negative inputs), ``n_c = gamma_c / (mean_C |s| + eps)``. Then
    ``y = x * (1 + tanh(s_c n_c + beta_c))``.
    Parameters: ``alpha``, ``gamma``, ``beta``, each ``C``: ``3C``.
    Paper position: before every conv of the backbone (the stem conv, conv1, conv2, conv3
    of every block and the downsample conv: 53 modules in ResNet-50). The authors' README
    reports that one GCT per block (before its first or last 1x1 conv) costs only 0.1 to 0.2
    points of ImageNet top-1.

    At initialisation ``alpha = 1``, ``gamma = 0``, ``beta = 0``: ``s_c n_c = 0``, the gate
    is exactly 1 and the module is exactly the identity (for every input whose channel sums
    are finite), so ``identity_init`` is not needed. The product ``s_c n_c`` is invariant to
    a common scale of the channel sums up to ``eps``: scaling ``x``, or the map size, changes
    the gate only through ``eps`` and through the content.

    The official training applies no weight decay to ``beta`` (the authors' README asks for
    it; their ``main.py`` gives every parameter whose name contains ``beta`` a weight decay
    of 0). In an mmengine config: ``optim_wrapper=dict(paramwise_cfg=dict(custom_keys={
    '.gct.beta': dict(decay_mult=0.)}))`` (the key of an inserted GCT's ``beta`` ends with
    ``.gct.beta``; with ``identity_init=True`` it ends with ``.gct.attention.beta``).

    With gradients, the block runs as one Function with a hand-written backward (one tensor
    of the size of ``x`` written in the forward and one in the backward instead of five or
    six; the same values, ``sign(0) = 0`` in the gradient of ``|x|`` as autograd's), not
    twice differentiable; ``fast_backward(False)`` runs plain autograd.

    Deviations: none in the computed function. The channel sums and the normalisation are
    computed in ``promote_types(x.dtype, float32)`` (the official code uses the input's
    dtype: a sum of squares in fp16 overflows), and the gate is cast back to the input's
    dtype. An unknown ``mode`` raises a ValueError (the official code prints a message and
    calls ``sys.exit`` without importing ``sys``: a NameError), as does ``after_relu=True``
    with ``mode='l2'`` (ignored by the official code). The parameters keep the official
    names and shapes ``(1, C, 1, 1)``, so official weights load unchanged.

    Args:
        in_channels (int): Channels C.
        eps (float): The epsilon of the embedding ('l2') and of the normalisation (official
            ``epsilon``: 1e-5). Must be > 0.
        mode (str): ``'l2'`` (official default) or ``'l1'``.
        after_relu (bool): Mode ``'l1'`` only: the input is non-negative (it follows a
            ReLU), so the embedding sums ``x`` instead of ``|x|``.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel'
    paper = ('Yang et al., Gated Channel Transformation for Visual Recognition, CVPR 2020, '
             'arXiv:1909.11519')
    paper_position = 'before_every_conv'
    _abbr_ = 'gct'

    def __init__(self,
                 in_channels: int,
                 eps: float = 1e-5,
                 mode: str = 'l2',
                 after_relu: bool = False,
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.eps = check_positive_float(owner, 'eps', eps)
        self.mode = check_choice(owner, 'mode', mode, ('l2', 'l1'))
        if not isinstance(after_relu, bool):
            raise ValueError(f'{owner}: after_relu must be a bool, got {after_relu!r}')
        self.after_relu = after_relu
        if after_relu and mode != 'l1':
            raise ValueError(f"{owner}: after_relu=True applies to mode='l1' only, got "
                             f'mode={mode!r}')
        shape = (1, in_channels, 1, 1)
        self.alpha = nn.Parameter(torch.empty(shape))
        self.gamma = nn.Parameter(torch.empty(shape))
        self.beta = nn.Parameter(torch.empty(shape))
        self.init_special()

    def init_special(self) -> None:
        """The official initialisation: ``alpha = 1``, ``gamma = 0``, ``beta = 0``."""
        nn.init.ones_(self.alpha)
        nn.init.zeros_(self.gamma)
        nn.init.zeros_(self.beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        params = fast_backward_params((x, ), self)
        if params is not None:
            return _GatedChannelSums.apply(x, self, *params)
        if torch.is_grad_enabled() or is_tracing():
            return x * self.channel_gate(x)
        sums, buffer = _channel_sums(x, self.mode, self.after_relu)
        return _times(x, self.gate_of_sums(sums), buffer)

    def channel_sums(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel sums over H, W (N, C, 1, 1) that the embedding is made of:
        ``sum x^2`` ('l2'), ``sum |x|`` ('l1') or ``sum x`` ('l1' after a ReLU), in
        ``promote_types(x.dtype, float32)``."""
        return _channel_sums(x, self.mode, self.after_relu)[0]

    def gate_of_sums(self, sums: torch.Tensor) -> torch.Tensor:
        """The gate ``1 + tanh(s n + beta)`` (N, C, 1, 1) from :meth:`channel_sums`: the
        embedding ``s`` normalised across the channels by ``n``, in the dtype of ``sums``."""
        if self.mode == 'l2':
            s = (sums + self.eps).sqrt() * self.alpha
            norm = self.gamma / (s.square().mean(1, keepdim=True) + self.eps).sqrt()
        else:
            s = sums * self.alpha
            norm = self.gamma / (s.abs().mean(1, keepdim=True) + self.eps)
        return 1. + torch.tanh(s * norm + self.beta)

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """The gate (N, C, 1, 1) that multiplies ``x``, in x's dtype."""
        return self.gate_of_sums(self.channel_sums(x)).to(x.dtype)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``channel_gate``: half the gate (N, C) that multiplies ``x``,
        ``(1 + tanh(s n + beta)) / 2``, in [0, 1] like the other modules' gates (the
        neutral gate 1 is drawn as 1/2)."""
        return {'channel_gate': channel_map(self.channel_gate(x) / 2,
                                            'channel gate / 2: (1 + tanh(s n + beta)) / 2')}

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, eps={self.eps}, mode={self.mode!r}, '
                f'after_relu={self.after_relu}')


def _channel_sums(x: torch.Tensor, mode: str, after_relu: bool
                  ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """:meth:`GCT.channel_sums` of ``x``, and the tensor of the size of ``x`` written on the
    way (``x^2`` or ``|x|``) when it has x's dtype and layout (a buffer for the output), else
    None."""
    flat = x.to(torch.promote_types(x.dtype, torch.float32))
    if mode == 'l1' and after_relu:
        return flat.sum((2, 3), keepdim=True), None
    terms = flat.square() if mode == 'l2' else flat.abs()
    reusable = terms.dtype == x.dtype and terms.stride() == x.stride()
    return terms.sum((2, 3), keepdim=True), terms if reusable else None


def _times(x: torch.Tensor, gate: torch.Tensor, buffer: Optional[torch.Tensor]) -> torch.Tensor:
    """``x * gate`` (gate cast to x's dtype), written into ``buffer`` if there is one."""
    gate = gate.to(x.dtype)
    return torch.mul(x, gate) if buffer is None else torch.mul(x, gate, out=buffer)


class _GatedChannelSums(torch.autograd.Function):
    """GCT's block with a hand-written backward (docs/architecture.md, "Fast backwards").

    Forward: the channel sums ``S`` (one pass over ``x``, its terms' tensor reused for the
    output), the gate network on ``S`` recorded by autograd, ``y = x * gate``. Backward from
    ``g = dL/dy``: ``dL/dgate = sum_{H,W} g x``; autograd through the gate network gives
    ``dL/dS`` and the parameters' gradients; ``dL/dx = g gate + dL/dS dS/dx`` with
    ``dS/dx = 2 x`` ('l2'), ``sign(x)`` ('l1', as autograd's ``abs``) or 1 ('l1' after a
    ReLU). One new tensor of the size of ``x`` in the forward and one in the backward, where
    autograd writes five or six. Not twice differentiable.
    """

    @staticmethod
    @amp_forward
    def forward(ctx, x: torch.Tensor, module: GCT, *params) -> torch.Tensor:
        sums, buffer = _channel_sums(x, module.mode, module.after_relu)
        sums = sums.detach().requires_grad_()
        with torch.enable_grad():
            gate = module.gate_of_sums(sums)
        ctx.save_for_backward(x)
        ctx.sums, ctx.gate, ctx.params = sums, gate, params
        ctx.mode, ctx.after_relu = module.mode, module.after_relu
        return _times(x, gate.detach(), buffer)

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, = ctx.saved_tensors
        buffer = torch.mul(grad, x)
        grad_gate = buffer.sum((2, 3), keepdim=True, dtype=ctx.gate.dtype)
        inputs = (ctx.sums, ) + ctx.params
        wanted = [t for t in inputs if t.requires_grad]
        found = iter(torch.autograd.grad(ctx.gate, wanted, grad_gate, retain_graph=True,
                                         allow_unused=True))
        grads = [next(found) if t.requires_grad else None for t in inputs]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mul(grad, ctx.gate.detach().to(grad.dtype), out=buffer)
            grad_sums = grads[0].to(grad.dtype)
            if ctx.mode == 'l2':
                grad_x.addcmul_(x, grad_sums, value=2)
            elif ctx.after_relu:
                grad_x.add_(grad_sums)
            else:
                grad_x.addcmul_(x.sign(), grad_sums)
        grad_params = tuple(g if ctx.needs_input_grad[2 + i] else None
                            for i, g in enumerate(grads[1:]))
        return (grad_x, None) + grad_params
