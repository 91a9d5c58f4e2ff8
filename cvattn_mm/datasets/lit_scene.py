"""Scenes under a coloured light: an object's class is its paint, which the whole scene tells.

Every image is lit by one random coloured light, a gain per RGB channel (a white-balance
error): a pixel is ``255 * EXPOSURE * reflectance * gain``. The background is a mosaic of
rectangles of random reflectances whose expected value is the same grey in every channel, so
the scene's average colour is the light's colour. Each object (a disc, square or triangle with
a dark outline) is painted either reddish (its red reflectance above its green one by a factor
between ``exp(PAINT_CONTRAST[0])`` and ``exp(PAINT_CONTRAST[1])``) or greenish (the converse),
and its class is that paint. The light's red/green ratio spans a range comparable to the
paints' contrast, so an object's observed colour alone is ambiguous (a greenish object under a
reddish light can look reddish): the observed colour's sign of ln(red / green) gives the
class of about 90 % of the objects, the same colour divided by the scene's average background
colour 99.8 %, divided by the average of the background within 2 (8) pixels of the object
94 % (96.5 %).

Shared by the detection (COCO boxes and polygons) and segmentation (class-id masks) data sets.
"""
from typing import List, Tuple

import numpy as np

from .drawing import SHAPES, finish, polygon_mask, shape_polygon

PAINTS = ('reddish', 'greenish')
CLASSES = tuple(f'{paint}_object' for paint in PAINTS)
PALETTE = [(220, 60, 60), (60, 190, 80)]
MIN_IMAGE_SIZE = 48
NOISE = 4.0
#: The light's ln(gain) per channel is uniform in [-x, x], then centred (gains of product 1:
#: the light changes the colour, not the brightness).
LIGHT_RANGE = 0.7
#: Pixel value of reflectance 1 under a white light, over 255 (the mean pixel is about 80;
#: a strong light overexposes a few bright pixels in its colour, under 2 % of the values).
EXPOSURE = 1.7
#: Range of |ln(red / green reflectance)| of a paint.
PAINT_CONTRAST = (0.5, 1.2)
#: Range of every channel of the background cells' reflectances (mean 0.175 per channel).
BACKGROUND_REFLECTANCE = (0.05, 0.3)
#: Range of an object's brightness (geometric mean of its red and green reflectances).
OBJECT_BRIGHTNESS = (0.08, 0.18)
MIN_OBJECTS, MAX_OBJECTS = 2, 4
#: Every object has a dark outline of this width (pixels) and reflectance: whatever the
#: light, finding the objects is easy; telling their class is the task.
OUTLINE_WIDTH = 1
OUTLINE_REFLECTANCE = 0.03
#: Mean side of a background cell, as a fraction of the image side.
CELL_FRACTION = 1 / 4


def _interior(mask: np.ndarray, width: int) -> np.ndarray:
    """The pixels of ``mask`` more than ``width`` 4-neighbour steps from its outside."""
    inside = mask.copy()
    for _ in range(width):
        padded = np.pad(inside, 1)
        inside = (inside & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2]
                  & padded[1:-1, 2:])
    return inside


def _cuts(rng: np.random.Generator, image_size: int) -> List[int]:
    """Edges ``[0, e1, ..., image_size]`` of the background cells along one axis."""
    num_cells = max(2, round(1 / CELL_FRACTION))
    inner = np.sort(rng.uniform(0, image_size, size=num_cells - 1))
    return [0, *(int(round(e)) for e in inner), image_size]


def _paint(rng: np.random.Generator, paint: int) -> List[float]:
    """RGB reflectance of an object painted ``PAINTS[paint]``."""
    contrast = rng.uniform(*PAINT_CONTRAST) * (1 if paint == 0 else -1)
    brightness = rng.uniform(*OBJECT_BRIGHTNESS)
    blue = rng.uniform(*BACKGROUND_REFLECTANCE)
    return [brightness * np.exp(contrast / 2), brightness * np.exp(-contrast / 2), blue]


def sample_scene(rng: np.random.Generator, image_size: int) -> dict:
    """Draw the random content of one image.

    Args:
        rng: The image's random generator.
        image_size: Side of the square image, in pixels (at least :data:`MIN_IMAGE_SIZE`).

    Returns:
        dict: ``light`` (the RGB gains), ``rows`` and ``columns`` (cell edges),
        ``cells`` (an RGB reflectance per cell, rows x columns), ``objects`` (each with
        ``paint``, ``shape``, ``polygon`` as (x, y) points, ``reflectance``) and
        ``noise_seed``.
    """
    size = image_size
    log_gains = rng.uniform(-LIGHT_RANGE, LIGHT_RANGE, size=3)
    light = np.exp(log_gains - log_gains.mean())
    rows, columns = _cuts(rng, size), _cuts(rng, size)
    cells = rng.uniform(*BACKGROUND_REFLECTANCE, size=(len(rows) - 1, len(columns) - 1, 3))
    scene = dict(light=light.tolist(), rows=rows, columns=columns, cells=cells.tolist(),
                 objects=[])
    min_object, max_object = 0.2 * size, 0.34 * size
    boxes = []
    num_objects = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    for _ in range(20 * num_objects):
        if len(boxes) == num_objects:
            break
        diameter = rng.uniform(min_object, max_object)
        half = diameter / 2 + 1
        center = tuple(rng.uniform(half, size - half, size=2))
        box = (center[0] - half, center[1] - half, center[0] + half, center[1] + half)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
               for b in boxes):
            continue
        boxes.append(box)
        paint = int(rng.integers(len(PAINTS)))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        polygon = shape_polygon(shape, center, diameter, rng.uniform(0, 2 * np.pi))
        scene['objects'].append(dict(
            paint=paint, shape=shape,
            polygon=[(round(x, 2), round(y, 2)) for x, y in polygon],
            reflectance=_paint(rng, paint)))
    scene['noise_seed'] = int(rng.integers(2**31))
    return scene


def object_label(scene: dict, obj: dict) -> int:
    """Index in :data:`CLASSES` of ``obj``: its paint."""
    return obj['paint']


def render(scene: dict, image_size: int) -> Tuple[np.ndarray, List[np.ndarray]]:
    """The (H, W, 3) uint8 RGB image of ``scene`` and the (H, W) bool mask of each object."""
    size = image_size
    reflectance = np.empty((size, size, 3))
    rows, columns = scene['rows'], scene['columns']
    for i, (top, bottom) in enumerate(zip(rows[:-1], rows[1:])):
        for j, (left, right) in enumerate(zip(columns[:-1], columns[1:])):
            reflectance[top:bottom, left:right] = scene['cells'][i][j]
    masks = [polygon_mask(size, size, obj['polygon']) for obj in scene['objects']]
    for obj, mask in zip(scene['objects'], masks):
        reflectance[mask] = OUTLINE_REFLECTANCE
        reflectance[_interior(mask, OUTLINE_WIDTH)] = obj['reflectance']
    image = 255.0 * EXPOSURE * reflectance * np.asarray(scene['light'])
    return finish(image, np.random.default_rng(scene['noise_seed']), NOISE), masks
