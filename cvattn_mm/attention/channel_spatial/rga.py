"""Relation-aware global attention (RGA)."""
from typing import Dict

import torch
import torch.nn as nn

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_int
from ..maps import AttentionMap, channel_map, spatial_map
from ..norm import norm_any_batch
from ..size_policy import check_grid_size, check_size_policy, fit_to_grid, resize_from_grid


def _embedding(in_channels: int, out_channels: int) -> nn.Sequential:
    """The official embedding: 1x1 conv without bias, BN, ReLU (keys ``0``, ``1``)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


def _weight_net(in_channels: int, hidden: int) -> nn.Sequential:
    """The official attention-weight network W: 1x1 conv, BN, ReLU, 1x1 conv to one
    channel, BN (no biases, no final activation)."""
    return nn.Sequential(nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                         nn.ReLU(), nn.Conv2d(hidden, 1, 1, bias=False), nn.BatchNorm2d(1))


def _run(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``layers(x)``, every layer called as a module, a batch norm that sees one value per
    channel in training with its running statistics (:func:`norm_any_batch`)."""
    for layer in layers:
        x = norm_any_batch(layer, x)
    return x


def _gram(theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """``theta^T phi`` for (N, K, L) embeddings: (N, L, L), in
    ``promote_types(dtype, float32)``, returned in the embeddings' dtype."""
    acc = torch.promote_types(theta.dtype, torch.float32)
    return torch.matmul(theta.transpose(1, 2).to(acc), phi.to(acc)).to(theta.dtype)


@register_model()
class RGA(AttentionModule):
    """Relation-aware global attention (Zhang et al., CVPR 2020, arXiv:1904.02998).

    ``emb(a -> b)`` is a 1x1 conv a -> b without bias, BN, ReLU; ``W(n)`` is a 1x1 conv
    ``n -> n'`` (``n' = n // down_reduction``), BN, ReLU, 1x1 conv ``n' -> 1``, BN.
    With ``S = g_h g_w`` positions of the grid (``grid_size``), ``c' = C // reduction`` and
    ``s' = S // spatial_reduction``:

    * spatial (RGA-S): ``theta, phi = emb(C -> c')(x)`` as (N, c', S), the relations
      ``G = theta^T phi`` (N, S, S); at position p the relation feature is
      ``[G(p, :), G(:, p)]`` (2S channels: ``G^T`` and ``G`` viewed as (N, S, g_h, g_w)),
      embedded by ``emb(2S -> s')``; with the channel mean of ``emb(C -> c')(x)`` in front
      (1 + s' channels), ``W`` gives one map; ``x <- x * sigmoid(W(...))`` (broadcast over C).
    * channel (RGA-C): the same with positions and channels swapped, on x viewed as
      (N, S, C, 1): ``theta, phi = emb(S -> s')``, ``G`` (N, C, C), ``emb(2C -> c')``, the
      channel mean of ``emb(S -> s')``, ``W`` on 1 + c' channels gives one weight per
      channel; ``x <- x * sigmoid(W(...))``.
    * RGA-SC (the default and the official network's modules): spatial, then channel on
      the spatially gated x.

    Parameters: spatial ``3(C c' + 2c') + 2S s' + 2s' + P_W(1 + s')``, channel
    ``3(S s' + 2s') + 2C c' + 2c' + P_W(1 + c')``, with ``P_W(n) = (n + 3) n' + 2``; at
    C = 256: 65,160 on the default 14x14 grid; 2,673,172 on the official ReID grid of
    stage 1 (64x32: 1,082,178 spatial + 1,590,994 channel). Roughly ``5C^2/8 + 5S^2/8``: it
    grows with the fourth power of the grid side (about 6M at 56x56).
    Paper position: after every stage, the last one included (the official ``RGA_Branch``
    applies one module after each of layer1 to layer4).

    Size policy: the official module takes the number of positions S at construction (a
    channel count of the channel branch and of ``gg_spatial``). Here ``grid_size`` (default
    14x14) fixes S; ``size_policy='pool'`` adaptive-average-pools a map of another size to
    the grid for both branches, resizes the spatial gate back to (H, W) (bilinear,
    ``align_corners=False``) and applies the channel gate directly; in RGA-SC the channel
    branch pools the spatially gated full-size x. On the grid size itself nothing is pooled
    or resized: the official computation. ``size_policy='strict'`` raises for any other size
    (:mod:`~cvattn_mm.attention.size_policy`). The channel branch treats positions as
    channels: each of its weights sees one cell of the grid.

    Initialisation: PyTorch's defaults, as the official code (which initialises only its
    head).

    Deviations: none from the official ``RGA_Module`` (microsoft/Relation-Aware-Global-
    Attention-Networks @cdc9965) with ``grid_size`` the map size: equal to it to float64
    precision, state-dict keys included (``theta_spatial.0.weight``, ``gg_channel.1.*``,
    ``W_spatial.3.weight``, ...). The default 14x14 grid with pooling is the size-agnostic
    form (the official ReID grids are 64x32, 32x16, 16x8, 16x8 for 256x128 images with last
    stride 1; the ``resnet50-rga-official`` config uses the 224x224 ImageNet stage sizes 56,
    28, 14, 7 with ``size_policy='strict'``). Widths are floored at ``min_channels`` (1):
    the official code builds zero-width layers when ``C < reduction``,
    ``S < spatial_reduction`` or ``1 + c' < down_reduction`` and cannot run there; wherever
    it runs the widths are the same. The official constructor's ``print`` is not kept. In
    training, a batch norm that sees one value per channel (batch 1 on a 1x1 grid) uses its
    running statistics instead of raising.

    Args:
        in_channels (int): Channels C.
        use_spatial (bool): The spatial branch (RGA-S).
        use_channel (bool): The channel branch (RGA-C). At least one branch.
        grid_size (int | tuple): The grid (g_h, g_w) the position relations are built for
            (the official ``in_spatial`` is ``g_h g_w``).
        size_policy (str): ``'pool'`` or ``'strict'``.
        reduction (int): c' = C // reduction (official ``cha_ratio``, 8).
        spatial_reduction (int): s' = S // spatial_reduction (official ``spa_ratio``, 8).
        down_reduction (int): The hidden width of W is n // down_reduction (official
            ``down_ratio``, 8).
        min_channels (int): Floor of every reduced width.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Zhang et al., Relation-Aware Global Attention for Person Re-identification, '
             'CVPR 2020, arXiv:1904.02998')
    paper_position = 'after_every_stage'
    _abbr_ = 'rga'

    def __init__(self,
                 in_channels: int,
                 use_spatial: bool = True,
                 use_channel: bool = True,
                 grid_size=14,
                 size_policy: str = 'pool',
                 reduction: int = 8,
                 spatial_reduction: int = 8,
                 down_reduction: int = 8,
                 min_channels: int = 1,
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        for name, value in (('use_spatial', use_spatial), ('use_channel', use_channel)):
            if not isinstance(value, bool):
                raise ValueError(f'{owner}: {name} must be a bool, got {value!r}')
        if not (use_spatial or use_channel):
            raise ValueError(f'{owner}: use_spatial and use_channel are both False; '
                             'at least one branch is needed')
        self.use_spatial = use_spatial
        self.use_channel = use_channel
        self.grid_size = check_grid_size(owner, grid_size)
        self.size_policy = check_size_policy(owner, size_policy)
        self.reduction = check_int(owner, 'reduction', reduction, 1)
        self.spatial_reduction = check_int(owner, 'spatial_reduction', spatial_reduction, 1)
        self.down_reduction = check_int(owner, 'down_reduction', down_reduction, 1)
        self.min_channels = check_int(owner, 'min_channels', min_channels, 1)
        c = in_channels
        s = self.grid_size[0] * self.grid_size[1]
        self.in_spatial = s
        self.inter_channel = max(c // self.reduction, self.min_channels)
        self.inter_spatial = max(s // self.spatial_reduction, self.min_channels)
        c_, s_ = self.inter_channel, self.inter_spatial
        # the official attribute names and declaration order (state-dict keys)
        if use_spatial:
            self.gx_spatial = _embedding(c, c_)
        if use_channel:
            self.gx_channel = _embedding(s, s_)
        if use_spatial:
            self.gg_spatial = _embedding(2 * s, s_)
        if use_channel:
            self.gg_channel = _embedding(2 * c, c_)
        if use_spatial:
            self.W_spatial = _weight_net(1 + s_, self._down(1 + s_))
        if use_channel:
            self.W_channel = _weight_net(1 + c_, self._down(1 + c_))
        if use_spatial:
            self.theta_spatial = _embedding(c, c_)
            self.phi_spatial = _embedding(c, c_)
        if use_channel:
            self.theta_channel = _embedding(s, s_)
            self.phi_channel = _embedding(s, s_)

    def _down(self, n: int) -> int:
        return max(n // self.down_reduction, self.min_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.use_spatial:
            x = x * self.spatial_gate(x)
        if self.use_channel:
            x = x * self.channel_gate(x)
        return x

    def spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        """RGA-S: the spatial gate (N, 1, H, W) that multiplies ``x``, computed on the grid
        and resized to (H, W)."""
        grid = fit_to_grid(x, self.grid_size, self.size_policy, type(self).__name__)
        n = grid.shape[0]
        theta = _run(self.theta_spatial, grid).flatten(2)  # (N, c', S)
        phi = _run(self.phi_spatial, grid).flatten(2)
        relations = _gram(theta, phi)  # (N, S, S): G(p, q) = theta_p . phi_q
        joint = torch.cat((relations.transpose(1, 2), relations), 1)
        joint = _run(self.gg_spatial, joint.reshape(n, -1, *grid.shape[2:]))
        own = _run(self.gx_spatial, grid).mean(1, keepdim=True)
        logits = _run(self.W_spatial, torch.cat((own, joint), 1))  # (N, 1, g_h, g_w)
        return resize_from_grid(torch.sigmoid(logits), x.shape[2:])

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """RGA-C: the channel gate (N, C, 1, 1) that multiplies ``x``, computed on the grid
        with the positions as channels."""
        grid = fit_to_grid(x, self.grid_size, self.size_policy, type(self).__name__)
        n, c = grid.shape[:2]
        positions = grid.flatten(2).transpose(1, 2).unsqueeze(-1)  # (N, S, C, 1)
        theta = _run(self.theta_channel, positions).squeeze(-1)  # (N, s', C)
        phi = _run(self.phi_channel, positions).squeeze(-1)
        relations = _gram(theta, phi)  # (N, C, C)
        joint = torch.cat((relations.transpose(1, 2), relations), 1).unsqueeze(-1)
        joint = _run(self.gg_channel, joint)  # (N, c', C, 1)
        own = _run(self.gx_channel, positions).mean(1, keepdim=True)
        logits = _run(self.W_channel, torch.cat((own, joint), 1))  # (N, 1, C, 1)
        return torch.sigmoid(logits).reshape(n, c, 1, 1)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``spatial_gate`` (N, H, W) and ``channel_gate`` (N, C) (on the spatially gated x
        in RGA-SC), whichever branches are on."""
        maps = {}
        if self.use_spatial:
            gate = self.spatial_gate(x)
            maps['spatial_gate'] = spatial_map(gate, x.shape, 'spatial gate')
            x = x * gate
        if self.use_channel:
            maps['channel_gate'] = channel_map(self.channel_gate(x), 'channel gate')
        return maps

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, use_spatial={self.use_spatial}, '
                f'use_channel={self.use_channel}, grid_size={self.grid_size}, '
                f'size_policy={self.size_policy!r}, reduction={self.reduction}, '
                f'spatial_reduction={self.spatial_reduction}, '
                f'down_reduction={self.down_reduction}')
