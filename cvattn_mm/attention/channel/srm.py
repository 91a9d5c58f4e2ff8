"""Style-based Recalibration Module."""
from typing import Dict

import torch
import torch.nn as nn

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_positive_float
from ..map_norm import build_map_norm
from ..maps import AttentionMap, channel_map
from ..norm import norm_any_batch


@register_model()
class SRM(AttentionModule):
    """Style-based Recalibration Module (Lee et al., ICCV 2019, arXiv:1903.10829).

    Style pooling, then style integration: per channel c, the mean ``mu_c`` and the standard
    deviation ``sigma_c = sqrt(var_c + eps)`` over H, W; ``z_c = w_c1 mu_c + w_c2 sigma_c``
    (channel-wise fully connected, a (C, 2) weight without bias);
    ``y = x * sigmoid(BN(z))``.
    Parameters: ``2C`` (``cfc``) ``+ 2C`` (the BN's affine) ``= 4C``.
    Paper position: on the residual branch after its last norm, before the addition.

    The weight ``cfc`` starts at zero (as in the official code), so at initialisation
    ``z = 0``, ``BN(z) = 0`` and the output is ``x / 2``. The official training puts ``cfc``
    and the BN's weight and bias in a parameter group without weight decay; in an mmengine
    config: ``optim_wrapper=dict(paramwise_cfg=dict(custom_keys={'.srm.':
    dict(decay_mult=0.)}))`` (the inserted modules' keys contain ``.srm.``).

    Deviations: none with the defaults, on maps of more than one position. The variance is
    the unbiased one, as in the official code (``torch.var``); on a 1x1 map its divisor
    ``H W - 1`` is 0 and the official code gives NaN, here the variance is 0 (divisor
    ``max(H W - 1, 1)``). ``variance='biased'`` divides by ``H W``. The state-dict keys are
    the official ``SRMLayer``'s (``cfc``, ``bn.*``). In training, a batch norm that sees one
    value per channel (batch 1) uses its running statistics instead of raising.

    Args:
        in_channels (int): Channels C.
        eps (float): Added to the variance before the square root (official: 1e-5).
        variance (str): ``'unbiased'`` (official) or ``'biased'``.
        norm_cfg (dict): Norm of the integrated style vector (official: BN).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel'
    paper = ('Lee et al., SRM: A Style-based Recalibration Module for Convolutional Neural '
             'Networks, ICCV 2019, arXiv:1903.10829')
    paper_position = 'residual_end'
    _abbr_ = 'srm'

    def __init__(self,
                 in_channels: int,
                 eps: float = 1e-5,
                 variance: str = 'unbiased',
                 norm_cfg: dict = dict(type='BN'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.eps = check_positive_float(owner, 'eps', eps, allow_zero=True)
        self.variance = check_choice(owner, 'variance', variance, ('unbiased', 'biased'))
        self.cfc = nn.Parameter(torch.empty(in_channels, 2))
        self.bn = build_map_norm(norm_cfg, in_channels)
        self.init_special()

    def init_special(self) -> None:
        """The official initialisation: a zero ``cfc`` (the BN keeps weight 1 and bias 0)."""
        nn.init.zeros_(self.cfc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return x * self.channel_gate(x)

    def style(self, x: torch.Tensor) -> torch.Tensor:
        """Style pooling: the channel means and standard deviations (N, C, 2), computed in
        ``promote_types(x.dtype, float32)``."""
        flat = x.flatten(2).to(torch.promote_types(x.dtype, torch.float32))
        count = flat.shape[2]
        mean = flat.mean(2)
        # max(count - 1, 1) written without a comparison, so that a trace is valid for any size
        divisor = count if self.variance == 'biased' else count - 1 + 1 // count
        var = (flat - mean[:, :, None]).square().sum(2) / divisor
        return torch.stack((mean, (var + self.eps).sqrt()), 2)

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """The gate (N, C, 1, 1): style integration of :meth:`style`."""
        z = (self.style(x) * self.cfc).sum(2).to(x.dtype)[:, :, None, None]
        return torch.sigmoid(norm_any_batch(self.bn, z))

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``channel_gate``: the gate (N, C) that multiplies ``x``."""
        return {'channel_gate': channel_map(self.channel_gate(x), 'channel gate')}

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, eps={self.eps}, variance={self.variance!r}'
