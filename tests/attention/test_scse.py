"""SCSE: each combination against its formula, parameters, maps, arguments."""
import functools

import pytest
import torch

from cvattn_mm.attention.channel_spatial.scse import SCSE
from cvattn_mm.visualization import extract_maps

from . import contract


def scse_params(channels, reduction=2):
    h = channels // reduction
    return (2 * channels * h + h + channels) + (channels + 1)


@pytest.mark.parametrize('kwargs', [
    dict(combination='add'),
    dict(combination='mul'),
    dict(reduction=16, act_cfg=dict(type='GELU')),
    dict(reduction=16, min_channels=4),
], ids=str)
def test_contract_variants(kwargs):
    contract.run_contract(functools.partial(SCSE, 32, **kwargs))


def direct_scse(module, x, combination):
    """cSE and sSE written out with matrix products, combined per the papers."""
    pooled = x.mean((2, 3))
    hid = torch.relu(pooled @ module.fc1.weight.flatten(1).T + module.fc1.bias)
    g_c = torch.sigmoid(hid @ module.fc2.weight.flatten(1).T + module.fc2.bias)
    cse = x * g_c[:, :, None, None]
    logits = torch.einsum('nchw,c->nhw', x, module.spatial_conv.weight.flatten())
    g_s = torch.sigmoid(logits + module.spatial_conv.bias)
    sse = x * g_s[:, None]
    if combination == 'max':
        return torch.where(cse >= sse, cse, sse)
    if combination == 'add':
        return cse + sse
    return x * g_c[:, :, None, None] * g_s[:, None]


@pytest.mark.parametrize('combination', ['max', 'add', 'mul'])
@pytest.mark.parametrize('size', [(6, 6), (5, 9), (1, 1)])
def test_equation_against_direct_computation(combination, size):
    torch.manual_seed(0)
    module = contract.perturb_parameters(SCSE(24, combination=combination), 0.5)
    x = torch.randn(2, 24, *size)
    with torch.no_grad():
        torch.testing.assert_close(module(x), direct_scse(module, x, combination),
                                   rtol=1e-5, atol=1e-6)


def test_defaults_follow_official_code():
    """r = 2 and 'max': the output is the larger of cSE and sSE at every element."""
    module = contract.perturb_parameters(SCSE(16), 0.5)
    assert module.combination == 'max' and module.reduction == 2
    assert module.fc1.weight.shape == (8, 16, 1, 1)
    assert module.spatial_conv.weight.shape == (1, 16, 1, 1)
    x = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        y = module(x)
        g_c, g_s = module.gates(x)  # their values: direct_scse checks them
        cse, sse = x * g_c, x * g_s
    assert (y >= cse).all() and (y >= sse).all()
    assert ((y == cse) | (y == sse)).all()
    assert (y == cse).any() and (y == sse).any()


def test_max_with_autograd_matches_maximum():
    """With autograd on, 'max' is computed as b + relu(a - b): same values and gradients
    as torch.maximum(a, b) (away from ties)."""
    torch.manual_seed(0)
    module = contract.perturb_parameters(SCSE(16), 0.5)
    x = torch.randn(2, 16, 5, 7, requires_grad=True)
    y = module(x)
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), [x, *module.parameters()])
    g_c = torch.sigmoid(module.fc2(torch.relu(module.fc1(x.mean((2, 3), keepdim=True)))))
    ref = torch.maximum(x * g_c, x * torch.sigmoid(module.spatial_conv(x)))
    ref_grads = torch.autograd.grad((ref * g).sum(), [x, *module.parameters()])
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('channels', [256, 2048])
def test_parameter_count(channels):
    module = SCSE(channels)
    params = sum(p.numel() for p in module.parameters())
    print(f'SCSE C={channels}: {params} params')
    assert params == scse_params(channels)
    assert sum(p.numel() for p in SCSE(channels, reduction=16).parameters()) == scse_params(
        channels, 16)


@pytest.mark.parametrize('kwargs, argument', [
    (dict(in_channels=0), 'in_channels'),
    (dict(in_channels=16, reduction=0), 'reduction'),
    (dict(in_channels=16, reduction=17), 'reduction'),
    (dict(in_channels=16, min_channels=0), 'min_channels'),
    (dict(in_channels=16, combination='concat'), 'combination'),
    (dict(in_channels=16, combination='Max'), 'combination'),
])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'SCSE.*{argument}'):
        SCSE(**kwargs)


@pytest.mark.parametrize('combination', ['max', 'add', 'mul'])
def test_maps_rebuild_the_forward(combination):
    torch.manual_seed(0)
    module = contract.perturb_parameters(SCSE(32, combination=combination), scale=0.5).eval()
    x = torch.randn(2, 32, 7, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x)
        g_c, g_s = module.gates(x)
        maps = extract_maps(module, x)
    rebuilt = {'max': torch.maximum(x * g_c, x * g_s), 'add': x * (g_c + g_s),
               'mul': x * g_c * g_s}[combination]
    contract.assert_close_rel(rebuilt, expected, 1e-4, f'SCSE {combination}')
    assert set(maps) == {'channel_gate', 'spatial_gate'}
    assert torch.equal(maps['channel_gate'].values, g_c.flatten(1))
    assert torch.equal(maps['spatial_gate'].values, g_s[:, 0])


@pytest.mark.parametrize('kwargs, argument', [
    (dict(reduction=0), 'reduction'), (dict(combination='concat'), 'combination')])
def test_errors_name_the_subclass(kwargs, argument):
    class MySCSE(SCSE):
        _abbr_ = 'my_scse'

    with pytest.raises(ValueError, match=f'^MySCSE: {argument}'):
        MySCSE(16, **kwargs)
