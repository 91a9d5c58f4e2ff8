"""LSKBlock: its equation, initialisation, parameter count, maps, variants and argument checks."""
import math

import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.spatial.lsk_block import LSKBlock

from .contract import perturb_parameters, run_contract


def test_contract_with_projection():
    run_contract(lambda: LSKBlock(16, with_projection=True))


def lsk_reference(x, p):
    """The paper's large selective kernel, written from the equations with plain tensor ops
    (``p``: the module's state dict)."""
    c = x.shape[1]
    a1 = F.conv2d(x, p['conv0.weight'], p['conv0.bias'], padding=2, groups=c)
    a2 = F.conv2d(a1, p['conv_spatial.weight'], p['conv_spatial.bias'], padding=9,
                  dilation=3, groups=c)
    b1 = torch.einsum('oc,nchw->nohw', p['conv1.weight'][:, :, 0, 0], a1) \
        + p['conv1.bias'][:, None, None]
    b2 = torch.einsum('oc,nchw->nohw', p['conv2.weight'][:, :, 0, 0], a2) \
        + p['conv2.bias'][:, None, None]
    both = torch.cat([b1, b2], 1)
    m = torch.stack([both.sum(1) / both.shape[1], both.max(1).values], 1)
    s = 1 / (1 + torch.exp(-F.conv2d(m, p['conv_squeeze.weight'], p['conv_squeeze.bias'],
                                      padding=3)))
    mixed = b1 * s[:, 0:1] + b2 * s[:, 1:2]
    attn = torch.einsum('oc,nchw->nohw', p['conv.weight'][:, :, 0, 0], mixed) \
        + p['conv.bias'][:, None, None]
    return x * attn


def pointwise(x, p, name):
    return torch.einsum('oc,nchw->nohw', p[name + '.weight'][:, :, 0, 0], x) \
        + p[name + '.bias'][:, None, None]


@pytest.mark.parametrize('size', [(9, 13), (1, 1), (16, 16)])
def test_equation(size):
    torch.manual_seed(0)
    lsk = perturb_parameters(LSKBlock(16), scale=0.3).double()
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    torch.testing.assert_close(lsk(x), lsk_reference(x, lsk.state_dict()))


def test_equation_with_projection():
    torch.manual_seed(0)
    lsk = perturb_parameters(LSKBlock(16, with_projection=True), scale=0.3).double()
    x = torch.randn(2, 16, 7, 10, dtype=torch.float64)
    p = lsk.state_dict()
    u = pointwise(x, p, 'proj_1')
    u = 0.5 * u * (1 + torch.erf(u / math.sqrt(2)))
    expected = x + pointwise(lsk_reference(u, p), p, 'proj_2')
    torch.testing.assert_close(lsk(x), expected)


def test_check_last_conv_weight_zero_bias_one_is_identity():
    lsk = perturb_parameters(LSKBlock(32), scale=0.3)
    with torch.no_grad():
        lsk.conv.weight.zero_()
        lsk.conv.bias.fill_(1.)
    x = torch.randn(2, 32, 9, 7)
    assert torch.equal(lsk(x), x)


@pytest.mark.parametrize('channels', [2, 16, 64, 256])
def test_parameter_count(channels):
    c = channels
    bare = 1.5 * c * c + 78 * c + 198
    assert sum(p.numel() for p in LSKBlock(c).parameters()) == bare
    assert sum(p.numel() for p in LSKBlock(c, with_projection=True).parameters()) \
        == bare + 2 * (c * c + c)


def test_spec_parameter_counts_at_256():
    assert sum(p.numel() for p in LSKBlock(256).parameters()) == 118_470
    assert sum(p.numel() for p in LSKBlock(256, with_projection=True).parameters()) == 250_054


def test_state_dict_keys_are_the_official_ones():
    bare = ['conv', 'conv0', 'conv1', 'conv2', 'conv_spatial', 'conv_squeeze']
    assert sorted(LSKBlock(8).state_dict()) == sorted(
        f'{n}.{k}' for n in bare for k in ('weight', 'bias'))
    keys = set(LSKBlock(8, with_projection=True).state_dict())
    assert {'proj_1.weight', 'proj_1.bias', 'proj_2.weight', 'proj_2.bias'} <= keys


def test_initialisation_is_lsknets():
    torch.manual_seed(0)
    lsk = LSKBlock(64, with_projection=True)
    lsk.init_weights()
    for name, conv in lsk.named_children():
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias)), name
        fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
        std = conv.weight.std().item()
        expected = math.sqrt(2 / fan_out)
        assert abs(std - expected) < 0.2 * expected, (name, std, expected)
    assert lsk.conv_spatial.dilation == (3, 3) and lsk.conv_spatial.padding == (9, 9)
    assert lsk.conv0.kernel_size == (5, 5) and lsk.conv0.groups == 64


def test_maps_rebuild_the_forward():
    lsk = perturb_parameters(LSKBlock(16), scale=0.3).eval()
    x = torch.randn(2, 16, 7, 10)
    with torch.no_grad():
        b1, b2 = lsk.branches(x)
        s = lsk.selection(b1, b2)
        torch.testing.assert_close(lsk(x), x * lsk.conv(b1 * s[:, :1] + b2 * s[:, 1:]))
        torch.testing.assert_close(lsk(x), x * lsk.gate(x))
        maps = lsk.attention_maps(x)
    assert set(maps) == {'select_small', 'select_large'}
    assert torch.equal(maps['select_small'].values, s[:, 0])
    assert torch.equal(maps['select_large'].values, s[:, 1])
    assert s.min() >= 0 and s.max() <= 1


def test_maps_with_projection_use_the_projected_input():
    lsk = perturb_parameters(LSKBlock(16, with_projection=True), scale=0.3).eval()
    x = torch.randn(2, 16, 5, 6)
    with torch.no_grad():
        u = F.gelu(lsk.proj_1(x))
        s = lsk.selection(*lsk.branches(u))
        torch.testing.assert_close(lsk(x), x + lsk.proj_2(u * lsk.gate(u)))
        maps = lsk.attention_maps(x)
    assert torch.equal(maps['select_large'].values, s[:, 1])


def test_position_metadata():
    assert LSKBlock.paper_position == 'own_block'
    assert LSKBlock.fallback_position == 'residual_end'


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(in_channels=7), 'in_channels'),
    (dict(in_channels=2.0), 'in_channels'), (dict(with_projection=1), 'with_projection')])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'LSKBlock: {argument}'):
        LSKBlock(**dict(dict(in_channels=8), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyLSK', (LSKBlock, ), {'_abbr_': 'my_lsk'})
    with pytest.raises(ValueError, match='MyLSK: in_channels'):
        sub(9)
