"""Classification images whose class needs a cue away from the object.

Each image shows one large central object, a disc or a triangle (of equal areas on average) of
a random colour and rotation on a random gradient, and a small marker in a random corner. The
shape alone leaves two classes, and only the marker's colour (red or blue) tells them apart:
``disc_blue_marker``, ``disc_red_marker``, ``triangle_blue_marker``, ``triangle_red_marker``.
Object and background colours keep away from the marker colours, and the marker's corner
varies, so no single pixel decides the class.

Written as mmpretrain's ``CustomDataset`` folder layout: ``<split>/<class_name>/<index>.png``.
"""
import os
from typing import Dict

import numpy as np

from .drawing import finish, polygon_mask, random_colour, save_png, shape_polygon, split_rng

SHAPES = ('disc', 'triangle')
MARKERS = dict(blue=(40.0, 90.0, 230.0), red=(230.0, 50.0, 40.0))
# Sorted, as mmpretrain's CustomDataset numbers the class folders in sorted order.
CLASSES = tuple(f'{shape}_{marker}_marker' for shape in SHAPES for marker in sorted(MARKERS))
METAINFO = dict(classes=CLASSES)
DEFAULT_IMAGE_SIZE = 64
# CustomDataset fails on an empty class folder: one image per class at least.
MIN_IMAGES = len(CLASSES)
MIN_IMAGE_SIZE = 32
ENTRIES = ('train', 'val')
COUNTED = 'images'  # what write_split counts per class
NOISE = 6.0


def split_kwargs(split: str) -> dict:
    """Arguments of mmpretrain's ``CustomDataset`` that read ``split``."""
    return dict(data_prefix=split, with_label=True)


def scene_label(scene: dict) -> int:
    """Index in :data:`CLASSES` of the class of ``scene``."""
    return CLASSES.index(f'{scene["shape"]}_{scene["marker"]}_marker')


def sample_scene(rng: np.random.Generator, label: int, image_size: int) -> dict:
    """Draw the random content of one image of class ``CLASSES[label]``.

    Args:
        rng: The image's random generator.
        label: Index in :data:`CLASSES`.
        image_size: Side of the square image, in pixels.

    Returns:
        dict: Everything :func:`render` needs; swapping ``marker`` changes the class only.
    """
    shape, marker = CLASSES[label].split('_')[:2]
    size = image_size
    markers = [np.array(c) for c in MARKERS.values()]
    background = [random_colour(rng, avoid=markers, min_distance=90.0) for _ in range(2)]
    colour = random_colour(rng, avoid=background + markers, min_distance=90.0)
    # Equal-area size ranges: the circumscribed diameter of a triangle is
    # sqrt(4 pi / (3 sqrt(3))) times the diameter of a disc of the same area.
    scale = np.sqrt(4 * np.pi / (3 * np.sqrt(3))) if shape == 'triangle' else 1.0
    diameter = rng.uniform(0.30, 0.42) * size * scale
    return dict(
        shape=shape,
        marker=marker,
        background=[c.tolist() for c in background],
        gradient_angle=float(rng.uniform(0, 2 * np.pi)),
        colour=colour.tolist(),
        center=(rng.uniform(0.44, 0.56, size=2) * size).tolist(),
        diameter=float(diameter),
        angle=float(rng.uniform(0, 2 * np.pi)),
        corner=int(rng.integers(4)),
        marker_size=float(rng.uniform(0.14, 0.19) * size),
        marker_jitter=rng.normal(0.0, 12.0, size=3).tolist(),
        noise_seed=int(rng.integers(2**31)))


def marker_box(scene: dict, image_size: int) -> tuple:
    """``(x0, y0, x1, y1)`` of the marker: a square inset from its corner."""
    inset = round(0.03 * image_size)
    side = round(scene['marker_size'])
    x0 = inset if scene['corner'] in (0, 3) else image_size - inset - side
    y0 = inset if scene['corner'] in (0, 1) else image_size - inset - side
    return x0, y0, x0 + side, y0 + side


def render(scene: dict, image_size: int) -> np.ndarray:
    """The (H, W, 3) uint8 RGB image of ``scene``."""
    size = image_size
    y, x = np.mgrid[:size, :size] / max(size - 1, 1)
    direction = np.cos(scene['gradient_angle']) * x + np.sin(scene['gradient_angle']) * y
    t = (direction - direction.min()) / (direction.max() - direction.min())
    start, end = (np.array(c) for c in scene['background'])
    image = start * (1 - t[..., None]) + end * t[..., None]
    polygon = shape_polygon(scene['shape'], scene['center'], scene['diameter'], scene['angle'])
    image[polygon_mask(size, size, polygon)] = scene['colour']
    x0, y0, x1, y1 = marker_box(scene, size)
    image[y0:y1, x0:x1] = np.array(MARKERS[scene['marker']]) + scene['marker_jitter']
    return finish(image, np.random.default_rng(scene['noise_seed']), NOISE)


def write_split(root: str, split: str, num_images: int, image_size: int,
                seed: int) -> Dict[str, int]:
    """Write ``num_images`` (at least :data:`MIN_IMAGES`) images of ``split`` under ``root``,
    every class equally often.

    Returns:
        dict: Number of images written per class.
    """
    labels = split_rng(seed, split, 2).permutation(np.arange(num_images) % len(CLASSES))
    for index, label in enumerate(labels):
        scene = sample_scene(split_rng(seed, split, 1, index), int(label), image_size)
        save_png(render(scene, image_size),
                 os.path.join(root, split, CLASSES[label], f'{index:06d}.png'))
    return {name: int((labels == k).sum()) for k, name in enumerate(CLASSES)}
