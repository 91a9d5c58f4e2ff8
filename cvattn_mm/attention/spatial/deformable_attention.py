"""Deformable attention (DAT)."""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer
from torch.utils.checkpoint import checkpoint

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_divisible, check_int, check_positive_float
from ..map_norm import build_map_norm
from ..maps import AttentionMap


@register_model()
class DeformableAttention2D(AttentionModule):
    """Deformable multi-head attention (Xia et al., CVPR 2022, arXiv:2201.00520).

    ``q = W_q x``. An offset network shared by the ``G`` offset groups (depthwise
    ``k x k`` conv with stride ``r`` on each group's queries, optional norm, activation, 1x1
    conv to 2, ``s * tanh``) moves a reference grid of ``H_k x W_k`` points:
    ``p = p_ref + s * tanh(offset)``, with ``p_ref = ((2j + 1) / W_k - 1, (2i + 1) / H_k - 1)``
    in ``grid_sample``'s normalised coordinates, ``(x, y)`` order, and the offsets in
    spacings of that grid (``2 / W_k``, ``2 / H_k``). Each group's channels of ``x`` are
    sampled bilinearly at its points (zero outside the map), ``k = W_k x~``, ``v = W_v x~``,
    and every head of group g attends from every query to its group's points:
    ``y = W_o concat_h softmax(q_h k_h^T / sqrt(d) + B_h) v_h`` with the continuous relative
    position bias ``B = MLP(sign(d) log(1 + |d|))``, ``d = p_q - p``, the queries ``p_q`` on
    the ``H x W`` grid of the same formula.

    The sampling geometry (``geometry``) says where these coordinates lie on the map:

    * ``'centres'`` (default): ``align_corners=False``, so the reference points are the
      centres of an ``H_k x W_k`` grid of cells over the map (pixel ``(i + 1/2) H / H_k -
      1/2``) and the queries the pixel centres. The offset conv's input is zero-padded so
      that its windows tile ``ceil(H/r)`` cells, centred on them when r divides H
      (``key_grid='ceil'``), or ``max(floor(H/r), 1)`` cells from the top left, as a strided
      conv does and as the ``deformable-attention`` package does (``key_grid='floor'``).
      Offsets reach ``s = r`` spacings by default (the package's default).
    * ``'dat'``: DAT's released code (CVPR 2022). The same numbers are read with
      ``align_corners=True``: key i at pixel ``(i + 1/2)(H - 1) / H_k``, query i at
      ``(2i + 1) / H - 1`` in that frame. The offset conv pads ``k // 2`` on each side:
      ``H_k = floor((H + 2 floor(k/2) - k) / r) + 1`` (``ceil(H/r)`` for odd k), window i
      centred on pixel ``i r`` for odd k. Offsets reach ``s = 1`` spacing by default: DAT's
      ``offset_range_factor`` is ``2 s`` (its offsets are ``factor * tanh / H_k``).

    Parameters (``E = heads * dim_head``, ``Gq``/``Gkv`` = G when grouped else 1, ``D`` =
    ``cpb_dim``): ``C E / Gq + E`` (q) + ``C E / Gkv`` (k) + ``C E / Gkv + E`` (v) +
    ``E/G (k^2 + 1) + 2 E/G`` (offsets) + ``3 D + (depth - 1)(D^2 + D) + D heads/G`` (bias MLP)
    + ``E C + C`` (out), plus the optional offset norm; biases as set by the ``to_*_bias``
    flags (defaults shown).

    Deviations from DAT's code (models/dat_blocks.py, ``DAttentionBaseline``); with
    ``geometry='dat'`` the first three are DAT's:

    * Key positions: cell centres, against DAT's ``(i + 1/2)(H - 1) / H_k`` (on a 14-pixel
      axis with ``H_k = 4``: pixels 1.25, 4.75, 8.25, 11.75 against 1.625, 4.875, 8.125,
      11.375; with r = 1, DAT's keys and queries sit up to half a pixel off the pixel
      centres, towards the middle). The repository's current code (DAT++, arXiv:2309.01430)
      divides by ``H_k - 1`` instead, in the reference points and in the offset range: its
      last row and column of reference points lie outside the map (pixel 15.17 of 14 above),
      one key per axis divides by zero, and its queries are at ``2i / (H - 1) - 1``.
    * Offset windows: zero padding up to whole windows (``key_grid``), against DAT's
      ``k // 2`` on each side (DAT++: none when k = r).
    * Offset range: ``r`` spacings by default, against DAT's ``offset_range_factor=2`` (its
      stages 3-4), one spacing. On a 14x14 map with r = 4: up to 14 pixels (the whole map)
      against ``(H - 1) / H_k`` = 3.25 pixels (DAT++'s code: ``(H - 1) / (H_k - 1)`` = 4.33;
      DAT++'s configs use factor -1: offsets without tanh, positions clamped to [-1, 1]).
    * Position bias: the log-spaced continuous MLP of DAT++ instead of DAT's interpolated
      ``(2H - 1) x (2W - 1)`` table, with the input transform ``sign(d) ln(1 + |d|)`` of the
      normalised displacement d (the geometry's coordinates); DAT++'s code uses
      ``sign(d) log2(1 + 4|d|) / 3`` of d in its coordinates (``4d`` in [-8, 8] on the map),
      a non-linear rescaling that an affine first layer cannot absorb.
    * ``E = heads * dim_head`` is independent of C (DAT: ``E = C``).
    * The offset network has no norm by default (DAT: a LayerNorm over the channels, which
      ``norm_cfg=dict(type='LN')`` adds as a :class:`~..map_norm.ChannelLayerNorm`).
    * ``W_k`` has no bias by default (a key bias shifts all logits of a query equally; the
      softmax cancels it).
    * The ``deformable-attention`` package's argument names are kept; its grid
      normalisation, which mixes up height and width on non-square maps, is not.
    * No residual: this is the attention operator of a DAT block.

    Args:
        in_channels (int): Channels C; divisible by ``offset_groups``.
        dim_head (int): Channels per head d.
        heads (int): Heads; divisible by ``offset_groups``.
        dropout (float): Dropout on the attention weights (training only).
        downsample_factor (int): Stride r of the offset network.
        key_grid (str, optional): With ``geometry='centres'``: ``'ceil'`` (default: every
            pixel lies in a window) or ``'floor'`` (the remainder of ``H / r`` is dropped,
            like lucidrains' package): how the key grid rounds when r does not divide the
            map size. None with ``geometry='dat'`` (DAT's padding fixes the count).
        geometry (str): ``'centres'`` or ``'dat'`` (see above).
        offset_scale (float, optional): Largest offset s in spacings of the reference grid;
            default r (``'centres'``) or 1 (``'dat'``: DAT's ``offset_range_factor=2``).
        offset_groups (int, optional): Offset groups G; default ``heads``.
        offset_kernel_size (int): Kernel k of the depthwise offset conv; >= r.
        group_queries (bool): ``W_q`` grouped by G (DAT: False).
        group_key_values (bool): ``W_k``, ``W_v`` grouped by G (DAT: False).
        to_q_bias, to_k_bias, to_v_bias, to_out_bias (bool): Biases of the projections.
        cpb_dim (int): Hidden width D of the position-bias MLP.
        cpb_depth (int): Hidden layers of the position-bias MLP.
        norm_cfg (dict, optional): Norm after the depthwise offset conv, over its channels
            (``'LN'``: :class:`~..map_norm.ChannelLayerNorm`); None for none.
        act_cfg (dict): Activation of the offset network.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'spatial'
    paper = ('Xia et al., Vision Transformer with Deformable Attention, CVPR 2022, '
             'arXiv:2201.00520')
    paper_position = 'late_stages'
    _abbr_ = 'dat'

    def __init__(self,
                 in_channels: int,
                 dim_head: int = 64,
                 heads: int = 8,
                 dropout: float = 0.,
                 downsample_factor: int = 4,
                 key_grid: Optional[str] = None,
                 geometry: str = 'centres',
                 offset_scale: Optional[float] = None,
                 offset_groups: Optional[int] = None,
                 offset_kernel_size: int = 6,
                 group_queries: bool = False,
                 group_key_values: bool = False,
                 to_q_bias: bool = True,
                 to_k_bias: bool = False,
                 to_v_bias: bool = True,
                 to_out_bias: bool = True,
                 cpb_dim: int = 32,
                 cpb_depth: int = 1,
                 norm_cfg: Optional[dict] = None,
                 act_cfg: dict = dict(type='GELU'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        name = type(self).__name__
        self.dim_head = check_int(name, 'dim_head', dim_head, 1)
        self.heads = check_int(name, 'heads', heads, 1)
        groups = heads if offset_groups is None else offset_groups
        self.offset_groups = check_int(name, 'offset_groups', groups, 1)
        check_divisible(name, 'heads', heads, groups, 'offset_groups')
        check_divisible(name, 'in_channels', in_channels, groups, 'offset_groups')
        self.downsample_factor = check_int(name, 'downsample_factor', downsample_factor, 1)
        self.geometry = check_choice(name, 'geometry', geometry, ('centres', 'dat'))
        if geometry == 'centres':
            key_grid = 'ceil' if key_grid is None else key_grid
            if key_grid not in ('ceil', 'floor'):
                raise ValueError(f"{name}: key_grid must be 'ceil' or 'floor', got {key_grid!r}")
        elif key_grid is not None:
            raise ValueError(f"{name}: key_grid={key_grid!r} applies to geometry='centres'; "
                             "with geometry='dat' the offset conv pads k // 2 as DAT's does")
        self.key_grid = key_grid
        self.offset_kernel_size = check_int(name, 'offset_kernel_size', offset_kernel_size,
                                            downsample_factor)
        if offset_scale is None:
            offset_scale = downsample_factor if geometry == 'centres' else 1.0
        self.offset_scale = check_positive_float(name, 'offset_scale', offset_scale)
        dropout = check_positive_float(name, 'dropout', dropout, allow_zero=True)
        if dropout >= 1:
            raise ValueError(f'{name}: dropout must be < 1, got {dropout}')
        self.dropout = dropout
        check_int(name, 'cpb_dim', cpb_dim, 1)
        check_int(name, 'cpb_depth', cpb_depth, 1)

        inner = heads * dim_head
        offset_dims = inner // groups
        self.to_q = nn.Conv2d(in_channels, inner, 1, groups=groups if group_queries else 1,
                              bias=to_q_bias)
        kv_groups = groups if group_key_values else 1
        self.to_k = nn.Conv2d(in_channels, inner, 1, groups=kv_groups, bias=to_k_bias)
        self.to_v = nn.Conv2d(in_channels, inner, 1, groups=kv_groups, bias=to_v_bias)
        # The conv pads k // 2 (DAT) or as for sizes that r divides; the module pads the rest.
        k = offset_kernel_size
        self._conv_padding = k // 2 if geometry == 'dat' else (k - downsample_factor) // 2
        offset_layers = [
            nn.Conv2d(offset_dims, offset_dims, offset_kernel_size, stride=downsample_factor,
                      padding=self._conv_padding, groups=offset_dims)
        ]
        if norm_cfg is not None:
            offset_layers.append(build_map_norm(norm_cfg, offset_dims))
        offset_layers += [build_activation_layer(act_cfg), nn.Conv2d(offset_dims, 2, 1, bias=False)]
        self.to_offsets = nn.Sequential(*offset_layers)
        # In-place ReLUs: each follows a fresh tensor whose backward does not need it.
        cpb = [TallLinear(2, cpb_dim), nn.ReLU(inplace=True)]
        for _ in range(cpb_depth - 1):
            cpb += [TallLinear(cpb_dim, cpb_dim), nn.ReLU(inplace=True)]
        cpb.append(TallLinear(cpb_dim, heads // groups, bias=False))
        self.rel_pos_bias = nn.Sequential(*cpb)
        self.to_out = nn.Conv2d(inner, in_channels, 1, bias=to_out_bias)

    def sampling_locations(self, q: torch.Tensor) -> torch.Tensor:
        """Key locations ``(N * G, H_k, W_k, 2)``, ``(x, y)`` in normalised coordinates of the
        geometry (``grid_sample``'s ``align_corners=False``; True for ``'dat'``).

        ``q`` is the query map ``to_q(x)`` of shape ``(N, E, H, W)``.
        """
        n, _, h, w = q.shape
        (hk, top, bottom), (wk, left, right) = (self._key_axis(h), self._key_axis(w))
        grouped = q.reshape(n * self.offset_groups, -1, h, w)
        pads = [p - self._conv_padding for p in (left, right, top, bottom)]
        if any(pads):
            grouped = F.pad(grouped, pads)
        # The geometry is computed in at least fp32 (also under fp16/bf16 autocast).
        dtype = torch.promote_types(q.dtype, torch.float32)
        offsets = self.to_offsets(grouped).to(dtype).tanh()  # (N * G, 2, H_k, W_k), (x, y)
        # In grid spacings (2 / W_k, 2 / H_k in normalised coordinates), at most offset_scale.
        offsets = torch.stack((offsets[:, 0] * (2.0 * self.offset_scale / wk),
                               offsets[:, 1] * (2.0 * self.offset_scale / hk)), -1)
        return reference_points(hk, wk, dtype, q.device) + offsets

    def _key_axis(self, size: int) -> Tuple[int, int, int]:
        """Keys along an axis of ``size`` pixels and the zero padding (before, after) of the
        offset conv's input such that its stride-r windows give exactly that many (the conv
        pads ``(k - r) // 2`` on each side itself; the module pads the rest).

        The padding for ``size = m r`` is ``k - r``, ``(k - r) // 2`` before (the windows are
        centred on the cells). ``ceil`` pads the remainder up to the next multiple, splitting
        the whole padding in two halves (an odd one to the end); ``floor`` pads as for the
        multiple below, and the conv ignores the remainder at the end. ``'dat'``: ``k // 2``.
        """
        r, k = self.downsample_factor, self.offset_kernel_size
        if self.geometry == 'dat':
            return (size + 2 * (k // 2) - k) // r + 1, k // 2, k // 2
        if self.key_grid == 'ceil':
            keys = (size + r - 1) // r  # no negative floor division
            pad = (keys - 1) * r + k - size
            return keys, pad // 2, pad - pad // 2
        keys = max(size // r, 1)
        before = (k - r) // 2
        return keys, before, max(k - r - before, (keys - 1) * r + k - size - before)

    def sample(self, x: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        """Bilinear samples ``(N, C, H_k, W_k)`` of each group's channels at its locations."""
        n, c, h, w = x.shape
        g = self.offset_groups
        sampled = F.grid_sample(
            x.reshape(n * g, c // g, h, w), locations.to(x.dtype), mode='bilinear',
            padding_mode='zeros', align_corners=self.geometry == 'dat')
        return sampled.reshape(n, c, *locations.shape[1:3])

    def position_bias(self, locations: torch.Tensor, h: int, w: int,
                      dtype: torch.dtype) -> torch.Tensor:
        """Relative position bias ``(N, heads, H * W, H_k * W_k)`` of queries to the keys.

        The MLP's input ``f(d) = sign(d) log(1 + |d|)`` acts per coordinate and the queries lie
        on a grid, so its first (affine) layer ``L`` splits as ``L(f_x, f_y) = L(f_x, 0) +
        (L(0, f_y) - L(0, 0))``: a per-(column, key) plus a per-(row, key) term, broadcast to
        (row, column, key) without materialising the (query, key, 2) displacements. The layer
        is called on the ``W N_k`` inputs ``(f_x, 0)`` and on the ``H N_k`` inputs ``(0, f_y)``
        and ``(0, 0)`` (two calls: no output of twice the size), so whatever replaces or wraps
        it (LoRA, quantisation) is applied, exactly if it is affine. See :meth:`_bias_mlp` for
        the chunking over query rows. ``dtype``: the dtype the layers compute in.
        """
        queries = reference_points(h, w, locations.dtype, locations.device)
        keys = locations.flatten(1, 2)  # (N * G, Nk, 2)
        fx, fy = (_log_spaced(q[None, :, None] - keys[:, None, :, i]).to(dtype)
                  for i, q in enumerate((queries[0, :, 0], queries[:, 0, 1])))
        first = self.rel_pos_bias[0]
        column = first(F.pad(fx[..., None], (0, 1)).flatten(0, -2))  # L(f_x, 0)
        row = first(torch.cat((F.pad(fy[..., None], (1, 0)).flatten(0, -2),  # L(0, f_y)
                               fy.new_zeros(1, 2))))  # and L(0, 0)
        row = (row[:-1] - row[-1]).view(*fy.shape, -1)  # (N * G, H, Nk, D)
        bias = self._bias_mlp(row, column.view(*fx.shape, -1))  # (N * G, H, W, Nk, heads / G)
        return bias.permute(0, 4, 1, 2, 3).reshape(-1, self.heads, h * w, keys.shape[1])

    #: Bytes of hidden MLP activations above which the position-bias MLP is checkpointed.
    checkpoint_bytes = 2**30
    #: Bytes of hidden activations per chunk of query rows (see :meth:`_bias_mlp`).
    chunk_bytes = 2**24

    def _bias_mlp(self, row: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
        """The position-bias MLP on the first layer's terms ``row`` (N * G, H, Nk, D) and
        ``column`` (N * G, W, Nk, D): ``(N * G, H, W, Nk, heads / G)``.

        Its hidden activations, ``H W Nk D`` per group, dwarf everything else in the module.
        Without autograd, it runs on chunks of query rows of about :attr:`chunk_bytes` each,
        its ReLUs in place (the same values, in a fraction of the memory). With autograd,
        when all hidden layers would hold more than :attr:`checkpoint_bytes`, each chunk is
        checkpointed: its activations are recomputed in the backward instead of being kept
        (one more forward of the MLP, in a fraction of the memory).
        """
        layer_bytes = row.shape[0] * row.shape[1] * column[0].numel() * row.element_size()
        hidden_bytes = layer_bytes * (len(self.rel_pos_bias) - 1) // 2
        grad = torch.is_grad_enabled()
        if grad and hidden_bytes <= self.checkpoint_bytes:
            return self._bias_rows(row, column)
        rows = max(1, row.shape[1] * self.chunk_bytes // layer_bytes)
        chunks = []
        for part in row.split(rows, 1):
            if grad:
                part = checkpoint(self._bias_rows, part, column, use_reentrant=False)
            else:
                part = self._bias_rows(part, column)
            chunks.append(part)
        return torch.cat(chunks, 1)

    def _bias_rows(self, row: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
        # The first layer's output and its ReLU (in place: the backward does not need the sum).
        hidden = self.rel_pos_bias[1](row[:, :, None] + column[:, None])
        shape = hidden.shape[:-1]
        # As a matrix, each linear output is a fresh tensor (not a view of one, as for N-d
        # inputs): its ReLU runs in place also with autograd, which keeps only the result.
        hidden = hidden.flatten(0, -2)
        for layer in self.rel_pos_bias[2:]:
            hidden = layer(hidden)
        return hidden.unflatten(0, shape)

    def _qkv_bias(self, x):
        n, _, h, w = x.shape
        q = self.to_q(x)
        locations = self.sampling_locations(q)
        kv = self.sample(x, locations)
        shape = (n, self.heads, self.dim_head, -1)
        q, k, v = q.reshape(shape), self.to_k(kv).reshape(shape), self.to_v(kv).reshape(shape)
        bias = self.position_bias(locations, h, w, q.dtype).to(q.dtype)
        return q, k, v, bias

    def _attention(self, q, k, bias):
        logits = torch.matmul(q.transpose(-1, -2), k)  # (N, heads, HW, Nk), no copies
        return logits.mul_(self.dim_head**-0.5).add_(bias).softmax(-1)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights ``(N, heads, H * W, H_k * W_k)`` (rows sum to 1)."""
        self.check_input(x)
        q, k, _, bias = self._qkv_bias(x)
        return self._attention(q, k, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        n, _, h, w = x.shape
        q, k, v, bias = self._qkv_bias(x)
        attn = F.dropout(self._attention(q, k, bias), self.dropout, self.training)
        # (N, heads, d, Nk) @ (N, heads, Nk, HW): the heads' outputs come out channel-first.
        return self.to_out(torch.matmul(v, attn.transpose(-1, -2)).reshape(n, -1, h, w))

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``'sampling_points'``: the keys' locations ``(N, G * H_k * W_k, 2)``, ``(x, y)`` in
        ``[-1, 1]`` (``align_corners=False``, also for ``'dat'``), with the reference grid they
        were moved from as origins."""
        locations = self.sampling_locations(self.to_q(x))  # (N * G, H_k, W_k, 2)
        n, _, h, w = x.shape
        origins = reference_points(*locations.shape[1:3], locations.dtype, locations.device)
        origins = origins.expand_as(locations)
        if self.geometry == 'dat':  # align_corners=True: pixel (u + 1) (size - 1) / 2
            to_map = locations.new_tensor(((w - 1) / w, (h - 1) / h))
            locations, origins = locations * to_map, origins * to_map
        return {'sampling_points': AttentionMap(
            'points', locations.reshape(n, -1, 2),
            f'sampling points ({self.offset_groups} groups)', origins.reshape(n, -1, 2))}

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, heads={self.heads}, dim_head={self.dim_head}, '
                f'offset_groups={self.offset_groups}, downsample_factor={self.downsample_factor}, '
                f'geometry={self.geometry!r}, key_grid={self.key_grid!r}')


class TallLinear(nn.Linear):
    """A Linear layer for inputs of many rows (the position-bias MLP's displacements).

    It is an ``nn.Linear`` (same parameters, hooks, (..., in_features) inputs, the same
    values); only its product differs: the rows are multiplied by a contiguous copy of
    ``W^T``. Autograd then computes the weight gradient as ``x^T g``, with the rows as the
    inner dimension of a row-major product, instead of ``(g^T x)^T`` for ``nn.Linear``'s
    transposed weight view: on CPU about 7x faster for 2 input features and 32 outputs,
    2.5x for 32 inputs and one output, at 10^5 rows.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        weight = self.weight.t().contiguous()
        out = rows @ weight if self.bias is None else torch.addmm(self.bias, rows, weight)
        # A matrix stays the product itself (not a view of it): an in-place op can follow.
        return out if x.dim() == 2 else out.view(*x.shape[:-1], self.out_features)


def _log_spaced(d: torch.Tensor) -> torch.Tensor:
    """The position-bias MLP's input transform ``sign(d) log(1 + |d|)``."""
    return d.sign() * torch.log1p(d.abs())


def reference_points(h: int, w: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Centres of an ``h x w`` grid of cells as ``(h, w, 2)`` ``(x, y)`` coordinates in
    ``[-1, 1]`` (``grid_sample`` with ``align_corners=False``)."""
    ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
    xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1
    return torch.stack(torch.meshgrid(xs, ys, indexing='xy'), -1)
