"""SAN: the pairwise and patchwise self-attention of Self-Attention Networks, replacing a conv."""
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import register_model
from ..checks import check_choice, check_int, check_odd
from ..conv_replacement import ConvReplacement
from ..maps import AttentionMap, weights_map
from ..norm import norm_any_batch


def pad_reflect(t: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflection padding by ``pad`` on both sides of H and W; replicate padding along an
    axis of size ``<= pad``, where a reflection does not exist (reflection is separable, so
    each axis is padded on its own)."""
    if pad == 0:
        return t
    height, width = t.shape[-2:]
    mode_h = 'reflect' if height > pad else 'replicate'
    mode_w = 'reflect' if width > pad else 'replicate'
    if mode_h == mode_w:
        return F.pad(t, (pad, pad, pad, pad), mode=mode_h)
    return F.pad(F.pad(t, (pad, pad, 0, 0), mode=mode_w), (0, 0, pad, pad), mode=mode_h)


def linspace(steps: int, like: torch.Tensor) -> torch.Tensor:
    """``torch.linspace(-1, 1, steps)`` in ``like``'s dtype and device; during an ONNX
    export from ``arange`` (the exported linspace does not run in onnxruntime), with
    linspace's formula (the first half from -1 up, the second from 1 down; equal up to an
    ulp)."""
    if not torch.onnx.is_in_onnx_export():
        return torch.linspace(-1.0, 1.0, steps, dtype=like.dtype, device=like.device)
    index = torch.arange(steps, dtype=like.dtype, device=like.device)
    if steps == 1:
        return index - 1.0
    step = 2.0 / (steps - 1)
    return torch.where(index < steps // 2, index * step - 1.0, 1.0 - (steps - 1 - index) * step)


def coordinates(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """The official ``position(H, W)``: (1, 2, H, W), channel 0 the column coordinate
    ``linspace(-1, 1, W)``, channel 1 the row coordinate ``linspace(-1, 1, H)``."""
    loc_w, loc_h = linspace(width, like), linspace(height, like)
    return torch.stack([loc_w.view(1, width).expand(height, width),
                        loc_h.view(height, 1).expand(height, width)]).unsqueeze(0)


@register_model()
class SAN(ConvReplacement):
    """Self-attention operation of SAN (Zhao et al., CVPR 2020, arXiv:2004.13621), pairwise
    (default) or patchwise, in place of a spatial convolution.

    With ``x1 = W_1 x + b_1``, ``x2 = W_2 x + b_2`` (1x1, C_in -> c_r = C_in / r) and
    ``x3 = W_3 x + b_3`` (1x1, C_in -> C_out), for every output position i (the input
    position ``s i``) and its k x k neighbourhood R(i) (dilation d, reflection padding
    ``d (k - 1) / 2``)::

        y_c(i) = sum_{j in R(i)} w_{c mod C_w}(i, j) x3_c(j),      C_w = C_out / share

    so a weight channel is shared by the channels ``c, c + C_w, c + 2 C_w, ...``
    (interleaved, as the official aggregation kernel indexes it, not contiguous groups).

    * ``relation='pairwise'`` (the paper's eq. 3, 4 with subtraction as the relation):
      ``w(i, .) = softmax_j gamma([x1(i) - x2(j); p(i) - p(j)])``, ``p`` a 1x1 conv 2 -> 2
      (with bias) of the coordinate map (``linspace(-1, 1)`` along W and along H),
      ``gamma`` = BN(c_r + 2)-ReLU-1x1(c_r + 2 -> c_r, no bias)-BN-ReLU-1x1(c_r -> C_w),
      applied to every (i, j) pair; the softmax runs over the k^2 neighbours.
    * ``relation='patchwise'`` (eq. 5, 6 with concatenation): ``w(i) = gamma([x1(i);
      x2(j) for j in R(i)])`` reshaped to (C_w, k^2), ``gamma`` = BN(c_r (k^2 + 1))-ReLU-
      1x1(-> C_w, no bias)-BN-ReLU-1x1(C_w -> k^2 C_w); no softmax.

    Parameters (c_r = C_in / r, C_w = C_out / share, K = k^2):
    ``2 (C_in + 1) c_r + (C_in + 1) C_out`` (x1, x2, x3) plus, pairwise,
    ``2 (c_r + 2) + (c_r + 2) c_r + 2 c_r + (c_r + 1) C_w + 4`` = 74,920 at C = 256 (the
    official 74,922 with conv_p's bias, here a buffer: see Deviations); patchwise,
    ``2 c_r (K + 1) + c_r (K + 1) C_w + 2 C_w + (C_w + 1) K C_w`` = 153,024.

    Position: the paper uses the operation only inside its own networks SAN10/15/19
    (pre-activation blocks BN-ReLU-SAM-BN-ReLU-1x1, where SAM maps C -> C/4 with
    c_r = C/16, and max-pools between stages), not in a ResNet. The plug-in form here is
    ``replaces_mid_conv``: SAN takes the place of the 3x3 conv of a Bottleneck with the
    conv's in/out channels, stride and dilation (in = out = width).

    The layers and their state-dict names are the official ``SAM``'s (``conv1``, ``conv2``,
    ``conv3``, ``conv_w``, ``conv_p``), so its weights load directly; the initialisation
    is PyTorch's default, as in the official code. Equal to the official ``SAM`` (model/
    san.py @d88b022, its CuPy ``*_refpad`` kernels replaced by loop references of their
    definitions) in float64 with copied weights, pairwise and patchwise, training and eval.

    Pure PyTorch: the neighbourhoods are k^2 strided views of the padded maps (the
    pairwise relations and the patchwise concatenation are (N, ., k^2, H, W) tensors, as
    gamma needs them; the aggregation sums the k^2 products without unfolding x3).

    Exact init from the replaced conv: impossible (see ``no_conv_init``).

    Deviations (from the official code, none from the paper):

    * Maps with H or W <= d (k - 1) / 2: the official kernels reflect once and then read
      outside the map (undefined); here the axis is padded by replication (a 1x1 map:
      every neighbour is the pixel itself).
    * Stride > 1 (extension; the SAN nets use stride 1 and max-pool): the neighbourhood
      centres are the strided positions ``s i``, as in the official kernels (pairwise is
      the official computation; the official patchwise path fails at stride > 1 on a view
      of the unfolded x1); the coordinate map stays the input's.
    * Dilation d > 1 (taken from the replaced conv): the official kernels' dilated
      neighbourhoods with padding ``d (k - 1) / 2``; the official patchwise path pads by
      ``k // 2`` whatever the dilation and fails for d > 1; here it pads like the kernels.
    * ``C_out != C_in``: x3 maps C_in -> C_out and C_w = C_out / share, as the official
      ``SAM(in_planes, rel_planes, out_planes)`` (the plug-in extension's ``out_channels``).
    * ``conv_p``'s bias cancels in ``p(i) - p(j)``: in the official code it is a parameter
      that never gets a gradient (2 of its 74,922 parameters); here it is a buffer under the
      same key ``conv_p.bias`` (official weights load; the function is the same).
    * The coordinate map is built in the input's dtype and device (official: float32,
      moved to CUDA by a flag); a batch norm of gamma that would see one value per channel
      (patchwise, batch 1 of a 1x1 map in training) normalises with its running statistics
      (``norm_any_batch``; PyTorch raises there).

    Args:
        in_channels (int): Input channels C_in of the replaced conv.
        out_channels (int | None): Output channels C_out (``None``: C_in); a multiple of
            ``share_planes``.
        kernel_size (int): Kernel size of the replaced conv (3).
        stride (int): Stride of the replaced conv (strided neighbourhood centres).
        padding (int | None): The replaced conv's size-keeping padding (``None``).
        dilation (int): Dilation of the replaced conv: the neighbourhood's dilation.
        groups (int): 1 (the paper defines no groups; ``share_planes`` is its sharing).
        bias (bool): False (x3's own bias stays).
        relation (str): ``'pairwise'`` (default) or ``'patchwise'``.
        spatial_extent (int): k, the odd side of the neighbourhood (paper: 7; the SAN nets
            use 3 in their first stage).
        rel_reduction (int): r, ``c_r = C_in // r`` (paper: 16).
        share_planes (int): channels sharing one weight, ``C_w = C_out / share``
            (paper: 8).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride)).
    """

    family = 'spatial'
    paper = ('Zhao et al., Exploring Self-attention for Image Recognition, CVPR 2020, '
             'arXiv:2004.13621')
    paper_position = 'replaces_mid_conv'
    _abbr_ = 'san'
    kernel_sizes = (3, )
    takes_dilation = True
    no_conv_init = ('its aggregation weights are computed from the input (a softmax over '
                    'the window for pairwise, a function of the window for patchwise) and '
                    'shared by share_planes channels, so no fixed conv kernel is reproduced')

    def __init__(self,
                 in_channels: int,
                 out_channels: Optional[int] = None,
                 kernel_size: int = 3,
                 stride: int = 1,
                 padding: Optional[int] = None,
                 dilation: int = 1,
                 groups: int = 1,
                 bias: bool = False,
                 relation: str = 'pairwise',
                 spatial_extent: int = 7,
                 rel_reduction: int = 16,
                 share_planes: int = 8,
                 init_cfg=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, init_cfg=init_cfg)
        name = type(self).__name__
        self.relation = check_choice(name, 'relation', relation, ('pairwise', 'patchwise'))
        self.spatial_extent = check_odd(name, 'spatial_extent', spatial_extent)
        self.rel_reduction = check_int(name, 'rel_reduction', rel_reduction, 1)
        self.share_planes = check_int(name, 'share_planes', share_planes, 1)
        c_out = self.out_channels
        if in_channels < self.rel_reduction:
            raise ValueError(f'{name}: in_channels={in_channels} must be >= rel_reduction='
                             f'{self.rel_reduction} (c_r = in_channels // rel_reduction '
                             'must be >= 1)')
        if c_out % self.share_planes:
            raise ValueError(f'{name}: out_channels={c_out} must be divisible by '
                             f'share_planes={self.share_planes}')
        rel = self.rel_channels = in_channels // self.rel_reduction
        shared = self.weight_channels = c_out // self.share_planes
        area = self.spatial_extent**2
        self.conv1 = nn.Conv2d(in_channels, rel, 1)
        self.conv2 = nn.Conv2d(in_channels, rel, 1)
        self.conv3 = nn.Conv2d(in_channels, c_out, 1)
        if self.relation == 'pairwise':
            self.conv_w = nn.Sequential(
                nn.BatchNorm2d(rel + 2), nn.ReLU(inplace=True),
                nn.Conv2d(rel + 2, rel, 1, bias=False),
                nn.BatchNorm2d(rel), nn.ReLU(inplace=True),
                nn.Conv2d(rel, shared, 1))
            self.conv_p = nn.Conv2d(2, 2, 1)
            # its bias cancels in p(i) - p(j): a buffer under the official key (see Deviations)
            bias = self.conv_p.bias.detach().clone()
            del self.conv_p.bias
            self.conv_p.register_buffer('bias', bias)
        else:
            self.conv_w = nn.Sequential(
                nn.BatchNorm2d(rel * (area + 1)), nn.ReLU(inplace=True),
                nn.Conv2d(rel * (area + 1), shared, 1, bias=False),
                nn.BatchNorm2d(shared), nn.ReLU(inplace=True),
                nn.Conv2d(shared, area * shared, 1))

    # ---------------------------------------------------------------- the computation

    def neighbourhood_padding(self) -> int:
        """``d (k - 1) / 2``: the padding of the official kernels."""
        return self.dilation * (self.spatial_extent - 1) // 2

    def neighbours(self, t: torch.Tensor) -> Iterator[torch.Tensor]:
        """The k^2 views (row-major offsets) of ``t`` padded by :func:`pad_reflect`, each
        sampled at the output positions (the strided centres): a generator of
        (N, C, H_out, W_out) views."""
        k, d, s = self.spatial_extent, self.dilation, self.stride
        ho, wo = self.output_size(*t.shape[-2:])
        padded = pad_reflect(t, self.neighbourhood_padding())
        return (padded[:, :, a * d:a * d + s * (ho - 1) + 1:s, b * d:b * d + s * (wo - 1) + 1:s]
                for a in range(k) for b in range(k))

    def centres(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` at the output positions (every ``stride``-th row and column)."""
        s = self.stride
        return t[:, :, ::s, ::s] if s > 1 else t

    def projections(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x1`` (at the centres), ``x2`` and ``x3`` (everywhere)."""
        return self.conv1(self.centres(x)), self.conv2(x), self.conv3(x)

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        """The weight network ``conv_w`` on a 4D tensor (batch norms via
        :func:`norm_any_batch`)."""
        for layer in self.conv_w:
            t = norm_any_batch(layer, t) if isinstance(layer, nn.BatchNorm2d) else layer(t)
        return t

    def attention(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """The aggregation weights (N, C_w, k^2, H_out, W_out) from ``x1`` at the centres
        and ``x2`` on the input grid: a softmax over the k^2 neighbours (pairwise, computed
        in ``promote_types(dtype, float32)``) or gamma's raw output (patchwise)."""
        n, _, ho, wo = x1.shape
        area = self.spatial_extent**2
        if self.relation == 'pairwise':
            delta = x1.unsqueeze(2) - torch.stack(list(self.neighbours(x2)), 2)
            p = self.conv_p(coordinates(*x2.shape[-2:], x2))
            dp = self.centres(p).unsqueeze(2) - torch.stack(list(self.neighbours(p)), 2)
            dp = dp.to(delta.dtype).expand(n, -1, -1, -1, -1)
            rel = torch.cat([delta, dp], 1).flatten(3)  # (N, c_r + 2, k^2, L)
            logits = self.gamma(rel)
            w = logits.softmax(2, dtype=torch.promote_types(logits.dtype, torch.float32))
            w = w.to(logits.dtype)
        else:
            patch = torch.stack(list(self.neighbours(x2)), 2)  # (N, c_r, k^2, H', W')
            cat = torch.cat([x1.reshape(n, -1, 1, ho * wo),
                             patch.reshape(n, -1, 1, ho * wo).to(x1.dtype)], 1)
            w = self.gamma(cat)
        return w.reshape(n, self.weight_channels, area, ho, wo)

    def aggregate(self, w: torch.Tensor, x3: torch.Tensor) -> torch.Tensor:
        """``y_c(i) = sum_j w_{c mod C_w}(i, j) x3_c(j)``: (N, C_out, H_out, W_out)."""
        n, shared, _, ho, wo = w.shape
        w = w.to(x3.dtype).unsqueeze(1)  # (N, 1, C_w, k^2, H', W'): broadcast over share
        out = None
        for index, value in enumerate(self.neighbours(x3)):
            term = w[:, :, :, index] * value.reshape(n, self.share_planes, shared, ho, wo)
            out = term if out is None else out + term
        return out.reshape(n, self.out_channels, ho, wo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x1, x2, x3 = self.projections(x)
        return self.aggregate(self.attention(x1, x2), x3)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """The aggregation weights of the forward as shares of the window: for every weight
        channel and output position, ``|w(i, j)| / sum_j' |w(i, j')|`` (pairwise: the
        softmax weights themselves; patchwise, whose weights have any sign, their relative
        magnitudes), averaged over the C_w weight channels:

        * ``centre_weight``: each output position's share on its own input position (the
          window's centre), a spatial map (N, H_out, W_out) in [0, 1];
        * ``window``: the mean share per neighbour offset over the positions, a k x k map
          summing to one (zero where all the weights of a window are zero).
        """
        self.check_input(x)
        x1, x2, _ = self.projections(x)
        magnitude = self.attention(x1, x2).abs()
        tiny = torch.finfo(magnitude.dtype).tiny
        share = (magnitude / magnitude.sum(2, keepdim=True).clamp_min(tiny)).mean(1)
        size = self.spatial_extent
        return {
            'centre_weight': AttentionMap('spatial', share[:, size * size // 2],
                                          'share of the aggregation weight on the centre'),
            'window': weights_map(share.mean((2, 3)), (size, size),
                                  f'mean aggregation weight share over the {size}x{size} '
                                  'window'),
        }

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, relation={self.relation!r}, '
                f'spatial_extent={self.spatial_extent}, rel_reduction={self.rel_reduction}, '
                f'share_planes={self.share_planes}')
