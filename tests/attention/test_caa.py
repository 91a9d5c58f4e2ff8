"""CAA: its equation, initialisation, parameter count, maps, variants and argument checks."""
import math

import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.channel_spatial.caa import CAA, CLASS_DEFAULT_ACT, CLASS_DEFAULT_NORM

from .contract import perturb_parameters, run_contract

CLASS_DEFAULTS = dict(norm_cfg=CLASS_DEFAULT_NORM, act_cfg=CLASS_DEFAULT_ACT)


@pytest.mark.parametrize('kwargs', [
    CLASS_DEFAULTS, dict(h_kernel_size=13, v_kernel_size=5, pool_size=3),
    dict(norm_cfg=dict(type='GN', num_groups=4), act_cfg=dict(type='ReLU'))],
    ids=['class_defaults', 'kernels', 'gn_relu'])
def test_contract_variants(kwargs):
    run_contract(lambda: CAA(16, **kwargs))


def caa_reference(x, p, k_h, k_v, pool=7, bn=None):
    """The paper's context anchor attention written out with explicit sums: a 7x7 mean with
    the zero padding counted, a 1x1 conv, a 1 x k_h and a k_v x 1 depthwise conv (zero
    padding), a 1x1 conv, a sigmoid, times x. ``bn``: (eps,) for BN (batch statistics) +
    SiLU after the 1x1 convs."""
    n, c, h, w = x.shape
    r = pool // 2
    xp = torch.zeros(n, c, h + 2 * r, w + 2 * r, dtype=x.dtype)
    xp[:, :, r:r + h, r:r + w] = x
    a = sum(xp[:, :, i:i + h, j:j + w] for i in range(pool) for j in range(pool)) / pool ** 2

    def pointwise(t, name):
        t = torch.einsum('oc,nchw->nohw', p[name + '.conv.weight'].flatten(1), t)
        if bn is None:
            return t + p[name + '.conv.bias'][:, None, None]
        mean = t.mean((0, 2, 3), keepdim=True)
        var = ((t - mean) ** 2).mean((0, 2, 3), keepdim=True)
        t = (t - mean) / torch.sqrt(var + bn[0])
        t = t * p[name + '.bn.weight'][:, None, None] + p[name + '.bn.bias'][:, None, None]
        return t * torch.sigmoid(t)

    def axis_conv(t, weight, bias, k, dim):
        r = k // 2
        size = t.shape[dim]
        pad = [0] * 4
        pad[(3 - dim) * 2:(3 - dim) * 2 + 2] = [r, r]
        tp = F.pad(t, pad)
        out = sum(weight.flatten(1)[:, i, None, None] * tp.narrow(dim, i, size)
                  for i in range(k))
        return out + bias[:, None, None]

    t = pointwise(a, 'conv1')
    t = axis_conv(t, p['h_conv.conv.weight'], p['h_conv.conv.bias'], k_h, 3)
    t = axis_conv(t, p['v_conv.conv.weight'], p['v_conv.conv.bias'], k_v, 2)
    return x * torch.sigmoid(pointwise(t, 'conv2'))


@pytest.mark.parametrize('k_h,k_v', [(11, 11), (5, 3)])
def test_equation_pkinet_form(k_h, k_v):
    torch.manual_seed(0)
    caa = perturb_parameters(CAA(8, k_h, k_v), scale=0.3).double()
    x = torch.randn(2, 8, 6, 9, dtype=torch.float64)
    expected = caa_reference(x, dict(caa.named_parameters()), k_h, k_v)
    torch.testing.assert_close(caa(x), expected)


def test_equation_class_defaults_in_training():
    torch.manual_seed(0)
    caa = perturb_parameters(CAA(8, 7, 9, **CLASS_DEFAULTS), scale=0.3).double().train()
    x = torch.randn(3, 8, 5, 7, dtype=torch.float64)
    expected = caa_reference(x, dict(caa.named_parameters()), 7, 9, bn=(1e-3, ))
    torch.testing.assert_close(caa(x), expected)
    assert caa.conv1.bn.momentum == 0.03 and caa.conv1.bn.eps == 1e-3


def test_border_mean_counts_the_padding():
    caa = CAA(4, pool_size=7)
    x = torch.ones(1, 4, 3, 3)
    torch.testing.assert_close(caa.pool(x)[0, 0, 0, 0], torch.tensor(9 / 49))


def test_zeroed_last_conv_halves_the_input():
    """The spec's check: conv2 zeroed (PKINet form: weight and bias 0; class defaults: BN
    gamma = beta = 0, SiLU(0) = 0) gives out = x / 2."""
    x = torch.randn(2, 16, 7, 5)
    for kwargs in (dict(), CLASS_DEFAULTS):
        caa = perturb_parameters(CAA(16, **kwargs), scale=0.3)
        with torch.no_grad():
            for p in (caa.conv2.bn.parameters() if kwargs else caa.conv2.parameters()):
                p.zero_()
        for mode in ('train', 'eval'):
            getattr(caa, mode)()
            torch.testing.assert_close(caa(x), x * 0.5)


@pytest.mark.parametrize('channels', [8, 32, 64])
def test_parameter_count(channels):
    c = channels
    count = sum(p.numel() for p in CAA(c).parameters())
    assert count == 2 * c * c + (11 + 11 + 4) * c
    count = sum(p.numel() for p in CAA(c, 13, 9, **CLASS_DEFAULTS).parameters())
    assert count == 2 * c * c + (13 + 9 + 6) * c


def test_parameter_count_at_256_is_the_spec_figure():
    assert sum(p.numel() for p in CAA(256).parameters()) == 137_728
    assert sum(p.numel() for p in CAA(256, **CLASS_DEFAULTS).parameters()) == 138_240


def test_state_dict_keys_are_the_official_ones():
    assert sorted(CAA(8).state_dict()) == [
        'conv1.conv.bias', 'conv1.conv.weight', 'conv2.conv.bias', 'conv2.conv.weight',
        'h_conv.conv.bias', 'h_conv.conv.weight', 'v_conv.conv.bias', 'v_conv.conv.weight']
    keys = set(CAA(8, **CLASS_DEFAULTS).state_dict())
    assert {'conv1.conv.weight', 'conv1.bn.weight', 'conv2.bn.running_var'} <= keys
    assert 'conv1.conv.bias' not in keys


def test_initialisation_is_pkinets():
    torch.manual_seed(0)
    caa = CAA(64, **CLASS_DEFAULTS)
    caa.init_weights()
    for unit, fan_out in ((caa.conv1, 64), (caa.conv2, 64), (caa.h_conv, 11), (caa.v_conv, 11)):
        w = unit.conv.weight
        assert abs(w.std().item() / math.sqrt(2 / fan_out) - 1) < 0.1
        if unit.conv.bias is not None:
            assert torch.equal(unit.conv.bias, torch.zeros_like(unit.conv.bias))
    assert torch.equal(caa.conv2.bn.weight, torch.ones(64))
    assert torch.equal(caa.conv2.bn.bias, torch.zeros(64))


def test_gate_rebuilds_the_forward_and_gives_the_maps():
    caa = perturb_parameters(CAA(16), scale=0.3).eval()
    x = torch.randn(2, 16, 7, 10)
    with torch.no_grad():
        gate = caa.gate(x)
        torch.testing.assert_close(caa(x), x * gate)
        maps = caa.attention_maps(x)
    assert set(maps) == {'gate', 'channel_gate'}
    torch.testing.assert_close(maps['gate'].values, gate.mean(1))
    torch.testing.assert_close(maps['channel_gate'].values, gate.mean((2, 3)))


def test_batch_one_one_by_one_in_training_uses_running_statistics():
    caa = CAA(8, **CLASS_DEFAULTS).train()
    x = torch.randn(1, 8, 1, 1)
    out = caa(x)
    assert out.shape == x.shape and caa.conv1.bn.training
    assert torch.equal(caa.conv1.bn.running_mean, torch.zeros(8))


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(h_kernel_size=10), 'h_kernel_size'),
    (dict(v_kernel_size=0), 'v_kernel_size'), (dict(pool_size=4), 'pool_size')])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'CAA: {argument}'):
        CAA(**dict(dict(in_channels=8), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyCAA', (CAA, ), {'_abbr_': 'my_caa'})
    with pytest.raises(ValueError, match='MyCAA: h_kernel_size'):
        sub(8, h_kernel_size=2)
