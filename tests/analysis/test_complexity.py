"""FLOP counting conventions: mmengine's multiply-add count and the element-wise count
(cvattn_mm/analysis/elementwise_flops.py), and the convention line of get_flops."""
import importlib.util
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import cvattn_mm  # noqa: F401
from cvattn_mm.analysis.complexity import config_complexity, count_flops
from cvattn_mm.analysis.elementwise_flops import DEFAULT_CONVENTION, ELEMENTWISE_CONVENTION
from cvattn_mm.attention.catalog import attention_classes
from cvattn_mm.attention.channel.se import SE

ROOT = Path(__file__).parents[2]


class Lambda(nn.Module):
    """A module whose forward is ``fn``."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def test_se_elementwise_adds_pooling_activations_and_gating():
    n, c, hidden, hw = 2, 32, 8, 5 * 7
    x = torch.randn(n, c, 5, 7)
    se = SE(c, reduction=4)
    fcs = n * 2 * c * hidden
    assert count_flops(se, x) == fcs
    # mean over HW (n c hw) + relu (n hidden) + sigmoid (n c) + product x * g (n c hw)
    assert count_flops(se, x, elementwise=True) == fcs + n * (2 * c * hw + hidden + c)


def test_parameter_free_simam_counts_zero_by_default_and_its_work_with_elementwise():
    n, c, h, w = 2, 8, 5, 7
    simam = attention_classes()['SimAM'](c)
    x = torch.randn(n, c, h, w)
    assert count_flops(simam, x) == 0
    # per element: mean, x - mu, square, mean of d, d * inv, + 0.5, sigmoid, x * g; then a
    # few ops per channel (scale, bias, reciprocal) and on sizes
    per_element = 8 * n * c * h * w
    assert per_element < count_flops(simam, x, elementwise=True) <= per_element + 6 * n * c


def test_elementwise_rules_of_each_op_kind():
    x = torch.randn(1, 4, 8, 8)
    numel = x.numel()
    cases = {
        'in-place activation': (nn.ReLU(inplace=True), numel),
        'binary op': (Lambda(lambda t: t * t + 1), 2 * numel),
        'reduction': (Lambda(lambda t: t.amax(1)), numel),
        'windowed max pool': (nn.MaxPool2d(3, 2, 1), 4 * 4 * 4 * 9),
        'windowed avg pool, int kernel': (Lambda(lambda t: F.avg_pool2d(t, 2)), 4 * 4 * 4 * 4),
        'softmax': (nn.Softmax(-1), 3 * numel),
        'addcmul': (Lambda(lambda t: torch.addcmul(t, t, t)), 2 * numel),
        'view and padding': (Lambda(lambda t: F.pad(t.flatten(1), (1, 1))), 0),
    }
    for name, (module, expected) in cases.items():
        assert count_flops(module, x) == 0, name
        assert count_flops(module, x, elementwise=True) == expected, name


def test_every_registered_module_counts_more_with_elementwise():
    x = torch.randn(1, 64, 6, 7)  # 64: PyramidSplitAttention's branches need C / 4 by 16
    for name, cls in attention_classes().items():
        module = cls(64)
        assert count_flops(module, x, elementwise=True) > count_flops(module, x), name


CONFIG = """
default_scope = 'mmpretrain'
custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='InsertAttention', module=dict(type='ResNet', depth=18),
                  insertions=[dict(attention=dict(type='SimAM'), at='paper')]),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=512,
              loss=dict(type='CrossEntropyLoss')))
"""


def load_get_flops():
    path = ROOT / 'tools' / 'analysis' / 'get_flops.py'
    spec = importlib.util.spec_from_file_location('get_flops', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_get_flops_states_its_convention_and_counts_simam_with_elementwise(tmp_path, capsys):
    path = tmp_path / 'resnet18_simam.py'
    path.write_text(CONFIG)
    tool = load_get_flops()
    assert tool.main([str(path), '--shape', '32']) == 0
    default = capsys.readouterr().out
    assert DEFAULT_CONVENTION in default and 'use --elementwise' in default
    assert tool.main([str(path), '--shape', '32', '--elementwise']) == 0
    elementwise = capsys.readouterr().out
    assert ELEMENTWISE_CONVENTION in elementwise and DEFAULT_CONVENTION not in elementwise
    plain, counted = (config_complexity(str(path), (32, 32), elementwise=e) for e in (False, True))
    assert plain['added_flops'] == 0 and plain['elementwise'] is False
    assert counted['added_flops'] > 0 and counted['elementwise'] is True
    # the baseline's own element-wise work (ReLUs, residual sums) is counted too
    assert counted['base_flops'] > plain['base_flops']
    assert f'{counted["added_flops"]:,}' in elementwise
