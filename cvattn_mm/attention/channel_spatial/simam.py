"""SimAM: parameter-free attention from an energy function."""

import torch

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_positive_float


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
        self.e_lambda = check_positive_float('SimAM', 'e_lambda', e_lambda)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        hw = x.shape[2] * x.shape[3]
        d = (x - x.mean((2, 3), keepdim=True)).square()
        # 1 / (4 (v + lambda)), v = sum(d) / max(n, 1) = mean(d) * H W / max(n, 1): a mean
        # does not overflow in float16 where a sum can. max(n, 1) = n + 1 // HW (HW >= 1),
        # written without a comparison so that a traced graph stays valid for any size.
        scale = 4 * hw / (hw - 1 + 1 // hw)
        inv = 1 / (d.mean((2, 3), keepdim=True) * scale + 4 * self.e_lambda)
        return x * torch.sigmoid(d * inv + 0.5)

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, e_lambda={self.e_lambda}'
