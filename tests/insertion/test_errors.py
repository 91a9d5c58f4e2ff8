"""Errors of insertion configs and ``plugins=`` that say what to write instead."""
import os.path as osp
import re
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope

import cvattn_mm  # noqa: F401
from cvattn_mm.insertion.plugin_checks import check_plugins
from cvattn_mm.registry import MODELS

from ..tools.processes import ROOT, load_tool

R18 = dict(type='ResNet', depth=18, base_channels=8, stem_channels=8)
R50 = dict(type='ResNet', depth=50, base_channels=8, stem_channels=8)
SK_CONFIG = osp.join(ROOT, 'configs/classification/resnet18/resnet18-sk_8xb32_in1k.py')


def with_attention(insertions, module=R18, scope='mmpretrain'):
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(dict(type='InsertAttention', module=module, insertions=insertions))


def plugins(plugin_type):
    return [dict(cfg=dict(type=plugin_type), stages=(False, True, True, True),
                 position='after_conv3')]


def test_sk_on_basic_blocks_names_the_pattern_of_its_config():
    message = ("at='paper': SK's paper position 'after_mid_norm' (after the residual "
               "branch's 3x3 conv and its norm, before its activation (the plug-in form of a "
               "replacement, e.g. SK)) is not defined for ResNet (of this configuration); use "
               "at='layer*.*.bn1' instead: a BasicBlock has no bottleneck 3x3 conv; its first "
               "3x3 conv's norm takes that role (as in "
               'configs/classification/resnet18/resnet18-sk_8xb32_in1k.py)')
    with pytest.raises(ValueError, match=re.escape(message)):
        with_attention([dict(attention=dict(type='SK'))])
    assert "at='layer*.*.bn1'" in Path(SK_CONFIG).read_text()
    model = with_attention([dict(attention=dict(type='SK', groups=8), at='layer*.*.bn1')])
    assert list(model.attention_sites) == [f'layer{i}-{j}-bn1' for i in (1, 2, 3, 4)
                                           for j in (0, 1)]


def test_insertions_must_be_a_list_of_dicts():
    message = ("insertions= takes a list of dicts such as [dict(attention=dict(type='CBAM'), "
               "at='paper')], got dict {'attention': {'type': 'CBAM'}} (put it in a list: "
               '[dict(...)])')
    with pytest.raises(ValueError, match=re.escape(message)):
        with_attention(dict(attention=dict(type='CBAM')))
    with pytest.raises(ValueError, match=re.escape("got str 'CBAM'")):
        with_attention('CBAM')


def test_attention_may_be_a_type_name():
    by_name = with_attention([dict(attention='ECA')])
    by_config = with_attention([dict(attention=dict(type='ECA'))])
    assert len(by_name.attention_sites) == 8
    assert by_name.state_dict().keys() == by_config.state_dict().keys()
    message = ("an insertion's attention is a config dict (dict(type='CBAM', reduction=8)) or "
               'a type name (\'CBAM\'), got 5')
    with pytest.raises(ValueError, match=re.escape(message)):
        with_attention([dict(attention=5)])


def test_unscoped_module_without_default_scope_names_the_fixes(monkeypatch):
    monkeypatch.setattr(DefaultScope, 'get_current_instance', classmethod(lambda cls: None))
    message = ("InsertAttention: module type 'ResNet' needs a scope, and no default scope is "
               "set: write a scoped type (type='mmpretrain.ResNet', 'mmdet.ResNet', "
               "'mmseg.ResNet'), or call mmengine.registry.init_default_scope('mmpretrain') "
               "(or 'mmdet', 'mmseg') before building")
    with pytest.raises(KeyError, match=re.escape(message)):
        MODELS.build(dict(type='InsertAttention', module=R18, insertions=[]))
    scoped = MODELS.build(dict(type='InsertAttention', module=dict(R18, type='mmpretrain.ResNet'),
                               insertions=[dict(attention='SE', at='layer4.1.bn2')]))
    assert list(scoped.attention_sites) == ['layer4-1-bn2']


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_plugin_type_typo_lists_close_names(scope):
    check_plugins(dict(type='RetinaNet', backbone=dict(R50, plugins=plugins('GC'))), scope)
    with pytest.raises(KeyError, match=re.escape(
            f"plugins=: plug-in type 'GCC' is not registered in the {scope} scope; closest: GC")):
        check_plugins(dict(backbone=dict(R50, plugins=plugins('GCC'))), scope)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_plugins_on_basic_blocks_point_to_insert_attention(scope):
    message = ("plugins= needs Bottleneck blocks, but ResNet depth=18 builds BasicBlocks "
               '(plug-ins need depth [50, 101, 152]); InsertAttention works on BasicBlocks: '
               "dict(type='InsertAttention', module=<this backbone without plugins>, "
               "insertions=[dict(attention=dict(type='GC'), at='paper')])")
    with pytest.raises(ValueError, match=re.escape(message)):
        check_plugins(dict(backbone=dict(R18, plugins=plugins('GC'))), scope)


def test_train_checks_plugins_before_building():
    cfg = Config(dict(default_scope='mmdet', model=dict(
        type='RetinaNet', backbone=dict(R50, plugins=plugins('ContextBlok')))))
    with pytest.raises(KeyError, match="'ContextBlok' is not registered in the mmdet scope; "
                                       'closest: ContextBlock'):
        load_tool('train').check_model(cfg)
