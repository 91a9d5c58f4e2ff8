"""ShuffleAttention: its equation, initialisation, shuffle, parameter count, maps, variants and
argument checks."""
import math

import pytest
import torch

from cvattn_mm.attention.channel_spatial.shuffle_attention import ShuffleAttention

from .contract import perturb_parameters, run_contract


@pytest.mark.parametrize('kwargs', [dict(groups=8), dict(groups=4, eps=1e-3),
                                    dict(groups=64, clamp_groups=False, in_channels=128)],
                         ids=['g8', 'g4-eps', 'strict-g64'])
def test_contract_variants(kwargs):
    kwargs = dict(dict(in_channels=64), **kwargs)
    run_contract(lambda: ShuffleAttention(**kwargs))


def sa_reference(x, groups, cw, cb, sw, sb, gn_w, gn_b, eps):
    """The paper's shuffle unit written from its equations with plain tensor ops: per group,
    a channel half gated by sigmoid(w_c GAP + b_c) and a spatial half gated by
    sigmoid(w_s GN + b_s) (GN: per-channel mean and biased variance over H, W, then the GN
    affine), concatenated, then a 2-group channel shuffle."""
    n, c, h, w = x.shape
    k = c // (2 * groups)
    out = torch.empty_like(x)
    y = torch.empty_like(x)
    for g in range(groups):
        for j in range(k):
            a = x[:, g * 2 * k + j]  # channel half, channel j
            s = a.mean((1, 2))
            y[:, g * 2 * k + j] = a * torch.sigmoid(cw[j] * s + cb[j])[:, None, None]
            b = x[:, g * 2 * k + k + j]  # spatial half, channel j
            mu = b.mean((1, 2), keepdim=True)
            var = ((b - mu) ** 2).mean((1, 2), keepdim=True)
            normed = (b - mu) / torch.sqrt(var + eps) * gn_w[j] + gn_b[j]
            y[:, g * 2 * k + k + j] = b * torch.sigmoid(sw[j] * normed + sb[j])
    for i in range(c // 2):
        out[:, 2 * i] = y[:, i]
        out[:, 2 * i + 1] = y[:, c // 2 + i]
    return out


@pytest.mark.parametrize('channels,groups,size', [(64, 8, (5, 7)), (32, 4, (6, 6)),
                                                  (64, 32, (1, 1)), (16, 2, (3, 9))])
def test_equation(channels, groups, size):
    torch.manual_seed(0)
    sa = perturb_parameters(ShuffleAttention(channels, groups=groups), scale=0.5).double()
    x = torch.randn(3, channels, *size, dtype=torch.float64)
    expected = sa_reference(x, groups, sa.cweight.flatten(), sa.cbias.flatten(),
                            sa.sweight.flatten(), sa.sbias.flatten(), sa.gn.weight,
                            sa.gn.bias, 1e-5)
    for mode in (True, False):  # no running statistics: train and eval compute the same
        sa.train(mode)
        torch.testing.assert_close(sa(x), expected)


def test_initialisation_is_the_scaled_shuffle():
    """The spec's check: at init out[:, 2i] = sigmoid(1) x[:, i] and
    out[:, 2i + 1] = sigmoid(1) x[:, C/2 + i] exactly."""
    x = torch.randn(2, 64, 6, 5)
    sa = ShuffleAttention(64, groups=8)
    sa.init_weights()
    out = sa(x)
    gate = torch.sigmoid(torch.ones(()))
    assert torch.equal(out[:, 0::2], gate * x[:, :32])
    assert torch.equal(out[:, 1::2], gate * x[:, 32:])
    assert torch.equal(sa.cweight, torch.zeros(1, 4, 1, 1))
    assert torch.equal(sa.sweight, torch.zeros(1, 4, 1, 1))
    assert torch.equal(sa.cbias, torch.ones(1, 4, 1, 1))
    assert torch.equal(sa.sbias, torch.ones(1, 4, 1, 1))
    assert abs(gate.item() - 1 / (1 + math.exp(-1))) < 1e-7


def test_shuffle_is_the_two_group_interleave():
    sa = ShuffleAttention(8, groups=2)
    y = torch.arange(8.).reshape(1, 8, 1, 1)
    assert sa.shuffle(y).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


@pytest.mark.parametrize('channels,groups', [(256, 64), (512, 64), (2048, 64), (256, 8),
                                             (64, 16)])
def test_parameter_count(channels, groups):
    sa = ShuffleAttention(channels, groups=groups)
    assert sum(p.numel() for p in sa.parameters()) == 3 * channels // groups
    if channels == 256 and groups == 64:
        assert sum(p.numel() for p in sa.parameters()) == 12


def test_state_dict_keys_are_the_official_ones():
    assert sorted(ShuffleAttention(256).state_dict()) == [
        'cbias', 'cweight', 'gn.bias', 'gn.weight', 'sbias', 'sweight']
    assert ShuffleAttention(256).cweight.shape == (1, 2, 1, 1)
    assert ShuffleAttention(256).gn.num_groups == 2


@pytest.mark.parametrize('channels,groups,expected', [(64, 64, 32), (32, 64, 16), (16, 64, 8),
                                                      (2, 64, 1), (256, 64, 64), (64, 8, 8)])
def test_groups_are_clamped_for_narrow_inputs(channels, groups, expected):
    assert ShuffleAttention(channels, groups=groups).num_groups == expected


def test_gates_rebuild_the_forward_and_the_maps():
    torch.manual_seed(0)
    sa = perturb_parameters(ShuffleAttention(32, groups=4), scale=0.5).eval()
    x = torch.randn(2, 32, 7, 10)
    with torch.no_grad():
        channel_gate, spatial_gate = sa.gates(x)
        assert channel_gate.shape == (8, 4, 1, 1) and spatial_gate.shape == (8, 4, 7, 10)
        gate = torch.cat((channel_gate.expand(-1, -1, 7, 10), spatial_gate), 1)
        y = (x.reshape(8, 8, 7, 10) * gate).reshape(2, 32, 7, 10)
        torch.testing.assert_close(sa(x), sa.shuffle(y))
        maps = sa.attention_maps(x)
    assert set(maps) == {'channel_gate', 'spatial_gate'}
    torch.testing.assert_close(maps['channel_gate'].values, gate.mean((2, 3)).reshape(2, 32))
    torch.testing.assert_close(maps['spatial_gate'].values,
                               spatial_gate.reshape(2, 16, 7, 10).mean(1))


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(in_channels=7), 'in_channels'),
    (dict(in_channels=48, groups=16), 'in_channels'), (dict(groups=0), 'groups'),
    (dict(clamp_groups=1), 'clamp_groups'), (dict(eps=0.), 'eps'),
    (dict(in_channels=64, clamp_groups=False), 'in_channels')])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'ShuffleAttention: {argument}'):
        ShuffleAttention(**dict(dict(in_channels=64), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyShuffleAttention', (ShuffleAttention, ), {'_abbr_': 'my_sa'})
    with pytest.raises(ValueError, match='MyShuffleAttention: groups'):
        sub(64, groups=0)
