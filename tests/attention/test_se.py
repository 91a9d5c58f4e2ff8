"""SE: its equation, parameter count, variants, maps and argument checks."""
import pytest
import torch

from cvattn_mm.attention.channel.se import SE
from cvattn_mm.visualization import extract_maps

from .contract import assert_close_rel, perturb_parameters, run_contract


@pytest.mark.parametrize('kwargs', [dict(reduction=4), dict(reduction=64, min_channels=8),
                                    dict(act_cfg=dict(type='GELU'),
                                         gate_cfg=dict(type='HSigmoid'))],
                         ids=['r4', 'floor', 'gelu_hsigmoid'])
def test_contract_variants(kwargs):
    run_contract(lambda: SE(64, **kwargs))


def test_equation():
    torch.manual_seed(0)
    se = SE(32, reduction=4).double()
    x = torch.randn(2, 32, 5, 7, dtype=torch.float64)
    s = x.mean((2, 3))  # squeeze
    w1, b1 = se.fc1.weight.flatten(1), se.fc1.bias
    w2, b2 = se.fc2.weight.flatten(1), se.fc2.bias
    gate = torch.sigmoid(torch.relu(s @ w1.T + b1) @ w2.T + b2)  # excitation
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])


@pytest.mark.parametrize('channels,reduction', [(256, 16), (2048, 16), (64, 4)])
def test_parameter_count(channels, reduction):
    hidden = channels // reduction
    expected = 2 * channels * hidden + hidden + channels  # two biased FC layers
    assert sum(p.numel() for p in SE(channels, reduction).parameters()) == expected


def test_hidden_width_floor():
    assert SE(64, reduction=32, min_channels=8).fc1.out_channels == 8
    assert SE(64, reduction=128, min_channels=8).fc1.out_channels == 8


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(in_channels=8.0), 'in_channels'),
    (dict(reduction=0), 'reduction'), (dict(reduction=128), 'reduction'),
    (dict(min_channels=0), 'min_channels'), (dict(reduction=True), 'reduction')])
def test_invalid_arguments(kwargs, argument):
    kwargs = dict(dict(in_channels=64), **kwargs)
    with pytest.raises(ValueError, match=rf'SE: {argument}'):
        SE(**kwargs)


@pytest.mark.parametrize('kwargs', [{}, dict(act_cfg=dict(type='GELU'),
                                             gate_cfg=dict(type='HSigmoid'))],
                         ids=['default', 'gelu_hsigmoid'])
def test_maps_rebuild_the_forward(kwargs):
    torch.manual_seed(0)
    module = perturb_parameters(SE(32, **kwargs), scale=0.5).eval()
    x = torch.randn(2, 32, 7, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x)
        gate = module.channel_gate(x.mean((2, 3), keepdim=True))
        maps = extract_maps(module, x)
    assert_close_rel(x * gate, expected, 1e-4, 'x * channel_gate')
    assert set(maps) == {'channel_gate'}
    assert torch.equal(maps['channel_gate'].values, gate.flatten(1))


def test_errors_name_the_subclass():
    class MySE(SE):
        _abbr_ = 'my_se'

    with pytest.raises(ValueError, match='^MySE: reduction'):
        MySE(64, reduction=0)
