"""The fast-backward switch and its rules (docs/architecture.md, "Fast backwards")."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from cvattn_mm.attention import fast_backward as fb
from cvattn_mm.attention.pointwise import PointwiseConv2d


def test_context_manager_sets_and_restores_the_switch():
    assert fb.fast_backward_enabled()
    with fb.fast_backward(False):
        assert not fb.fast_backward_enabled()
        with fb.fast_backward(True):
            assert fb.fast_backward_enabled()
        assert not fb.fast_backward_enabled()
    assert fb.fast_backward_enabled()


def test_switch_takes_a_bool_only():
    with pytest.raises(ValueError, match='set_fast_backward: enabled must be True or False'):
        fb.set_fast_backward('no')


@pytest.mark.parametrize('value,enabled', [('0', False), ('off', False), ('False', False),
                                           ('1', True), ('', True)])
def test_environment_variable(value, enabled):
    code = ('from cvattn_mm.attention.fast_backward import fast_backward_enabled; '
            'print(fast_backward_enabled())')
    env = dict(os.environ, **{fb.ENV_VARIABLE: value})
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == str(enabled)


def test_params_only_when_a_hand_written_backward_is_to_run():
    layer = nn.Linear(3, 3)
    x = torch.randn(2, 3)
    assert fb.fast_backward_params((x, ), layer) == tuple(layer.parameters())
    assert fb.fast_backward_params((x, ), [layer, layer]) == tuple(layer.parameters())
    with torch.no_grad():
        assert fb.fast_backward_params((x, ), layer) is None
    with fb.fast_backward(False):
        assert fb.fast_backward_params((x, ), layer) is None
    layer.requires_grad_(False)
    assert fb.fast_backward_params((x, ), layer) is None
    assert fb.fast_backward_params((x.requires_grad_(), ), layer) is not None


def test_plain_layer():
    conv = PointwiseConv2d(4, 1)
    assert fb.is_plain_layer(conv, PointwiseConv2d)
    assert not fb.is_plain_layer(nn.Conv2d(4, 1, 1), PointwiseConv2d)
    handle = conv.register_forward_hook(lambda *args: None)
    assert not fb.is_plain_layer(conv, PointwiseConv2d)
    handle.remove()
    assert fb.is_plain_layer(conv, PointwiseConv2d)
