"""CoordAttention: variants, the defining equation, its maps, parameter count, argument
checks."""
import functools

import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.channel_spatial import CoordAttention
from cvattn_mm.registry import MODELS
from cvattn_mm.visualization import extract_maps

from . import contract


def param_count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('kwargs', [
    dict(in_channels=64, reduction=16, min_channels=4),
    dict(in_channels=24, reduction=4, min_channels=1),
    dict(in_channels=48, norm_cfg=dict(type='GN', num_groups=4)),
    dict(in_channels=32, act_cfg=dict(type='ReLU'), gate_cfg=dict(type='HSigmoid')),
], ids=['r16', 'narrow', 'gn', 'relu_hsigmoid'])
def test_contract_variants(kwargs):
    contract.run_contract(functools.partial(CoordAttention, **kwargs))


def _randomise_bn(bn, gen):
    with torch.no_grad():
        bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen))
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=gen) * 0.1)
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=gen) + 0.5)


def _direct(module, x, training):
    """Coordinate attention written out element-wise with einsum, in float64."""
    x = x.double()
    w1 = module.conv1.weight.double()[:, :, 0, 0]  # (mip, C)
    b1 = module.conv1.bias.double()
    wh = module.conv_h.weight.double()[:, :, 0, 0]  # (C, mip)
    bh = module.conv_h.bias.double()
    ww = module.conv_w.weight.double()[:, :, 0, 0]
    bw = module.conv_w.bias.double()
    bn = module.bn1
    z_h = x.mean(dim=3)  # (N, C, H): mean over each row
    z_w = x.mean(dim=2)  # (N, C, W): mean over each column
    f_h = torch.einsum('mc,nch->nmh', w1, z_h) + b1[:, None]
    f_w = torch.einsum('mc,ncw->nmw', w1, z_w) + b1[:, None]
    if training:  # batch statistics over the batch and all H + W positions together
        both = torch.cat((f_h, f_w), dim=2)
        mean = both.mean(dim=(0, 2))
        var = both.var(dim=(0, 2), unbiased=False)
    else:
        mean, var = bn.running_mean.double(), bn.running_var.double()

    def norm_act(f):
        f = (f - mean[:, None]) / torch.sqrt(var[:, None] + bn.eps)
        f = f * bn.weight.double()[:, None] + bn.bias.double()[:, None]
        return f * torch.clamp(f + 3, 0, 6) / 6  # h-swish

    a_h = torch.sigmoid(torch.einsum('cm,nmh->nch', wh, norm_act(f_h)) + bh[:, None])
    a_w = torch.sigmoid(torch.einsum('cm,nmw->ncw', ww, norm_act(f_w)) + bw[:, None])
    return x * a_h[:, :, :, None] * a_w[:, :, None, :]


@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
def test_equation_on_non_square_map(training):
    gen = torch.Generator().manual_seed(1)
    module = contract.perturb_parameters(CoordAttention(16, reduction=4, min_channels=2))
    _randomise_bn(module.bn1, gen)
    module.train(training)
    x = torch.randn(3, 16, 5, 7, generator=gen)
    expected = _direct(module, x, training)
    with torch.no_grad():
        y = module(x)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-6)


def test_gates_rebuild_the_forward():
    torch.manual_seed(0)
    module = contract.perturb_parameters(CoordAttention(32), scale=0.5).eval()
    x = torch.randn(2, 32, 7, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x)
        a_h, a_w = module.gates(x.mean(3, keepdim=True), x.mean(2, keepdim=True))
        rebuilt = x * a_h * a_w
        maps = extract_maps(module, x)
    err = (rebuilt - expected).abs().max().item()
    assert err <= 1e-4 * (expected.abs().max().item() + 1e-6), f'CoordAttention: {err:.3g}'
    assert maps


def test_transposed_input_swaps_the_two_directions():
    """Transposing H and W and swapping conv_h / conv_w transposes the output."""
    gen = torch.Generator().manual_seed(2)
    module = contract.perturb_parameters(CoordAttention(16, reduction=4)).eval()
    _randomise_bn(module.bn1, gen)
    swapped = CoordAttention(16, reduction=4).eval()
    state = module.state_dict()
    for key in ('weight', 'bias'):
        state[f'conv_h.{key}'], state[f'conv_w.{key}'] = (state[f'conv_w.{key}'],
                                                          state[f'conv_h.{key}'])
    swapped.load_state_dict(state)
    x = torch.randn(2, 16, 5, 7, generator=gen)
    with torch.no_grad():
        y = module(x)
        y_t = swapped(x.transpose(2, 3))
    torch.testing.assert_close(y_t, y.transpose(2, 3), rtol=1e-5, atol=1e-6)
    # and the two directions really differ: without the swap the result is not a transpose
    with torch.no_grad():
        assert not torch.allclose(module(x.transpose(2, 3)), y.transpose(2, 3), atol=1e-3)


@pytest.mark.parametrize('channels', [256, 2048])
def test_param_count(channels):
    module = CoordAttention(channels)
    mip = max(8, channels // 32)
    assert module.mip == mip
    expected = 3 * channels * mip + 2 * channels + 3 * mip
    print(f'CoordAttention C={channels}: {param_count(module)} parameters')
    assert param_count(module) == expected
    assert expected == {256: 6680, 2048: 397504}[channels]


def test_embedding_width_follows_the_official_rule():
    assert CoordAttention(64).mip == 8  # floor of 8
    assert CoordAttention(512).mip == 16
    assert CoordAttention(96, reduction=8, min_channels=4).mip == 12


def test_state_dict_keys_match_the_official_code():
    keys = set(CoordAttention(64).state_dict())
    assert {'conv1.weight', 'conv1.bias', 'bn1.weight', 'bn1.bias', 'bn1.running_mean',
            'bn1.running_var', 'conv_h.weight', 'conv_h.bias', 'conv_w.weight',
            'conv_w.bias'} <= keys


def test_gates_use_official_activations():
    module = CoordAttention(32).eval()
    f = torch.linspace(-5, 5, 11)
    torch.testing.assert_close(module.act(f), F.hardswish(f))
    torch.testing.assert_close(module.gate(f), torch.sigmoid(f))


@pytest.mark.parametrize('kwargs, argument', [
    (dict(in_channels=0), 'in_channels'),
    (dict(in_channels=16.0), 'in_channels'),
    (dict(in_channels=64, reduction=0), 'reduction'),
    (dict(in_channels=64, reduction=2.5), 'reduction'),
    (dict(in_channels=64, min_channels=0), 'min_channels'),
])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'CoordAttention.*{argument}'):
        CoordAttention(**kwargs)


def test_errors_name_the_subclass():
    sub = type('MyCoordAttention', (CoordAttention, ), {'_abbr_': 'my_coord_attention'})
    with pytest.raises(ValueError, match='MyCoordAttention.*reduction'):
        sub(64, reduction=0)


def test_registry_metadata():
    cls = MODELS.get('CoordAttention')
    assert cls is CoordAttention
    assert cls.family == 'channel_spatial' and cls.paper_position == 'residual_end'
    assert 'arXiv:2103.02907' in cls.paper


def test_trace_generalises_to_other_sizes():
    module = contract.perturb_parameters(CoordAttention(16, reduction=4)).eval()
    traced = torch.jit.trace(module, torch.randn(1, 16, 8, 8), check_trace=False)
    for size in [(5, 7), (1, 1), (16, 3)]:
        x = torch.randn(2, 16, *size)
        with torch.no_grad():
            torch.testing.assert_close(traced(x), module(x))
