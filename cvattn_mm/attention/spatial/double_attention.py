"""Double attention block (A^2-Nets)."""
from typing import Dict, Tuple

import torch
import torch.nn as nn

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_int, reduced_channels
from ..maps import AttentionMap, spatial_map, weights_map
from ..pointwise import PointwiseConv2d

Tensor = torch.Tensor


@register_model()
class DoubleAttention(AttentionModule):
    """Double attention block (Chen et al., A^2-Nets: Double Attention Networks, NeurIPS 2018,
    arXiv:1810.11579): gather, then distribute.

    Three biased 1x1 convs of ``x`` (N, C, H, W), flattened over the S = H W positions:
    ``A`` (C -> c_m), ``B`` and ``V`` (C -> c_n).

    * Gather (second-order attention pooling): ``b = softmax over the S positions of B``,
      per sample and per map; the global descriptors ``G = A b^T`` (N, c_m, c_n).
    * Distribute: ``v = softmax over the c_n channels of V``, per sample and per position;
      ``Z = G v`` (N, c_m, S).
    * Reconstruct: a biased 1x1 conv c_m -> C of ``Z``; ``out = x + conv(Z)``.

    Every softmax is taken inside one sample (over its positions or over its channels at
    one position): a sample's output depends on that sample only (the widely copied
    ``F.softmax`` without ``dim`` on (N, c_n, S) tensors normalises over the batch axis).
    ``G v`` is computed in that order (``(A b^T) v``: ``2 c_m c_n S`` multiply-adds, never an
    S x S matrix). The softmaxes run in ``promote_types(dtype, float32)`` and are cast back.
    Parameters: ``(C c_m + c_m) + 2 (C c_n + c_n) + (c_m C + C)``; with
    ``c_m = c_n = c``: ``3 (C c + c) + c C + C`` (65,984 at C = 256, c = 64).
    Paper position: the paper adds blocks to the stages of a ResNet (which ones and how many
    is not confirmed here); default ``late_stages``, as the non-local block the paper
    compares with.

    Initialisation: ``A``, ``B``, ``V`` from ``kaiming_normal_(mode='fan_out')``, biases 0
    (as the most used public copy; no official code is known); the reconstruction conv
    (weight and bias) is 0, so the block is exactly the identity at initialisation
    (``init_special``, redone by ``init_weights`` after ``init_cfg`` unless it loads a
    checkpoint).

    Deviations (no official code is known; from the paper): the reconstruction conv is
    zero-initialised (the paper does not say; a zero-initialised last layer makes the
    residual block start as the identity). ``c_m = c_n = C / 4`` (``reduction=4``) is this
    library's default: the paper's widths are not confirmed here, the public copies take
    them as arguments (128 in their examples; ``reduction=2`` at C = 256 gives those
    widths). The bias of ``B`` is a constant per map over the positions, which the softmax
    over positions removes: it is kept (as in the copies and the parameter count) and always
    gets a zero gradient. ``A``, ``B`` and ``V`` are one conv ``embed`` with
    ``c_m + 2 c_n`` outputs (the same parameters as three convs, in the order [A | B | V];
    state-dict keys differ from the copies' ``convA``, ``convB``, ``convV``).
    Differences from the public copies (External-Attention-pytorch's ``DoubleAttention``
    and its derivatives): they normalise ``B`` and ``V`` over the batch axis, not over
    positions and channels, and return ``conv(Z)`` without adding ``x``; other copies
    softmax ``V`` over the positions instead of the c_n channels.

    Args:
        in_channels (int): Channels C.
        reduction (int): Divisor of the gathered width ``c_m = max(C // reduction,
            min_channels)``.
        min_channels (int): Floor of c_m.
        num_descriptors (int, optional): c_n, the number of gather maps (global
            descriptors) and the width of the distribution softmax; ``None`` for c_m.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'spatial'
    paper = ('Chen et al., A^2-Nets: Double Attention Networks, NeurIPS 2018, '
             'arXiv:1810.11579')
    paper_position = 'late_stages'
    _abbr_ = 'a2'

    def __init__(self,
                 in_channels: int,
                 reduction: int = 4,
                 min_channels: int = 1,
                 num_descriptors: int | None = None,
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.reduction = reduction
        self.mid_channels = reduced_channels(owner, in_channels, reduction, min_channels)
        if num_descriptors is None:
            num_descriptors = self.mid_channels
        self.num_descriptors = check_int(owner, 'num_descriptors', num_descriptors, 1)
        # A, B and V in one 1x1 conv: output channels [A (c_m) | B (c_n) | V (c_n)].
        self.embed = PointwiseConv2d(in_channels, self.mid_channels + 2 * self.num_descriptors)
        self.reconstruct = PointwiseConv2d(self.mid_channels, in_channels)
        nn.init.kaiming_normal_(self.embed.weight, mode='fan_out')
        nn.init.zeros_(self.embed.bias)
        self.init_special()

    def init_special(self) -> None:
        """A zero reconstruction conv: the block starts as the identity."""
        nn.init.zeros_(self.reconstruct.weight)
        nn.init.zeros_(self.reconstruct.bias)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        n, _, h, w = x.shape
        features, gather, distribute = self.attention(x)
        descriptors = torch.bmm(features, gather.transpose(1, 2))  # G: (N, c_m, c_n)
        z = torch.bmm(descriptors, distribute)  # (N, c_m, S)
        return x + self.reconstruct(z.view(n, -1, h, w))

    def attention(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``A`` (N, c_m, S), the gather maps ``b`` (N, c_n, S; softmax over the positions)
        and the distribution vectors ``v`` (N, c_n, S; softmax over the c_n channels) of
        ``x`` (N, C, H, W); the softmaxes are computed in ``promote_types(dtype, float32)``
        and returned in the dtype of ``A``."""
        emb = self.embed(x).flatten(2)  # (N, c_m + 2 c_n, S)
        features, gather, distribute = emb.split(
            [self.mid_channels, self.num_descriptors, self.num_descriptors], 1)
        dtype = torch.promote_types(emb.dtype, torch.float32)
        gather = gather.to(dtype).softmax(2).to(emb.dtype)
        distribute = distribute.to(dtype).softmax(1).to(emb.dtype)
        return features, gather, distribute

    def attention_maps(self, x: Tensor) -> Dict[str, AttentionMap]:
        """'gather_weights' (N, H, W): the gather maps ``b`` (softmax over positions), mean
        over the c_n maps; 'distribution_peak' (N, H, W): the largest distribution weight
        ``max_n v`` at each position (1 / c_n: spread evenly over the descriptors; 1: one
        descriptor only)."""
        _, gather, distribute = self.attention(x)
        shape = x.shape
        return {
            'gather_weights': weights_map(gather.mean(1), shape[2:],
                                          'gather softmax over positions, mean over maps'),
            'distribution_peak': spatial_map(distribute.amax(1, keepdim=True).unflatten(
                2, shape[2:]), shape, 'largest distribution weight (softmax over descriptors)'),
        }

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, reduction={self.reduction}, '
                f'mid_channels={self.mid_channels}, num_descriptors={self.num_descriptors}')
