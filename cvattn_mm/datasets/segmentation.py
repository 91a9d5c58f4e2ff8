"""Segmentation images with class-id masks: objects whose class is their paint under the light.

The scenes are those of :mod:`.lit_scene`. Written for mmseg's ``BaseSegDataset``:
``img_dir/<split>/<index>.png`` (RGB) and ``ann_dir/<split>/<index>.png`` (single-channel
uint8, 0 for the background and ``k + 1`` for the pixels of an object of ``CLASSES[k]``).
"""
import os
from typing import Dict

import numpy as np

from .drawing import save_png, split_rng
from .lit_scene import CLASSES as OBJECT_CLASSES
from .lit_scene import MIN_IMAGE_SIZE as MIN_IMAGE_SIZE  # re-exported: the task interface
from .lit_scene import PALETTE as OBJECT_PALETTE
from .lit_scene import object_label, render, sample_scene

CLASSES = ('background', *OBJECT_CLASSES)
METAINFO = dict(classes=CLASSES, palette=[(0, 0, 0), *OBJECT_PALETTE])
DEFAULT_IMAGE_SIZE = 128
MIN_IMAGES = 1
ENTRIES = ('img_dir', 'ann_dir')
COUNTED = 'pixels'  # what write_split counts per class


def split_kwargs(split: str) -> dict:
    """Arguments of mmseg's ``BaseSegDataset`` that read ``split``."""
    return dict(data_prefix=dict(img_path=f'img_dir/{split}', seg_map_path=f'ann_dir/{split}'),
                img_suffix='.png', seg_map_suffix='.png', reduce_zero_label=False)


def scene_mask(scene: dict, masks: list, image_size: int) -> np.ndarray:
    """The (H, W) uint8 class-id map of a scene, given the bool mask of each object."""
    label_map = np.zeros((image_size, image_size), dtype=np.uint8)
    for obj, mask in zip(scene['objects'], masks):
        label_map[mask] = object_label(scene, obj) + 1
    return label_map


def write_split(root: str, split: str, num_images: int, image_size: int,
                seed: int) -> Dict[str, int]:
    """Write ``num_images`` images of ``split`` and their masks under ``root``.

    Returns:
        dict: Number of pixels written per class.
    """
    counts = np.zeros(len(CLASSES), dtype=np.int64)
    for index in range(num_images):
        scene = sample_scene(split_rng(seed, split, 1, index), image_size)
        image, masks = render(scene, image_size)
        label_map = scene_mask(scene, masks, image_size)
        save_png(image, os.path.join(root, 'img_dir', split, f'{index:06d}.png'))
        save_png(label_map, os.path.join(root, 'ann_dir', split, f'{index:06d}.png'))
        counts += np.bincount(label_map.ravel(), minlength=len(CLASSES))
    return {name: int(n) for name, n in zip(CLASSES, counts)}
