"""LKA: its equation, initialisation, parameter count, maps, wrapper, peer and checks."""
import math

import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.spatial.lka import LKA

from .contract import perturb_parameters, run_contract


def test_contract_with_projection():
    run_contract(lambda: LKA(16, with_projection=True))


def depthwise_reference(x, weight, bias, dilation):
    """A depthwise 2-D correlation with zero padding keeping the size, one channel and one
    kernel tap at a time (the paper's DW-Conv / DW-D-Conv)."""
    n, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    ph, pw = dilation * (kh - 1) // 2, dilation * (kw - 1) // 2
    padded = torch.zeros(n, c, h + 2 * ph, w + 2 * pw, dtype=x.dtype)
    padded[:, :, ph:ph + h, pw:pw + w] = x
    out = bias.reshape(1, c, 1, 1).expand(n, c, h, w).clone()
    for i in range(kh):
        for j in range(kw):
            tap = padded[:, :, i * dilation:i * dilation + h, j * dilation:j * dilation + w]
            out = out + tap * weight[:, 0, i, j].reshape(1, c, 1, 1)
    return out


def lka_reference(x, lka):
    """Attention = Conv1x1(DW-D-Conv(DW-Conv(x))); output = attention (element-wise) x."""
    a = depthwise_reference(x, lka.conv0.weight, lka.conv0.bias, 1)
    a = depthwise_reference(a, lka.conv_spatial.weight, lka.conv_spatial.bias, 3)
    w1 = lka.conv1.weight[:, :, 0, 0]
    a = torch.einsum('oc,nchw->nohw', w1, a) + lka.conv1.bias.reshape(1, -1, 1, 1)
    return a * x


@pytest.mark.parametrize('size', [(5, 7), (1, 1), (16, 11)])
def test_equation(size):
    torch.manual_seed(0)
    lka = perturb_parameters(LKA(8), scale=0.5).double()
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    torch.testing.assert_close(lka(x), lka_reference(x, lka))


def test_equation_with_projection():
    torch.manual_seed(0)
    lka = perturb_parameters(LKA(8, with_projection=True), scale=0.5).double()
    x = torch.randn(2, 8, 6, 9, dtype=torch.float64)
    u = F.gelu(F.conv2d(x, lka.proj_1.weight, lka.proj_1.bias))
    expected = F.conv2d(lka_reference(u, lka), lka.proj_2.weight, lka.proj_2.bias) + x
    torch.testing.assert_close(lka(x), expected)


@pytest.mark.parametrize('c', [1, 8, 64, 256])
def test_parameter_count(c):
    assert sum(p.numel() for p in LKA(c).parameters()) == c * c + 77 * c
    assert sum(p.numel() for p in LKA(c, with_projection=True).parameters()) == \
        3 * c * c + 79 * c
    if c == 256:
        assert sum(p.numel() for p in LKA(c).parameters()) == 85_248
        assert sum(p.numel() for p in LKA(c, with_projection=True).parameters()) == 216_832


def test_layers_and_state_dict_keys_are_the_official():
    lka = LKA(8)
    assert lka.conv0.kernel_size == (5, 5) and lka.conv0.padding == (2, 2)
    assert lka.conv0.groups == 8
    assert lka.conv_spatial.kernel_size == (7, 7) and lka.conv_spatial.dilation == (3, 3)
    assert lka.conv_spatial.padding == (9, 9) and lka.conv_spatial.groups == 8
    assert set(lka.state_dict()) == {f'{m}.{p}' for m in ('conv0', 'conv_spatial', 'conv1')
                                     for p in ('weight', 'bias')}
    assert LKA.paper_position == 'own_block' and LKA.fallback_position == 'residual_end'


def test_initialisation_is_van_s():
    torch.manual_seed(0)
    lka = LKA(64, with_projection=True)
    lka.init_weights()
    for conv, fan_out in ((lka.conv0, 25), (lka.conv_spatial, 49), (lka.conv1, 64),
                          (lka.proj_1, 64), (lka.proj_2, 64)):
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
        assert abs(conv.weight.mean().item()) < 0.1 * math.sqrt(2 / fan_out) + 0.02
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.15)


def test_not_the_identity_at_init():
    lka = LKA(16)
    x = torch.randn(2, 16, 7, 7)
    assert not torch.allclose(lka(x), x)


def test_forward_rebuilt_from_the_map_methods():
    for proj in (False, True):
        lka = perturb_parameters(LKA(8, with_projection=proj), scale=0.5).double()
        x = torch.randn(2, 8, 6, 5, dtype=torch.float64)
        u = lka.gating_input(x)
        out = u * lka.attention(u)
        if proj:
            out = lka.proj_2(out) + x
        torch.testing.assert_close(lka(x), out)
        maps = lka.attention_maps(x)
        magnitude = lka.attention(u).abs().mean(1)
        torch.testing.assert_close(maps['attention_magnitude'].values,
                                   magnitude / magnitude.sum((1, 2), keepdim=True))


def test_check_equals_mmpretrain_lka_with_copied_weights():
    from mmpretrain.models.backbones.van import LKA as PeerLKA
    torch.manual_seed(0)
    ours = perturb_parameters(LKA(16), scale=0.5).double()
    peer = PeerLKA(16).double()
    renames = {'conv0': 'DW_conv', 'conv_spatial': 'DW_D_conv', 'conv1': 'conv1'}
    peer.load_state_dict({renames[k.split('.')[0]] + '.' + k.split('.')[1]: v
                          for k, v in ours.state_dict().items()})
    x = torch.randn(2, 16, 9, 12, dtype=torch.float64)
    torch.testing.assert_close(ours(x), peer(x), rtol=0, atol=1e-13)


@pytest.mark.parametrize('kwargs,match', [
    (dict(in_channels=0), 'LKA: in_channels must be >= 1'),
    (dict(in_channels=2.0), 'LKA: in_channels must be an integer'),
])
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LKA(**kwargs)


def test_errors_name_the_subclass():
    class MyLKA(LKA):
        pass

    with pytest.raises(ValueError, match='MyLKA: in_channels'):
        MyLKA(0)
    with pytest.raises(ValueError, match='MyLKA was built for in_channels=4'):
        MyLKA(4)(torch.randn(1, 3, 5, 5))
