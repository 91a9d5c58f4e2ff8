"""Gated Channel Transformation."""
from typing import Dict

import torch
import torch.nn as nn

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_positive_float
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
        return x * self.channel_gate(x)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The global context embedding ``s`` (N, C, 1, 1), in
        ``promote_types(x.dtype, float32)``."""
        flat = x.to(torch.promote_types(x.dtype, torch.float32))
        if self.mode == 'l2':
            return (flat.square().sum((2, 3), keepdim=True) + self.eps).sqrt() * self.alpha
        if not self.after_relu:
            flat = flat.abs()
        return flat.sum((2, 3), keepdim=True) * self.alpha

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """The gate ``1 + tanh(s n + beta)`` (N, C, 1, 1) in x's dtype, from
        :meth:`embedding` normalised across the channels."""
        s = self.embedding(x)
        if self.mode == 'l2':
            norm = self.gamma / (s.square().mean(1, keepdim=True) + self.eps).sqrt()
        else:
            norm = self.gamma / (s.abs().mean(1, keepdim=True) + self.eps)
        return (1. + torch.tanh(s * norm + self.beta)).to(x.dtype)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``channel_gate``: half the gate (N, C) that multiplies ``x``,
        ``(1 + tanh(s n + beta)) / 2``, in [0, 1] like the other modules' gates (the
        neutral gate 1 is drawn as 1/2)."""
        return {'channel_gate': channel_map(self.channel_gate(x) / 2,
                                            'channel gate / 2: (1 + tanh(s n + beta)) / 2')}

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, eps={self.eps}, mode={self.mode!r}, '
                f'after_relu={self.after_relu}')
