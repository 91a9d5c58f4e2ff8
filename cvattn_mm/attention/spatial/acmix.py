"""ACmix: a 3x3 conv replaced by shared 1x1 projections feeding local self-attention and a
shift-initialised convolution."""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import register_model
from ..checks import check_divisible, check_int, check_odd
from ..conv_replacement import ConvReplacement
from ..maps import AttentionMap, weights_map


def _linspace(steps: int, x: torch.Tensor) -> torch.Tensor:
    """``linspace(-1, 1, steps)`` in ``x``'s dtype and on its device.

    The TorchScript ONNX exporter writes ``torch.linspace`` as double whatever its dtype (a
    double grid then meets the float conv): while exporting, the grid is made in float64 and
    cast (values within an ulp of the float32 ``linspace``)."""
    if torch.onnx.is_in_onnx_export():
        return torch.linspace(-1., 1., steps, dtype=torch.float64, device=x.device).to(x.dtype)
    return torch.linspace(-1., 1., steps, dtype=x.dtype, device=x.device)


@register_model()
class ACmix(ConvReplacement):
    """ACmix (Pan et al., On the Integration of Self-Attention and Convolution, CVPR 2022,
    arXiv:2111.14556): a self-attention path and a convolution path that share their 1x1
    projections, mixed by two learnt scalars.

    Stage I: ``q, k, v`` are three 1x1 convs ``C_in -> C_out`` with bias, split into ``h``
    heads of ``d = C_out / h`` channels. Stage II:

    * attention path: a relative position encoding ``pe = W_p r`` (a biased 1x1 conv
      ``2 -> d`` of the coordinate map ``r``, ``linspace(-1, 1)`` along W then H); for each
      query ``i`` (every ``stride``-th position) and key ``j`` in its ``k_att x k_att``
      window of the reflect-padded map,
      ``a_ij = softmax_j((q_i / sqrt(d)) . (k_j + pe_i - pe_j))`` and
      ``out_att_i = sum_j a_ij v_j`` (per head);
    * conv path: ``[q; k; v]`` stacked as ``3h`` maps of ``d`` channels, a 1x1 conv (no bias)
      ``3h -> k_c^2`` mixes them per channel of a head into ``k_c^2`` maps per head channel,
      laid out as ``d k_c^2`` channels (channel ``= e k_c^2 + t``), then a ``k_c x k_c`` conv
      with ``d`` groups, ``C_out`` outputs, the stride and no bias, initialised as shift
      kernels (input ``t`` of a group is a one-hot at tap ``t``);

    ``out = rate1 * out_att + rate2 * out_conv`` with learnt scalars ``rate1 = rate2 = 0.5``
    at initialisation. The conv path's kernel ``k_c`` is the replaced conv's kernel size (3).
    Parameters: ``3 C_in C_out + 3 C_out`` (q, k, v) ``+ 3d`` (pe) ``+ 3h k_c^2`` (fc)
    ``+ C_out k_c^4`` (dep_conv) ``+ 2``; at ``C_in = C_out = C``, ``k_c = 3``:
    ``3C^2 + 84C + 3d + 27h + 2`` (218,414 at C = 256).
    Paper position: in place of the 3x3 conv of every Bottleneck (followed by the block's
    norm and ReLU, which stay).

    Equal to the official ``ACmix`` (``ResNet/test_bottleneck.py``, LeapLabTHU/ACmix
    @81dddb6) with the same weights, state-dict keys included (``conv1``/``conv2``/``conv3``
    for q/k/v, ``conv_p``, ``fc``, ``dep_conv``, ``rate1``, ``rate2``), wherever the official
    code runs (H, W >= 4, even H and W at stride 2, float32 input). The windows are taken
    as the ``k_att^2`` shifted views of the padded maps (strided slices), where the official
    code unfolds them into a ``k_att^2``-times larger copy: the same sums (to rounding),
    about a tenth of its forward time and half its memory on CPU.

    Deviations:

    * The output map is ``ceil(H / stride) x ceil(W / stride)`` (the replaced conv's) in both
      paths; the official code views the attention output as ``(H // stride, W //
      stride)`` and crashes on odd sizes at stride 2 (the conv path already gives the ceil
      size). Same values wherever the official code runs.
    * Reflection padding by ``k_att // 2`` needs more than ``k_att // 2`` positions along an
      axis (H, W >= 4 for k_att = 7); along a shorter axis the padding is replicate padding
      (the official code raises there). The rule applies to k, v and the position encoding.
    * The coordinate grid is built in the input's dtype and on its device (official: float32
      on CUDA or CPU, which fails for float64 and half inputs).
    * The logits, softmax and weighted sum run in ``promote_types(dtype, float32)`` (the
      same as the official code for float32 and float64 inputs).
    * ``dep_conv`` has no bias: the official ``dep_conv.bias = init_rate_0(...)`` assigns
      ``None`` and so removes the bias it declared; here it is not declared.
    * ``init_special`` gives ``dep_conv`` its shift kernels (the official
      ``reset_parameters``, the paper's initialisation), and ``init_weights`` redoes it after
      the module's ``init_cfg``. The official ACmix-ResNet's constructor then re-initialises
      every ``Conv2d``, ``dep_conv`` included, with Kaiming normal (fan_out), which discards
      them in the official networks (no option here).
    * The official ``dep_conv`` pads by 1 whatever ``kernel_conv``; here ``k_c // 2`` (the
      same for the only kernel taken, 3). The official ``dilation`` enlarges the reflection
      padding but not the window and then fails; dilation is refused here, as groups (the
      paper defines neither).

    Args:
        in_channels (int): Input channels C_in of the replaced conv.
        out_channels (int | None): Output channels C_out (``None``: C_in); a multiple of
            ``head``.
        kernel_size (int): The replaced conv's kernel size, the conv path's ``k_c``: 3.
        stride (int): Stride (both paths; the attention path's queries are subsampled).
        padding (int | None): The replaced conv's padding: size-keeping only (1).
        dilation (int): 1 only.
        groups (int): 1 only.
        bias (bool): False only.
        kernel_att (int): Window size ``k_att`` of the attention path, odd and >= 3
            (official: 7; a 1x1 window makes the softmax constant and q, k, pe unused).
        head (int): Number of heads ``h`` (official: 4).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride)).
    """

    family = 'spatial'
    paper = ('Pan et al., On the Integration of Self-Attention and Convolution, CVPR 2022, '
             'arXiv:2111.14556')
    _abbr_ = 'acmix'
    no_conv_init = ('its conv path sees, per output channel, only the 3h 1x1 projections '
                    'of one head channel (rank 3h per tap, not C_in), and the attention path '
                    'is added to it')

    def __init__(self,
                 in_channels: int,
                 out_channels: Optional[int] = None,
                 kernel_size: int = 3,
                 stride: int = 1,
                 padding: Optional[int] = None,
                 dilation: int = 1,
                 groups: int = 1,
                 bias: bool = False,
                 kernel_att: int = 7,
                 head: int = 4,
                 init_cfg=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, init_cfg=init_cfg)
        owner = type(self).__name__
        self.kernel_att = check_odd(owner, 'kernel_att', kernel_att, 3)
        self.head = check_int(owner, 'head', head, 1)
        check_divisible(owner, 'out_channels', self.out_channels, self.head, 'head')
        self.head_dim = self.out_channels // self.head
        self.kernel_conv = self.kernel_size
        out, taps = self.out_channels, self.kernel_conv ** 2
        self.conv1 = nn.Conv2d(in_channels, out, 1)  # q
        self.conv2 = nn.Conv2d(in_channels, out, 1)  # k
        self.conv3 = nn.Conv2d(in_channels, out, 1)  # v
        self.conv_p = nn.Conv2d(2, self.head_dim, 1)
        self.fc = nn.Conv2d(3 * self.head, taps, 1, bias=False)
        self.dep_conv = nn.Conv2d(taps * self.head_dim, out, self.kernel_conv, self.stride,
                                  self.kernel_conv // 2, groups=self.head_dim, bias=False)
        self.rate1 = nn.Parameter(torch.empty(1))
        self.rate2 = nn.Parameter(torch.empty(1))
        self.init_special()

    def init_special(self) -> None:
        """The official initialisation: ``rate1 = rate2 = 0.5`` and shift kernels in
        ``dep_conv`` (weight ``[o, t, t // k_c, t % k_c] = 1``, else 0)."""
        nn.init.constant_(self.rate1, 0.5)
        nn.init.constant_(self.rate2, 0.5)
        k = self.kernel_conv
        with torch.no_grad():
            shift = torch.zeros(k * k, k, k)
            for t in range(k * k):
                shift[t, t // k, t % k] = 1.
            self.dep_conv.weight.copy_(shift.expand_as(self.dep_conv.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        q, k, v = self.projections(x)
        att = self.attention(q, k, self.position_encoding(x))
        out_att = self.attention_output(att, v)
        out_conv = self.conv_output(q, k, v)
        return (self.rate1 * out_att + self.rate2 * out_conv).to(out_conv.dtype)

    def projections(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage I: ``q, k, v`` (N, C_out, H, W), the three biased 1x1 convs."""
        return self.conv1(x), self.conv2(x), self.conv3(x)

    def position_encoding(self, x: torch.Tensor) -> torch.Tensor:
        """``pe`` (1, d, H, W): ``conv_p`` of the coordinate map (x then y, each
        ``linspace(-1, 1)``), built in ``x``'s dtype and on its device."""
        h, w = x.shape[-2:]
        loc_w, loc_h = _linspace(w, x), _linspace(h, x)
        grid = torch.stack((loc_w[None, :].expand(h, w), loc_h[:, None].expand(h, w)))
        return self.conv_p(grid[None])

    def pad(self, t: torch.Tensor) -> torch.Tensor:
        """Reflection padding by ``k_att // 2`` (replicate padding along an axis too short
        to reflect)."""
        p = self.kernel_att // 2
        if p == 0:
            return t
        h, w = t.shape[-2:]
        if h > p and w > p:
            return F.pad(t, (p, p, p, p), mode='reflect')
        t = F.pad(t, (p, p, 0, 0), mode='reflect' if w > p else 'replicate')
        return F.pad(t, (0, 0, p, p), mode='reflect' if h > p else 'replicate')

    def windows(self, t: torch.Tensor) -> List[torch.Tensor]:
        """The ``k_att^2`` shifted views of the padded ``t`` (B, d, H, W), one per window
        offset (row-major), each at every ``stride``-th position: (B, d, H_out, W_out)."""
        h_out, w_out = self.output_size(*t.shape[-2:])
        padded, s, k = self.pad(t), self.stride, self.kernel_att
        return [padded[:, :, a:a + (h_out - 1) * s + 1:s, b:b + (w_out - 1) * s + 1:s]
                for a in range(k) for b in range(k)]

    def attention(self, q: torch.Tensor, k: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        """The attention weights ``a`` (N h, k_att^2, H_out, W_out): a softmax over each
        query's window, in ``promote_types(dtype, float32)``."""
        n, _, h, w = q.shape
        acc = torch.promote_types(q.dtype, torch.float32)
        s = self.stride
        q_att = q.reshape(n * self.head, self.head_dim, h, w)[:, :, ::s, ::s].to(acc)
        q_att = q_att * self.head_dim ** -0.5
        q_pe = pe[:, :, ::s, ::s].to(acc)
        keys = self.windows(k.reshape(n * self.head, self.head_dim, h, w).to(acc))
        logits = [(q_att * (k_j + q_pe - pe_j)).sum(1)
                  for k_j, pe_j in zip(keys, self.windows(pe.to(acc)))]
        return torch.stack(logits, 1).softmax(1)

    def attention_output(self, att: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``out_att`` (N, C_out, H_out, W_out): the attention-weighted sum of the ``v``
        windows, per head."""
        n, _, h, w = v.shape
        values = self.windows(v.reshape(n * self.head, self.head_dim, h, w).to(att.dtype))
        out = att[:, :1] * values[0]
        for j in range(1, len(values)):
            out = out + att[:, j:j + 1] * values[j]
        return out.reshape(n, self.out_channels, *out.shape[-2:]).to(v.dtype)

    def conv_output(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``out_conv`` (N, C_out, H_out, W_out): ``fc`` over the stacked heads of q, k, v,
        then the grouped ``dep_conv``."""
        n, _, h, w = q.shape
        stacked = torch.cat([t.reshape(n, self.head, self.head_dim, h * w) for t in (q, k, v)],
                            1)
        features = self.fc(stacked)  # (N, k_c^2, d, S)
        features = features.permute(0, 2, 1, 3).reshape(n, -1, h, w)
        return self.dep_conv(features)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """The attention weights of the forward (on the output grid), averaged over heads:

        * ``self_weight``: the weight of each query on its own position (the centre of its
          window), a spatial map (N, H_out, W_out) in [0, 1];
        * ``window``: the mean attention over the k_att x k_att window offsets (mean over
          queries), summing to 1.
        """
        q, k, _ = self.projections(x)
        att = self.attention(q, k, self.position_encoding(x))
        att = att.reshape(x.shape[0], self.head, *att.shape[1:]).mean(1)  # (N, k^2, Ho, Wo)
        centre = self.kernel_att ** 2 // 2
        window = self.kernel_att, self.kernel_att
        return {
            'self_weight': AttentionMap('spatial', att[:, centre],
                                        'attention weight of each query on itself'),
            'window': weights_map(att.mean((2, 3)), window,
                                  f'mean attention over the {window[0]}x{window[1]} window'),
        }

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, kernel_att={self.kernel_att}, head={self.head}')
