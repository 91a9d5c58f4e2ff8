"""Generate a synthetic data set once: same arguments, same files; a manifest makes reruns free.

``generate_dataset`` writes ``manifest.json`` into the output folder, first marked incomplete
and completed after the last file. A later call whose arguments equal the manifest's, on a
complete data set whose files are all present, writes nothing. Other arguments, or an
incomplete or damaged data set, replace the folders the generator owns; folders of the same
names not written by it are never deleted.
"""
import copy
import json
import os
import shutil
from typing import Optional

from . import classification, detection, segmentation
from .drawing import SPLITS

# Each task module defines CLASSES, METAINFO, DEFAULT_IMAGE_SIZE, MIN_IMAGE_SIZE, MIN_IMAGES
# (per split), ENTRIES (the top-level folders it writes), COUNTED, split_kwargs(split) and
# write_split(root, split, num_images, image_size, seed) -> counts.
TASKS = dict(classification=classification, detection=detection, segmentation=segmentation)
MANIFEST = 'manifest.json'
# Raise when a change of the drawing code changes the files of the same arguments.
FORMAT_VERSION = 3


def generate_dataset(task: str,
                     out_dir: str,
                     num_train: int = 200,
                     num_val: int = 50,
                     image_size: Optional[int] = None,
                     seed: int = 0) -> dict:
    """Write a synthetic data set of ``task`` to ``out_dir`` (or find it already there).

    Args:
        task: ``'classification'``, ``'detection'`` or ``'segmentation'``.
        out_dir: Root of the data set (``data_root`` of the upstream dataset).
        num_train: Number of training images.
        num_val: Number of validation images.
        image_size: Side of the square images; default 32 for classification, 128 otherwise.
        seed: Seed of every random choice: the same seed writes byte-identical files.

    Returns:
        dict: ``task``, ``data_root`` (absolute), ``classes``, ``metainfo`` (for the dataset's
        ``metainfo=``), ``train`` and ``val`` (the upstream dataset's arguments that read the
        split, relative to ``data_root``), ``num_train``, ``num_val``, ``image_size``,
        ``seed``, ``counts`` (per split and class, the number of ``counted``: images,
        objects or pixels), ``counted``, ``manifest`` (its path) and ``written`` (False
        when nothing was written).
    """
    if task not in TASKS:
        raise ValueError(f'generate_dataset: task must be one of {tuple(TASKS)}, got {task!r}')
    module = TASKS[task]
    image_size = module.DEFAULT_IMAGE_SIZE if image_size is None else image_size
    settings = dict(task=task, num_train=num_train, num_val=num_val, image_size=image_size,
                    seed=seed, format_version=FORMAT_VERSION)
    _check(module, settings)
    root = os.path.abspath(out_dir)
    manifest_path = os.path.join(root, MANIFEST)
    old = _read_manifest(manifest_path)
    if old is not None and old['settings'] == settings and _complete(root, old):
        return _describe(root, settings, old['counts'], written=False)
    owned = TASKS[old['settings']['task']].ENTRIES if old else ()
    foreign = [e for e in module.ENTRIES
               if e not in owned and os.path.exists(os.path.join(root, e))]
    if foreign:
        raise FileExistsError(
            f'generate_dataset: {root} already holds {foreign}, not written by this '
            f'generator (no {MANIFEST} names them); choose another out_dir or remove them')
    for entry in owned:
        shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
    os.makedirs(root, exist_ok=True)
    _write_manifest(manifest_path, dict(settings=settings, complete=False))
    counts = {split: module.write_split(root, split, settings[f'num_{split}'], image_size, seed)
              for split in SPLITS}
    _write_manifest(manifest_path, dict(settings=settings, complete=True, counts=counts,
                                        num_files=_count_files(root, module.ENTRIES)))
    return _describe(root, settings, counts, written=True)


def _check(module, settings: dict) -> None:
    """Raise a ValueError for arguments the generator cannot honour."""
    task = settings['task']
    for name in ('num_train', 'num_val', 'image_size', 'seed'):
        value = settings[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f'generate_dataset({task!r}): {name} must be a non-negative '
                             f'int, got {value!r}')
    for name, minimum in (('num_train', module.MIN_IMAGES), ('num_val', module.MIN_IMAGES),
                          ('image_size', module.MIN_IMAGE_SIZE)):
        if settings[name] < minimum:
            raise ValueError(f'generate_dataset({task!r}): {name} must be at least {minimum}, '
                             f'got {settings[name]}')


def _read_manifest(path: str) -> Optional[dict]:
    """The manifest at ``path``, or None when there is none or it is not this generator's."""
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get('settings', {}).get('task') not in TASKS:
        return None
    return manifest


def _write_manifest(path: str, manifest: dict) -> None:
    with open(path, 'w') as f:
        json.dump(manifest, f, indent=2)
        f.write('\n')


def _count_files(root: str, entries) -> int:
    return sum(len(files) for entry in entries
               for _, _, files in os.walk(os.path.join(root, entry)))


def _complete(root: str, manifest: dict) -> bool:
    """Whether the data set of ``manifest`` was finished and still has all its files."""
    entries = TASKS[manifest['settings']['task']].ENTRIES
    return (manifest.get('complete') is True
            and _count_files(root, entries) == manifest.get('num_files'))


def _describe(root: str, settings: dict, counts: dict, written: bool) -> dict:
    module = TASKS[settings['task']]
    return dict(
        task=settings['task'],
        data_root=root,
        classes=module.CLASSES,
        metainfo=copy.deepcopy(module.METAINFO),
        **{split: module.split_kwargs(split) for split in SPLITS},
        num_train=settings['num_train'],
        num_val=settings['num_val'],
        image_size=settings['image_size'],
        seed=settings['seed'],
        counts=counts,
        counted=module.COUNTED,
        manifest=os.path.join(root, MANIFEST),
        written=written)
