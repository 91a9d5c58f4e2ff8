"""Drawing primitives shared by the synthetic data sets: colours, shapes, noise, PNG files.

Images are float arrays of shape (H, W, 3) in [0, 255] while they are composed; masks are
boolean arrays of shape (H, W). Shapes are convex polygons in COCO's pixel coordinates, so
that a COCO polygon and the painted pixels describe the same object.
"""
import math
import os
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image

SPLITS = ('train', 'val')
SHAPES = ('disc', 'square', 'triangle')
_SIDES = dict(disc=32, square=4, triangle=3)

Point = Tuple[float, float]


def random_colour(rng: np.random.Generator,
                  avoid: Sequence[np.ndarray] = (),
                  min_distance: float = 0.0,
                  low: float = 25.0,
                  high: float = 230.0) -> np.ndarray:
    """A random RGB colour at least ``min_distance`` (Euclidean) from every colour in ``avoid``.

    Args:
        rng: The random generator.
        avoid: Colours to stay away from.
        min_distance: Smallest distance to each of ``avoid``; the farthest of 64 candidates
            is returned when none reaches it.
        low, high: Range of each channel.

    Returns:
        np.ndarray: A float array of shape (3, ).
    """
    candidates = rng.uniform(low, high, size=(64, 3))
    if not avoid:
        return candidates[0]
    distances = np.linalg.norm(candidates[:, None] - np.asarray(avoid)[None], axis=-1).min(1)
    fit = np.flatnonzero(distances >= min_distance)
    return candidates[fit[0] if fit.size else distances.argmax()]


def shape_polygon(shape: str, center: Point, size: float, angle: float = 0.0) -> List[Point]:
    """Vertices of ``shape`` whose circumscribed circle has diameter ``size``.

    Args:
        shape: One of :data:`SHAPES` (a disc is a 32-gon).
        center: (x, y) of the centre, in pixels.
        size: Diameter of the circumscribed circle, in pixels.
        angle: Rotation in radians.
    """
    if shape not in _SIDES:
        raise ValueError(f'shape_polygon: shape must be one of {SHAPES}, got {shape!r}')
    sides = _SIDES[shape]
    radius = size / 2
    start = angle - math.pi / 2 + (math.pi / sides if shape == 'square' else 0.0)
    return [(center[0] + radius * math.cos(start + 2 * math.pi * k / sides),
             center[1] + radius * math.sin(start + 2 * math.pi * k / sides))
            for k in range(sides)]


def polygon_mask(height: int, width: int, polygon: Sequence[Point]) -> np.ndarray:
    """Boolean mask of the pixels whose centres lie inside the convex ``polygon``.

    Coordinates follow COCO: pixel ``(i, j)`` covers ``[j, j + 1] x [i, i + 1]``, so its
    centre is ``(j + 0.5, i + 0.5)`` and a COCO polygon decodes to (nearly) the same mask.
    """
    points = np.asarray(polygon, dtype=np.float64)
    y, x = np.mgrid[:height, :width] + 0.5
    edges = np.roll(points, -1, axis=0) - points
    # Signed area decides the orientation; inside is the same side of every edge.
    orientation = np.sign(np.sum(points[:, 0] * np.roll(points[:, 1], -1)
                                 - np.roll(points[:, 0], -1) * points[:, 1]))
    inside = np.ones((height, width), dtype=bool)
    for (px, py), (ex, ey) in zip(points, edges):
        inside &= orientation * (ex * (y - py) - ey * (x - px)) >= 0
    return inside


def mask_box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """Tight box ``(x, y, w, h)`` of the True pixels of ``mask`` (COCO's convention)."""
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    return (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1),
            int(rows[-1] - rows[0] + 1))


def hatching(height: int, width: int, period: int, direction: int) -> np.ndarray:
    """Boolean map of diagonal stripes ``period`` pixels apart (``direction`` is +1 or -1)."""
    y, x = np.mgrid[:height, :width]
    return ((x + direction * y) % period) < period / 2


def finish(image: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Add Gaussian pixel noise of std ``noise`` and round to uint8."""
    noisy = image + rng.normal(0.0, noise, size=image.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def save_png(array: np.ndarray, path: str) -> None:
    """Write an (H, W, 3) RGB or (H, W) single-channel uint8 array as a PNG file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, format='PNG', compress_level=1)


def split_rng(seed: int, split: str, *key: int) -> np.random.Generator:
    """An independent random generator for ``key`` (e.g. an image index) in ``split``.

    Args:
        seed: The data set's seed.
        split: One of :data:`SPLITS`.
        key: Non-negative integers naming the use; keys of different lengths must differ in
            a non-zero entry (numpy's seeding pads keys with zeros).
    """
    return np.random.default_rng([seed, SPLITS.index(split), *key])
