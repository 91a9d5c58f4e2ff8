"""SGE: its equation, initialisation, parameter count, maps, variants and argument checks."""
import math

import pytest
import torch

from cvattn_mm.attention.spatial.sge import SGE

from .contract import perturb_parameters, run_contract


@pytest.mark.parametrize('kwargs', [dict(std='biased'), dict(groups=8), dict(eps=0.1),
                                    dict(groups=48)],
                         ids=['biased', 'groups8', 'eps', 'groups_gcd'])
def test_contract_variants(kwargs):
    run_contract(lambda: SGE(64, **kwargs))


def sge_reference(x, weight, bias, groups, eps, unbiased):
    """The paper's equations with plain ops, one group at a time: the similarity of every
    position to the group's average feature, normalised over the positions, scaled and shifted
    per group, sigmoid, times the group's channels."""
    n, c, h, w = x.shape
    size = c // groups
    out = torch.empty_like(x)
    for g in range(groups):
        xg = x[:, g * size:(g + 1) * size]  # (N, C/G, H, W)
        mean_feature = xg.mean((2, 3), keepdim=True)  # GAP
        sim = (xg * mean_feature).sum(1)  # (N, H, W)
        mu = sim.mean((1, 2), keepdim=True)
        var = ((sim - mu) ** 2).sum((1, 2), keepdim=True) / (h * w - 1 if unbiased else h * w)
        t = (sim - mu) / (var.sqrt() + eps)
        gate = torch.sigmoid(weight[0, g] * t + bias[0, g])  # (N, H, W)
        out[:, g * size:(g + 1) * size] = xg * gate[:, None]
    return out


@pytest.mark.parametrize('kwargs,groups,unbiased', [
    (dict(), 16, True), (dict(groups=4), 4, True), (dict(groups=4, std='biased'), 4, False),
    (dict(groups=4, eps=0.5), 4, True), (dict(groups=12), 4, True)],
    ids=['default', 'groups4', 'biased', 'eps', 'gcd'])
def test_equation(kwargs, groups, unbiased):
    torch.manual_seed(0)
    sge = perturb_parameters(SGE(16, **kwargs), scale=0.5).double()
    assert sge.groups == groups
    x = torch.randn(3, 16, 5, 7, dtype=torch.float64)
    expected = sge_reference(x, sge.weight.flatten()[None], sge.bias.flatten()[None], groups,
                             sge.eps, unbiased)
    torch.testing.assert_close(sge(x), expected)


def test_default_groups_at_resnet_widths():
    for channels in (64, 256, 2048):
        assert SGE(channels).groups == 64
    assert SGE(32).groups == 32 and SGE(96).groups == 32 and SGE(3).groups == 1


def test_one_position_map():
    x = torch.randn(2, 8, 1, 1, dtype=torch.float64)
    for std in ('unbiased', 'biased'):
        sge = perturb_parameters(SGE(8, groups=4, std=std), scale=0.5).double()
        gate = torch.sigmoid(sge.bias).repeat_interleave(2, 1)
        torch.testing.assert_close(sge(x), x * gate)
    # the official code: unbiased std of one value, NaN
    assert SGE(8, groups=4, std='unbiased_nan')(x.float()).isnan().all()


def test_unbiased_nan_equals_unbiased_on_larger_maps():
    a = perturb_parameters(SGE(16, groups=4), scale=0.5)
    b = SGE(16, groups=4, std='unbiased_nan')
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 16, 3, 4)
    assert torch.equal(a(x), b(x))


def test_check_initialisation_is_sigmoid_one_times_x():
    x = torch.randn(4, 128, 6, 5)
    sge = SGE(128)
    sge.init_weights()
    assert torch.equal(sge.weight, torch.zeros(1, 64, 1, 1))
    assert torch.equal(sge.bias, torch.ones(1, 64, 1, 1))
    assert torch.equal(sge(x), x * torch.sigmoid(torch.tensor(1.)))


@pytest.mark.parametrize('channels,groups', [(64, 64), (256, 64), (2048, 64), (64, 8),
                                             (48, 64)])
def test_parameter_count(channels, groups):
    params = sum(p.numel() for p in SGE(channels, groups=groups).parameters())
    assert params == 2 * math.gcd(channels, groups)
    if channels % 64 == 0 and groups == 64:
        assert params == 128


def test_state_dict_keys_are_the_official_ones():
    sge = SGE(128)
    assert sorted(sge.state_dict()) == ['bias', 'weight']
    assert sge.weight.shape == sge.bias.shape == (1, 64, 1, 1)


def test_gates_rebuild_the_forward_and_give_the_map():
    sge = perturb_parameters(SGE(16, groups=4), scale=0.5).eval()
    x = torch.randn(2, 16, 7, 10)
    with torch.no_grad():
        gate = sge.group_gates(x)
        assert gate.shape == (2, 4, 7, 10)
        torch.testing.assert_close(sge(x), x * gate.repeat_interleave(4, 1))
        t = sge.normalised_similarity(x)
        torch.testing.assert_close(gate, torch.sigmoid(t * sge.weight + sge.bias))
        torch.testing.assert_close(t.mean((2, 3)), torch.zeros(2, 4), atol=1e-6, rtol=0)
        maps = sge.attention_maps(x)
    assert set(maps) == {'spatial_gate'}
    assert maps['spatial_gate'].kind == 'spatial'
    torch.testing.assert_close(maps['spatial_gate'].values, gate.mean(1))


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(groups=0), 'groups'), (dict(eps=-1.), 'eps'),
    (dict(std='sample'), 'std')])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'SGE: {argument}'):
        SGE(**dict(dict(in_channels=8), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MySGE', (SGE, ), {'_abbr_': 'my_sge'})
    with pytest.raises(ValueError, match='MySGE: std'):
        sub(8, std='sample')
