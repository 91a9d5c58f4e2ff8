"""Stand-alone self-attention (SASA): local multi-head self-attention replacing a 3x3 conv."""
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import register_model
from ..checks import check_choice, check_int, check_odd
from ..conv_replacement import ConvReplacement
from ..maps import AttentionMap, weights_map


@register_model()
class SASA(ConvReplacement):
    """Stand-alone self-attention layer (Ramachandran et al., NeurIPS 2019, arXiv:1906.05909).

    Replaces a spatial convolution by local multi-head self-attention (the paper's eq. 2, 3).
    ``q = W_Q x``, ``k = W_K x``, ``v = W_V x`` (1x1 projections C_in -> C_out without bias),
    split into ``h`` heads of ``d = C_out / h`` channels. For an output pixel ``ij`` and each
    ``ab`` of its ``k x k`` neighbourhood ``N_k(ij)`` (the memory block), per head::

        logit_ab = q_ij . (k_ab + r_{a-i, b-j}),   r_{a-i, b-j} = [r^row_{a-i}; r^col_{b-j}]
        y_ij = sum_{ab in N_k(ij)} softmax_ab(logit) v_ab

    ``r^row`` holds the first ``d / 2`` dimensions of a head, ``r^col`` the second ``d / 2``;
    the heads' outputs are concatenated. Parameters:
    ``3 C_in C_out`` (projections) ``+ k C_out`` (``k x C_out / 2`` per axis)
    ``= 3 C^2 + k C`` = 198,400 at C = 256 with the defaults.
    Paper position: ``replaces_mid_conv`` (the 3x3 conv of every ResNet Bottleneck; the
    paper's "conv-stem + attention" model).

    There is no official code (google-research ``standalone_self_attention_in_vision_models``
    holds a README only), so this follows the paper's text. What the paper fixes: the 1x1
    projections W_Q, W_K, W_V, the softmax over the k x k neighbourhood, the relative
    embedding factorised into a row-offset and a column-offset embedding of ``d_out / 2``
    dimensions each, concatenated and dotted with the query (eq. 3), multiple heads,
    ``k = 7`` and ``h = 8`` in the ResNet experiments, and the 18.0M parameters of its
    attention ResNet-50. What it leaves open, and the choices here (*ours* where the paper
    says nothing):

    * Heads (``projection``): the text partitions x depthwise into h groups with per-head
      matrices ``W^n in R^{d_out/h x d_in/h}`` (block-diagonal projections, ``3 C^2 / h``
      parameters), but the 18.0M of its attention ResNet-50 is met only by full ``C x C``
      projections (18.04M here, 14.7M with block-diagonal ones), so the default is
      ``'full'`` (one 1x1 conv per projection, then split into heads);
      ``projection='grouped'`` is the text's block-diagonal form.
    * Embedding layout (``embedding``): eq. 3 is written for one head with ``d_out``
      dimensions; default ``'per_head'``: every head has its own ``k x d / 2`` row and
      column tables (``k C_out`` parameters in all); ``'shared'``: one table of
      ``k x d / 2`` per axis shared by the heads (``k d``). timm's ``HaloAttn``, a
      relative, has full-``d`` row and column tables shared by the heads and sums the two
      dot products; its tables are indexed by the key-query offset as here.
    * Scaling (``scale``): eq. 2 and 3 have no ``1 / sqrt(d)``; default ``False``,
      ``True`` divides the logits (both terms) by ``sqrt(d)`` as in HaloAttn.
    * Neighbours outside the image (``boundary``, *ours*): default ``'mask'``: they are
      left out of the softmax (logit ``-inf``; the centre is always inside, so even a 1x1
      map has one valid neighbour); ``'zeros'``: the popular port's and HaloAttn's
      zero-padded keys and values (a padded neighbour keeps the logit ``q . r`` and
      contributes a zero value).
    * Stride (``downsample``): the paper's stride-2 layers are described in third-party
      summaries (not checked here) as attention at stride 1 followed by a 2x2 average pool
      of stride 2; default ``'pool'``: ``avg_pool(s, stride=s, ceil_mode=True)`` (windows
      cut by the border average their valid pixels), so the output is ``ceil(H / s)``, the
      replaced conv's size. ``'strided'`` (*ours*): queries only at the strided centres
      ``(s i, s j)``, keys and values over their full-resolution neighbourhoods (cheaper by
      ``s^2``; HaloAttn's query stride).
    * ``C_out != C_in``: W_Q, W_K, W_V map C_in -> C_out (the paper's ``d_in``/``d_out``).
    * Initialisation (*ours*): the projections keep PyTorch's conv initialisation; the
      embeddings are ``N(0, d^-1/2)`` (HaloAttn's scale).

    Memory (*ours*): no unfold of the keys and values (``2 k^2`` x the activation, 98x at
    k = 7): the logits and the output are sums over the ``k^2`` shifted views of the
    zero-padded keys and values (views, not copies, and autograd saves views), so what is
    held is q, the padded k and v and the (N, h, k^2, H, W) logits and weights,
    ``k^2 h / C_out`` x the activation each (1.5x at C = 256, h = 8). Measured peak of one
    forward+backward at 2x256x28x28: 12x the input (the unfold reference: 200x); the price
    is a Python loop of ``k^2`` small ops per sum.

    Exact init from the replaced conv: impossible (see ``no_conv_init``).

    Deviations: no official code exists; the choices above are the paper's where it fixes
    them and ours (marked) where it does not; none is a deviation from the paper's text
    except ``projection='full'`` (the text's per-head matrices are block-diagonal; the
    paper's parameter count says full). The popular port (leaderj1001/Stand-Alone-Self-
    Attention) adds the embeddings to the values, softmaxes each channel of ``q * k``
    separately (no sum over the head), zero-pads and breaks at stride > 1; none of that is
    reproduced.

    Args:
        in_channels (int): Input channels C_in of the replaced conv.
        out_channels (int | None): Output channels C_out (``None``: C_in); divisible by
            ``heads``, with an even head width ``C_out / heads``.
        kernel_size (int): Kernel size of the replaced conv (3).
        stride (int): Stride of the replaced conv (1 or more; see ``downsample``).
        padding (int | None): The replaced conv's size-keeping padding (``None``: 1).
        dilation (int): 1 (the paper defines no dilation).
        groups (int): 1 (the heads are the paper's grouping).
        bias (bool): False (the paper's projections have none).
        spatial_extent (int): k, the odd side of the neighbourhood (paper: 7).
        heads (int): h (paper: 8).
        downsample (str): ``'pool'`` (default) or ``'strided'``, see above.
        boundary (str): ``'mask'`` (default) or ``'zeros'``, see above.
        embedding (str): ``'per_head'`` (default) or ``'shared'``, see above.
        projection (str): ``'full'`` (default) or ``'grouped'`` (needs ``heads | C_in``).
        scale (bool): Divide the logits by ``sqrt(d)`` (default False).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride)).
    """

    family = 'spatial'
    paper = ('Ramachandran et al., Stand-Alone Self-Attention in Vision Models, NeurIPS 2019, '
             'arXiv:1906.05909')
    paper_position = 'replaces_mid_conv'
    _abbr_ = 'sasa'
    kernel_sizes = (3, )
    no_conv_init = ('its output is a softmax-weighted average of values (weights positive and '
                    'summing to one over the window), which a conv with arbitrary weights is '
                    'not')

    def __init__(self,
                 in_channels: int,
                 out_channels: Optional[int] = None,
                 kernel_size: int = 3,
                 stride: int = 1,
                 padding: Optional[int] = None,
                 dilation: int = 1,
                 groups: int = 1,
                 bias: bool = False,
                 spatial_extent: int = 7,
                 heads: int = 8,
                 downsample: str = 'pool',
                 boundary: str = 'mask',
                 embedding: str = 'per_head',
                 projection: str = 'full',
                 scale: bool = False,
                 init_cfg=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, init_cfg=init_cfg)
        name = type(self).__name__
        self.spatial_extent = check_odd(name, 'spatial_extent', spatial_extent)
        self.heads = check_int(name, 'heads', heads, 1)
        self.downsample = check_choice(name, 'downsample', downsample, ('pool', 'strided'))
        self.boundary = check_choice(name, 'boundary', boundary, ('mask', 'zeros'))
        self.embedding = check_choice(name, 'embedding', embedding, ('per_head', 'shared'))
        self.projection = check_choice(name, 'projection', projection, ('full', 'grouped'))
        self.scale = check_choice(name, 'scale', scale, (False, True))
        c_out = self.out_channels
        if c_out % self.heads:
            raise ValueError(f'{name}: out_channels={c_out} must be divisible by '
                             f'heads={self.heads}')
        self.head_channels = c_out // self.heads
        if self.head_channels % 2:
            raise ValueError(f'{name}: the head width out_channels / heads = '
                             f'{self.head_channels} must be even (half of it for the row '
                             'offsets, half for the column offsets)')
        proj_groups = 1
        if self.projection == 'grouped':
            if in_channels % self.heads:
                raise ValueError(f"{name}: projection='grouped' needs in_channels="
                                 f'{in_channels} divisible by heads={self.heads}')
            proj_groups = self.heads
        self.query = nn.Conv2d(in_channels, c_out, 1, groups=proj_groups, bias=False)
        self.key = nn.Conv2d(in_channels, c_out, 1, groups=proj_groups, bias=False)
        self.value = nn.Conv2d(in_channels, c_out, 1, groups=proj_groups, bias=False)
        tables = self.heads if self.embedding == 'per_head' else 1
        half = self.head_channels // 2
        # (heads or 1, d / 2, k): the row (column) offset a - i = -(k-1)/2 ... (k-1)/2
        self.rel_rows = nn.Parameter(torch.empty(tables, half, self.spatial_extent))
        self.rel_cols = nn.Parameter(torch.empty(tables, half, self.spatial_extent))
        self.init_special()

    def init_special(self) -> None:
        """Embeddings ``N(0, d^-1/2)`` (ours: the scale of timm's HaloAttn); the projections
        keep PyTorch's conv initialisation."""
        std = self.head_channels**-0.5
        nn.init.normal_(self.rel_rows, std=std)
        nn.init.normal_(self.rel_cols, std=std)

    # ---------------------------------------------------------------- the computation

    def query_stride(self) -> int:
        """The stride of the query centres: ``stride`` when ``downsample='strided'``."""
        return self.stride if self.downsample == 'strided' else 1

    def projections(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``q`` (at the query centres), ``k`` and ``v`` (everywhere), each (N, C_out, ., .)."""
        s = self.query_stride()
        return self.query(x[:, :, ::s, ::s] if s > 1 else x), self.key(x), self.value(x)

    def _windows(self, t: torch.Tensor, out_hw):
        """The ``k^2`` shifted views of ``t`` zero-padded by ``(k - 1) / 2``, one per
        neighbour offset (row-major), each sampled at the query centres ``out_hw``
        (a generator)."""
        k, s = self.spatial_extent, self.query_stride()
        r = k // 2
        padded = F.pad(t, (r, r, r, r))
        ho, wo = out_hw
        # a generator: each view is taken right before its use, so that backward meets
        # its slice right after its product and adds its gradient into the padded tensor's
        # at once (a list would hold all k^2 gradients, k^2 x the activation, until the end)
        return (padded[:, :, a:a + s * (ho - 1) + 1:s, b:b + s * (wo - 1) + 1:s]
                for a in range(k) for b in range(k))

    def attention(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The attention weights (N, h, k^2, H_q, W_q) of every query over its ``k x k``
        neighbours (row-major offsets), computed in ``promote_types(dtype, float32)``."""
        n, _, ho, wo = q.shape
        h, d, size = self.heads, self.head_channels, self.spatial_extent
        heads = q.view(n, h, d, ho, wo)
        rows = self.rel_rows.to(q.dtype).expand(h, -1, -1)
        cols = self.rel_cols.to(q.dtype).expand(h, -1, -1)
        q_rows = torch.einsum('nhjyx,hja->nhayx', heads[:, :, :d // 2], rows)
        q_cols = torch.einsum('nhjyx,hjb->nhbyx', heads[:, :, d // 2:], cols)
        logits = []
        for index, key in enumerate(self._windows(k, (ho, wo))):
            a, b = divmod(index, size)
            content = (q * key).view(n, h, d, ho, wo).sum(2)
            logits.append(content + q_rows[:, :, a] + q_cols[:, :, b])
        logits = torch.stack(logits, 2).to(torch.promote_types(q.dtype, torch.float32))
        if self.scale:
            logits = logits / math.sqrt(d)
        if self.boundary == 'mask':
            ones = torch.ones_like(k[:1, :1])
            # (1, 1, k^2, ho, wo): 1 where the neighbour is inside the image
            valid = torch.stack(list(self._windows(ones, (ho, wo))), 2)
            logits = logits.masked_fill(valid == 0, float('-inf'))
        return logits.softmax(2).to(q.dtype)

    def aggregate(self, attn: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``y = sum_ab attn_ab v_ab`` per head: (N, C_out, H_q, W_q)."""
        n, h, _, ho, wo = attn.shape
        out = None
        for index, value in enumerate(self._windows(v, (ho, wo))):
            term = attn[:, :, index:index + 1] * value.view(n, h, self.head_channels, ho, wo)
            out = term if out is None else out + term
        return out.reshape(n, h * self.head_channels, ho, wo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        q, k, v = self.projections(x)
        y = self.aggregate(self.attention(q, k), v)
        return self.pool(y)

    def pool(self, y: torch.Tensor) -> torch.Tensor:
        """``downsample='pool'`` at stride s > 1: ``s x s`` average pool of stride s in ceil
        mode (border windows average their valid pixels); otherwise ``y``."""
        if self.downsample == 'pool' and self.stride > 1:
            return F.avg_pool2d(y, self.stride, self.stride, ceil_mode=True)
        return y

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """The attention weights of the forward on the query grid (before the pool of
        ``downsample='pool'``), averaged over the heads:

        * ``self_weight``: each query's weight on its own position (its window's centre),
          a spatial map (N, H_q, W_q) in (0, 1];
        * ``window``: the mean weight per neighbour offset over the queries, a k x k map
          (border queries give out-of-image offsets weight 0 with ``boundary='mask'``).
        """
        self.check_input(x)
        q, k, _ = self.projections(x)
        attn = self.attention(q, k).mean(1)  # (N, k^2, H_q, W_q)
        size = self.spatial_extent
        return {
            'self_weight': AttentionMap('spatial', attn[:, size * size // 2],
                                        'attention weight of each query on itself'),
            'window': weights_map(attn.mean((2, 3)), (size, size),
                                  f'mean attention over the {size}x{size} window'),
        }

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, spatial_extent={self.spatial_extent}, '
                f'heads={self.heads}, downsample={self.downsample!r}, '
                f'boundary={self.boundary!r}, embedding={self.embedding!r}, '
                f'projection={self.projection!r}, scale={self.scale}')
