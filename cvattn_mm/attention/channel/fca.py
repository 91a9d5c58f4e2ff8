"""Multi-spectral channel attention (FcaNet)."""
import math
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, reduced_channels
from ..fast_backward import (
    amp_backward,
    amp_forward,
    fast_backward_params,
    is_plain_layer,
    is_tracing,
)
from ..maps import AttentionMap, channel_map
from ..size_policy import (
    GridSize,
    adaptive_pool_matrix,
    check_grid_size,
    check_size_policy,
    fit_to_grid,
)

#: The frequency rankings of FcaNet as (u, v) on a 7x7 DCT grid, u along H and v along W; a
#: selection ``'<kind><k>'`` takes the first k of a ranking. 'top': the paper's selection (by
#: the accuracy of networks that pool with one frequency each), 'bot': its bottom-k ranking,
#: 'low': the lowest frequencies. The values are those of the official ``get_freq_indices``
#: (cfzd/FcaNet, model/layer.py).
FREQUENCY_RANKINGS: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {
    'top': ((0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2,
             4, 6, 3, 5, 5, 2, 6, 5, 5, 3, 3, 4, 2, 2, 6, 1),
            (0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2,
             6, 3, 3, 3, 5, 1, 1, 2, 4, 2, 1, 1, 3, 0, 5, 3)),
    'low': ((0, 0, 1, 1, 0, 2, 2, 1, 2, 0, 3, 4, 0, 1, 3, 0,
             1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4),
            (0, 1, 0, 1, 2, 0, 1, 2, 2, 3, 0, 0, 4, 3, 1, 5,
             4, 3, 2, 1, 0, 6, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3)),
    'bot': ((6, 1, 3, 3, 2, 4, 1, 2, 4, 4, 5, 1, 4, 6, 2, 5,
             6, 1, 6, 2, 2, 4, 3, 3, 5, 5, 6, 2, 5, 5, 3, 6),
            (6, 4, 4, 6, 6, 3, 1, 4, 4, 5, 6, 5, 2, 2, 5, 1,
             4, 3, 5, 0, 3, 1, 1, 2, 4, 2, 1, 1, 5, 3, 3, 3)),
}
#: The selections the official code accepts: 'top1' ... 'bot32'.
FREQUENCY_SELECTIONS = tuple(f'{kind}{k}' for kind in ('top', 'bot', 'low')
                             for k in (1, 2, 4, 8, 16, 32))
#: The grid on which the frequencies are defined.
BASE_GRID = 7
#: The largest mean pooling window (positions of the map per grid cell) for which the DCT
#: pooling folds the pooling into its filters instead of pooling (measured on CPU: the fold
#: is faster up to 28x28 -> 7x7, 16 positions, slower from 25x42 -> 7x7, 21 positions).
FOLD_MAX_WINDOW = 16


def frequencies(freq_sel: str, grid_size: Tuple[int, int]) -> List[Tuple[int, int]]:
    """The (u, v) pairs of a selection on a ``grid_size`` grid: those of the 7x7 grid times
    ``grid_h // 7`` and ``grid_w // 7`` (so that, e.g., (1, 1) on 7x7 is (2, 2) on 14x14; on
    grids that are not multiples of 7 the factor is rounded down, as in the official code)."""
    us, vs = FREQUENCY_RANKINGS[freq_sel[:3]]
    k = int(freq_sel[3:])
    sh, sw = grid_size[0] // BASE_GRID, grid_size[1] // BASE_GRID
    return [(u * sh, v * sw) for u, v in zip(us[:k], vs[:k])]


def dct_basis(freqs: torch.Tensor, size: int) -> torch.Tensor:
    """The orthonormal DCT-II basis vectors of frequencies ``freqs`` (F,) on ``size`` points,
    (F, size), in float64: ``cos(pi f (i + 1/2) / size) / sqrt(size)``, times sqrt(2) if f > 0."""
    i = torch.arange(size, dtype=torch.float64)
    f = freqs.to(torch.float64)[:, None]
    basis = torch.cos(math.pi * f * (i + 0.5) / size) / math.sqrt(size)
    return torch.where(f == 0, basis, basis * math.sqrt(2))


def dct_filters(in_channels: int, freqs: List[Tuple[int, int]],
                grid_size: Tuple[int, int]) -> torch.Tensor:
    """The fixed filters (C, g_h, g_w): the 2-D DCT basis function of frequency
    ``freqs[k]`` for the k-th of ``len(freqs)`` contiguous groups of channels; computed in
    float64, returned in float32 (as the official buffer)."""
    u = torch.tensor([f[0] for f in freqs])
    v = torch.tensor([f[1] for f in freqs])
    filters = dct_basis(u, grid_size[0])[:, :, None] * dct_basis(v, grid_size[1])[:, None, :]
    return filters.repeat_interleave(in_channels // len(freqs), 0).float()


class MultiSpectralDCTPooling(nn.Module):
    """The multi-spectral pooling of FcaNet: ``y_c = sum_{i,j} x_c(i, j) filter_c(i, j)``,
    (N, C, H, W) -> (N, C), with fixed DCT filters (C, g_h, g_w) on a grid fixed at
    construction (the buffer ``weight``, as the official ``MultiSpectralDCTLayer``).

    Maps of another size follow the size policy (:mod:`..size_policy`): ``'pool'``
    adaptive-average-pools them to the grid first, ``'strict'`` refuses them. Where the
    pooling windows are small (at most :data:`FOLD_MAX_WINDOW` positions on average) the
    pooling is folded into the filters, ``<pool(x), filter_c> = <x, P_h^T filter_c P_w>``
    with the pooling matrices ``P_h`` (g_h, H) and ``P_w`` (g_w, W), so the pooled map is
    never built: PyTorch's pooling kernels cost about 25 ns per output element on CPU, so
    the fold is 2-10x faster at 28x28 and 14x14 -> 7x7. Larger windows (56x56 -> 7x7, a
    detector's maps) are pooled by ``F.adaptive_avg_pool2d``, which there is faster than
    building (C, H, W) filters. Traced calls always fold (exportable to ONNX for any size).
    The products and the sum are computed in ``promote_types(x.dtype, float32)`` (the
    pooling, where it runs, in ``x.dtype``, with PyTorch's float accumulation) and returned
    in ``x.dtype``.

    Args:
        in_channels (int): Channels C, a multiple of ``len(freqs)``.
        freqs (list of (int, int)): The (u, v) frequency of each group of channels.
        grid_size ((int, int)): The DCT grid (g_h, g_w).
        size_policy (str): ``'pool'`` or ``'strict'``.
        persistent (bool): Whether ``weight`` is in the state dict.
        owner (str): The module named in errors.
    """

    def __init__(self, in_channels: int, freqs: List[Tuple[int, int]],
                 grid_size: Tuple[int, int], size_policy: str = 'pool',
                 persistent: bool = False, owner: str = 'FCA'):
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.size_policy = size_policy
        self.owner = owner
        self.register_buffer('weight', dct_filters(in_channels, freqs, self.grid_size),
                             persistent=persistent)

    def filters(self, size: Tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """The filters (C, H, W) that compute the pooling on an H x W map: ``weight`` itself
        on the grid, the pooling folded into it on other sizes."""
        weight = self.weight.to(dtype)
        if tuple(size) == self.grid_size:
            return weight
        device = weight.device
        pool_h = adaptive_pool_matrix(size[0], self.grid_size[0], dtype, device)
        pool_w = adaptive_pool_matrix(size[1], self.grid_size[1], dtype, device)
        with torch.autocast(device.type, enabled=False):  # fixed filters: full precision
            return torch.matmul(torch.matmul(pool_h.t(), weight), pool_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size_policy == 'strict':
            x = fit_to_grid(x, self.grid_size, 'strict', self.owner)  # x, or the policy's error
        dtype = torch.promote_types(x.dtype, torch.float32)
        pooled = x
        h, w = x.shape[-2:]
        grid_h, grid_w = self.grid_size
        if h * w > FOLD_MAX_WINDOW * grid_h * grid_w and not is_tracing():
            pooled = F.adaptive_avg_pool2d(x, self.grid_size)
        filters = self.filters(pooled.shape[-2:], dtype)
        return (pooled * filters).sum((2, 3)).to(x.dtype)  # the product in ``dtype``

    def extra_repr(self) -> str:
        return (f'channels={self.weight.shape[0]}, grid_size={self.grid_size}, '
                f'size_policy={self.size_policy!r}')


@register_model()
class FCA(AttentionModule):
    """Multi-spectral channel attention of FcaNet (Qin et al., ICCV 2021, arXiv:2012.11879).

    SE whose global average pooling is replaced by a multi-spectral 2-D DCT pooling: the C
    channels are split into ``n`` contiguous groups, group k pooled with the DCT basis
    function of frequency (u_k, v_k) on an s_h x s_w grid,
    ``B(f, i; s) = cos(pi f (i + 1/2) / s) / sqrt(s)`` (times sqrt(2) for f > 0),
    ``y_c = sum_{i,j} x_c(i, j) B(u_k, i; s_h) B(v_k, j; s_w)``; then
    ``y = x * sigmoid(W2 ReLU(W1 y))`` with bias-free ``W1: C -> C/r``, ``W2: C/r -> C``.
    Maps of another size than the grid are adaptive-average-pooled to it first (official).
    The frequencies of a selection are given on a 7x7 grid and multiplied by ``s // 7``
    (per axis). The (0, 0) frequency gives ``s * GAP`` on an s x s grid, so weights trained
    with one grid do not transfer to another.
    Parameters: ``2 C (C/r)`` (8,192 at C = 256); the filters are a fixed (C, s_h, s_w) buffer.
    Paper position: on the residual branch after its last norm, before the addition.

    The official FcaNet uses the grid of the feature size at 224 input in each stage (56, 28,
    14, 7 for ResNet stages 1-4); the default here is one 7x7 grid for every stage, which is
    the official computation on 7x7 maps and the official pooling elsewhere. The per-stage
    grids are an insertion per stage with ``grid_size`` set (the config
    ``resnet50-fca-official_8xb32_in1k.py``).

    Deviations: with ``grid_size`` set as in the official model (per stage), none. With the
    default ``grid_size=7`` on every stage, stages whose maps are larger than 7x7 pool to 7x7
    where the official model uses the map's own size. The filter buffer is not in the state
    dict by default (it is a function of the arguments, 3.2 MB per module at C = 256,
    s = 56); ``persistent_dct=True`` keeps it, as the official state dict does (needed to
    load official checkpoints, whose keys ``dct_layer.weight``, ``fc.0.weight`` and
    ``fc.2.weight`` are ours). A grid smaller than 7 raises (the official code multiplies
    every frequency by ``s // 7 = 0`` there, i.e. uses only (0, 0)). The hidden width is
    ``max(C // r, min_channels)`` (official: ``C // r``). The pooling of other sizes is
    folded into the filters where the windows are small (the same values up to rounding;
    :class:`MultiSpectralDCTPooling`).

    The backward is hand-written (:class:`_DCTGate`) and not twice differentiable;
    ``CVATTN_FAST_BACKWARD=0`` or :func:`cvattn_mm.attention.fast_backward.set_fast_backward`
    ``(False)`` runs plain autograd instead.

    Args:
        in_channels (int): Channels C, a multiple of the number of frequencies.
        reduction (int): Bottleneck divisor r.
        min_channels (int): Floor of the hidden width.
        freq_sel (str): Frequency selection, ``'top16'`` (the paper's and the official
            default) or any of ``'top1' 'top2' 'top4' 'top8' 'top32'``, ``'low1'`` ...
            ``'low32'``, ``'bot1'`` ... ``'bot32'`` (the official ``get_freq_indices``).
        grid_size (int | (int, int)): The DCT grid s (s_h, s_w), >= 7.
        size_policy (str): ``'pool'``: other map sizes are adaptive-average-pooled to the
            grid (official); ``'strict'``: they raise a ``ValueError``.
        persistent_dct (bool): Whether the DCT filters are in the state dict (official: yes).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'channel'
    paper = 'Qin et al., FcaNet: Frequency Channel Attention Networks, ICCV 2021, arXiv:2012.11879'
    paper_position = 'residual_end'
    _abbr_ = 'fca'

    def __init__(self,
                 in_channels: int,
                 reduction: int = 16,
                 min_channels: int = 1,
                 freq_sel: str = 'top16',
                 grid_size: GridSize = BASE_GRID,
                 size_policy: str = 'pool',
                 persistent_dct: bool = False,
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        hidden = reduced_channels(owner, in_channels, reduction, min_channels)
        self.reduction = reduction
        self.freq_sel = check_choice(owner, 'freq_sel', freq_sel, FREQUENCY_SELECTIONS)
        self.grid_size = check_grid_size(owner, grid_size)
        if min(self.grid_size) < BASE_GRID:
            raise ValueError(f'{owner}: grid_size must be >= {BASE_GRID} (the frequencies are '
                             f'defined on a {BASE_GRID}x{BASE_GRID} grid), got '
                             f'{self.grid_size}')
        self.size_policy = check_size_policy(owner, size_policy)
        if not isinstance(persistent_dct, bool):
            raise ValueError(f'{owner}: persistent_dct must be True or False, got '
                             f'{persistent_dct!r}')
        self.persistent_dct = persistent_dct
        freqs = frequencies(freq_sel, self.grid_size)
        if in_channels % len(freqs) != 0:
            raise ValueError(f'{owner}: in_channels={in_channels} must be divisible by the '
                             f'number of frequencies of freq_sel={freq_sel!r} ({len(freqs)}); '
                             'each frequency pools a contiguous group of channels')
        self.dct_layer = MultiSpectralDCTPooling(in_channels, freqs, self.grid_size,
                                                 self.size_policy, self.persistent_dct, owner)
        self.fc = nn.Sequential(
            nn.Linear(in_channels, hidden, bias=False), nn.ReLU(),
            nn.Linear(hidden, in_channels, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        params = fast_backward_params((x, ), (self.dct_layer, self.fc))
        if params is not None and is_plain_layer(self.dct_layer, MultiSpectralDCTPooling):
            return _DCTGate.apply(x, self.dct_layer, self.excitation, *params)
        return x * self.channel_gate(x)

    def excitation(self, y: torch.Tensor) -> torch.Tensor:
        """The gate (N, C, 1, 1) of the multi-spectral descriptor ``y`` (N, C)."""
        return self.fc(y)[:, :, None, None]

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """The gate (N, C, 1, 1): the excitation of the multi-spectral pooling of ``x``."""
        return self.excitation(self.dct_layer(x))

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'channel_gate': the gate (N, C) that the forward multiplies ``x`` by."""
        return {'channel_gate': channel_map(self.channel_gate(x), 'channel gate')}

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, reduction={self.reduction}, '
                f'freq_sel={self.freq_sel!r}, grid_size={self.grid_size}, '
                f'size_policy={self.size_policy!r}, persistent_dct={self.persistent_dct}')


class _DCTGate(torch.autograd.Function):
    """``x * excitation(dct_layer(x))`` with a hand-written backward (architecture.md, Fast
    backwards). From ``g = dL/dout``: ``dL/da_c = sum_{h,w} g x`` (written into one buffer
    of the size of x and summed), the excitation's gradients by autograd, then
    ``dL/dx = g a + dL/dy_c filter_c`` written into the same buffer (the DCT pooling's
    gradient by hand: only for a plain :class:`MultiSpectralDCTPooling`). Autograd allocates
    two more tensors of the size of x (three where the pooling is folded). On CPU, forward +
    backward about 1.4x faster at 2x512x100x168 (a detector's c3), within noise of autograd
    at 8x256x56x56 to 8x2048x7x7; peak memory 77 MiB at 8x256x56x56 where the official
    layout (the benchmark's reference) needs 98 MiB."""

    @staticmethod
    @amp_forward
    def forward(ctx, x: torch.Tensor, dct_layer: MultiSpectralDCTPooling, excitation,
                *params) -> torch.Tensor:
        y = dct_layer(x).detach().requires_grad_()
        with torch.enable_grad():
            gate = excitation(y)
        ctx.save_for_backward(x)
        ctx.dct_layer, ctx.y, ctx.gate, ctx.params = dct_layer, y, gate, params
        return x * gate.detach()

    @staticmethod
    @amp_backward
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, = ctx.saved_tensors
        buffer = torch.mul(grad, x)
        grad_gate = buffer.sum((2, 3), keepdim=True).to(ctx.gate.dtype)
        inputs = (ctx.y, ) + tuple(p for p in ctx.params if p.requires_grad)
        grads = iter(torch.autograd.grad(ctx.gate, inputs, grad_gate, allow_unused=True))
        grad_y = next(grads)
        grad_params = tuple(next(grads) if p.requires_grad else None for p in ctx.params)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mul(grad, ctx.gate.detach(), out=buffer)
            if grad_y is not None:
                dtype = torch.promote_types(grad_x.dtype, torch.float32)  # as the forward
                filters = ctx.dct_layer.filters(x.shape[-2:], dtype)
                grad_x.addcmul_(grad_y.to(dtype)[:, :, None, None], filters)
        return (grad_x, None, None) + grad_params
