"""Bi-level routing attention (BiFormer)."""
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model.weight_init import trunc_normal_

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_divisible, check_int, check_positive_float
from ..maps import AttentionMap, query_weight_maps

#: ``size_policy`` values: pad and mask the padded keys (default), the official
#: ``auto_pad=True`` (zero padding of the input, padded keys not masked), the official
#: default (H and W must be multiples of ``n_win``).
BRA_SIZE_POLICIES = ('mask', 'zero_pad', 'strict')


class RegionGrid(NamedTuple):
    """How an H x W map is split into ``n_win`` x ``n_win`` regions.

    ``padded`` (Hp, Wp): the map padded at the bottom and right to multiples of ``n_win``;
    ``region`` (rh, rw): the size of one region; ``valid`` (n_win^2, rh rw) bool: which
    pixels of each region lie in the H x W map (``None`` when nothing is padded or masked);
    ``has_empty_regions``: whether some region holds padding only.
    """

    size: Tuple[int, int]
    padded: Tuple[int, int]
    region: Tuple[int, int]
    valid: Optional[torch.Tensor]
    has_empty_regions: bool


class RoutedAttention(NamedTuple):
    """What the forward averages with: ``weights`` (N, n_win^2, heads, rh rw, topk rh rw),
    the softmax of each query pixel over the pixels of its region's routed regions;
    ``values`` (N, n_win^2, heads, topk rh rw, C / heads), the gathered values; ``index``
    (N, n_win^2, topk), the routed regions; ``grid`` the :class:`RegionGrid`."""

    weights: torch.Tensor
    values: torch.Tensor
    index: torch.Tensor
    grid: RegionGrid


@register_model()
class BiLevelRoutingAttention(AttentionModule):
    """Bi-level routing attention (Zhu et al., BiFormer: Vision Transformer with Bi-Level
    Routing Attention, CVPR 2023, arXiv:2303.08810).

    The token mixer of BiFormer, as the official ``BiLevelRoutingAttention`` of
    ``ops/bra_legacy.py``. On the (N, H, W, C) view of x, one linear C -> (C_qk + C_qk + C)
    (bias) gives q, k, v. The map is split into ``n_win`` x ``n_win`` regions (each of
    (H / n_win) x (W / n_win) pixels). Region level: the region descriptors q̄, k̄ are the
    means of q and k over each region (detached unless ``diff_routing``), the region logits
    ``(q̄ s) k̄ᵀ`` with ``s = qk_scale or C_qk^-0.5``, and each query region keeps the indices
    ``I`` of its ``topk`` largest logits. Token level: each query pixel attends, per head
    (``num_heads`` heads of C_qk / heads and C / heads channels), to all pixels of the
    regions ``I`` of its region: ``softmax((q s) Kᵀ) V``. Then
    ``out = W_o(attn + lepe(v))`` with ``lepe`` a depthwise ``side_dwconv`` x ``side_dwconv``
    conv (bias) of v on the whole map and ``W_o`` a linear C -> C (bias). The module returns
    ``out`` only (BiFormer's block adds the residual). Parameters:
    ``C (2 C_qk + C) + 2 C_qk + C`` (qkv) ``+ C^2 + C`` (W_o) ``+ C (k^2 + 1)`` (lepe), i.e.
    ``4 C^2 + 4 C + C (k^2 + 1)`` with C_qk = C: 265,728 at C = 256 (k = 3), 269,824 (k = 5);
    ``param_routing`` adds ``C_qk^2 + C_qk``, ``param_attention='qkv'`` removes ``C^2 + C``.

    Paper position: only inside BiFormer's block (``own_block``: pre-LayerNorm transformer
    block with a 3x3 depthwise positional conv; the released models use
    ``side_dwconv=5``, 32 channels per head and topk 1, 4, 16 in stages 1 to 3, full
    attention in stage 4). ``at='paper'`` inserts it at ``fallback_position =
    'late_stages'``.

    Size policy: BRA counts regions, not pixels, so any size divisible by ``n_win`` works
    (the region size grows with the input); other sizes are ``size_policy``'s:

    * ``'mask'`` (default): the projected q, k, v are padded at the bottom and right to
      multiples of ``n_win``, the padded pixels are excluded from the region means and
      masked out of the token-level softmax, regions made only of padding get the logit
      ``-inf`` (they are routed to only when fewer than ``topk`` regions hold pixels, and
      their keys are masked then), and the padded queries are cropped. ``lepe`` runs on the
      unpadded v. The result does not depend on the padding: on a map smaller than
      ``n_win`` (1x1 with ``n_win = 7``) the regions are single pixels and the padded ones
      are never attended to. Sizes divisible by ``n_win`` pad nothing and compute the
      official function.
    * ``'zero_pad'``: the official ``auto_pad=True`` (used for segmentation): x is padded
      with zeros before the projection, padded pixels are ordinary keys (their k, v are the
      projection biases) and enter the region means and ``lepe``; the output is cropped.
    * ``'strict'``: the official default: H and W must be multiples of ``n_win`` (a
      ``ValueError`` naming ``n_win`` and the size, where the official code asserts).

    Deviations: the default size policy (above; ``size_policy='strict'`` or ``'zero_pad'``
    give the official behaviours). The routing is computed from the projection of the
    region means of x (the same values as the official means of q and k: the projection is
    affine) with autocast off, its logits in ``promote_types(dtype, float32)``, so that the
    routed regions do not change under fp16/bf16 autocast (the official code routes on the
    autocast-dtype q and k); the token softmax also runs in at least fp32. Only
    ``kv_downsample_mode='identity'`` (the class default and the released models' setting;
    the official ``ada_avgpool``/``maxpool``/... modes of the experiments are not
    implemented). ``diff_routing=True`` needs ``soft_routing=True``
    (the official "hard differentiable routing" raises NotImplementedError). State-dict keys:
    the official ``qkv.qkv.*`` is ``qkv.*`` here and ``router.emb.*`` is ``router_emb.*``
    (``wo.*``, ``lepe.*`` as official). The initialisation is BiFormer's model-level one
    (linear weights truncated normal std 0.02, biases 0; ``lepe`` PyTorch's default). The
    gather copies the ``topk`` routed regions' keys and values per query region, as the
    official code (its FIXME), in pure PyTorch (``index_select``; jit.trace and ONNX export).

    Args:
        in_channels (int): Channels C; divisible by ``num_heads``.
        num_heads (int): Heads; divides C and C_qk. Default 8.
        n_win (int): Regions per side (n_win^2 regions). Default 7.
        topk (int): Routed regions per query region, ``1 <= topk <= n_win^2``. Default 4.
        qk_dim (int, optional): C_qk, the width of q and k; None (default) for C.
        qk_scale (float, optional): The logit scale s; None (default) for C_qk^-0.5 (over
            the whole C_qk, not per head, as the official code).
        side_dwconv (int): Kernel of the ``lepe`` depthwise conv (odd), 0 for no lepe.
            Default 3 (the class default; the released models use 5).
        param_attention (str): ``'qkvo'`` (default) or ``'qkv'`` (no output linear).
        diff_routing (bool): Do not detach the region descriptors (needs ``soft_routing``).
        soft_routing (bool): Multiply the gathered keys and values by the softmax of the
            routed region logits.
        param_routing (bool): A linear C_qk -> C_qk on the region descriptors (needs
            ``diff_routing``).
        size_policy (str): ``'mask'`` (default), ``'zero_pad'`` or ``'strict'`` (above).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'spatial'
    paper = ('Zhu et al., BiFormer: Vision Transformer with Bi-Level Routing Attention, '
             'CVPR 2023, arXiv:2303.08810')
    paper_position = 'own_block'
    fallback_position = 'late_stages'
    _abbr_ = 'bra'

    def __init__(self, in_channels: int, num_heads: int = 8, n_win: int = 7, topk: int = 4,
                 qk_dim: Optional[int] = None, qk_scale: Optional[float] = None,
                 side_dwconv: int = 3, param_attention: str = 'qkvo',
                 diff_routing: bool = False, soft_routing: bool = False,
                 param_routing: bool = False, size_policy: str = 'mask', init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        c = self.in_channels
        self.num_heads = check_int(owner, 'num_heads', num_heads, 1)
        self.n_win = check_int(owner, 'n_win', n_win, 1)
        self.topk = check_int(owner, 'topk', topk, 1, self.n_win ** 2)
        self.qk_dim = c if qk_dim is None else check_int(owner, 'qk_dim', qk_dim, 1)
        check_divisible(owner, 'in_channels', c, self.num_heads, 'num_heads')
        check_divisible(owner, 'qk_dim', self.qk_dim, self.num_heads, 'num_heads')
        self.qk_scale = None if qk_scale is None else check_positive_float(
            owner, 'qk_scale', qk_scale)
        self.scale = self.qk_scale if self.qk_scale is not None else self.qk_dim ** -0.5
        self.side_dwconv = check_int(owner, 'side_dwconv', side_dwconv, 0)
        if self.side_dwconv % 2 == 0 and self.side_dwconv != 0:
            raise ValueError(f'{owner}: side_dwconv must be odd (padding k // 2 keeps the '
                             f'size) or 0 (no lepe), got {side_dwconv}')
        self.param_attention = check_choice(owner, 'param_attention', param_attention,
                                            ('qkvo', 'qkv'))
        for name, value in (('diff_routing', diff_routing), ('soft_routing', soft_routing),
                            ('param_routing', param_routing)):
            if not isinstance(value, bool):
                raise ValueError(f'{owner}: {name} must be a bool, got {value!r}')
        if param_routing and not diff_routing:
            raise ValueError(f'{owner}: param_routing=True needs diff_routing=True (the '
                             'routing linear gets no gradient through detached descriptors)')
        if diff_routing and not soft_routing:
            raise ValueError(f'{owner}: diff_routing=True needs soft_routing=True (hard '
                             'routing passes no gradient to the region descriptors; the '
                             'official "differentiable hard routing" is not implemented)')
        self.diff_routing, self.soft_routing = diff_routing, soft_routing
        self.param_routing = param_routing
        self.size_policy = check_choice(owner, 'size_policy', size_policy, BRA_SIZE_POLICIES)

        self.qkv = nn.Linear(c, 2 * self.qk_dim + c)
        self.wo = nn.Linear(c, c) if self.param_attention == 'qkvo' else None
        self.lepe = (nn.Conv2d(c, c, self.side_dwconv, padding=self.side_dwconv // 2, groups=c)
                     if self.side_dwconv > 0 else None)
        self.router_emb = nn.Linear(self.qk_dim, self.qk_dim) if param_routing else None
        self.init_special()

    def init_special(self) -> None:
        """BiFormer's ``_init_weights``: every linear's weight truncated normal (std 0.02),
        its bias 0; ``lepe`` keeps PyTorch's default."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------------------------------
    # Geometry
    def region_grid(self, size: Tuple[int, int], device=None) -> RegionGrid:
        """The regions of an H x W map under the size policy (``'strict'`` raises unless H and
        W are multiples of ``n_win``)."""
        h, w = size
        n = self.n_win
        if self.size_policy == 'strict' and (h % n or w % n):
            raise ValueError(f"{type(self).__name__} with size_policy='strict' needs H and W "
                             f'divisible by n_win={n}, got {h}x{w}; size_policy=\'mask\' pads '
                             'and masks other sizes')
        # no floor division of negative sizes: ONNX's integer Div truncates towards 0
        hp, wp = (h + n - 1) // n * n, (w + n - 1) // n * n
        rh, rw = hp // n, wp // n
        valid, empty = None, False
        if (hp, wp) != (h, w) and self.size_policy == 'mask':
            inside = ((torch.arange(hp, device=device) < h)[:, None]
                      & (torch.arange(wp, device=device) < w)[None, :])
            valid = self._to_regions(inside[None, :, :, None], (hp, wp))[0, :, :, 0]
            empty = hp - h >= rh or wp - w >= rw
        return RegionGrid((h, w), (hp, wp), (rh, rw), valid, empty)

    def _to_regions(self, t: torch.Tensor, padded: Tuple[int, int]) -> torch.Tensor:
        """(N, Hp, Wp, c) -> (N, n_win^2, rh rw, c), regions in row-major order."""
        n = self.n_win
        rh, rw = padded[0] // n, padded[1] // n
        t = t.reshape(t.shape[0], n, rh, n, rw, t.shape[-1]).permute(0, 1, 3, 2, 4, 5)
        return t.reshape(t.shape[0], n * n, rh * rw, t.shape[-1])

    def _from_regions(self, t: torch.Tensor, padded: Tuple[int, int]) -> torch.Tensor:
        """(N, n_win^2, rh rw, c) -> (N, Hp, Wp, c)."""
        n = self.n_win
        rh, rw = padded[0] // n, padded[1] // n
        t = t.reshape(t.shape[0], n, n, rh, rw, t.shape[-1]).permute(0, 1, 3, 2, 4, 5)
        return t.reshape(t.shape[0], padded[0], padded[1], t.shape[-1])

    # ----------------------------------------------------------------------------------------
    # Computation
    def project(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(x', qkv)``: x' the (N, H', W', C) view of x (zero-padded to multiples of
        ``n_win`` with ``size_policy='zero_pad'``) and ``qkv`` (N, H', W', 2 C_qk + C) its
        projection."""
        if self.size_policy == 'zero_pad':
            h, w = x.shape[-2:]
            n = self.n_win
            x = F.pad(x, (0, (n - w % n) % n, 0, (n - h % n) % n))
        x = x.permute(0, 2, 3, 1)
        return x, self.qkv(x)

    def local_context(self, qkv: torch.Tensor) -> Optional[torch.Tensor]:
        """``lepe(v)`` (N, H', W', C): the depthwise conv of v on the whole map (None
        without lepe)."""
        if self.lepe is None:
            return None
        v = qkv[..., 2 * self.qk_dim:].permute(0, 3, 1, 2)
        return self.lepe(v).permute(0, 2, 3, 1)

    def region_descriptors(self, x: torch.Tensor,
                           grid: RegionGrid) -> Tuple[torch.Tensor, torch.Tensor]:
        """q̄, k̄ (N, n_win^2, C_qk): the means of q and k over each region (over its pixels
        in the map), computed as the projection of the region means of x' (N, H', W', C)
        (the same values: the projection is affine; :meth:`routed_attention` calls it with
        autocast off, so that the routing does not depend on the autocast dtype)."""
        (h, w), (hp, wp) = grid.size, grid.padded
        if (hp, wp) != (h, w):
            x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
        regions = self._to_regions(x, (hp, wp))
        if grid.valid is None:
            x_bar = regions.mean(2)
        else:
            x_bar = regions.sum(2) / grid.valid.sum(1).clamp_min(1).to(x.dtype)[:, None]
        qk = self.qkv(x_bar)[..., :2 * self.qk_dim]
        return qk[..., :self.qk_dim], qk[..., self.qk_dim:]

    def route(self, q_bar: torch.Tensor, k_bar: torch.Tensor,
              grid: RegionGrid) -> Tuple[torch.Tensor, torch.Tensor]:
        """Region routing: the logits ``(q̄ s) k̄ᵀ`` of the (N, n_win^2, C_qk) descriptors
        (``-inf`` towards regions without pixels) and their top-k: ``(weights, index)``, both
        (N, n_win^2, topk), weights the softmax of the kept logits (used by ``soft_routing``
        only)."""
        dtype = torch.promote_types(q_bar.dtype, torch.float32)
        q_bar, k_bar = q_bar.to(dtype), k_bar.to(dtype)
        if not self.diff_routing:
            q_bar, k_bar = q_bar.detach(), k_bar.detach()
        if self.router_emb is not None:
            q_bar, k_bar = self.router_emb(q_bar).to(dtype), self.router_emb(k_bar).to(dtype)
        logits = (q_bar * self.scale) @ k_bar.transpose(-2, -1)
        if grid.has_empty_regions:
            logits = logits.masked_fill(~grid.valid.any(1), float('-inf'))
        values, index = torch.topk(logits, self.topk, dim=-1)
        return torch.softmax(values, dim=-1), index

    def gather(self, kv: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The routed regions of ``kv`` (N, n_win^2, rh rw, c) for each query region:
        (N, n_win^2, topk, rh rw, c), ``index`` (N, n_win^2, topk)."""
        n, p2, s, c = kv.shape
        offset = torch.arange(n, device=index.device).mul(p2).reshape(n, 1, 1)
        rows = (index + offset).reshape(-1)
        return kv.reshape(n * p2, s * c).index_select(0, rows).reshape(n, p2, self.topk, s, c)

    def routed_attention(self, x: torch.Tensor, qkv: torch.Tensor) -> RoutedAttention:
        """The token-level attention of ``x', qkv`` (:meth:`project`): per query region and
        head, the softmax over the pixels of the routed regions (padded keys masked) and the
        gathered values."""
        grid = self.region_grid(tuple(qkv.shape[1:3]), qkv.device)
        (h, w), (hp, wp) = grid.size, grid.padded
        if (hp, wp) != (h, w):
            qkv = F.pad(qkv, (0, 0, 0, wp - w, 0, hp - h))
        regions = self._to_regions(qkv, (hp, wp))
        cq, m = self.qk_dim, self.num_heads
        q, kv = regions[..., :cq], regions[..., cq:]
        with torch.autocast(x.device.type, enabled=False):  # the routing in x's dtype
            r_weight, index = self.route(*self.region_descriptors(x, grid), grid)
        kv = self.gather(kv, index)
        if self.soft_routing:
            kv = kv * r_weight.to(kv.dtype)[..., None, None]
        n, p2, topk, s, _ = kv.shape
        k = kv[..., :cq].reshape(n, p2, topk * s, m, cq // m).permute(0, 1, 3, 4, 2)
        v = kv[..., cq:].reshape(n, p2, topk * s, m, -1).transpose(2, 3)
        q = q.reshape(n, p2, s, m, cq // m).transpose(2, 3)
        logits = (q * self.scale) @ k  # (N, p2, m, s, topk s)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if grid.valid is not None:
            keys = grid.valid[index].reshape(n, p2, 1, 1, topk * s)
            logits = logits.masked_fill(~keys, float('-inf'))
        return RoutedAttention(torch.softmax(logits, dim=-1), v, index, grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        h, w = x.shape[-2:]
        x, qkv = self.project(x)
        att = self.routed_attention(x, qkv)
        out = att.weights.to(att.values.dtype) @ att.values  # (N, p2, m, s, C / m)
        n, p2, _, s, _ = out.shape
        out = self._from_regions(out.transpose(2, 3).reshape(n, p2, s, -1), att.grid.padded)
        out = out[:, :qkv.shape[1], :qkv.shape[2]]
        lepe = self.local_context(qkv)
        if lepe is not None:
            out = out + lepe
        if self.wo is not None:
            out = self.wo(out)
        return out[:, :h, :w].permute(0, 3, 1, 2)

    def dense_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The token-level weights as an (N, H W, H W) matrix (mean over heads; 0 outside
        the routed regions and on padded keys): row i is the softmax of query pixel i over
        the key pixels (with ``size_policy='zero_pad'`` the shares of the padded keys are
        left out)."""
        h, w = x.shape[-2:]
        att = self.routed_attention(*self.project(x))
        hp, wp = att.grid.padded
        n, p2, _, s, _ = att.weights.shape
        pixel = self._to_regions(torch.arange(hp * wp, device=x.device).reshape(1, hp, wp, 1),
                                 (hp, wp))[0, :, :, 0]  # (p2, s): flat index in the padded map
        keys = pixel[att.index].reshape(n, p2, 1, -1).expand(n, p2, s, -1)
        rows = att.weights.new_zeros(n, p2, s, hp * wp).scatter(-1, keys, att.weights.mean(2))
        dense = rows.reshape(n, p2 * s, hp * wp)[:, torch.argsort(pixel.reshape(-1))]
        dense = dense.reshape(n, hp, wp, hp, wp)[:, :h, :w, :h, :w]
        return dense.reshape(n, h * w, h * w)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """'centre_query' and 'mean_over_queries' (N, H, W): the token-level softmax of the
        centre pixel over the key pixels (nonzero only in the regions its region is routed
        to) and its mean over the query pixels (mean over heads; ``dense_weights``)."""
        h, w = x.shape[-2:]
        return query_weight_maps(self.dense_weights(x), (h, w), (h, w), 'routed softmax')

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, num_heads={self.num_heads}, '
                f'n_win={self.n_win}, topk={self.topk}, qk_dim={self.qk_dim}, '
                f'qk_scale={self.qk_scale}, side_dwconv={self.side_dwconv}, '
                f'param_attention={self.param_attention!r}, diff_routing={self.diff_routing}, '
                f'soft_routing={self.soft_routing}, param_routing={self.param_routing}, '
                f'size_policy={self.size_policy!r}')
