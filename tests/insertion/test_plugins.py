"""Every attention module through mmdet's and mmseg's native ResNet ``plugins=``."""
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import cvattn_mm  # noqa: F401
from cvattn_mm.attention import ConvReplacement
from cvattn_mm.attention.catalog import attention_classes

POSITIONS = ('after_conv1', 'after_conv2', 'after_conv3')
#: Conv replacements are not plug-ins: they take a conv's place (``replace=``);
#: tests/insertion/test_replace.py checks that plug-ins keep working beside them.
PLUGINS = [n for n, cls in attention_classes().items() if not issubclass(cls, ConvReplacement)]


@pytest.mark.parametrize('package', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('name', PLUGINS)
def test_every_module_at_every_plugin_position(name, package):
    if package == 'mmdet':
        from mmdet.models.backbones.resnet import Bottleneck
    else:
        from mmseg.models.backbones.resnet import Bottleneck
    init_default_scope(package)
    block = Bottleneck(128, 32, plugins=[dict(cfg=dict(type=name, postfix=i), position=p)
                                        for i, p in enumerate(POSITIONS)])
    abbr = attention_classes()[name]._abbr_
    assert block.after_conv1_plugin_names == [abbr + '0']
    assert getattr(block, abbr + '0').in_channels in (32, None)
    assert getattr(block, block.after_conv3_plugin_names[0]).in_channels in (128, None)
    block.init_weights()
    block.eval()
    assert block(torch.randn(1, 128, 9, 7)).shape == (1, 128, 9, 7)


def run_with_call_log(model, inputs, names):
    calls = []
    handles = [m.register_forward_hook(lambda mod, i, o: calls.append(type(mod).__name__))
               for m in model.modules() if type(m).__name__ in names]
    with torch.no_grad():
        model(inputs, mode='tensor')
    for handle in handles:
        handle.remove()
    return calls


TWO_AT_ONE_POSITION = [dict(cfg=dict(type='GC'), position='after_conv3',
                            stages=(False, True, True, True)),
                       dict(cfg=dict(type='CBAM'), position='after_conv3',
                            stages=(False, True, True, True))]


def upstream_config(tmp_path, base):
    """An upstream config (``'mmdet::...'``) loaded through ``_base_``."""
    path = tmp_path / 'cfg.py'
    path.write_text(f'_base_ = [{base!r}]\n')
    return Config.fromfile(str(path))


def test_two_plugins_at_one_position_in_a_detector(tmp_path):
    cfg = upstream_config(tmp_path, 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')
    cfg.model.backbone.update(plugins=TWO_AT_ONE_POSITION, init_cfg=None)
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    detector = MODELS.build(cfg.model)
    detector.eval()
    calls = run_with_call_log(detector, torch.randn(1, 3, 64, 96), {'GC', 'CBAM'})
    assert calls == ['GC', 'CBAM'] * 13  # 4 + 6 + 3 blocks in stages 2-4, GC then CBAM


def test_two_plugins_at_one_position_in_a_segmentor(tmp_path):
    cfg = upstream_config(tmp_path, 'mmseg::pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py')
    cfg.model.backbone.update(plugins=TWO_AT_ONE_POSITION, init_cfg=None,
                              norm_cfg=dict(type='BN', requires_grad=True))
    cfg.model.pretrained = None
    for head in ('decode_head', 'auxiliary_head'):
        cfg.model[head].norm_cfg = dict(type='BN', requires_grad=True)
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    segmentor = MODELS.build(cfg.model)
    segmentor.eval()
    calls = run_with_call_log(segmentor, torch.randn(1, 3, 64, 64), {'GC', 'CBAM'})
    assert calls == ['GC', 'CBAM'] * 13


def test_insertions_command_lists_the_sites(tmp_path):
    from cvattn_mm.cli import main

    cfg = tmp_path / 'r18_se.py'
    cfg.write_text(
        "_base_ = ['mmpretrain::resnet/resnet18_8xb32_in1k.py']\n"
        "custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)\n"
        "model = dict(backbone=dict(_delete_=True, type='InsertAttention', module=dict("
        "type='ResNet', depth=18, out_indices=(3, )), insertions=[dict(attention=dict("
        "type='SE'), at='paper')]))\n")
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(['insertions', str(cfg)])
    lines = out.getvalue().strip().splitlines()
    # the path relative to the InsertAttention's module (pasteable into at=), in its column
    assert lines[1].split()[:5] == ['backbone', 'layer1.0.bn2', '64', 'nchw', 'SE']
    assert len(lines) == 2 + 8 + 1  # header, 8 rows, total, the note on relative paths
    # SE at C = 64, 128, 256, 512: 2 x (580 + 2184 + 8464 + 33312)
    assert lines[-2].startswith('8 attention modules (8 inserted, 0 plug-ins), 89,080 '
                                'parameters added')
