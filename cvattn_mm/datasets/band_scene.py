"""Scenes of textured bands with objects whose class is the kind of band they sit on.

An image is cut into 2 or more parallel bands (vertical or horizontal) that alternate between
two kinds: ``hatched`` (diagonal stripes of two colours) and ``plain`` (one colour). Every
object (a disc, square or triangle of a random colour) lies inside one band with a margin of
that band around it, and its class is the band's kind: identical objects get different classes
on different bands. All colours are random, so a single pixel tells neither the band's kind
nor the object's class; the texture around the object does.

Shared by the detection (COCO boxes and polygons) and segmentation (class-id masks) data sets.
"""
from typing import List, Tuple

import numpy as np

from .drawing import SHAPES, finish, hatching, polygon_mask, random_colour, shape_polygon

BAND_KINDS = ('hatched', 'plain')
CLASSES = tuple(f'object_on_{kind}' for kind in BAND_KINDS)
PALETTE = [(230, 120, 30), (30, 150, 230)]
MIN_IMAGE_SIZE = 48
NOISE = 6.0
MAX_OBJECTS = 5


def _band_edges(rng: np.random.Generator, image_size: int, min_width: int) -> List[int]:
    """Edges ``[0, e1, ..., image_size]`` of 2 or more bands at least ``min_width`` wide."""
    num_bands = int(rng.integers(2, max(2, image_size // min_width) + 1))
    slack = image_size - num_bands * min_width
    cuts = np.sort(rng.uniform(0, slack, size=num_bands - 1))
    inner = [round(k * min_width + c) for k, c in enumerate(cuts, start=1)]
    return [0, *inner, image_size]


def _band_colours(rng: np.random.Generator) -> List[list]:
    """The two stripe colours of a band (a plain band shows the first only)."""
    first = random_colour(rng)
    step = rng.normal(size=3)
    second = np.clip(first + step / np.linalg.norm(step) * rng.uniform(45, 70), 0, 255)
    return [first.tolist(), second.tolist()]


def sample_scene(rng: np.random.Generator, image_size: int) -> dict:
    """Draw the random content of one image.

    Args:
        rng: The image's random generator.
        image_size: Side of the square image, in pixels (at least :data:`MIN_IMAGE_SIZE`).

    Returns:
        dict: ``bands`` (each with ``start``, ``end``, ``kind``, ``colours``), ``vertical``,
        ``period``, ``direction`` of the hatching, ``objects`` (each with ``band``,
        ``shape``, ``polygon`` as (x, y) points, ``colour``) and ``noise_seed``.
    """
    size = image_size
    min_object, max_object = 0.11 * size, 0.23 * size
    margin = max(2, round(0.04 * size))
    edges = _band_edges(rng, size, int(np.ceil(max_object)) + 2 * margin + 1)
    first_kind = int(rng.integers(2))
    bands = []
    for k, (start, end) in enumerate(zip(edges[:-1], edges[1:])):
        kind = BAND_KINDS[(first_kind + k) % 2]
        bands.append(dict(start=start, end=end, kind=kind, colours=_band_colours(rng)))
    scene = dict(bands=bands, vertical=bool(rng.integers(2)),
                 period=int(rng.integers(6, 11)), direction=int(rng.choice([-1, 1])),
                 objects=[])
    boxes = []
    num_objects = int(rng.integers(2, MAX_OBJECTS + 1))
    for _ in range(20 * num_objects):
        if len(boxes) == num_objects:
            break
        band = int(rng.integers(len(bands)))
        diameter = rng.uniform(min_object, max_object)
        half = diameter / 2 + margin
        along = rng.uniform(bands[band]['start'] + half, bands[band]['end'] - half)
        across = rng.uniform(half, size - half)
        center = (along, across) if scene['vertical'] else (across, along)
        box = (center[0] - half, center[1] - half, center[0] + half, center[1] + half)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
               for b in boxes):
            continue
        boxes.append(box)
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        polygon = shape_polygon(shape, center, diameter, rng.uniform(0, 2 * np.pi))
        avoid = [np.array(c) for c in bands[band]['colours']]  # both: the kind may swap
        scene['objects'].append(dict(
            band=band, shape=shape,
            polygon=[(round(x, 2), round(y, 2)) for x, y in polygon],
            colour=random_colour(rng, avoid=avoid, min_distance=90.0).tolist()))
    scene['noise_seed'] = int(rng.integers(2**31))
    return scene


def object_label(scene: dict, obj: dict) -> int:
    """Index in :data:`CLASSES` of ``obj``: the kind of the band it lies on."""
    return BAND_KINDS.index(scene['bands'][obj['band']]['kind'])


def render(scene: dict, image_size: int) -> Tuple[np.ndarray, List[np.ndarray]]:
    """The (H, W, 3) uint8 RGB image of ``scene`` and the (H, W) bool mask of each object."""
    size = image_size
    stripes = hatching(size, size, scene['period'], scene['direction'])
    image = np.empty((size, size, 3))
    for band in scene['bands']:
        span = slice(band['start'], band['end'])
        region = (slice(None), span) if scene['vertical'] else (span, slice(None))
        first, second = (np.array(c) for c in band['colours'])
        if band['kind'] == 'hatched':
            image[region] = np.where(stripes[region][..., None], first, second)
        else:
            image[region] = first
    masks = [polygon_mask(size, size, obj['polygon']) for obj in scene['objects']]
    for obj, mask in zip(scene['objects'], masks):
        image[mask] = obj['colour']
    return finish(image, np.random.default_rng(scene['noise_seed']), NOISE), masks
