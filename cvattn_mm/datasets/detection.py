"""Detection images in COCO format: objects whose category is their paint under the scene's light.

The scenes are those of :mod:`.lit_scene`. Written for mmdet's ``CocoDataset``:
``<split>/<index>.png`` and ``annotations/<split>.json`` with, per object, a tight ``bbox``
``[x, y, w, h]`` of its pixels, its ``area`` in pixels, ``iscrowd=0`` and its polygon as
``segmentation`` (so instance segmentation models can train on it too).
"""
import json
import os
from typing import Dict

from .drawing import mask_box, save_png, split_rng
from .lit_scene import CLASSES, PALETTE, object_label, render, sample_scene
from .lit_scene import MIN_IMAGE_SIZE as MIN_IMAGE_SIZE  # re-exported: the task interface

METAINFO = dict(classes=CLASSES, palette=PALETTE)
DEFAULT_IMAGE_SIZE = 128
MIN_IMAGES = 1
ENTRIES = ('train', 'val', 'annotations')
COUNTED = 'objects'  # what write_split counts per class


def split_kwargs(split: str) -> dict:
    """Arguments of mmdet's ``CocoDataset`` that read ``split``."""
    return dict(ann_file=f'annotations/{split}.json', data_prefix=dict(img=f'{split}/'))


def write_split(root: str, split: str, num_images: int, image_size: int,
                seed: int) -> Dict[str, int]:
    """Write ``num_images`` images of ``split`` and their COCO annotation file under ``root``.

    Returns:
        dict: Number of objects written per category.
    """
    images, annotations = [], []
    for index in range(num_images):
        scene = sample_scene(split_rng(seed, split, 1, index), image_size)
        image, masks = render(scene, image_size)
        file_name = f'{index:06d}.png'
        save_png(image, os.path.join(root, split, file_name))
        images.append(dict(id=index + 1, file_name=file_name, width=image_size,
                           height=image_size))
        for obj, mask in zip(scene['objects'], masks):
            annotations.append(dict(
                id=len(annotations) + 1,
                image_id=index + 1,
                category_id=object_label(scene, obj) + 1,
                bbox=list(mask_box(mask)),
                area=int(mask.sum()),
                iscrowd=0,
                segmentation=[[v for point in obj['polygon'] for v in point]]))
    categories = [dict(id=k + 1, name=name) for k, name in enumerate(CLASSES)]
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    with open(os.path.join(root, 'annotations', f'{split}.json'), 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    return {name: sum(a['category_id'] == k + 1 for a in annotations)
            for k, name in enumerate(CLASSES)}
