"""set_schedule_length: the loop, the schedulers and the intervals change together."""
import argparse

import pytest
from mmengine.config import Config

from cvattn_mm.analysis.schedule import set_schedule_length

QUICKSTART = 'configs/quickstart/'


def schedulers(cfg):
    return {s['type']: s for s in cfg.param_scheduler}


def test_epoch_based_classification_keeps_its_warm_up_and_stretches_its_cosine():
    cfg = Config.fromfile(QUICKSTART + 'cls_resnet18.py')
    old = schedulers(cfg)
    assert (cfg.train_cfg.max_epochs, old['CosineAnnealingLR']['end']) == (2, 2)
    set_schedule_length(cfg, 16)
    new = schedulers(cfg)
    assert cfg.train_cfg.max_epochs == 16 and cfg.train_cfg.val_interval == 16
    assert cfg.default_hooks.checkpoint.interval == 16
    assert (new['LinearLR']['begin'], new['LinearLR']['end']) == (0, 1)  # the warm-up
    cosine = new['CosineAnnealingLR']
    assert (cosine['begin'], cosine['end'], cosine['T_max']) == (1, 16, 15)
    set_schedule_length(cfg, 3)
    assert (schedulers(cfg)['CosineAnnealingLR']['end'], cfg.train_cfg.max_epochs) == (3, 3)


def test_a_length_that_leaves_only_the_warm_up_is_refused():
    cfg = Config.fromfile(QUICKSTART + 'cls_resnet18.py')
    with pytest.raises(ValueError, match='the LinearLR warm-up ends at 1, not before the end '
                       'of a training of 1 epochs: use a length > 1'):
        set_schedule_length(cfg, 1)


def test_detection_keeps_its_warm_up_in_iterations():
    cfg = Config.fromfile(QUICKSTART + 'det_retinanet_r18.py')
    set_schedule_length(cfg, 2)
    new = schedulers(cfg)
    assert new['LinearLR']['end'] == 50 and new['LinearLR']['by_epoch'] is False
    assert (new['CosineAnnealingLR']['end'], new['CosineAnnealingLR']['T_max']) == (2, 2)
    assert cfg.train_cfg.val_interval == 2 and cfg.default_hooks.checkpoint.interval == 2


def test_iteration_based_segmentation():
    cfg = Config.fromfile(QUICKSTART + 'seg_fpn_r18.py')
    set_schedule_length(cfg, 120)
    new = schedulers(cfg)
    assert cfg.train_cfg.max_iters == 120 and cfg.train_cfg.val_interval == 120
    assert new['LinearLR']['end'] == 30
    assert (new['CosineAnnealingLR']['end'], new['CosineAnnealingLR']['T_max']) == (120, 120)
    assert cfg.default_hooks.checkpoint.interval == 120
    with pytest.raises(ValueError, match='warm-up ends at 30'):
        set_schedule_length(cfg, 30)


def test_multistep_milestones_and_shorter_intervals():
    cfg = Config(dict(
        train_cfg=dict(max_epochs=12, val_interval=2),
        param_scheduler=[dict(type='MultiStepLR', by_epoch=True, begin=0, end=12,
                              milestones=[8, 11])],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1))))
    set_schedule_length(cfg, 24)
    assert cfg.param_scheduler[0]['milestones'] == [16, 22]
    assert cfg.param_scheduler[0]['end'] == 24
    assert cfg.train_cfg.val_interval == 2 and cfg.default_hooks.checkpoint.interval == 1
    set_schedule_length(cfg, 1)
    assert cfg.train_cfg.val_interval == 1


@pytest.mark.parametrize('bad', [0, -3, 2.5, '16'])
def test_bad_lengths(bad):
    with pytest.raises(ValueError, match='set_schedule_length: length'):
        set_schedule_length(Config.fromfile(QUICKSTART + 'cls_resnet18.py'), bad)


def test_a_config_without_a_loop_length():
    with pytest.raises(ValueError, match='needs train_cfg.max_epochs or train_cfg.max_iters'):
        set_schedule_length(Config(dict(train_cfg=dict(type='IterBasedTrainLoop'))), 4)


def test_train_py_applies_it_before_cfg_options(tmp_path):
    from tools.train import merge_args, parse_args
    args = parse_args([QUICKSTART + 'cls_resnet18.py', '--train-length', '16',
                       '--work-dir', str(tmp_path), '--cfg-options',
                       'train_cfg.val_interval=4'])
    assert isinstance(args, argparse.Namespace) and args.train_length == 16
    cfg = merge_args(Config.fromfile(args.config), args)
    assert schedulers(cfg)['CosineAnnealingLR']['end'] == 16
    assert cfg.train_cfg.val_interval == 4  # --cfg-options apply last
