"""Residual Attention Network: the soft mask branch of an attention module."""
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_int
from ..map_norm import build_map_norm
from ..maps import AttentionMap, spatial_map
from ..norm import norm_any_batch


class PreActUnit(nn.Module):
    """Pre-activation bottleneck residual unit of the mask branch: ``x + conv3(relu(norm3(
    conv2(relu(norm2(conv1(relu(norm1(x)))))))))``, 1x1 C -> w, 3x3 w -> w, 1x1 w -> C, convs
    without bias, identity shortcut."""

    def __init__(self, channels: int, width: int, norm_cfg: dict):
        super().__init__()
        self.norm1 = build_map_norm(norm_cfg, channels)
        self.conv1 = nn.Conv2d(channels, width, 1, bias=False)
        self.norm2 = build_map_norm(norm_cfg, width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm3 = build_map_norm(norm_cfg, width)
        self.conv3 = nn.Conv2d(width, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(norm_any_batch(self.norm1, x)))
        y = self.conv2(F.relu(norm_any_batch(self.norm2, y)))
        y = self.conv3(F.relu(norm_any_batch(self.norm3, y)))
        return x + y


@register_model()
class ResidualAttentionMask(AttentionModule):
    """Soft mask branch of the Residual Attention Network (Wang et al., CVPR 2017,
    arXiv:1704.06904), applied as attention residual learning: ``(1 + M) * T``.

    ``T`` is the trunk output (the module's input ``x``), ``M`` the mask computed from
    ``mask_input`` (default: ``x``) by a bottom-up top-down hourglass of pre-activation
    bottleneck units (:class:`PreActUnit`, width C/4) with L levels: for level 1..L a 3x3
    stride-2 max pooling without padding in ceil mode (Caffe's), then one unit (two at level
    L); a skip unit on the output of every level below L; going up, for level L-1..1 a
    bilinear resize of the deeper result to that level's size, plus the skip, then one unit;
    finally a resize to T's size, norm-ReLU-1x1 (C -> C), norm-ReLU-1x1 (C -> C) and a sigmoid.

    Parameters: ``(3L - 1)(17 C^2 / 16 + 3 C) + 2 C^2 + 4 C`` (C divisible by 4; BN affine
    counted, running statistics are buffers): 695,296 at C = 256, L = 3.

    Paper position: ``around_stage``. In Attention-56 a stage is a pre-processing unit p, the
    trunk (t = 2 units) and the mask; the mask reads the output of p, which is also the trunk
    input. In a ResNet stage the module reads the output of the stage's first block and
    replaces the output of its last block T by ``(1 + M) T`` (stages 1 to 3).

    Levels: ``levels='auto'`` builds the paper's deepest mask (3 levels, as in its first
    stage on 56x56 maps) and pools a level only while the pooled map stays at least
    ``min_size`` (7) on both sides (the first level also pools maps of 3 to 6; maps below 3
    are never pooled, Caffe's pooling has no output there); a level that is not pooled runs
    its units at the size of the level above. On 56x56 maps this is exactly the official
    stage-1 mask; the official masks of the stages at 28x28 and 14x14 have 2 and 1 levels:
    pass ``levels=2`` and ``levels=1`` there (an int builds that many levels and pools them
    with the same rule, which pools every level at the official sizes).

    Deviations: the official graph (Caffe deploy prototxts, fwang91/residual-attention-network
    @bc207a8) is computed exactly for levels and sizes as in Attention-56 (float64 max abs
    difference 0 up to rounding against a direct implementation of the prototxt layers); the
    Caffe ``Interp`` layer is taken to be bilinear with aligned corners (the DeepLab layer;
    ``align_corners=False`` switches); ``levels='auto'`` keeps 3 levels at every stage, so on
    28x28 and 14x14 maps its deeper levels run unpooled at 7x7 (``levels=2`` / ``1``
    removes it, as in the official per-stage configs); maps below the pooling sizes (not
    in the paper) skip those poolings; the unit width is ``max(C // 4, 1)``. The official
    network also has a post-processing unit after every attention module: here the host's
    next blocks play that role. The official initialisation is not published (deploy files
    only): PyTorch's defaults. In training, a batch norm that sees one value per channel
    (batch 1 on a 1x1 map) uses its running statistics instead of raising.

    Args:
        in_channels (int): Channels C of the trunk output and of the mask input.
        levels (int | str): ``'auto'`` (3 levels, pooled while the map stays at least
            ``min_size``) or the number of levels L >= 1.
        min_size (int): Smallest side a pooling may produce (below it the level is not
            pooled; the first level pools any map of at least 3).
        align_corners (bool): Corner alignment of the bilinear resizes (Caffe ``Interp``:
            True).
        norm_cfg (dict): Norm of the pre-activations (official: BN).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W), mask_input: (N, C, H', W') -> (N, C, H, W).
    """

    family = 'channel_spatial'
    paper = ('Wang et al., Residual Attention Network for Image Classification, CVPR 2017, '
             'arXiv:1704.06904')
    paper_position = 'around_stage'
    _abbr_ = 'ran'

    #: Levels that ``levels='auto'`` builds (Attention-56's first stage).
    AUTO_LEVELS = 3

    def __init__(self,
                 in_channels: int,
                 levels: Union[int, str] = 'auto',
                 min_size: int = 7,
                 align_corners: bool = True,
                 norm_cfg: dict = dict(type='BN'),
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        if levels != 'auto':
            if isinstance(levels, str):
                raise ValueError(f"{owner}: levels must be 'auto' or an int >= 1, got "
                                 f'{levels!r}')
            levels = check_int(owner, 'levels', levels, 1)
        self.levels = levels
        self.min_size = check_int(owner, 'min_size', min_size, 1)
        if not isinstance(align_corners, bool):
            raise ValueError(f'{owner}: align_corners must be a bool, got {align_corners!r}')
        self.align_corners = align_corners
        num = self.AUTO_LEVELS if levels == 'auto' else levels
        c, width = in_channels, max(in_channels // 4, 1)
        self.down = nn.ModuleList(PreActUnit(c, width, norm_cfg) for _ in range(num))
        self.bottom = PreActUnit(c, width, norm_cfg)
        # one level has no skip and no up units (None, not an empty ModuleList)
        self.skip = nn.ModuleList(PreActUnit(c, width, norm_cfg)
                                  for _ in range(num - 1)) if num > 1 else None
        self.up = nn.ModuleList(PreActUnit(c, width, norm_cfg)
                                for _ in range(num - 1)) if num > 1 else None
        self.norm1 = build_map_norm(norm_cfg, c)
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.norm2 = build_map_norm(norm_cfg, c)
        self.conv2 = nn.Conv2d(c, c, 1, bias=False)

    @property
    def num_levels(self) -> int:
        """Levels built (L)."""
        return len(self.down)

    def pooled_levels(self, size: Tuple[int, int]) -> List[bool]:
        """Which levels pool a map of ``size`` (H, W): a level pools while the pooled map
        stays at least ``min_size`` on both sides; the first also any map of at least 3."""
        h, w = int(size[0]), int(size[1])
        pooled = []
        for level in range(self.num_levels):
            ph, pw = _caffe_pool_size(h), _caffe_pool_size(w)
            pool = min(h, w) >= 3 and (min(ph, pw) >= self.min_size or level == 0)
            pooled.append(pool)
            if pool:
                h, w = ph, pw
        return pooled

    def forward(self, x: torch.Tensor,
                mask_input: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.check_input(x)
        if mask_input is None:
            mask_input = x
        elif not torch.jit.is_tracing() and mask_input.dim() == 4 and \
                mask_input.shape[0] != x.shape[0]:
            raise ValueError(f'{type(self).__name__}: mask_input has batch '
                             f'{mask_input.shape[0]}, x has {x.shape[0]}')
        mask = self.soft_mask(mask_input, x.shape[-2:])
        return x + x * mask

    def soft_mask(self, mask_input: torch.Tensor, size) -> torch.Tensor:
        """The mask M (N, C, H, W) in [0, 1] from ``mask_input``, resized to ``size``."""
        self.check_input(mask_input)
        skips = []
        y = mask_input
        for level, pool in enumerate(self.pooled_levels(mask_input.shape[-2:])):
            if pool:
                y = F.max_pool2d(y, 3, 2, 0, ceil_mode=True)
            y = self.down[level](y)
            if level < self.num_levels - 1:
                skips.append(self.skip[level](y))
        y = self.bottom(y)
        for level in range(self.num_levels - 2, -1, -1):
            y = self.up[level](self._resize(y, skips[level].shape[-2:]) + skips[level])
        y = self._resize(y, size)
        y = self.conv1(F.relu(norm_any_batch(self.norm1, y)))
        y = self.conv2(F.relu(norm_any_batch(self.norm2, y)))
        return torch.sigmoid(y)

    def _resize(self, y: torch.Tensor, size) -> torch.Tensor:
        if tuple(y.shape[-2:]) == tuple(size):
            return y
        return F.interpolate(y, size=tuple(int(s) for s in size), mode='bilinear',
                             align_corners=self.align_corners)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``soft_mask``: the mask M (mean over channels) that ``(1 + M)`` multiplies x by
        (mask input: x)."""
        return {'soft_mask': spatial_map(self.soft_mask(x, x.shape[-2:]), x.shape,
                                         'soft mask (channel mean)')}

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, levels={self.levels!r}, '
                f'min_size={self.min_size}, align_corners={self.align_corners}')


def _caffe_pool_size(size: int) -> int:
    """Output size of Caffe's 3x3 stride-2 max pooling without padding (ceil mode)."""
    return -(-(size - 3) // 2) + 1
