"""tools/train.py, tools/test.py, tools/dist_train.sh and mim, end to end (docs/architecture.md,
"Configs and tools").

A tiny classifier (ResNet-18 with 8 base channels and SE, 4 classes) trains for 2 iterations
on 16 generated 32x32 images. The command-line runs are subprocesses; independent ones run
at the same time (2 cores), in three rounds:

1. ``tools/train.py --amp`` | ``mim train mmpretrain``;
2. ``tools/train.py --resume`` on round 1's work dir | ``tools/dist_train.sh`` with 2
   processes (gloo), starting from round 1's checkpoint (``load_from``);
3. ``tools/test.py`` of the distributed run's checkpoint, in one process | ``mim test`` of
   the ``mim train`` checkpoint.

Broken configs run in this process: they must fail before anything is written.
"""
import os.path as osp
import pickle

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from cvattn_mm.datasets import generate_dataset

from .processes import ROOT, TOOLS, free_port, load_tool, mim, python, run_together, succeeded

NUM_VAL = 8

TINY_CONFIG = """\
default_scope = 'mmpretrain'
custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(num_classes=4, mean=[127.5] * 3, std=[127.5] * 3, to_rgb=True),
    backbone={backbone},
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=4, in_channels=64, topk=(1, ),
              loss=dict(type='CrossEntropyLoss')))
pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='CustomDataset', data_root={data_root!r}, data_prefix='train',
                 with_label=True, pipeline=pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='CustomDataset', data_root={data_root!r}, data_prefix='val',
                 with_label=True, pipeline=pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9))
train_cfg = dict(by_epoch=False, max_iters=2, val_interval=2)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=1),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
log_processor = dict(by_epoch=False)
visualizer = dict(type='UniversalVisualizer', vis_backends=[dict(type='LocalVisBackend')])
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
"""
GOOD_BACKBONE = """dict(
        type='InsertAttention',
        module=dict(type='ResNet', depth=18, stem_channels=8, base_channels=8,
                    out_indices=(3, )),
        insertions=[dict(attention=dict(type='SE', reduction=4), at='paper')])"""
BROKEN_BACKBONES = {
    'unknown module': (GOOD_BACKBONE.replace("type='SE'", "type='CBAMM'"), 'CBAMM'),
    'pattern matching nothing': (GOOD_BACKBONE.replace("at='paper'", "at='layer9.*'"),
                                 "at='layer9.*' matches no module"),
    # mmdet's ResNet plug-in hook, after conv2 of layer2-4 (16-64 channels): SK's default
    # 32 groups do not divide 16 channels
    'plugin channels': ("""dict(
        type='mmdet.ResNet', depth=50, stem_channels=8, base_channels=8, out_indices=(3, ),
        plugins=[dict(cfg=dict(type='SK'), position='after_conv2',
                      stages=(False, True, True, True))])""",
                        'SK: in_channels=16 must be divisible by groups=32'),
}


def write_config(path, data_root, backbone=GOOD_BACKBONE) -> str:
    with open(path, 'w') as f:
        f.write(TINY_CONFIG.format(backbone=backbone, data_root=data_root))
    return str(path)


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp('tools')
    data_root = str(root / 'data')
    generate_dataset('classification', data_root, num_train=16, num_val=NUM_VAL,
                     image_size=32, seed=0)
    return root, write_config(root / 'tiny.py', data_root)


@pytest.fixture(scope='module')
def round1(workspace):
    root, config = workspace
    return run_together({
        'train': (python('train.py', config, '--work-dir', 'train', '--amp'), {}),
        'mim_train': (mim('train', 'mmpretrain', config, '--work-dir', 'mim', '--gpus', '0'),
                      {}),
    }, root)


@pytest.fixture(scope='module')
def round2(workspace, round1):
    root, config = workspace
    checkpoint = str(root / 'train' / 'iter_2.pth')
    succeeded(round1['train'])
    return run_together({
        'resume': (python('train.py', config, '--work-dir', 'train', '--resume',
                          '--cfg-options', 'train_cfg.max_iters=4'), {}),
        'dist_train': (['bash', osp.join(TOOLS, 'dist_train.sh'), config, '2', '--work-dir',
                        'dist', '--cfg-options', f'load_from={checkpoint}'],
                       dict(PORT=str(free_port()))),
    }, root)


@pytest.fixture(scope='module')
def round3(workspace, round1, round2):
    root, config = workspace
    succeeded(round1['mim_train'])
    succeeded(round2['dist_train'])
    return run_together({
        'test': (python('test.py', config, str(root / 'dist' / 'iter_2.pth'), '--work-dir',
                        'test', '--out', 'test/predictions.pkl', '--show-dir', 'show'), {}),
        'mim_test': (mim('test', 'mmpretrain', config, '--checkpoint',
                         str(root / 'mim' / 'iter_2.pth'), '--gpus', '0', '--work-dir',
                         'mim_test'), {}),
    }, root)


def test_train_validates_and_saves_a_checkpoint(workspace, round1):
    root, _ = workspace
    output = succeeded(round1['train'])
    assert 'Iter(train) [2/2]' in output
    assert 'accuracy/top1' in output  # validation at the end
    assert (root / 'train' / 'iter_2.pth').is_file()


def test_amp_on_cpu_trains_under_bfloat16_autocast(workspace, round1):
    root, _ = workspace
    output = succeeded(round1['train'])
    if torch.cuda.is_available():
        expected = 'AmpOptimWrapper'
    else:
        expected = 'CPUBF16OptimWrapper'
        assert '--amp without CUDA: bfloat16 autocast' in output
    dumped = Config.fromfile(str(root / 'train' / 'tiny.py'))
    assert dumped.optim_wrapper.type == expected


def test_resume_continues_from_the_latest_checkpoint(workspace, round2):
    root, _ = workspace
    output = succeeded(round2['resume'])
    assert 'Auto resumed from the latest checkpoint' in output
    assert 'resumed epoch: 0, iter: 2' in output
    assert 'Iter(train) [3/4]' in output and 'Iter(train) [1/4]' not in output
    assert (root / 'train' / 'iter_4.pth').is_file()


def test_dist_train_runs_two_gloo_ranks_from_a_checkpoint(workspace, round2):
    root, _ = workspace
    output = succeeded(round2['dist_train'])
    if not torch.cuda.is_available():
        for rank in (0, 1):
            assert f'CPU distributed run over gloo: rank {rank} of world size 2' in output
    assert 'Distributed training: True' in output
    assert f'Load checkpoint from {root / "train" / "iter_2.pth"}' in output
    assert (root / 'dist' / 'iter_2.pth').is_file()
    # 8 validation images on 2 ranks with batches of 4: one iteration each
    assert 'Iter(val) [1/1]' in output


def test_test_evaluates_the_dist_checkpoint_in_one_process(workspace, round3):
    root, _ = workspace
    output = succeeded(round3['test'])
    assert 'Distributed training: False' in output
    assert f'Load checkpoint from {root / "dist" / "iter_2.pth"}' in output
    assert 'accuracy/top1' in output
    with open(root / 'test' / 'predictions.pkl', 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == NUM_VAL
    assert len(list((root / 'show').glob('*.png'))) == NUM_VAL


def test_mim_trains_and_tests_with_the_upstream_tools(workspace, round1, round3):
    root, _ = workspace
    assert 'accuracy/top1' in succeeded(round1['mim_train'])
    assert (root / 'mim' / 'iter_2.pth').is_file()
    output = succeeded(round3['mim_test'])
    assert f'Load checkpoint from {root / "mim" / "iter_2.pth"}' in output
    assert 'accuracy/top1' in output


def test_cpu_amp_wrapper_runs_the_forward_under_bfloat16_autocast():
    model = torch.nn.Linear(4, 2)
    from cvattn_mm.engine import CPUBF16OptimWrapper

    wrapper = CPUBF16OptimWrapper(
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with wrapper.optim_context(model):
        output = model(torch.ones(1, 4))
    assert output.dtype == torch.bfloat16
    assert model(torch.ones(1, 4)).dtype == torch.float32


@pytest.mark.parametrize('case', sorted(BROKEN_BACKBONES))
def test_broken_config_fails_before_writing_anything(case, tmp_path, monkeypatch):
    backbone, message = BROKEN_BACKBONES[case]
    config = write_config(tmp_path / 'broken.py', str(tmp_path / 'data'), backbone)
    work_dir = tmp_path / 'work'
    monkeypatch.setenv('LOCAL_RANK', '0')
    with DefaultScope.overwrite_default_scope('mmpretrain'), \
            pytest.raises((KeyError, ValueError)) as error:
        load_tool('train').main([config, '--work-dir', str(work_dir)])
    assert message in str(error.value)
    assert not work_dir.exists()


@pytest.mark.parametrize('config, expected', [
    ('configs/detection/retinanet/retinanet_r50-gc-c3-c5_fpn_1x_coco.py',
     dict(draw=True, test_out_dir='SHOW', interval=1)),
    ('configs/segmentation/pspnet/pspnet_r50-d8-gc_4xb2-40k_cityscapes-512x1024.py',
     dict(draw=True, interval=1)),
    ('configs/classification/resnet18/resnet18-se_8xb32_in1k.py',
     dict(enable=True, out_dir='SHOW', interval=1)),
])
def test_show_dir_makes_the_tasks_hook_draw(config, expected, monkeypatch):
    test_tool = load_tool('test')
    monkeypatch.setenv('LOCAL_RANK', '0')
    args = test_tool.parse_args([osp.join(ROOT, config), 'ckpt.pth', '--show-dir', 'SHOW'])
    cfg = test_tool.merge_args(Config.fromfile(args.config), args)
    hook = cfg.default_hooks.visualization
    assert {k: hook.get(k) for k in expected} == expected
    if 'segmentation' in config:
        assert cfg.visualizer.save_dir == 'SHOW'
    assert cfg.load_from == 'ckpt.pth'
