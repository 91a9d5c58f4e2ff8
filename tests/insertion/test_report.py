"""The insertion report (``cvattn-mm insertions``): inserted modules and ``plugins=``."""
import torch.nn as nn
from mmengine.registry import DefaultScope

import cvattn_mm  # noqa: F401
from cvattn_mm.attention.catalog import attention_classes
from cvattn_mm.insertion.places import resolve_places
from cvattn_mm.insertion.report import format_rows, insertion_rows
from cvattn_mm.registry import MODELS

LAST_STAGE = (False, False, False, True)
BACKBONE = dict(
    type='InsertAttention',
    module=dict(type='ResNet', depth=50, base_channels=8, stem_channels=8,
                plugins=[dict(cfg=dict(type='GC'), stages=LAST_STAGE, position='after_conv3'),
                         dict(cfg=dict(type='CBAM'), stages=LAST_STAGE,
                              position='after_conv2')]),
    insertions=[dict(attention=dict(type='SE'), at='layer4.1.bn3'),
                dict(attention=dict(type='ECA'), at='layer4.0.conv2:input', identity_init=True)])


class Detector(nn.Module):
    """A model whose backbone holds both kinds of attention, as a detector's does."""

    def __init__(self):
        super().__init__()
        with DefaultScope.overwrite_default_scope('mmdet'):
            self.backbone = MODELS.build(BACKBONE)


def test_rows_list_inserted_modules_and_plugins_in_forward_order():
    rows = insertion_rows(Detector())
    assert [(r['module'], r['path'], r['channels'], r['attention'], r['via']) for r in rows] == [
        ('backbone', 'layer4.0.conv2:input', 64, 'ECA', 'insertions'),
        ('backbone', 'layer4.0.cbam', 64, 'CBAM', 'plugins after_conv2'),
        ('backbone', 'layer4.0.gc', 256, 'GC', 'plugins after_conv3'),
        ('backbone', 'layer4.1.bn3', 256, 'SE', 'insertions'),
        ('backbone', 'layer4.1.cbam', 64, 'CBAM', 'plugins after_conv2'),
        ('backbone', 'layer4.1.gc', 256, 'GC', 'plugins after_conv3'),
        ('backbone', 'layer4.2.cbam', 64, 'CBAM', 'plugins after_conv2'),
        ('backbone', 'layer4.2.gc', 256, 'GC', 'plugins after_conv3'),
    ]
    assert [r['params'] for r in rows] == [4, 680, 8752, 8464, 680, 8752, 680, 8752]
    assert [r['identity_init'] for r in rows] == [True] + [False] * 7


def test_inserted_paths_paste_into_at_of_their_module():
    model = Detector()
    for row in insertion_rows(model):
        if row['via'] == 'insertions':
            module = model.get_submodule(row['module'])
            cls = attention_classes()[row['attention']]
            assert resolve_places(module, row['path'], cls) == [row['path']]


def test_table_rows_and_totals():
    lines = format_rows(insertion_rows(Detector()), 1_000_000).splitlines()
    assert lines[0].split() == ['module', 'path', 'channels', 'layout', 'attention', 'params',
                                'via']
    assert lines[1].split() == ['backbone', 'layer4.0.conv2:input', '64', 'nchw', 'ECA',
                                '(identity', 'init)', '4', 'insertions']
    assert lines[3].split() == ['backbone', 'layer4.0.gc', '256', 'nchw', 'GC', '8,752',
                                'plugins', 'after_conv3']
    assert lines[-2] == ('8 attention modules (2 inserted, 6 plug-ins), 36,764 parameters '
                         'added; model 1,000,000 parameters (963,236 without attention)')
    assert lines[-1] == ('paths of inserted modules are relative to their module: paste them '
                         "into at= (replace= for replacing modules) of that module's "
                         'InsertAttention')


def test_plugins_alone_and_the_model_itself():
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(BACKBONE['module'])
    rows = insertion_rows(model)
    assert {(r['module'], r['path']) for r in rows} >= {('', 'layer4.2.gc')}
    lines = format_rows(rows, 2_000_000).splitlines()
    assert lines[1].split()[:2] == ['(model)', 'layer4.0.cbam']
    assert lines[-1].startswith('6 attention modules (0 inserted, 6 plug-ins), 28,296 ')
