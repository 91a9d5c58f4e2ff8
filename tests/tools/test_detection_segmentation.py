"""Detection and segmentation end to end through tools/train.py and tools/test.py.

The quickstart configs with attention (RetinaNet R-18 + SE, Semantic FPN R-18 + CBAM) train
on 4 generated 64x64 images with batches of 2, in three rounds; the detection and the
segmentation run of a round are subprocesses that run at the same time:

1. train (detection: 1 epoch, segmentation: 2 iterations), validate, save a checkpoint;
2. ``--resume`` to twice as long in the same work dir | a new run with ``load_from`` the
   round-1 checkpoint;
3. ``tools/test.py`` of the resumed run's checkpoint.
"""
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import load_checkpoint

import cvattn_mm  # noqa: F401
from cvattn_mm.datasets import generate_dataset
from cvattn_mm.registry import MODELS

from .processes import ROOT, python, run_together, succeeded

TINY = """\
_base_ = [{base!r}]
data_root = {data_root!r}
loader = dict(batch_size=2, num_workers=0, persistent_workers=False,
              dataset=dict(data_root=data_root))
train_dataloader = loader
val_dataloader = loader
test_dataloader = loader
{extra}
"""
TASKS = {
    'detection': dict(
        base='configs/quickstart/det_retinanet_r18-se.py',
        extra="""\
val_evaluator = dict(ann_file=data_root + '/annotations/val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1, val_interval=1)
default_hooks = dict(checkpoint=dict(interval=1))
# untrained scores are about the focal loss' prior (0.01): keep them all, so COCO evaluates
model = dict(test_cfg=dict(score_thr=0.0))""",
        first='epoch_1.pth', resume=('train_cfg.max_epochs=2', ), last='epoch_2.pth',
        resumed='resumed epoch: 1, iter: 2', metric='coco/bbox_mAP',
        attention='SE'),
    'segmentation': dict(
        base='configs/quickstart/seg_fpn_r18-cbam.py',
        extra="""\
train_cfg = dict(max_iters=2, val_interval=2)
default_hooks = dict(checkpoint=dict(interval=2))""",
        first='iter_2.pth', resume=('train_cfg.max_iters=4', ), last='iter_4.pth',
        resumed='resumed epoch: 0, iter: 2', metric='mIoU', attention='CBAM'),
}


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp('tasks')
    configs = {}
    for task, spec in TASKS.items():
        data = generate_dataset(task, str(root / 'data' / task), num_train=4, num_val=4,
                                image_size=64, seed=0)
        path = root / f'{task}.py'
        path.write_text(TINY.format(base=f'{ROOT}/{spec["base"]}', data_root=data['data_root'],
                                    extra=spec['extra']))
        configs[task] = str(path)
    return root, configs


@pytest.fixture(scope='module')
def round1(workspace):
    root, configs = workspace
    return run_together({
        task: (python('train.py', config, '--work-dir', f'{task}/train'), {})
        for task, config in configs.items()}, root)


@pytest.fixture(scope='module')
def round2(workspace, round1):
    root, configs = workspace
    commands = {}
    for task, config in configs.items():
        succeeded(round1[task])
        commands[f'{task}_resume'] = (
            python('train.py', config, '--work-dir', f'{task}/train', '--resume',
                   '--cfg-options', *TASKS[task]['resume']), {})
        checkpoint = root / task / 'train' / TASKS[task]['first']
        commands[f'{task}_load_from'] = (
            python('train.py', config, '--work-dir', f'{task}/load_from', '--cfg-options',
                   f'load_from={checkpoint}'), {})
    return run_together(commands, root)


@pytest.fixture(scope='module')
def round3(workspace, round2):
    root, configs = workspace
    commands = {}
    for task, config in configs.items():
        succeeded(round2[f'{task}_resume'])
        checkpoint = root / task / 'train' / TASKS[task]['last']
        commands[task] = (python('test.py', config, str(checkpoint), '--work-dir',
                                 f'{task}/test'), {})
    return run_together(commands, root)


@pytest.mark.parametrize('task', sorted(TASKS))
def test_train_validates_and_saves_a_checkpoint(task, workspace, round1):
    root, _ = workspace
    output = succeeded(round1[task])
    assert TASKS[task]['metric'] in output  # validation ran
    assert (root / task / 'train' / TASKS[task]['first']).is_file()


@pytest.mark.parametrize('task', sorted(TASKS))
def test_checkpoint_holds_the_attention_and_loads_into_the_model(task, workspace, round1):
    root, configs = workspace
    spec = TASKS[task]
    checkpoint = torch.load(root / task / 'train' / spec['first'], map_location='cpu',
                            weights_only=True)
    attention_keys = [k for k in checkpoint['state_dict'] if 'attention_sites' in k]
    assert attention_keys, 'no attention weights in the checkpoint'
    cfg = Config.fromfile(configs[task])
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(cfg.model)
    load_checkpoint(model, str(root / task / 'train' / spec['first']), map_location='cpu',
                    strict=True, logger='silent')
    attentions = {type(attention).__name__ for site in model.backbone.attention_sites.values()
                  for attention in site.attentions.values()}
    assert attentions == {spec['attention']}


@pytest.mark.parametrize('task', sorted(TASKS))
def test_resume_continues_in_the_same_work_dir(task, workspace, round2):
    root, _ = workspace
    output = succeeded(round2[f'{task}_resume'])
    assert 'Auto resumed from the latest checkpoint' in output
    assert TASKS[task]['resumed'] in output
    assert (root / task / 'train' / TASKS[task]['last']).is_file()


@pytest.mark.parametrize('task', sorted(TASKS))
def test_load_from_starts_a_new_run_from_the_weights(task, workspace, round2):
    root, _ = workspace
    output = succeeded(round2[f'{task}_load_from'])
    assert f'Load checkpoint from {root / task / "train" / TASKS[task]["first"]}' in output
    assert 'missing keys' not in output and 'unexpected key' not in output
    assert (root / task / 'load_from' / TASKS[task]['first']).is_file()


@pytest.mark.parametrize('task', sorted(TASKS))
def test_test_evaluates_the_resumed_checkpoint(task, workspace, round3):
    root, _ = workspace
    output = succeeded(round3[task])
    assert f'Load checkpoint from {root / task / "train" / TASKS[task]["last"]}' in output
    assert TASKS[task]['metric'] in output
