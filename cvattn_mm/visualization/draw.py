"""Drawing captured attention maps over an image into one PNG (matplotlib, Agg canvas).

The figure is drawn on an Agg canvas of its own (no pyplot), so no display is needed and
the user's matplotlib backend is left alone.
"""
import fnmatch
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .capture import CapturedMaps
from .maps import AttentionMap

#: Side of one panel, inches.
PANEL = 2.4
DPI = 100
CMAP = 'jet'
ALPHA = 0.5
#: Kinds whose values are gates (mostly sigmoids): drawn on a fixed 0..1 scale.
GATE_KINDS = ('spatial', 'channel')
_SITE = re.compile(r'attention_sites\.([^.]+)\.attentions\.')


def site_label(path: str) -> str:
    """A short label of a module path: an inserted site is named by its host module
    (``'backbone.attention_sites.layer1-0-bn2.attentions.cbam'`` ->
    ``'backbone.layer1.0.bn2 (cbam)'``); other paths are returned unchanged."""
    match = _SITE.search(path)
    if match is None:
        return path
    host = match.group(1).replace('-', '.')
    return f'{path[:match.start()]}{host} ({path[match.end():]})'


def evenly_spaced(items: Sequence, count: int) -> list:
    """At most ``count`` items, spread evenly from the first to the last."""
    if len(items) <= count:
        return list(items)
    picks = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


def select_sites(captured: Sequence[CapturedMaps], max_sites: int,
                 pattern: Optional[str] = None) -> List[CapturedMaps]:
    """The captured entries to draw: those with maps (and whose path or label matches the
    fnmatch ``pattern``, if given), at most ``max_sites``, evenly spread over depth.

    Raises:
        ValueError: if no entry with maps matches.
    """
    with_maps = [c for c in captured if c.maps]
    chosen = [c for c in with_maps if pattern is None
              or fnmatch.fnmatchcase(c.path, pattern)
              or fnmatch.fnmatchcase(site_label(c.path), pattern)]
    if not chosen:
        labels = ', '.join(site_label(c.path) for c in with_maps) or 'none'
        raise ValueError(f'no attention map to draw (pattern {pattern!r}); modules with maps: '
                         f'{labels}')
    return evenly_spaced(chosen, max_sites)


def _upsample(values: torch.Tensor, input_hw: Tuple[int, int],
              image_hw: Tuple[int, int]) -> np.ndarray:
    """An (h, w) map resized bilinearly to the network input, cropped to the image (the
    data preprocessors pad at the bottom and right)."""
    up = F.interpolate(values[None, None], size=tuple(input_hw), mode='bilinear',
                       align_corners=False)
    return up[0, 0, :image_hw[0], :image_hw[1]].numpy()


def _to_pixels(points: np.ndarray, input_hw: Tuple[int, int]) -> np.ndarray:
    """Normalised (x, y) in [-1, 1] (align_corners=False) -> pixel (x, y) of the input."""
    size = np.array([input_hw[1], input_hw[0]], dtype=np.float64)
    return (points + 1) / 2 * size - 0.5


def applied_gate(m: AttentionMap, gain: float) -> AttentionMap:
    """The gate a site inserted with ``identity_init=True`` applies for a gate map ``m``:
    ``x + g (x * gate - x) = x * (1 + g (gate - 1))``, ``g`` the blend's gain (for a module
    whose output is ``x * gate``)."""
    return AttentionMap(m.kind, 1 + gain * (m.values - 1), m.title)


def _is_constant(low: float, high: float) -> bool:
    return high - low <= 1e-6 * max(1.0, abs(high))


def color_scale(values: np.ndarray, gate: bool) -> Normalize:
    """The colour scale of a map: fixed ``[0, 1]`` for a gate within it (a gate from 0.404
    to 0.412 looks nearly flat, as it is), else the map's range; a constant map ``v`` is
    drawn in the middle of ``[0, 2 v]`` (or on ``[0, 1]`` for ``v`` in it) rather than on
    a range that rounding noise would fill."""
    low, high = float(values.min()), float(values.max())
    if gate and low >= 0 and high <= 1:
        return Normalize(0.0, 1.0)
    if not _is_constant(low, high):
        return Normalize(low, high)
    if 0 <= high <= 1:
        return Normalize(0.0, 1.0)
    return Normalize(min(0.0, 2 * high), max(0.0, 2 * high))


def _number(value: float) -> str:
    """Three decimals, or three significant digits for a tiny or huge value."""
    return f'{value:.3f}' if value == 0 or 0.01 <= abs(value) < 1000 else f'{value:.3g}'


def range_note(values: np.ndarray) -> str:
    """``'constant v'`` for a flat map, else ``'range low to high'``."""
    low, high = float(values.min()), float(values.max())
    if _is_constant(low, high):
        return f'constant {_number(high)}'
    return f'range {_number(low)} to {_number(high)}'


def _scale_note(kind: str, scale: Normalize, values: np.ndarray) -> str:
    """How the colours of a map span: fixed 0..1, around a constant, or its own range."""
    if kind == 'channel':
        return ''  # a histogram: its x axis says it
    if (scale.vmin, scale.vmax) == (0, 1):
        return ', colours 0 to 1'
    if _is_constant(float(values.min()), float(values.max())):
        return f', colours {_number(scale.vmin)} to {_number(scale.vmax)}'
    return ', colours span the range'


def panel(site: CapturedMaps, name: str, m: AttentionMap) -> Tuple[AttentionMap, str]:
    """The map drawn for ``site``'s map ``name`` (the applied gate for an ``identity_init``
    site's gates) and the panel's title: module, map, what is drawn, its range."""
    lines = [site_label(site.path), f'{site.type_name} {site.input_shape[1]}x'
             f'{site.input_shape[2]}x{site.input_shape[3]}: {name}', m.title]
    if site.gain is not None:
        if m.kind in GATE_KINDS:
            m = applied_gate(m, site.gain)
            lines.append(f'identity_init g={site.gain:.3g}: drawn 1 + g (gate - 1)')
        else:
            lines.append(f'identity_init g={site.gain:.3g}: the module\'s own map')
    if m.kind != 'points':
        values = m.values[0].numpy()
        scale = color_scale(values, m.kind in GATE_KINDS)
        lines.append(range_note(values) + _scale_note(m.kind, scale, values))
    return m, '\n'.join(lines)


def _draw_map(fig, ax, image, m: AttentionMap, input_hw, title: str) -> None:
    ax.set_title(title, fontsize=6)
    if m.kind == 'channel':
        values = m.values[0].numpy()
        in_unit = values.min() >= 0 and values.max() <= 1
        ax.hist(values, bins=20, range=(0, 1) if in_unit else None, color='tab:blue')
        ax.set_xlabel(f'gate (C={values.size}, mean {values.mean():.3f})', fontsize=6)
        ax.set_ylabel('channels', fontsize=6)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=5)
        return
    ax.imshow(image)
    ax.set_axis_off()
    height, width = image.shape[:2]
    if m.kind == 'points':
        points = _to_pixels(m.values[0].numpy(), input_hw)
        if m.origins is not None:
            origins = _to_pixels(m.origins[0].numpy(), input_hw)
            ax.add_collection(LineCollection(np.stack([origins, points], 1), colors='white',
                                             linewidths=0.5, alpha=0.6))
            ax.scatter(origins[:, 0], origins[:, 1], s=3, c='white', alpha=0.6)
        ax.scatter(points[:, 0], points[:, 1], s=10, c='red', edgecolors='white',
                   linewidths=0.4)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        return
    norm = color_scale(m.values[0].numpy(), m.kind in GATE_KINDS)
    values = _upsample(m.values[0], input_hw, (height, width))
    overlay = ax.imshow(values, cmap=CMAP, alpha=ALPHA, norm=norm)
    bar = fig.colorbar(overlay, ax=ax, fraction=0.046, pad=0.02)
    bar.ax.tick_params(labelsize=5)
    bar.ax.ticklabel_format(useOffset=False)  # gates near 0.5 vary little: show true values


def draw_attention_maps(image: np.ndarray,
                        captured: Sequence[CapturedMaps],
                        out_file: str,
                        max_sites: int = 6,
                        input_hw: Optional[Tuple[int, int]] = None,
                        pattern: Optional[str] = None) -> List[CapturedMaps]:
    """Write one PNG: the image, then one row per selected module with its maps.

    Spatial gates and weights are resized bilinearly to the image and overlaid in colour
    (gates within [0, 1] on a fixed 0..1 scale, other maps on their range); channel gates
    are histograms; sampling points are scattered over the image, with lines from their
    reference points. Each title gives the map's range, or 'constant v' for a flat map; for
    a module inserted with ``identity_init=True`` the gates drawn are those the site applies,
    ``1 + g (gate - 1)``, with the gain ``g`` in the title. Sample 0 of the batch is drawn.

    Args:
        image (np.ndarray): The input image, RGB uint8 (H, W, 3).
        captured (Sequence[CapturedMaps]): From :func:`capture_attention_maps`.
        out_file (str): Path of the PNG.
        max_sites (int): Most modules drawn; more are thinned evenly over depth.
        input_hw (tuple, optional): (H, W) of the network input when it is the image padded
            at the bottom/right; default the image's.
        pattern (str, optional): fnmatch pattern over module paths and labels.

    Returns:
        list[CapturedMaps]: The drawn entries.
    """
    sites = select_sites(captured, max_sites, pattern)
    input_hw = tuple(image.shape[:2]) if input_hw is None else tuple(input_hw)
    ncols = max(len(site.maps) for site in sites)
    fig = Figure(figsize=(PANEL * ncols, PANEL * (len(sites) + 1)), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(sites) + 1, ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    axes[0, 0].set_visible(True)
    axes[0, 0].imshow(image)
    axes[0, 0].set_axis_off()
    axes[0, 0].set_title(f'input {image.shape[1]}x{image.shape[0]}; {len(sites)} of '
                         f'{sum(bool(c.maps) for c in captured)} modules', fontsize=7)
    for row, site in enumerate(sites, 1):
        for col, (name, m) in enumerate(site.maps.items()):
            ax = axes[row, col]
            ax.set_visible(True)
            drawn, title = panel(site, name, m)
            _draw_map(fig, ax, image, drawn, input_hw, title)
    fig.tight_layout()
    fig.savefig(out_file)
    return sites
