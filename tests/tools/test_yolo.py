"""mmyolo end to end: YOLOv8-n with CBAM through tools/train.py, tools/test.py and mim.

The config inherits configs/detection/yolov8/yolov8_s-cbam_syncbn_fast_8xb16-500e_coco.py and
makes it YOLOv8-n as mmyolo's yolov8_n config does (widen_factor 0.25 in backbone, neck and
head; deepen_factor 0.33 is YOLOv8-s's already), for the 2 classes of 4 generated 128x128
images (batches of 2, num_workers=0). Overridden for that, and said here:

* ``img_scale`` 128 instead of 640: the train pipeline (Mosaic, YOLOv5RandomAffine with its
  border) and the test pipeline (YOLOv5KeepRatioResize, LetterResize) are written again with
  it, since the base config's pipelines were computed from its own ``img_scale``;
* checkpoints every epoch without ``save_best``; the logger every iteration.

Everything else is the recipe: YOLOv8 head and losses, BatchTaskAlignedAssigner, SGD through
YOLOv5OptimizerConstructor, YOLOv5ParamSchedulerHook (warm-up), EMAHook, CocoMetric. Two
rounds of subprocesses:

1. train 1 epoch (2 iterations), validate (COCO bbox), save epoch_1.pth | ``mim train mmyolo``
   (mmyolo's own tools/train.py) of the same config, in another work dir;
2. ``--resume`` to 2 epochs in the same work dir (a hook saves the attention weights that
   training starts from, tests/tools/attention_snapshot.py) | ``tools/test.py`` of
   epoch_1.pth.
"""
import math
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import load_checkpoint

import cvattn_mm  # noqa: F401
from cvattn_mm.datasets import generate_dataset
from cvattn_mm.registry import MODELS

from .processes import ROOT, mim, python, run_together, succeeded

BASE = f'{ROOT}/configs/detection/yolov8/yolov8_s-cbam_syncbn_fast_8xb16-500e_coco.py'
TINY = """\
_base_ = [{base!r}]
custom_imports = dict(imports=['cvattn_mm', 'tests.tools.attention_snapshot'],
                      allow_failed_imports=False)
data_root = {data_root!r}
metainfo = dict(classes={classes!r})
num_classes = len(metainfo['classes'])
img_scale = (128, 128)
widen_factor = 0.25
model = dict(
    backbone=dict(module=dict(widen_factor=widen_factor)),
    neck=dict(widen_factor=widen_factor),
    bbox_head=dict(head_module=dict(widen_factor=widen_factor, num_classes=num_classes)),
    train_cfg=dict(assigner=dict(num_classes=num_classes)))
train_pipeline = [
    *_base_.pre_transform,
    dict(type='Mosaic', img_scale=img_scale, pad_val=114.0, pre_transform=_base_.pre_transform),
    dict(type='YOLOv5RandomAffine', max_rotate_degree=0.0, max_shear_degree=0.0,
         scaling_ratio_range=(0.5, 1.5), max_aspect_ratio=100,
         border=(-img_scale[0] // 2, -img_scale[1] // 2), border_val=(114, 114, 114)),
    *_base_.last_transform]  # mmdet.Albu (albumentations 1.3.1), HSV, flip, packing
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='YOLOv5KeepRatioResize', scale=img_scale),
    dict(type='LetterResize', scale=img_scale, allow_scale_up=False, pad_val=dict(img=114)),
    dict(type='LoadAnnotations', with_bbox=True, _scope_='mmdet'),
    dict(type='mmdet.PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                                'scale_factor', 'pad_param'))]
loader = dict(batch_size=2, num_workers=0, persistent_workers=False, pin_memory=False)
train_dataloader = dict(
    **loader,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    **loader,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + '/annotations/val.json')
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(batch_size_per_gpu=2))
train_cfg = dict(max_epochs=1, val_interval=1)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, save_best=None))
custom_hooks = [*_base_.custom_hooks, dict(type='SaveAttentionAtTrainStart')]
"""
YOLOV8_N_SITES = [f'stage{s}.1.blocks.{b}.conv2' for s, n in enumerate((1, 2, 2, 1), 1)
                  for b in range(n)]


def logged(name: str, output: str) -> list:
    """Every value of ``name: <number>`` in a log."""
    return [float(v) for v in re.findall(rf'{re.escape(name)}: (-?[\d.]+(?:e[-+]?\d+)?)',
                                         output)]


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp('yolo')
    data = generate_dataset('detection', str(root / 'data'), num_train=4, num_val=4,
                            image_size=128, seed=0)
    config = root / 'yolov8_n-cbam_tiny.py'
    config.write_text(TINY.format(base=BASE, data_root=data['data_root'],
                                  classes=tuple(data['classes'])))
    return root, str(config)


@pytest.fixture(scope='module')
def round1(workspace):
    """tools/train.py and mim's run of the same config, at the same time."""
    root, config = workspace
    return run_together({
        'train': (python('train.py', config, '--work-dir', 'train'), {}),
        'mim_train': (mim('train', 'mmyolo', config, '--work-dir', 'mim', '--gpus', '0'), {})},
        root)


@pytest.fixture(scope='module')
def round2(workspace, round1):
    """The resumed run and the test of the first checkpoint, at the same time."""
    root, config = workspace
    succeeded(round1['train'])
    return run_together({
        'resume': (python('train.py', config, '--work-dir', 'train', '--resume', '--cfg-options',
                          'train_cfg.max_epochs=2'), {}),
        'test': (python('test.py', config, str(root / 'train' / 'epoch_1.pth'), '--work-dir',
                        'test'), {})}, root)


def test_trains_a_few_iterations_and_evaluates_coco_bbox(workspace, round1):
    root, _ = workspace
    output = succeeded(round1['train'])
    assert 'Epoch(train) [1][2/2]' in output
    losses = logged('loss', output)
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    maps = logged('coco/bbox_mAP', output)
    assert len(maps) == 1 and 0 <= maps[0] <= 1
    assert (root / 'train' / 'epoch_1.pth').is_file()


def test_checkpoint_holds_cbam_at_the_bottlenecks_and_loads_into_the_model(workspace, round1):
    root, config = workspace
    succeeded(round1['train'])
    cfg = Config.fromfile(config)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(cfg.model)
    load_checkpoint(model, str(root / 'train' / 'epoch_1.pth'), map_location='cpu', strict=True,
                    logger='silent')
    sites = {site.path: [type(a).__name__ for a in site.attentions.values()]
             for site in model.backbone.attention_sites.values()}
    assert sites == {path: ['CBAM'] for path in YOLOV8_N_SITES}
    assert model.backbone.attention_sites['stage1-1-blocks-0-conv2'].attentions.cbam \
        .in_channels == 16  # YOLOv8-n's first bottleneck: 64 * 0.25, halved by the C2f layer


def test_resume_continues_the_schedule_with_the_trained_attention(workspace, round2):
    root, _ = workspace
    output = succeeded(round2['resume'])
    assert 'Auto resumed from the latest checkpoint' in output
    assert 'resumed epoch: 1, iter: 2' in output
    assert 'Epoch(train) [2][2/2]' in output and 'Epoch(train) [1]' not in output
    assert (root / 'train' / 'epoch_2.pth').is_file()
    work_dir = root / 'train'
    start = torch.load(work_dir / 'attention_before_iter_2.pth', weights_only=True)
    initial = torch.load(work_dir / 'attention_before_iter_0.pth', weights_only=True)
    checkpoint = torch.load(work_dir / 'epoch_1.pth', map_location='cpu', weights_only=False)
    # EMAHook saves the EMA weights as 'state_dict' and the trained ones under
    # 'ema_state_dict' with the prefix 'module.'; a resumed run trains on from the latter
    trained_weights = {key[len('module.'):]: value
                       for key, value in checkpoint['ema_state_dict'].items()
                       if 'attention_sites' in key}
    assert len(start) == len(YOLOV8_N_SITES) * 10  # CBAM: fc1, fc2, spatial conv, its BN
    assert start.keys() == trained_weights.keys()
    assert all(torch.equal(start[key], trained_weights[key]) for key in start)
    assert any(not torch.equal(start[key], initial[key]) for key in start)


def test_test_evaluates_the_checkpoint(workspace, round2):
    root, _ = workspace
    output = succeeded(round2['test'])
    assert f'Load checkpoint from {root / "train" / "epoch_1.pth"}' in output
    maps = logged('coco/bbox_mAP', output)
    assert len(maps) == 1 and 0 <= maps[0] <= 1


def test_mim_train_mmyolo_builds_cvattn_mm_cbam_and_trains(workspace, round1):
    """mmyolo registers a CBAM of its own; InsertAttention builds cvattn_mm's (its spatial
    conv and norm keys) also under mmyolo's train.py, which imports cvattn_mm through
    ``custom_imports``."""
    root, _ = workspace
    output = succeeded(round1['mim_train'])
    assert 'mmyolo/.mim/tools/train.py' in output
    maps = logged('coco/bbox_mAP', output)
    assert len(maps) == 1 and 0 <= maps[0] <= 1
    state = torch.load(root / 'mim' / 'epoch_1.pth', map_location='cpu',
                       weights_only=False)['state_dict']
    site = 'backbone.attention_sites.stage1-1-blocks-0-conv2.attentions.cbam'
    assert f'{site}.spatial_conv.weight' in state and f'{site}.spatial_norm.weight' in state
