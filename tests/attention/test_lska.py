"""LSKA: its equation, the official kernel table, parameter count, maps, the exact tie to
LKA (and so to mmpretrain's LKA), initialisation and checks."""
import math

import pytest
import torch

from cvattn_mm.attention.spatial.lka import LKA
from cvattn_mm.attention.spatial.lska import LSKA

from .contract import perturb_parameters, run_contract
from .test_lka import depthwise_reference

#: The paper's table: k_size -> (local kernel, dilated kernel, dilation).
TABLE = {7: (3, 3, 2), 11: (3, 5, 2), 23: (5, 7, 3), 35: (5, 11, 3), 41: (5, 13, 3),
         53: (5, 17, 3)}


@pytest.mark.parametrize('kwargs', [dict(k_size=7), dict(k_size=11), dict(with_projection=True)],
                         ids=['k7', 'k11', 'projection'])
def test_contract_variants(kwargs):
    run_contract(lambda: LSKA(16, **kwargs))


def lska_reference(x, m):
    """attn = Conv1x1(DW-D-Conv_{k1x1}(DW-D-Conv_{1xk1}(DW-Conv_{k0x1}(DW-Conv_{1xk0}(x)))));
    output = attn (element-wise) x."""
    d = m.conv_spatial_h.dilation[1]
    a = depthwise_reference(x, m.conv0h.weight, m.conv0h.bias, 1)
    a = depthwise_reference(a, m.conv0v.weight, m.conv0v.bias, 1)
    a = depthwise_reference(a, m.conv_spatial_h.weight, m.conv_spatial_h.bias, d)
    a = depthwise_reference(a, m.conv_spatial_v.weight, m.conv_spatial_v.bias, d)
    a = torch.einsum('oc,nchw->nohw', m.conv1.weight[:, :, 0, 0], a)
    return (a + m.conv1.bias.reshape(1, -1, 1, 1)) * x


@pytest.mark.parametrize('k_size', sorted(TABLE))
def test_equation_and_kernel_table(k_size):
    torch.manual_seed(0)
    m = perturb_parameters(LSKA(4, k_size=k_size), scale=0.5).double()
    k0, k1, d = TABLE[k_size]
    assert m.conv0h.kernel_size == (1, k0) and m.conv0v.kernel_size == (k0, 1)
    assert m.conv_spatial_h.kernel_size == (1, k1) and m.conv_spatial_v.kernel_size == (k1, 1)
    assert m.conv_spatial_h.dilation == (d, d) == m.conv_spatial_v.dilation  # as official
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    torch.testing.assert_close(m(x), lska_reference(x, m))


@pytest.mark.parametrize('c', [1, 8, 64, 256])
def test_parameter_count(c):
    for k_size, (k0, k1, _) in TABLE.items():
        expected = 2 * c * (k0 + 1) + 2 * c * (k1 + 1) + c * c + c
        assert sum(p.numel() for p in LSKA(c, k_size=k_size).parameters()) == expected
    if c == 256:
        counts = [sum(p.numel() for p in LSKA(c, k_size=k).parameters()) for k in (23, 7, 11)]
        assert counts == [72_960, 69_888, 70_912]
        assert LSKA(c).k_size == 23


def test_initialisation_is_van_s():
    torch.manual_seed(0)
    m = LSKA(64)
    m.init_weights()
    for conv, fan_out in ((m.conv_spatial_h, 7), (m.conv_spatial_v, 7), (m.conv1, 64)):
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.15)


def test_forward_rebuilt_from_the_map_methods():
    for proj in (False, True):
        m = perturb_parameters(LSKA(8, k_size=7, with_projection=proj), scale=0.5).double()
        x = torch.randn(2, 8, 6, 5, dtype=torch.float64)
        u = m.gating_input(x)
        out = u * m.attention(u)
        if proj:
            out = m.proj_2(out) + x
        torch.testing.assert_close(m(x), out)
        magnitude = m.attention(u).abs().mean(1)
        torch.testing.assert_close(m.attention_maps(x)['attention_magnitude'].values,
                                   magnitude / magnitude.sum((1, 2), keepdim=True))


@pytest.mark.parametrize('size', [(9, 13), (1, 1), (16, 5)])
def test_check_equals_lka_with_outer_product_kernels(size):
    """The spec's check: LSKA with the first bias of each 1-D pair zero equals LKA whose 5x5
    and dilated 7x7 kernels are the outer products of LSKA's 1-D kernels, exactly."""
    from mmpretrain.models.backbones.van import LKA as PeerLKA
    torch.manual_seed(0)
    m = perturb_parameters(LSKA(8, k_size=23), scale=0.5).double()
    with torch.no_grad():
        m.conv0h.bias.zero_()
        m.conv_spatial_h.bias.zero_()
    lka = LKA(8).double()
    with torch.no_grad():
        lka.conv0.weight.copy_(m.conv0v.weight * m.conv0h.weight)  # (C,1,5,1) x (C,1,1,5)
        lka.conv0.bias.copy_(m.conv0v.bias)
        lka.conv_spatial.weight.copy_(m.conv_spatial_v.weight * m.conv_spatial_h.weight)
        lka.conv_spatial.bias.copy_(m.conv_spatial_v.bias)
        lka.conv1.load_state_dict(m.conv1.state_dict())
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    torch.testing.assert_close(m(x), lka(x), rtol=0, atol=1e-12)
    peer = PeerLKA(8).double()
    peer.load_state_dict({'DW_conv.weight': lka.conv0.weight, 'DW_conv.bias': lka.conv0.bias,
                          'DW_D_conv.weight': lka.conv_spatial.weight,
                          'DW_D_conv.bias': lka.conv_spatial.bias,
                          'conv1.weight': lka.conv1.weight, 'conv1.bias': lka.conv1.bias})
    torch.testing.assert_close(m(x), peer(x), rtol=0, atol=1e-12)


def test_state_dict_keys_are_the_official():
    assert set(LSKA(4).state_dict()) == {
        f'{m}.{p}' for m in ('conv0h', 'conv0v', 'conv_spatial_h', 'conv_spatial_v', 'conv1')
        for p in ('weight', 'bias')}
    assert LSKA.paper_position == 'own_block' and LSKA.fallback_position == 'residual_end'


@pytest.mark.parametrize('kwargs,match', [
    (dict(in_channels=0), 'LSKA: in_channels must be >= 1'),
    (dict(in_channels=4, k_size=9), r'LSKA: k_size must be one of \(7, 11, 23, 35, 41, 53\)'),
    (dict(in_channels=4, k_size=True), 'LSKA: k_size must be one of'),
])
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LSKA(**kwargs)


def test_errors_name_the_subclass():
    class MyLSKA(LSKA):
        pass

    with pytest.raises(ValueError, match='MyLSKA: k_size'):
        MyLSKA(4, k_size=5)
    with pytest.raises(ValueError, match='MyLSKA was built for in_channels=4'):
        MyLSKA(4)(torch.randn(1, 3, 5, 5))
