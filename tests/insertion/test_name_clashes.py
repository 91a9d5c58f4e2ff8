"""Names that another toolbox registers too (``KNOWN_CLASHES`` of tests/test_registry.py,
e.g. mmyolo's CBAM): insertions build cvattn_mm's module under any default scope; in
``plugins=``, where the config's scope decides, the tools warn and ``type='cvattn_mm.<Name>'``
builds ours."""
import importlib

import pytest
import torch
import torch.nn as nn
from mmcv.cnn import build_plugin_layer
from mmengine.config import Config
from mmengine.registry import MODELS as ROOT
from mmengine.registry import init_default_scope

import cvattn_mm  # noqa: F401
from cvattn_mm.config import build_model
from cvattn_mm.insertion import insert_attention
from cvattn_mm.insertion.plugin_checks import check_plugins
from cvattn_mm.registry import MODELS

from ..test_registry import KNOWN_CLASHES
from ..tools.processes import load_tool
from .logs import logged_messages

CLASHES = [(name, where) for name, places in KNOWN_CLASHES.items() for where in places]
YOLOV5_S = 'mmyolo::yolov5/yolov5_s-v61_syncbn_8xb16-300e_coco.py'
#: The backbone of YOLOV5_S (widen factor 0.5: stages of 64, 128, 256 and 512 channels).
YOLOV5_S_BACKBONE = ("dict(type='YOLOv5CSPDarknet', deepen_factor=0.33, widen_factor=0.5, "
                     "norm_cfg=dict(type='BN', momentum=0.03, eps=0.001), "
                     "act_cfg=dict(type='SiLU', inplace=True))")


def registry_at(where: str):
    """The registry named ``'<module>.<attribute>'`` (``'mmyolo.registry.MODELS'``)."""
    module, attr = where.rsplit('.', 1)
    return getattr(importlib.import_module(module), attr)


def foreign_warnings(messages):
    return [m for m in messages if m.startswith('plugins=: type')]


class TwoConvs(nn.Module):

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.conv1(x))


def inserted_types(model):
    return [type(a) for site in model.attention_sites.values() for a in site.attentions.values()]


@pytest.mark.parametrize('name,where', CLASHES)
def test_insertions_build_ours_under_the_other_toolboxs_scope(name, where):
    registry = registry_at(where)
    init_default_scope(registry.scope)
    theirs = registry.get(name)  # imports the toolbox's modules (its registry's locations)
    assert theirs is not None and theirs is not MODELS.get(name)
    # the clash is real: under that scope a build by name gives the other toolbox's class
    assert type(ROOT.build(dict(type=name, in_channels=16))) is theirs
    for attention in (name, dict(type=name)):
        model = insert_attention(TwoConvs(), [dict(attention=attention, at=['conv1', 'conv2'])],
                                 example_inputs=(torch.randn(1, 3, 8, 8), ))
        assert inserted_types(model) == [MODELS.get(name)] * 2
        assert model(torch.randn(2, 3, 9, 7)).shape == (2, 32, 9, 7)


@pytest.mark.parametrize('name,where', CLASHES)
def test_plugins_warn_and_the_scoped_name_builds_ours(name, where):
    registry = registry_at(where)
    theirs = registry.get(name)
    with logged_messages() as messages:
        check_plugins(dict(backbone=dict(plugins=[dict(cfg=dict(type=name))])), registry.scope)
    assert foreign_warnings(messages) == [
        f'plugins=: type {name!r} resolves to {theirs.__module__}.{theirs.__name__} in the '
        f"{registry.scope} scope, not to cvattn_mm's {name}; write type='cvattn_mm.{name}' "
        "for cvattn_mm's"]
    with logged_messages() as messages:
        check_plugins(dict(backbone=dict(plugins=[dict(cfg=dict(type=f'cvattn_mm.{name}'))])),
                      registry.scope)
    assert foreign_warnings(messages) == []
    init_default_scope(registry.scope)
    # mmcv's build_plugin_layer, which the toolboxes' plug-in hooks call
    assert type(build_plugin_layer(dict(type=name), in_channels=16)[1]) is theirs
    _, layer = build_plugin_layer(dict(type=f'cvattn_mm.{name}'), in_channels=16)
    assert type(layer) is MODELS.get(name)


def yolov5_config(tmp_path, model: str) -> Config:
    """YOLOv5-s of mmyolo with ``model`` merged into its model, as a user's config file."""
    path = tmp_path / 'yolov5_s_attention.py'
    path.write_text(f"_base_ = [{YOLOV5_S!r}]\n"
                    "custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)\n"
                    f'model = {model}\n')
    return Config.fromfile(str(path))


def run_detector(detector):
    """The detector's raw outputs (``mode='tensor'``) on one 64x64 image."""
    detector.eval()
    with torch.no_grad():
        return detector(torch.randn(1, 3, 64, 64), mode='tensor')


def test_insert_attention_in_a_yolo_config_builds_ours(tmp_path):
    cfg = yolov5_config(tmp_path, (
        f"dict(backbone=dict(_delete_=True, type='InsertAttention', module={YOLOV5_S_BACKBONE}, "
        "insertions=[dict(attention='CBAM', at=['stage2', 'stage3']), "
        "dict(attention=dict(type='CBAM', reduction=8), at='stage4')]))"))
    assert cfg.default_scope == 'mmyolo'
    with logged_messages() as messages:
        load_tool('train').check_model(cfg)
    assert foreign_warnings(messages) == []
    detector = build_model(cfg)
    cbams = [m for m in detector.modules() if type(m).__name__ == 'CBAM']
    assert [type(m) for m in cbams] == [MODELS.get('CBAM')] * 3
    assert [s.channels for s in detector.backbone.attention_sites.values()] == [128, 256, 512]
    outputs = run_detector(detector)
    assert [o.shape[-1] for o in outputs[0]] == [8, 4, 2]  # class scores at strides 8, 16, 32


def yolov5_with_plugins(tmp_path, plugin_type: str) -> Config:
    return yolov5_config(tmp_path, (
        f"dict(backbone=dict(plugins=[dict(cfg=dict(type='{plugin_type}'), "
        'stages=(False, False, True, True))]))'))


def test_yolo_backbone_plugins_warn_through_train(tmp_path):
    cfg = yolov5_with_plugins(tmp_path, 'CBAM')
    with logged_messages() as messages:
        load_tool('train').check_model(cfg)
    assert foreign_warnings(messages) == [
        "plugins=: type 'CBAM' resolves to mmyolo.models.plugins.cbam.CBAM in the mmyolo "
        "scope, not to cvattn_mm's CBAM; write type='cvattn_mm.CBAM' for cvattn_mm's"]
    assert {type(m).__module__ for m in build_model(cfg).modules()
            if type(m).__name__ == 'CBAM'} == {'mmyolo.models.plugins.cbam'}


def test_yolo_backbone_plugins_of_the_scoped_name_build_ours(tmp_path):
    cfg = yolov5_with_plugins(tmp_path, 'cvattn_mm.CBAM')
    with logged_messages() as messages:
        load_tool('train').check_model(cfg)
    assert foreign_warnings(messages) == []
    detector = build_model(cfg)
    backbone = detector.backbone
    # mmyolo appends a stage's plug-ins after its blocks
    assert [type(backbone.stage3[-1]), type(backbone.stage4[-1])] == [MODELS.get('CBAM')] * 2
    assert [backbone.stage3[-1].in_channels, backbone.stage4[-1].in_channels] == [256, 512]
    assert sum(type(m).__name__ == 'CBAM' for m in detector.modules()) == 2
    outputs = run_detector(detector)
    assert [o.shape[-1] for o in outputs[0]] == [8, 4, 2]


def test_the_report_lists_yolo_stage_plugins(tmp_path):
    """mmyolo's stage plug-ins (appended to the stages that ``stages=`` selects, every stage
    without it) are rows of the insertion report, as ResNet's Bottleneck plug-ins are."""
    from cvattn_mm.insertion.report import insertion_rows

    cfg = yolov5_config(tmp_path, (
        "dict(backbone=dict(plugins=[dict(cfg=dict(type='cvattn_mm.CBAM'), "
        "stages=(False, False, True, True)), dict(cfg=dict(type='cvattn_mm.SE'))]))"))
    rows = insertion_rows(build_model(cfg))
    assert [(r['module'], r['path'], r['via'], r['attention'], r['channels']) for r in rows] == [
        ('backbone', 'stage1.2', 'plugins stage1', 'SE', 64),
        ('backbone', 'stage2.2', 'plugins stage2', 'SE', 128),
        ('backbone', 'stage3.2', 'plugins stage3', 'CBAM', 256),
        ('backbone', 'stage3.3', 'plugins stage3', 'SE', 256),
        ('backbone', 'stage4.3', 'plugins stage4', 'CBAM', 512),  # after the SPPF
        ('backbone', 'stage4.4', 'plugins stage4', 'SE', 512)]
    assert all(r['params'] > 0 for r in rows)
