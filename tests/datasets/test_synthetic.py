"""The synthetic data sets: determinism, reruns, upstream formats, context.

See docs/architecture.md, "Embedded data and the quickstart".
"""
import json
import os

import numpy as np
import pytest
from mmengine.registry import DefaultScope

from cvattn_mm.datasets import classification, generate_dataset, lit_scene
from cvattn_mm.datasets.drawing import split_rng

# Small sizes keep every test fast.
SMALL = dict(classification=dict(num_train=8, num_val=4, image_size=32),
             detection=dict(num_train=4, num_val=2, image_size=64),
             segmentation=dict(num_train=4, num_val=2, image_size=64))
TASKS = tuple(SMALL)


def files_of(root):
    """``{relative path: bytes}`` of every file under ``root``."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, 'rb') as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


def mtimes(root):
    return {path: os.stat(os.path.join(root, path)).st_mtime_ns for path in files_of(root)}


@pytest.mark.parametrize('task', TASKS)
def test_same_seed_same_bytes_other_seed_other_images(task, tmp_path):
    first = generate_dataset(task, tmp_path / 'a', seed=3, **SMALL[task])
    again = generate_dataset(task, tmp_path / 'b', seed=3, **SMALL[task])
    other = generate_dataset(task, tmp_path / 'c', seed=4, **SMALL[task])
    a, b, c = (files_of(info['data_root']) for info in (first, again, other))
    assert a == b
    images = [p for p in a if p.endswith('.png')]
    assert len(images) == (SMALL[task]['num_train'] + SMALL[task]['num_val']) * (
        2 if task == 'segmentation' else 1)
    # Another seed changes every image (classification's class folders may differ too).
    assert sum(a[p] == c.get(p) for p in images) == 0


def test_rerun_is_a_no_op_and_other_arguments_regenerate(tmp_path):
    root = tmp_path / 'data'
    info = generate_dataset('classification', root, **SMALL['classification'])
    assert info['written']
    before = mtimes(root)
    rerun = generate_dataset('classification', root, **SMALL['classification'])
    assert not rerun['written']
    assert mtimes(root) == before
    assert {k: v for k, v in rerun.items() if k != 'written'} == \
        {k: v for k, v in info.items() if k != 'written'}

    # Fewer images: regenerated, and no image of the larger set is left behind.
    smaller = dict(SMALL['classification'], num_train=4)
    assert generate_dataset('classification', root, **smaller)['written']
    assert sum(p.startswith('train') for p in files_of(root)) == 4
    assert not generate_dataset('classification', root, **smaller)['written']

    # A missing file or an unfinished run is repaired.
    os.remove(next(os.path.join(root, p) for p in files_of(root) if p.startswith('val')))
    assert generate_dataset('classification', root, **smaller)['written']
    manifest = root / 'manifest.json'
    manifest.write_text(json.dumps(dict(json.loads(manifest.read_text()), complete=False)))
    assert generate_dataset('classification', root, **smaller)['written']
    assert not generate_dataset('classification', root, **smaller)['written']

    # Another task in the same folder replaces the data set of this generator.
    detection = generate_dataset('detection', root, **SMALL['detection'])
    assert detection['written']
    assert sorted(os.listdir(root)) == ['annotations', 'manifest.json', 'train', 'val']
    assert all(name.endswith('.png') for name in os.listdir(root / 'train'))


def test_folders_not_written_by_the_generator_are_kept(tmp_path):
    (tmp_path / 'train').mkdir()
    (tmp_path / 'train' / 'mine.txt').write_text('not generated')
    with pytest.raises(FileExistsError, match='not written by this generator'):
        generate_dataset('classification', tmp_path, **SMALL['classification'])
    assert (tmp_path / 'train' / 'mine.txt').read_text() == 'not generated'


@pytest.mark.parametrize('kwargs, message', [
    (dict(task='depth'), 'task must be one of'),
    (dict(task='classification', num_train=2), 'num_train must be at least 3'),
    (dict(task='detection', num_val=0), 'num_val must be at least 1'),
    (dict(task='segmentation', image_size=16), 'image_size must be at least 48'),
    (dict(task='detection', seed=-1), 'seed must be a non-negative int'),
])
def test_invalid_arguments_name_the_problem(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        generate_dataset(out_dir=tmp_path, **kwargs)
    assert not os.listdir(tmp_path)


def test_classification_loads_in_mmpretrain_custom_dataset(tmp_path):
    from mmpretrain.datasets import CustomDataset
    info = generate_dataset('classification', tmp_path, **SMALL['classification'])
    pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        datasets = {split: CustomDataset(data_root=info['data_root'], pipeline=pipeline,
                                         **info[split])
                    for split in ('train', 'val')}
    assert info['classes'] == classification.CLASSES
    for split, dataset in datasets.items():
        assert len(dataset) == info[f'num_{split}']
        assert dataset.metainfo['classes'] == info['classes']
        labels = [dataset.get_data_info(i)['gt_label'] for i in range(len(dataset))]
        for i, label in enumerate(labels):
            folder = os.path.basename(os.path.dirname(dataset.get_data_info(i)['img_path']))
            assert folder == info['classes'][label]
        assert np.bincount(labels).tolist() == list(info['counts'][split].values())
    sample = datasets['train'][0]
    assert tuple(sample['inputs'].shape) == (3, 32, 32)
    assert sample['data_samples'].gt_label.item() == datasets['train'].get_data_info(0)[
        'gt_label']


def test_detection_loads_in_mmdet_coco_dataset_and_pipeline(tmp_path):
    from mmdet.datasets import CocoDataset
    info = generate_dataset('detection', tmp_path, **SMALL['detection'])
    size = info['image_size']
    with open(os.path.join(info['data_root'], info['train']['ann_file'])) as f:
        coco = json.load(f)
    assert [c['name'] for c in coco['categories']] == list(info['classes'])
    for ann in coco['annotations']:
        assert ann['iscrowd'] == 0 and ann['area'] > 0
        assert set(ann) >= {'id', 'image_id', 'category_id', 'bbox', 'area', 'segmentation'}
    assert len({a['id'] for a in coco['annotations']}) == len(coco['annotations'])

    pipeline = [dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                dict(type='PackDetInputs')]
    with DefaultScope.overwrite_default_scope('mmdet'):
        dataset = CocoDataset(data_root=info['data_root'], metainfo=info['metainfo'],
                              pipeline=pipeline, **info['train'])
        val = CocoDataset(data_root=info['data_root'], metainfo=info['metainfo'],
                          pipeline=pipeline, test_mode=True, **info['val'])
    assert (len(dataset), len(val)) == (info['num_train'], info['num_val'])
    assert dataset.metainfo['classes'] == info['classes']
    instances = [inst for i in range(len(dataset))
                 for inst in dataset.get_data_info(i)['instances']]
    assert len(instances) == sum(info['counts']['train'].values())
    boxes = np.array([inst['bbox'] for inst in instances])
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= size).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    assert {inst['bbox_label'] for inst in instances} <= {0, 1}

    sample = dataset[0]
    gt = sample['data_samples'].gt_instances
    assert tuple(sample['inputs'].shape) == (3, size, size)
    assert len(gt) == len(dataset.get_data_info(0)['instances']) >= 1
    # The COCO polygons decode (mmdet's rasterisation) to the painted objects and their boxes.
    image, masks = lit_scene.render(
        lit_scene.sample_scene(split_rng(0, 'train', 1, 0), size), size)
    for decoded, mask, box in zip(gt.masks.to_ndarray().astype(bool), masks,
                                  gt.bboxes.tensor.numpy()):
        assert (decoded & mask).sum() / (decoded | mask).sum() > 0.8
        rows, cols = np.flatnonzero(decoded.any(1)), np.flatnonzero(decoded.any(0))
        assert abs(cols[0] - box[0]) <= 1 and abs(cols[-1] + 1 - box[2]) <= 1
        assert abs(rows[0] - box[1]) <= 1 and abs(rows[-1] + 1 - box[3]) <= 1
    assert np.array_equal(sample['inputs'].numpy().transpose(1, 2, 0)[..., ::-1], image)


def test_segmentation_loads_in_mmseg_dataset_and_pipeline(tmp_path):
    from mmseg.datasets import BaseSegDataset
    info = generate_dataset('segmentation', tmp_path, **SMALL['segmentation'])
    size = info['image_size']
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                dict(type='PackSegInputs')]
    with DefaultScope.overwrite_default_scope('mmseg'):
        datasets = {split: BaseSegDataset(data_root=info['data_root'], metainfo=info['metainfo'],
                                          pipeline=pipeline, **info[split])
                    for split in ('train', 'val')}
    for split, dataset in datasets.items():
        assert len(dataset) == info[f'num_{split}']
        assert dataset.metainfo['classes'] == ('background', 'reddish_object',
                                               'greenish_object')
        assert [tuple(c) for c in dataset.metainfo['palette']] == \
            [tuple(c) for c in info['metainfo']['palette']]
    seen = np.zeros(len(info['classes']), dtype=np.int64)
    for i in range(len(datasets['train'])):
        sample = datasets['train'][i]
        assert tuple(sample['inputs'].shape) == (3, size, size)
        seg = sample['data_samples'].gt_sem_seg.data.numpy()
        assert seg.shape == (1, size, size)
        seen += np.bincount(seg.ravel(), minlength=len(seen))
    assert seen.tolist() == list(info['counts']['train'].values())
    assert len(seen) == len(info['classes']) and seen[0] > 0 and seen[1:].sum() > 0


def red_green(colour):
    """ln(red / green) of RGB pixel values (+ 0.5: no zeros)."""
    colour = np.asarray(colour, dtype=np.float64) + 0.5
    return np.log(colour[..., 0] / colour[..., 1])


def test_lit_scene_only_the_scenes_light_tells_an_objects_paint():
    """The observed colour of an object alone misclassifies about one object in five; the
    same colour divided by the scene's average background colour (the light) almost never."""
    size = 64
    alone = relative = total = 0
    for index in range(60):
        scene = lit_scene.sample_scene(split_rng(0, 'train', 1, index), size)
        image, masks = lit_scene.render(scene, size)
        background = image[~np.any(masks, axis=0)]
        light = red_green(background.astype(np.float64).mean(0))
        for obj, mask in zip(scene['objects'], masks):
            observed = red_green(image[mask].astype(np.float64).mean(0))
            reddish = lit_scene.object_label(scene, obj) == lit_scene.PAINTS.index('reddish')
            alone += (observed > 0) == reddish
            relative += (observed - light > 0) == reddish
            total += 1
    assert total > 120
    assert 0.7 < alone / total < 0.9
    assert relative / total > 0.97


def test_lit_scene_light_changes_the_pixels_not_the_classes():
    size = 64
    for index in range(6):
        scene = lit_scene.sample_scene(split_rng(0, 'train', 1, index), size)
        relit = dict(scene, light=[1 / g for g in scene['light']])
        image, masks = lit_scene.render(scene, size)
        image_relit, masks_relit = lit_scene.render(relit, size)
        for obj, mask, mask_relit in zip(scene['objects'], masks, masks_relit):
            assert np.array_equal(mask, mask_relit)
            assert not np.array_equal(image[mask], image_relit[mask])
            assert lit_scene.object_label(scene, obj) == lit_scene.object_label(relit, obj)
            # the paint's sign of ln(red / green) is the class
            red, green, _ = obj['reflectance']
            paint = np.log(red / green)
            low, high = lit_scene.PAINT_CONTRAST
            assert low <= abs(paint) <= high
            assert (paint > 0) == (obj['paint'] == lit_scene.PAINTS.index('reddish'))


def test_lit_scene_objects_lie_inside_the_image_and_apart():
    size = 128
    labels_per_shape = {}
    for index in range(24):
        scene = lit_scene.sample_scene(split_rng(1, 'val', 1, index), size)
        _, masks = lit_scene.render(scene, size)
        assert lit_scene.MIN_OBJECTS <= len(masks) <= lit_scene.MAX_OBJECTS
        assert not (np.sum(masks, axis=0) > 1).any()
        for obj, mask in zip(scene['objects'], masks):
            assert mask.sum() > 0.01 * size * size
            labels_per_shape.setdefault(obj['shape'], set()).add(
                lit_scene.object_label(scene, obj))
    # Every shape occurs in both classes: the shape does not tell the class.
    assert labels_per_shape == {shape: {0, 1} for shape in ('disc', 'square', 'triangle')}


def test_generate_data_tool_prints_what_it_wrote(tmp_path, capsys):
    from tools.generate_data import main
    argv = ['segmentation', str(tmp_path), '--num-train', '2', '--num-val', '1',
            '--image-size', '48', '--seed', '5']
    main(argv)
    out = capsys.readouterr().out
    assert 'segmentation: wrote 2 train + 1 val images of 48x48 (seed 5)' in out
    assert 'background, reddish_object, greenish_object' in out
    assert "'img_path': 'img_dir/train'" in out
    assert len(os.listdir(tmp_path / 'ann_dir' / 'val')) == 1
    main(argv)
    assert 'up to date' in capsys.readouterr().out
