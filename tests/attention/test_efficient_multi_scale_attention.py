"""EfficientMultiScaleAttention (EMA): its equations, parameter count, initialisation, the
spec's group checks, maps and argument checks."""
import math

import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.channel_spatial.efficient_multi_scale_attention import (
    EfficientMultiScaleAttention as EMAMS,
)

from .contract import perturb_parameters, run_contract


@pytest.mark.parametrize('factory', [lambda: EMAMS(32, factor=8), lambda: EMAMS(16, factor=1)],
                         ids=['factor8', 'factor1'])
def test_contract_variants(factory):
    run_contract(factory)


def ema_reference(x, factor, w1, b1, w3, b3, gn_w, gn_b, eps=1e-5):
    """The paper's EMA written group by group from its equations (float64)."""
    n, c, h, w = x.shape
    cg = c // factor
    out = torch.empty_like(x)
    for i in range(n):
        for k in range(factor):
            g = x[i, k * cg:(k + 1) * cg]  # (cg, H, W)
            z_h = g.mean(2)  # (cg, H): average along W
            z_w = g.mean(1)  # (cg, W): average along H
            a_h = torch.sigmoid(w1 @ z_h + b1[:, None])
            a_w = torch.sigmoid(w1 @ z_w + b1[:, None])
            u = g * a_h[:, :, None] * a_w[:, None, :]
            mu = u.mean((1, 2), keepdim=True)
            var = ((u - mu) ** 2).mean((1, 2), keepdim=True)
            x1 = (u - mu) / torch.sqrt(var + eps) * gn_w[:, None, None] + gn_b[:, None, None]
            x2 = F.conv2d(g[None], w3, b3, padding=1)[0]
            e1 = torch.exp(x1.mean((1, 2)))
            e2 = torch.exp(x2.mean((1, 2)))
            s1, s2 = e1 / e1.sum(), e2 / e2.sum()
            m = (s1[:, None, None] * x2).sum(0) + (s2[:, None, None] * x1).sum(0)
            out[i, k * cg:(k + 1) * cg] = g * torch.sigmoid(m)
    return out


@pytest.mark.parametrize('channels,factor,size', [(64, 32, (7, 9)), (32, 8, (5, 4)),
                                                  (16, 4, (1, 1)), (8, 1, (6, 3))])
@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_equation(channels, factor, size, mode):
    torch.manual_seed(0)
    ema = perturb_parameters(EMAMS(channels, factor=factor), scale=0.5).double()
    getattr(ema, mode)()
    x = torch.randn(2, channels, *size, dtype=torch.float64)
    expected = ema_reference(x, factor, ema.conv1x1.weight.flatten(1), ema.conv1x1.bias,
                             ema.conv3x3.weight, ema.conv3x3.bias, ema.gn.weight, ema.gn.bias)
    torch.testing.assert_close(ema(x), expected)


@pytest.mark.parametrize('channels,factor', [(256, 32), (64, 32), (512, 32), (2048, 32),
                                             (64, 8), (48, 16)])
def test_parameter_count(channels, factor):
    c = channels // factor
    count = sum(p.numel() for p in EMAMS(channels, factor=factor).parameters())
    assert count == 10 * c * c + 4 * c
    if (channels, factor) == (256, 32):
        assert count == 672


def test_initialisation_is_pytorch_default():
    ema = EMAMS(256)
    ema.init_weights()
    assert torch.equal(ema.gn.weight, torch.ones(8)) and torch.equal(ema.gn.bias, torch.zeros(8))
    for conv in (ema.conv1x1, ema.conv3x3):
        bound = 1 / math.sqrt(conv.weight[0].numel())  # kaiming_uniform(a=sqrt(5)) bound
        assert conv.weight.abs().max() <= bound and conv.bias.abs().max() <= bound
        assert conv.weight.abs().max() > bound / 2


def test_state_dict_keys_are_the_official_ones():
    assert sorted(EMAMS(64).state_dict()) == ['conv1x1.bias', 'conv1x1.weight', 'conv3x3.bias',
                                              'conv3x3.weight', 'gn.bias', 'gn.weight']
    assert EMAMS(64).conv3x3.weight.shape == (2, 2, 3, 3)


def test_one_gate_per_group_and_position():
    """The spec's check: out / x is the same for the c channels of a group at every
    position, and permuting whole groups permutes the output."""
    torch.manual_seed(0)
    ema = perturb_parameters(EMAMS(64, factor=16), scale=0.5).double().eval()
    x = torch.randn(2, 64, 6, 5, dtype=torch.float64)
    ratio = (ema(x) / x).reshape(2, 16, 4, 6, 5)
    torch.testing.assert_close(ratio, ratio[:, :, :1].expand_as(ratio))
    perm = torch.randperm(16)
    channels = (perm[:, None] * 4 + torch.arange(4)).flatten()
    torch.testing.assert_close(ema(x[:, channels]), ema(x)[:, channels])


def test_one_position_map_gn_returns_its_bias():
    ema = perturb_parameters(EMAMS(32, factor=8), scale=0.5).double()
    x = torch.randn(3, 32, 1, 1, dtype=torch.float64)
    _, x1, _ = ema.branches(x)
    torch.testing.assert_close(x1, ema.gn.bias[None, :, None, None].expand(24, 4, 1, 1))


def test_gate_rebuilds_the_forward_and_is_the_map():
    ema = perturb_parameters(EMAMS(32, factor=8), scale=0.5).eval()
    x = torch.randn(2, 32, 7, 10)
    with torch.no_grad():
        gate = ema.gate(x)
        assert gate.shape == (2, 8, 7, 10)
        rebuilt = (x.reshape(2, 8, 4, 7, 10) * gate[:, :, None]).reshape(2, 32, 7, 10)
        torch.testing.assert_close(ema(x), rebuilt)
        maps = ema.attention_maps(x)
    assert set(maps) == {'gate'}
    assert maps['gate'].kind == 'spatial'
    torch.testing.assert_close(maps['gate'].values, gate.mean(1))
    assert maps['gate'].values.min() >= 0 and maps['gate'].values.max() <= 1


@pytest.mark.parametrize('kwargs,message', [
    (dict(in_channels=0), 'in_channels'), (dict(factor=0), 'factor'),
    (dict(factor=2.5), 'factor'), (dict(in_channels=48), 'in_channels=48 must be divisible'),
    (dict(in_channels=16), 'in_channels=16 must be at least factor=32')])
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=rf'EfficientMultiScaleAttention: {message}'):
        EMAMS(**dict(dict(in_channels=64), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyEMA', (EMAMS, ), {'_abbr_': 'my_ema'})
    with pytest.raises(ValueError, match='MyEMA: in_channels=40 must be divisible'):
        sub(40, factor=32)
