"""The quickstart's data sets: their sizes, and their generation when they are missing."""
import os.path as osp
from typing import Optional

from .generate import generate_dataset

#: Size of each task's quickstart data set (configs/quickstart/ train on these).
QUICKSTART_DATA = {
    'classification': dict(num_train=6000, num_val=1500, image_size=32),
    'detection': dict(num_train=400, num_val=100, image_size=64),
    'segmentation': dict(num_train=400, num_val=100, image_size=64),
}
#: Folder of the quickstart's data sets, relative to the repository (the configs'
#: ``data_root`` is ``<QUICKSTART_ROOT>/<task>``).
QUICKSTART_ROOT = osp.join('data', 'quickstart')
#: The task of each default scope.
SCOPE_TASKS = dict(mmpretrain='classification', mmdet='detection', mmseg='segmentation')


def ensure_quickstart_data(task: str, data_root: Optional[str] = None, seed: int = 0,
                           **sizes) -> dict:
    """Generate ``task``'s quickstart data set into ``data_root`` unless it is there already.

    Args:
        task: A key of :data:`QUICKSTART_DATA`.
        data_root: The data set's folder; default ``<QUICKSTART_ROOT>/<task>``, where
            configs/quickstart/ read it (relative to the working directory).
        seed: The generator's seed.
        sizes: Overrides of ``num_train``, ``num_val`` or ``image_size``.

    Returns:
        dict: What :func:`generate_dataset` returns (``written`` is False when nothing was
        written).
    """
    if task not in QUICKSTART_DATA:
        raise ValueError(f'ensure_quickstart_data: task must be one of '
                         f'{tuple(QUICKSTART_DATA)}, got {task!r}')
    data_root = osp.join(QUICKSTART_ROOT, task) if data_root is None else data_root
    return generate_dataset(task, osp.abspath(data_root), seed=seed,
                            **{**QUICKSTART_DATA[task], **sizes})
