"""Dual attention (DANet): position attention and channel attention in parallel."""
import contextlib
from typing import ContextManager, Dict, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import register_model
from ..base import AttentionModule
from ..checks import reduced_channels
from ..maps import AttentionMap, channel_map, query_weight_maps
from ..spatial.non_local import TokenPointwiseConv2d

#: The branches of the module: position attention (PAM) and channel attention (CAM).
BRANCHES = ('pam', 'cam')


@register_model()
class DualAttention(AttentionModule):
    """Dual attention: DANet's position and channel attention modules in parallel (Fu et al.,
    CVPR 2019, arXiv:1809.02983), summed.

    With X the (C, S) matrix of the map (``S = H W``):

    * position attention (PAM): ``Q = W_q X + b_q``, ``K = W_k X + b_k`` (1x1 convs
      ``C -> d = C/r``), ``V = W_v X + b_v`` (1x1 conv ``C -> C``);
      ``A = softmax_keys(Q^T K)`` (S x S, no scale), ``P = V A^T``;
    * channel attention (CAM): ``E = X X^T`` (C x C), ``A_c = softmax_last(rowmax(E) - E)``
      ``= softmax_last(-E)`` (a softmax is shift invariant), ``Ch = A_c X``;
    * ``y = x + gamma_p P + gamma_c Ch``, i.e. ``PAM(x) + CAM(x) - x`` with the official
      ``PAM(x) = gamma_p P + x`` and ``CAM(x) = gamma_c Ch + x`` (one ``x``, not two).

    ``branches=('pam',)`` is the official ``PAM_Module`` (and mmseg's ``PAM(C, C // 8)``),
    ``branches=('cam',)`` the official ``CAM_Module`` (and mmseg's ``CAM()``).
    Parameters: PAM ``2 (C d + d) + C^2 + C + 1`` (``= 1.25 C^2 + 1.25 C + 1`` for
    ``d = C/8``), CAM ``1``; both: ``1.25 C^2 + 1.25 C + 2`` = 82,242 at C = 256.
    Initialisation as the official code: ``gamma_p = gamma_c = 0``, so the module is the
    identity at step 0 (the convs keep PyTorch's default initialisation).
    Paper position: in the segmentation head, on the dilated ResNet's last map (each branch
    between 3x3 conv + BN + ReLU layers). As a backbone plug-in: ``late_stages``.

    Deviations:

    * Position: the paper's head reduces the map with a 3x3 conv + BN + ReLU per branch
      (2048 -> 512), applies PAM and CAM to separate copies, then another 3x3 conv + BN +
      ReLU per branch, and sums the two results. This plug-in applies both branches to the
      backbone's own map, without those convs, and sums them sharing one ``x`` (no option
      restores the head; mmseg's ``DAHead`` is that head).
    * The embedding width is ``d = max(C // r, min_channels)``, equal to the official
      ``C // 8`` for C >= r; for C < r the official width is 0 (an empty embedding, uniform
      position weights), here such a C needs a floor ``min_channels > 1`` (a ValueError
      otherwise, the library's reduction rule).
    * CAM computes ``softmax(-E)`` instead of ``softmax(rowmax(E) - E)``: the same function
      (equal to rounding).
    * The energies, softmaxes and weighted sums are computed in
      ``promote_types(dtype, float32)``, also under fp16/bf16 autocast (the official code
      runs them in the input's dtype; ``X X^T`` over many positions overflows fp16); the
      branch outputs are cast back to the input's dtype before the sum.

    Implementation: PAM's weighted sum is ``scaled_dot_product_attention`` (scale 1) on the
    token views of Q, K, V (the S x S weights are not kept where its kernel allows);
    :meth:`position_weights` forms them for the maps. The 1x1 convs are
    :class:`~cvattn_mm.attention.spatial.non_local.TokenPointwiseConv2d` (``nn.Conv2d``
    with the official names ``query_conv``, ``key_conv``, ``value_conv``; the gammas are
    ``pam_gamma`` and ``cam_gamma``).

    Args:
        in_channels (int): Channels C.
        branches (str | Sequence[str]): Non-empty subset of ``('pam', 'cam')``.
        reduction (int): Divisor r of the query/key width ``d = max(C // r, min_channels)``
            (official: 8).
        min_channels (int): Floor of d.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Fu et al., Dual Attention Network for Scene Segmentation, CVPR 2019, '
             'arXiv:1809.02983')
    paper_position = 'late_stages'
    _abbr_ = 'da'

    def __init__(self,
                 in_channels: int,
                 branches: str | Sequence[str] = BRANCHES,
                 reduction: int = 8,
                 min_channels: int = 1,
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.branches = _check_branches(owner, branches)
        self.reduction = reduction
        d = reduced_channels(owner, in_channels, reduction, min_channels)
        self.inter_channels = d
        if 'pam' in self.branches:
            self.query_conv = TokenPointwiseConv2d(in_channels, d)
            self.key_conv = TokenPointwiseConv2d(in_channels, d)
            self.value_conv = TokenPointwiseConv2d(in_channels, in_channels)
            self.pam_gamma = nn.Parameter(torch.zeros(1))
        if 'cam' in self.branches:
            self.cam_gamma = nn.Parameter(torch.zeros(1))
        self.init_special()

    def init_special(self) -> None:
        """The official initialisation: both gammas 0 (the module starts as the identity)."""
        for name in ('pam_gamma', 'cam_gamma'):
            if hasattr(self, name):
                nn.init.zeros_(getattr(self, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        out = x
        if 'pam' in self.branches:
            out = out + self.pam_gamma * self.position_context(x)
        if 'cam' in self.branches:
            out = out + self.cam_gamma * self.channel_context(x)
        return out

    def embed(self, x: torch.Tensor):
        """Q, K (N, S, d) and V (N, S, C) of ``x`` as tokens."""
        return tuple(_tokens(conv(x)) for conv in (self.query_conv, self.key_conv,
                                                    self.value_conv))

    def position_weights(self, x: torch.Tensor) -> torch.Tensor:
        """PAM's weights ``A = softmax_keys(Q^T K)`` (N, S queries, S keys), computed in
        ``promote_types(dtype, float32)``."""
        q, k, _ = self.embed(x)
        dtype = torch.promote_types(q.dtype, torch.float32)
        with _full_precision(x):
            return torch.bmm(q.to(dtype), k.to(dtype).transpose(1, 2)).softmax(-1)

    def position_context(self, x: torch.Tensor) -> torch.Tensor:
        """PAM's ``P = V A^T`` (N, C, H, W), in the input's dtype."""
        q, k, v = self.embed(x)
        dtype = torch.promote_types(q.dtype, torch.float32)
        with _full_precision(x):
            # one head; 4-D inputs, as the ONNX exporter's SDPA requires
            p = F.scaled_dot_product_attention(*(t.to(dtype).unsqueeze(1) for t in (q, k, v)),
                                               scale=1.0).squeeze(1)  # (N, S, C)
        return p.transpose(1, 2).unflatten(2, x.shape[2:]).to(x.dtype)

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """CAM's weights ``A_c = softmax_last(-X X^T)`` (N, C, C), computed in
        ``promote_types(dtype, float32)``."""
        flat = x.flatten(2).to(torch.promote_types(x.dtype, torch.float32))
        with _full_precision(x):
            return torch.bmm(flat, flat.transpose(1, 2)).neg().softmax(-1)

    def channel_context(self, x: torch.Tensor) -> torch.Tensor:
        """CAM's ``Ch = A_c X`` (N, C, H, W), in the input's dtype."""
        weights = self.channel_weights(x)
        with _full_precision(x):
            ch = torch.bmm(weights, x.flatten(2).to(weights.dtype))
        return ch.unflatten(2, x.shape[2:]).to(x.dtype)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """PAM: 'position_centre_query' and 'position_mean_over_queries' (N, H, W), the
        position softmax of the centre query and its mean over the queries. CAM:
        'channel_attention' (N, C), the channel softmax's mean over the output channels
        (how much each channel is read on average; in [0, 1])."""
        maps = {}
        if 'pam' in self.branches:
            hw = x.shape[2:]
            for key, value in query_weight_maps(self.position_weights(x), hw, hw,
                                                'position softmax').items():
                maps[f'position_{key}'] = value
        if 'cam' in self.branches:
            maps['channel_attention'] = channel_map(
                self.channel_weights(x).mean(1), 'channel softmax, mean over output channels')
        return maps

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, branches={self.branches}, '
                f'reduction={self.reduction}, inter_channels={self.inter_channels}')


def _check_branches(owner: str, branches) -> tuple:
    """``branches`` as a tuple in the order of :data:`BRANCHES` if it is a valid subset."""
    if isinstance(branches, str):
        branches = (branches, )
    valid = (isinstance(branches, (list, tuple)) and len(branches) > 0
             and all(isinstance(b, str) and b in BRANCHES for b in branches)
             and len(set(branches)) == len(branches))
    if not valid:
        raise ValueError(f'{owner}: branches must be a non-empty subset of {BRANCHES} without '
                         f'repeats, got {branches!r}')
    return tuple(b for b in BRANCHES if b in branches)


def _full_precision(x: torch.Tensor) -> ContextManager:
    """Autocast switched off on ``x``'s device where it is on (so that the products and
    softmaxes run in the dtype they are given), a no-op elsewhere."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def _tokens(t: torch.Tensor) -> torch.Tensor:
    """The (N, H W, ch) token view of an (N, ch, H, W) map."""
    return t.flatten(2).transpose(1, 2)
