"""Classification images whose class is an object's colour under an unknown coloured light.

Each image shows a central object (a disc, a square or a triangle of random size and rotation)
and around it confetti: small squares in a grid of 8 x 8 cells outside a central clearing, on
black. Every surface has a reflectance per RGB channel: the confetti's are random (each channel
uniform in :data:`CONFETTI_REFLECTANCE`, so that their average is grey), the object's is grey
plus a boost in one channel, and that channel is the class: ``bluish``, ``greenish`` or
``reddish``. The scene is lit by a light of a random colour: every pixel is
``reflectance * light * GAIN`` per channel, the light's gain per channel log-uniform within
:data:`LIGHT_RANGE`.

The light changes the object's observed colour by more than the class does (a reddish object
under a blue-green light looks blue-green), so the object alone does not tell the class: the
light must be estimated from the rest of the scene, whose average colour is the light's colour
(the "grey world"), and the object's colour divided by it. Nothing neutral touches the object
(the clearing is black), and a few confetti cells estimate the light poorly: the estimate is
a statistic of the whole image. Dividing every position's features by a global per-channel
statistic is what a multiplicative channel gate computed from global pooling (SE, the channel
branch of CBAM) can do directly; a plain network has to build the division from ReLUs, once
the light and the object meet in one unit.

Written as mmpretrain's ``CustomDataset`` folder layout: ``<split>/<class_name>/<index>.png``.
"""
import os
from typing import Dict

import numpy as np

from .drawing import finish, polygon_mask, save_png, shape_polygon, split_rng

SHAPES = ('disc', 'square', 'triangle')
#: The class is the channel of the object's reflectance boost (sorted, as mmpretrain's
#: CustomDataset numbers the class folders in sorted order).
CLASSES = ('bluish', 'greenish', 'reddish')
CHANNELS = dict(reddish=0, greenish=1, bluish=2)
METAINFO = dict(classes=CLASSES)
DEFAULT_IMAGE_SIZE = 32
#: The confetti grid's cells per side.
GRID = 8
#: Range of each channel of a confetti cell's reflectance.
CONFETTI_REFLECTANCE = (0.15, 0.95)
#: Range of the object's grey reflectance and of its boost in the class channel.
OBJECT_GREY = (0.3, 0.5)
OBJECT_BOOST = (0.06, 0.12)
#: Range of the light's gain per channel (log-uniform).
LIGHT_RANGE = (1 / 2.5, 2.5)
#: Pixel value of reflectance 1 under a light of gain 1.
GAIN = 105.0
#: Radius of the central clearing (no confetti), relative to the image size.
CLEARING = 0.25
BLACK_REFLECTANCE = 0.04
# CustomDataset fails on an empty class folder: one image per class at least.
MIN_IMAGES = len(CLASSES)
MIN_IMAGE_SIZE = 2 * GRID
ENTRIES = ('train', 'val')
COUNTED = 'images'  # what write_split counts per class
NOISE = 3.0


def split_kwargs(split: str) -> dict:
    """Arguments of mmpretrain's ``CustomDataset`` that read ``split``."""
    return dict(data_prefix=split, with_label=True)


def confetti_cells(image_size: int) -> np.ndarray:
    """``(row, column)`` of the grid cells wholly outside the central clearing, shape (N, 2)."""
    edges = np.arange(GRID + 1) * image_size / GRID - image_size / 2
    # per row (column): the distance of the cell's nearest point to the centre, along y (x)
    nearest = np.maximum(0, np.maximum(edges[:-1], -edges[1:]))
    rows, cols = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing='ij')
    outside = np.hypot(nearest[rows], nearest[cols]) >= CLEARING * image_size
    return np.stack([rows[outside], cols[outside]], axis=1)


def sample_scene(rng: np.random.Generator, label: int, image_size: int) -> dict:
    """Draw the random content of one image of class ``CLASSES[label]``.

    Args:
        rng: The image's random generator.
        label: Index in :data:`CLASSES`.
        image_size: Side of the square image, in pixels.

    Returns:
        dict: Everything :func:`render` needs: the light, the confetti's reflectances, the
        object's reflectance, shape and placement.
    """
    size = image_size
    cells = confetti_cells(size)
    reflectance = np.full(3, rng.uniform(*OBJECT_GREY))
    reflectance[CHANNELS[CLASSES[label]]] += rng.uniform(*OBJECT_BOOST)
    low, high = np.log(LIGHT_RANGE)
    return dict(
        light=np.exp(rng.uniform(low, high, size=3)).tolist(),
        cells=cells.tolist(),
        cell_reflectances=rng.uniform(*CONFETTI_REFLECTANCE, size=(len(cells), 3)).tolist(),
        reflectance=reflectance.tolist(),
        shape=SHAPES[int(rng.integers(len(SHAPES)))],
        center=(size / 2 + rng.uniform(-0.04, 0.04, size=2) * size).tolist(),
        diameter=float(rng.uniform(0.28, 0.36) * size),
        angle=float(rng.uniform(0, 2 * np.pi)),
        noise_seed=int(rng.integers(2**31)))


def scene_label(scene: dict) -> int:
    """Index in :data:`CLASSES` of the class of ``scene``: its object's boosted channel."""
    channel = int(np.argmax(scene['reflectance']))
    return CLASSES.index(next(k for k, v in CHANNELS.items() if v == channel))


def reflectance_map(scene: dict, image_size: int) -> np.ndarray:
    """The (H, W, 3) reflectance of every pixel of ``scene`` (before the light)."""
    size = image_size
    reflectance = np.full((size, size, 3), BLACK_REFLECTANCE)
    edges = np.round(np.arange(GRID + 1) * size / GRID).astype(int)
    for (row, col), cell in zip(scene['cells'], scene['cell_reflectances']):
        # one black pixel between neighbouring squares
        reflectance[edges[row]:edges[row + 1] - 1, edges[col]:edges[col + 1] - 1] = cell
    polygon = shape_polygon(scene['shape'], scene['center'], scene['diameter'], scene['angle'])
    reflectance[polygon_mask(size, size, polygon)] = scene['reflectance']
    return reflectance


def render(scene: dict, image_size: int) -> np.ndarray:
    """The (H, W, 3) uint8 RGB image of ``scene``: reflectance times light, plus noise."""
    image = reflectance_map(scene, image_size) * np.array(scene['light']) * GAIN
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
