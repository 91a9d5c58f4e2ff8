"""Attention maps of a built model on image files: read, preprocess, capture, draw."""
import os
import os.path as osp
from typing import Callable, List, Optional, Sequence

import mmcv
import numpy as np
import torch
import torch.nn as nn

from ..attention.base import AttentionModule
from .capture import capture_attention_maps
from .draw import draw_attention_maps, evenly_spaced

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


def find_images(image_dir: str, num_images: int) -> List[str]:
    """Up to ``num_images`` image files under ``image_dir`` (recursive), spread evenly over
    the sorted list (so over its sub-folders, e.g. classes)."""
    paths = sorted(osp.join(root, name) for root, _, names in os.walk(image_dir)
                   for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise FileNotFoundError(f'no image file ({", ".join(IMAGE_EXTENSIONS)}) under '
                                f'{image_dir}')
    return evenly_spaced(paths, num_images)


def read_image(path: str) -> np.ndarray:
    """The image at ``path`` as BGR uint8 (H, W, 3), as the OpenMMLab loaders read it."""
    return mmcv.imread(path, flag='color', channel_order='bgr')


def preprocess(model: nn.Module, image_bgr: np.ndarray) -> torch.Tensor:
    """The network input (1, 3, H', W') of one BGR image: the model's ``data_preprocessor``
    (normalisation, BGR -> RGB, padding, as in testing); float pixels without one."""
    tensor = torch.from_numpy(np.ascontiguousarray(image_bgr.transpose(2, 0, 1)))
    preprocessor = getattr(model, 'data_preprocessor', None)
    if preprocessor is None:
        return tensor[None].float()
    return preprocessor(dict(inputs=[tensor]), False)['inputs']


def feature_forward(model: nn.Module) -> Callable:
    """What to run for the maps: ``extract_feat`` (backbone and neck of mmpretrain, mmdet
    and mmseg models), else the ``backbone``, else the model itself."""
    if hasattr(model, 'extract_feat'):
        return model.extract_feat
    return getattr(model, 'backbone', model)


def output_name(index: int, image_path: str) -> str:
    """The PNG name of the ``index``-th image: ``'003_<folder>_<stem>.png'``."""
    folder = osp.basename(osp.dirname(osp.abspath(image_path)))
    stem = osp.splitext(osp.basename(image_path))[0]
    return f'{index:03d}_{folder}_{stem}.png'


def visualize_config_model(model: nn.Module,
                           image_paths: Sequence[str],
                           out_dir: str,
                           max_sites: int = 6,
                           *,
                           sites: Optional[str] = None) -> List[str]:
    """Draw the attention maps of ``model`` on each image into ``out_dir``, one PNG each.

    Each image is read, passed through the model's data preprocessor and its feature
    extractor (:func:`feature_forward`) in eval mode; the maps of every attention module
    are drawn by :func:`draw_attention_maps`.

    Args:
        model: A built model (e.g. an mmpretrain ImageClassifier whose backbone is an
            ``InsertAttention``), with its weights.
        image_paths: Image files.
        out_dir: Output folder (created).
        max_sites: Most attention modules drawn per image, spread evenly over depth.
        sites: fnmatch pattern selecting modules by path or label (``'*layer4*'``).

    Returns:
        list[str]: The written PNG paths, in the order of ``image_paths``.
    """
    if not any(isinstance(m, AttentionModule) for m in model.modules()):
        raise ValueError(f'{type(model).__name__} holds no attention module of cvattn_mm')
    os.makedirs(out_dir, exist_ok=True)
    forward = feature_forward(model)
    written = []
    for index, path in enumerate(image_paths):
        image = read_image(path)
        inputs = preprocess(model, image)
        captured = capture_attention_maps(model, inputs, forward)
        out_file = osp.join(out_dir, output_name(index, path))
        draw_attention_maps(np.ascontiguousarray(image[..., ::-1]), captured, out_file,
                            max_sites, input_hw=inputs.shape[-2:], pattern=sites)
        written.append(out_file)
    return written
