"""Spatial transformer: a learnt global warp of the input map."""
from numbers import Integral
from typing import Dict, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import register_model
from ..base import AttentionModule
from ..checks import check_choice, check_int
from ..map_norm import build_map_norm
from ..maps import AttentionMap
from ..norm import norm_any_batch

#: The transform families: how many numbers the localisation net regresses, and their
#: values for the identity transform (the initial bias of its last layer).
TRANSFORMS = {
    'affine': (1., 0., 0., 0., 1., 0.),  # theta row-major, (2, 3)
    'attention': (1., 0., 0.),  # (s, t_x, t_y)
    'translation': (0., 0.),  # (t_x, t_y)
}
#: At most this many sampling points per axis in the 'sampling_points' map.
MAP_POINTS_PER_AXIS = 16


def affine_base_grid(height: int, width: int, dtype: torch.dtype,
                     device: torch.device) -> torch.Tensor:
    """The output pixel centres ``(x_j, y_i, 1)`` (H, W, 3) in ``grid_sample``'s normalised
    coordinates with ``align_corners=False``: ``x_j = (2 j + 1) / W - 1``."""
    xs = (torch.arange(width, dtype=dtype, device=device) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=dtype, device=device) * 2 + 1) / height - 1
    return torch.stack((xs.expand(height, width), ys[:, None].expand(height, width),
                        torch.ones(height, width, dtype=dtype, device=device)), 2)


@register_model()
class SpatialTransformer(AttentionModule):
    """Spatial transformer (Jaderberg et al., Spatial Transformer Networks, NeurIPS 2015,
    arXiv:1506.02025).

    A localisation net regresses a transform ``theta = f_loc(x)`` (N, 2, 3) from the input;
    the grid generator maps every output pixel centre ``(x^t, y^t)`` (normalised to
    [-1, 1]) to a source point ``(x^s, y^s)^T = theta (x^t, y^t, 1)^T``; the sampler reads
    ``x`` there with the bilinear kernel, zero outside the map:
    ``y[n, c, i, j] = sum_{h, w} x[n, c, h, w] max(0, 1 - |u - w|) max(0, 1 - |v - h|)``,
    ``u = ((x^s + 1) W - 1) / 2``, ``v = ((y^s + 1) H - 1) / 2``
    (``F.affine_grid`` and ``F.grid_sample``, both called with ``align_corners=False``).
    Transform families (``transform``): ``'affine'`` (6 numbers), ``'attention'``
    (``[[s, 0, t_x], [0, s, t_y]]``: isotropic scale and translation, 3 numbers, the paper's
    attention transform) and ``'translation'`` (``[[1, 0, t_x], [0, 1, t_y]]``, 2 numbers).

    Localisation net (the paper's are task-specific; this default is the library's design):
    conv C->16 k7 s2 p3 (no bias) + BN + ReLU + max-pool 2 (ceil mode), conv 16->32 k5 s2 p2
    (no bias) + BN + ReLU, global average pool, FC 32->32 + ReLU, FC 32->n with weight 0 and
    bias the identity transform, so that the module is the identity at initialisation (up to
    float rounding in the sampler).
    Parameters, with ``loc_channels=(c1, c2)``, ``fc_channels=f`` and n numbers:
    ``49 C c1 + 2 c1 + 25 c1 c2 + 2 c2 + f c2 + f + (f + 1) n``; with the defaults
    ``784 C + 13,952 + 33 n``: ``784 C + 14,150`` for 'affine' (16,502 at C = 3),
    ``784 C + 14,051`` for 'attention', ``784 C + 14,018`` for 'translation'.
    Paper position: the image input of the backbone (classification only: detection and
    segmentation targets would need the same warp; for features, see
    ``DeformableAttention2D`` or mmcv's DCN).

    Deviations: no official code exists. The localisation net is ours (the paper's differ by
    task), global-average-pooled so that any map size works (the popular PyTorch tutorial
    flattens a fixed 10x3x3 map). The output grid has the input's size (the module contract;
    the paper also allows other output sizes). The max-pool uses ceil mode so that 1x1 maps
    work. In training, a batch norm that sees one value per channel (batch 1 on a map that
    the localisation net reduces to 1x1) uses its running statistics instead of raising.
    The transform and the sampling run in ``promote_types(x.dtype, float32)`` (under
    autocast too). Under ``torch.jit.trace`` (ONNX export: ``affine_grid`` exports only
    from opset 20) the grid is written as the base grid times ``theta^T`` (the same values
    to float rounding).

    Args:
        in_channels (int): Channels C.
        transform (str): ``'affine'`` (default), ``'attention'`` or ``'translation'``.
        loc_channels (tuple[int, int]): Widths of the localisation net's two convs.
        fc_channels (int): Width of its hidden fully connected layer.
        norm_cfg (dict): Norm after each conv (default BN).
        padding_mode (str): ``grid_sample``'s value outside the map: ``'zeros'`` (paper),
            ``'border'`` or ``'reflection'``.
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C, H, W) -> (N, C, H, W).
    """

    family = 'spatial'
    paper = ('Jaderberg et al., Spatial Transformer Networks, NeurIPS 2015, '
             'arXiv:1506.02025')
    paper_position = 'backbone_input'
    _abbr_ = 'stn'
    warps_geometry = True

    def __init__(self,
                 in_channels: int,
                 transform: str = 'affine',
                 loc_channels: Sequence[int] = (16, 32),
                 fc_channels: int = 32,
                 norm_cfg: dict = dict(type='BN'),
                 padding_mode: str = 'zeros',
                 init_cfg=None):
        super().__init__(in_channels, init_cfg=init_cfg)
        owner = type(self).__name__
        self.transform = check_choice(owner, 'transform', transform, tuple(TRANSFORMS))
        if (isinstance(loc_channels, (str, bytes)) or not isinstance(loc_channels, Sequence)
                or len(loc_channels) != 2
                or not all(isinstance(c, Integral) and not isinstance(c, bool)
                           for c in loc_channels)):
            raise ValueError(f'{owner}: loc_channels must be a pair of integers, got '
                             f'{loc_channels!r}')
        c1, c2 = (check_int(owner, 'loc_channels', c, 1) for c in loc_channels)
        self.loc_channels = (c1, c2)
        self.fc_channels = check_int(owner, 'fc_channels', fc_channels, 1)
        self.padding_mode = check_choice(owner, 'padding_mode', padding_mode,
                                         ('zeros', 'border', 'reflection'))
        self.conv1 = nn.Conv2d(in_channels, c1, 7, stride=2, padding=3, bias=False)
        self.norm1 = build_map_norm(norm_cfg, c1)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(c1, c2, 5, stride=2, padding=2, bias=False)
        self.norm2 = build_map_norm(norm_cfg, c2)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(c2, self.fc_channels)
        self.fc2 = nn.Linear(self.fc_channels, len(TRANSFORMS[self.transform]))
        self.init_special()

    def init_special(self) -> None:
        """The last layer regresses the identity transform: weight 0, bias the identity."""
        nn.init.zeros_(self.fc2.weight)
        with torch.no_grad():
            self.fc2.bias.copy_(torch.tensor(TRANSFORMS[self.transform]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.sample(x, self.sampling_grid(self.theta(x), x.shape))

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        """The transform (N, 2, 3) regressed by the localisation net, in
        ``promote_types(x.dtype, float32)``."""
        h = self.pool(self.relu(norm_any_batch(self.norm1, self.conv1(x))))
        h = self.relu(norm_any_batch(self.norm2, self.conv2(h)))
        h = self.fc2(self.relu(self.fc1(h.mean((2, 3)))))
        p = h.to(torch.promote_types(x.dtype, torch.float32))
        if self.transform == 'affine':
            return p.reshape(-1, 2, 3)
        if self.transform == 'attention':
            s, tx, ty = p.unbind(1)
            zero = torch.zeros_like(s)
            return torch.stack((s, zero, tx, zero, s, ty), 1).view(-1, 2, 3)
        tx, ty = p.unbind(1)
        one, zero = torch.ones_like(tx), torch.zeros_like(tx)
        return torch.stack((one, zero, tx, zero, one, ty), 1).view(-1, 2, 3)

    @staticmethod
    def sampling_grid(theta: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """The source points (N, H, W, 2), ``(x, y)`` normalised to [-1, 1]
        (``align_corners=False``), of the output pixels of a map of ``shape``."""
        n, c, h, w = shape
        if torch.jit.is_tracing():  # affine_grid exports to ONNX only from opset 20
            base = affine_base_grid(h, w, theta.dtype, theta.device)
            return (base.view(1, h * w, 3) @ theta.transpose(1, 2)).view(-1, h, w, 2)
        return F.affine_grid(theta, [n, c, h, w], align_corners=False)

    def sample(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Bilinear sampling of ``x`` at ``grid`` (``align_corners=False``), in the grid's
        dtype, cast back to ``x.dtype``."""
        return F.grid_sample(x.to(grid.dtype), grid, mode='bilinear',
                             padding_mode=self.padding_mode,
                             align_corners=False).to(x.dtype)

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``'sampling_points'``: the source points ``(N, P, 2)`` of the forward's grid, on
        at most 16 output rows and columns (evenly strided), with the output pixels they
        belong to as origins."""
        theta = self.theta(x)
        grid = self.sampling_grid(theta, x.shape)
        h, w = x.shape[2:]
        rows = torch.arange(0, h, -(-h // MAP_POINTS_PER_AXIS), device=x.device)
        cols = torch.arange(0, w, -(-w // MAP_POINTS_PER_AXIS), device=x.device)
        points = grid[:, rows][:, :, cols].flatten(1, 2)
        base = affine_base_grid(h, w, grid.dtype, grid.device)[rows][:, cols, :2]
        origins = base.flatten(0, 1).expand_as(points)
        return {'sampling_points': AttentionMap('points', points, 'sampling points',
                                                origins=origins)}

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, transform={self.transform!r}, '
                f'loc_channels={self.loc_channels}, fc_channels={self.fc_channels}, '
                f'padding_mode={self.padding_mode!r}')
