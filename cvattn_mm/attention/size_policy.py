"""The size policy of size-bound modules: a grid fixed at construction, any input size.

Some official implementations fix the spatial size when the module is built (FcaNet's DCT
filters, Gather-Excite's feature-size depthwise kernels, RGA's position relations, ...).
Every such module here follows one policy, chosen by its ``size_policy`` argument:

* ``'pool'`` (the default): an input of another size is adaptive-average-pooled to the
  module's ``grid_size``, the attention is computed on the grid, and a spatial map is
  resized back to exactly (H, W) (bilinear, ``align_corners=False``; a channel vector is
  applied directly). On the grid size itself nothing is pooled or resized, so the module
  computes the official function there, bit for bit.
* ``'strict'``: the official behaviour of code that only runs at its construction size: any
  other size raises a ``ValueError`` naming the expected and the given size.

The pooling is PyTorch's adaptive average pooling (windows ``floor(i H / g)`` to
``ceil((i + 1) H / g)``); under ``torch.jit.trace`` (and so ONNX export) it is written as two
small averaging matrices, the same values, because the exporter refuses
``F.adaptive_avg_pool2d`` when the grid does not divide the map.
"""
from numbers import Integral
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .checks import check_choice, check_int

SIZE_POLICIES = ('pool', 'strict')

GridSize = Union[int, Sequence[int]]


def check_grid_size(owner: str, grid_size: GridSize, name: str = 'grid_size') -> Tuple[int, int]:
    """``grid_size`` (an int or an (h, w) pair of ints >= 1) as an ``(h, w)`` tuple."""
    if isinstance(grid_size, Integral) and not isinstance(grid_size, bool):
        grid_size = (grid_size, grid_size)
    if not isinstance(grid_size, (tuple, list)) or len(grid_size) != 2:
        raise ValueError(f'{owner}: {name} must be an int or an (h, w) pair, got {grid_size!r}')
    return tuple(check_int(owner, name, s, 1) for s in grid_size)


def check_size_policy(owner: str, size_policy: str) -> str:
    """``size_policy`` if it is one of :data:`SIZE_POLICIES`."""
    return check_choice(owner, 'size_policy', size_policy, SIZE_POLICIES)


def adaptive_pool_matrix(size: int, out_size: int, dtype: torch.dtype,
                         device: torch.device) -> torch.Tensor:
    """The (out_size, size) matrix of 1-D adaptive average pooling from ``size`` values."""
    i = torch.arange(out_size, device=device)
    start = (i * size) // out_size
    end = ((i + 1) * size + out_size - 1) // out_size
    j = torch.arange(size, device=device)
    inside = (j >= start[:, None]) & (j < end[:, None])
    return inside.to(dtype) / (end - start)[:, None].to(dtype)


def fit_to_grid(x: torch.Tensor, grid_size: Tuple[int, int], size_policy: str,
                owner: str) -> torch.Tensor:
    """``x`` (N, C, H, W) on the grid: itself if (H, W) is ``grid_size``, else pooled to it
    (``'pool'``) or a ``ValueError`` (``'strict'``)."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(grid_size):
        return x
    if size_policy == 'strict':
        raise ValueError(f"{owner} with size_policy='strict' was built for "
                         f'{grid_size[0]}x{grid_size[1]} maps (grid_size={tuple(grid_size)}) '
                         f"but got {h}x{w}; size_policy='pool' pools other sizes to the grid")
    if not torch.jit.is_tracing():
        return F.adaptive_avg_pool2d(x, grid_size)
    pool_h = adaptive_pool_matrix(h, grid_size[0], x.dtype, x.device)
    pool_w = adaptive_pool_matrix(w, grid_size[1], x.dtype, x.device)
    return torch.einsum('gh,nchw,kw->ncgk', pool_h, x, pool_w)


def resize_from_grid(attention: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """A map computed on the grid, (N, C', g_h, g_w), resized to ``size`` (bilinear,
    ``align_corners=False``); itself when it already has that size."""
    if tuple(attention.shape[-2:]) == tuple(size):
        return attention
    return F.interpolate(attention, size=tuple(size), mode='bilinear', align_corners=False)
