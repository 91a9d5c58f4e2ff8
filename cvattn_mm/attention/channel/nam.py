"""Normalization-based Attention Module."""
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice
from ..map_norm import build_map_norm
from ..maps import AttentionMap, channel_map, spatial_map
from ..norm import norm_any_batch
from ..size_policy import (
    GridSize,
    check_grid_size,
    check_size_policy,
    fit_to_grid,
    resize_from_grid,
)


def weight_factors(norm: nn.Module) -> torch.Tensor:
    """NAM's factors ``|gamma| / sum |gamma|`` of a norm's affine weight, computed from the
    weight's values (no gradient flows through them, as in the official ``.data``), in
    ``promote_types(dtype, float32)``."""
    gamma = norm.weight.detach().abs()
    gamma = gamma.to(torch.promote_types(gamma.dtype, torch.float32))
    return gamma / gamma.sum()


@register_model()
class NAM(AttentionModule):
    """Normalization-based Attention Module (Liu et al., 2021, arXiv:2111.12419).

    Channel attention from the scaling factors of a batch norm: ``B = BN(x)`` (affine, batch
    statistics in training), ``w_c = |gamma_c| / sum_j |gamma_j|`` from the BN's own weight
    gamma, and ``y = x * sigmoid(w_c * B_c)``, element-wise (the gate varies over the
    positions too, since B does). The factors ``w`` are computed from the weight's values
    with no gradient through them (the official ``bn.weight.data``); gamma and beta learn
    through ``B`` only. A variant whose ``w`` is differentiable would be a different module.
    Parameters: ``2C`` (the BN's affine): **512 at C = 256**.
    Paper position: on the residual branch after its last norm, before the addition (the
    official ``model_resnet.py``, every block of every stage).

    The paper's training adds an L1 penalty ``p sum |gamma|`` on these weights (p = 1e-4), as
    the official script's ``-sr`` option: ``grad(gamma) += s sign(gamma)`` after the backward,
    before the optimiser step. That is not part of the forward: a config adds it with
    ``custom_hooks = [dict(type='SparsityPenaltyHook', penalty=1e-4)]``
    (:class:`~cvattn_mm.engine.SparsityPenaltyHook`, which penalises the parameters that
    :meth:`sparsity_parameters` returns).

    Spatial variant (``spatial=True``, off by default, as at the official HEAD, where it is
    commented out): after the channel gate, ``x2 = x1 * sigmoid(lambda_p * BN1d(x1)_p)``
    with a ``BatchNorm1d`` over the H W positions as its features (each position normalised
    over the batch and the channels) and ``lambda_p = |gamma_p| / sum |gamma|`` of that
    BN's weight. Its BN has one feature per position, so it is size-bound: the module follows
    the library's size policy (``cvattn_mm.attention.size_policy``): built for
    ``grid_size``; another input size is adaptive-average-pooled to the grid, the gate
    computed there and resized back to H x W (bilinear, ``align_corners=False``), or raises
    with ``size_policy='strict'``. On the grid size itself it is the official function.
    Parameters ``2C + 2 g_h g_w``.

    Deviations: none with the defaults. The official code is channel-only at HEAD
    (6e8d3e3); commit 768b859 applied a ReLU before the sigmoid (gate in [0.5, 1)), removed
    again in afbaf4c; not offered. Spatial variant: the official code only runs at its
    construction size (``size_policy='strict'``); ``'pool'`` (default) pools other sizes to
    the grid and upsamples the gate. In training, a batch norm that sees one value per
    feature (batch 1 of a 1x1 map) uses its running statistics instead of raising.

    Args:
        in_channels (int): Channels C.
        spatial (bool): Add the spatial gate (official at the first commit; off at HEAD).
        grid_size (int | tuple[int, int], optional): The (h, w) the spatial BN is built
            for (the official ResNet: 56, 28, 14, 7 for stages 1-4 at 224 x 224); required
            with ``spatial=True``, not accepted without.
        size_policy (str): ``'pool'`` or ``'strict'`` (the spatial variant's other sizes).
        norm_cfg (dict): The channel norm; it needs an affine weight (official: BN).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel'
    paper = ('Liu et al., NAM: Normalization-based Attention Module, 2021, '
             'arXiv:2111.12419')
    paper_position = 'residual_end'
    _abbr_ = 'nam'

    def __init__(self,
                 in_channels: int,
                 spatial: bool = False,
                 grid_size: Optional[GridSize] = None,
                 size_policy: str = 'pool',
                 norm_cfg: dict = dict(type='BN'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.spatial = check_choice(owner, 'spatial', spatial, (True, False))
        self.size_policy = check_size_policy(owner, size_policy)
        if spatial and grid_size is None:
            raise ValueError(f'{owner}: spatial=True needs grid_size, the (h, w) its '
                             'BatchNorm1d over positions is built for (e.g. 56, 28, 14, 7 '
                             'for the stages of a ResNet at 224 x 224)')
        if not spatial and grid_size is not None:
            raise ValueError(f'{owner}: grid_size={grid_size!r} is only used with '
                             'spatial=True (the channel form is not size-bound)')
        self.grid_size = None if grid_size is None else check_grid_size(owner, grid_size)
        self.bn = build_map_norm(norm_cfg, in_channels)
        if getattr(self.bn, 'weight', None) is None:
            raise ValueError(f'{owner}: norm_cfg={norm_cfg!r} builds a norm without an '
                             'affine weight; NAM weighs channels by that weight')
        if spatial:
            self.spatial_bn = nn.BatchNorm1d(self.grid_size[0] * self.grid_size[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = x * self.channel_gate(x)
        if self.spatial:
            x = x * self.spatial_gate(x)
        return x

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """``sigmoid(w_c BN(x)_c)`` (N, C, H, W)."""
        b = norm_any_batch(self.bn, x)
        return torch.sigmoid(b * weight_factors(self.bn).to(b.dtype)[:, None, None])

    def spatial_gate(self, x1: torch.Tensor) -> torch.Tensor:
        """``sigmoid(lambda_p BN1d(x1)_p)`` (N, C, H, W) of the channel-gated map ``x1``,
        computed on the grid and resized to x1's size (the size policy)."""
        grid = fit_to_grid(x1, self.grid_size, self.size_policy, type(self).__name__)
        n, c, gh, gw = grid.shape
        b = norm_any_batch(self.spatial_bn, grid.flatten(2).transpose(1, 2)).transpose(1, 2)
        gate = torch.sigmoid(b * weight_factors(self.spatial_bn).to(b.dtype))
        return resize_from_grid(gate.reshape(n, c, gh, gw), x1.shape[-2:])

    def sparsity_parameters(self) -> List[nn.Parameter]:
        """The weights of the paper's L1 sparsity penalty: the channel BN's (and the spatial
        BN's) gamma (:class:`~cvattn_mm.engine.SparsityPenaltyHook` reads this)."""
        return [self.bn.weight] + ([self.spatial_bn.weight] if self.spatial else [])

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """The gates are (N, C, H, W): 'channel_gate' averaged over the positions (N, C) and
        'channel_gate_positions' over C (N, H, W); with ``spatial``, 'spatial_gate' averaged
        over C (N, H, W)."""
        gate = self.channel_gate(x)
        maps = {
            'channel_gate': channel_map(gate.mean((2, 3)), 'NAM channel gate, mean over '
                                        'positions'),
            'channel_gate_positions': spatial_map(gate, x.shape, 'NAM channel gate, mean '
                                                  'over C'),
        }
        if self.spatial:
            maps['spatial_gate'] = spatial_map(self.spatial_gate(x * gate), x.shape,
                                               'NAM spatial gate, mean over C')
        return maps

    def extra_repr(self) -> str:
        text = f'in_channels={self.in_channels}, spatial={self.spatial}'
        if self.spatial:
            text += f', grid_size={self.grid_size}, size_policy={self.size_policy!r}'
        return text
