"""ELA: its equation, variants, parameter count, maps, the timm check and argument checks."""
import functools

import pytest
import torch
import torch.nn as nn
from timm.layers.coord_attn import EfficientLocalAttn

from cvattn_mm.attention.channel_spatial.ela import ELA

from .contract import perturb_parameters, run_contract

#: (kernel size, channels per conv group, GroupNorm groups) of the paper's variants.
PAPER_VARIANTS = {'T': (5, 1, 32), 'B': (7, 1, 16), 'S': (5, 8, 16), 'L': (7, 8, 16)}


@pytest.mark.parametrize('kwargs', [dict(variant='T'), dict(variant='S'), dict(variant='L'),
                                    dict(kernel_size=3, act_cfg=dict(type='SiLU')),
                                    dict(norm_cfg=dict(type='BN'))],
                         ids=['T', 'S', 'L', 'k3-silu', 'bn'])
def test_contract_variants(kwargs):
    run_contract(lambda: ELA(64, **kwargs))


def conv1d_reference(z, weight, group_width):
    """A grouped 1-D cross-correlation with zero padding k // 2, written as a sum of taps:
    ``out[c, l] = sum_{j, t} w[c, j, t] z[g(c) + j, l + t - k // 2]``."""
    n, c, length = z.shape
    k = weight.shape[2]
    pad = k // 2
    zp = torch.cat((z.new_zeros(n, c, pad), z, z.new_zeros(n, c, pad)), 2)
    out = z.new_zeros(n, c, length)
    for co in range(c):
        first = (co // group_width) * group_width
        for j in range(group_width):
            for t in range(k):
                out[:, co] += weight[co, j, t] * zp[:, first + j, t:t + length]
    return out


def group_norm_reference(f, groups, weight, bias, eps=1e-5):
    """GroupNorm of (N, C, L): each group of C / groups channels over its C / groups x L
    values (biased variance), then the per-channel affine."""
    n, c, length = f.shape
    g = f.reshape(n, groups, -1)
    mean = g.mean(2, keepdim=True)
    var = ((g - mean) ** 2).mean(2, keepdim=True)
    f_hat = ((g - mean) / torch.sqrt(var + eps)).reshape(n, c, length)
    return f_hat * weight[:, None] + bias[:, None]


def ela_reference(x, weight, gn_weight, gn_bias, group_width, groups):
    """The paper: row and column means, one shared conv and GroupNorm on each, sigmoids, and
    the product of x with both gates."""
    z_h = x.sum(3) / x.shape[3]  # (N, C, H): mean over W
    z_w = x.sum(2) / x.shape[2]  # (N, C, W): mean over H

    def gate(z):
        f = group_norm_reference(conv1d_reference(z, weight, group_width), groups,
                                 gn_weight, gn_bias)
        return 1 / (1 + torch.exp(-f))

    return x * gate(z_h)[:, :, :, None] * gate(z_w)[:, :, None, :]


@pytest.mark.parametrize('variant', ['T', 'B', 'S', 'L'])
@pytest.mark.parametrize('size', [(5, 7), (1, 6)])
def test_equation(variant, size):
    torch.manual_seed(0)
    ela = perturb_parameters(ELA(32, variant=variant), scale=0.5).double()
    _, width, groups = PAPER_VARIANTS[variant]
    x = torch.randn(2, 32, *size, dtype=torch.float64)
    expected = ela_reference(x, ela.conv.weight, ela.gn.weight, ela.gn.bias, width, groups)
    for mode in ('train', 'eval'):  # a GroupNorm: the same in both modes
        getattr(ela, mode)()
        torch.testing.assert_close(ela(x), expected, rtol=1e-12, atol=1e-12)


def test_variants_set_kernel_groups_and_norm():
    for variant, (k, width, groups) in PAPER_VARIANTS.items():
        ela = ELA(64, variant=variant)
        assert ela.conv.kernel_size == (k, ) and ela.conv.padding == (k // 2, )
        assert ela.conv.groups == 64 // width and ela.conv.bias is None
        assert isinstance(ela.gn, nn.GroupNorm) and ela.gn.num_groups == groups
    ela = ELA(64, variant='S', kernel_size=9, group_width=4)
    assert ela.conv.kernel_size == (9, ) and ela.conv.groups == 16 and ela.gn.num_groups == 16


def test_the_conv_and_norm_are_shared_by_both_axes():
    """One conv and one norm for both profiles: transposing the map transposes the output."""
    ela = perturb_parameters(ELA(32), scale=0.5).double()
    x = torch.randn(2, 32, 5, 9, dtype=torch.float64)
    torch.testing.assert_close(ela(x.transpose(2, 3)), ela(x).transpose(2, 3))


@pytest.mark.parametrize('channels', [32, 64, 256, 2048])
def test_parameter_count(channels):
    for variant, (k, width, _) in PAPER_VARIANTS.items():
        params = sum(p.numel() for p in ELA(channels, variant=variant).parameters())
        assert params == channels * width * k + 2 * channels, variant


def test_parameter_count_of_the_spec_at_256():
    counts = {v: sum(p.numel() for p in ELA(256, variant=v).parameters()) for v in 'TBSL'}
    assert counts == {'T': 1792, 'B': 2304, 'S': 10752, 'L': 14848}


def test_initialisation_and_keys_are_the_listing_ones():
    """PyTorch's defaults, as in the paper's listing: a Kaiming-uniform conv without bias
    (bound 1 / sqrt(fan_in)), a GroupNorm of weight 1 and bias 0; its state-dict keys."""
    ela = ELA(64)
    ela.init_weights()
    assert sorted(ela.state_dict()) == ['conv.weight', 'gn.bias', 'gn.weight']
    assert ela.conv.weight.shape == (64, 1, 7)
    assert ela.conv.weight.abs().max() <= 1 / 7 ** 0.5
    assert ela.conv.weight.std() > 0.1
    assert torch.equal(ela.gn.weight, torch.ones(64)) and torch.equal(ela.gn.bias,
                                                                      torch.zeros(64))
    listing = {'conv.weight': torch.randn(64, 1, 7), 'gn.weight': torch.randn(64),
               'gn.bias': torch.randn(64)}
    ela.load_state_dict(listing, strict=True)


def test_check_equals_timm_efficient_local_attn():
    """The spec's check: timm's EfficientLocalAttn without its SiLU and with a GroupNorm of
    16 groups, our conv copied into its H and W convs and our norm into both of its norms."""
    torch.manual_seed(1)
    ela = perturb_parameters(ELA(64), scale=0.5).double()
    timm_ela = EfficientLocalAttn(64, kernel_size=7, act_layer=nn.Identity,
                                  norm_layer=functools.partial(nn.GroupNorm, 16)).double()
    w = ela.conv.weight
    timm_ela.load_state_dict({'conv_h.weight': w[:, :, :, None], 'conv_w.weight': w[:, :, None],
                              'norm_h.weight': ela.gn.weight, 'norm_h.bias': ela.gn.bias,
                              'norm_w.weight': ela.gn.weight, 'norm_w.bias': ela.gn.bias})
    x = torch.randn(2, 64, 11, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ela(x), timm_ela(x), rtol=1e-13, atol=1e-13)


def test_activation_option_is_timm_default_math():
    """``act_cfg=dict(type='SiLU')`` with a one-group GroupNorm: timm's default computation
    (with shared weights)."""
    ela = perturb_parameters(ELA(16, act_cfg=dict(type='SiLU'),
                                 norm_cfg=dict(type='GN', num_groups=1)), scale=0.5).double()
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        f_h = ela.gn(ela.conv(x.mean(3))[..., None])
        f_w = ela.gn(ela.conv(x.mean(2))[..., None])
        expected = x * torch.sigmoid(nn.functional.silu(f_h)) * torch.sigmoid(
            nn.functional.silu(f_w)).transpose(2, 3)
        torch.testing.assert_close(ela(x), expected)


def test_gates_rebuild_the_forward_and_are_the_maps():
    ela = perturb_parameters(ELA(32), scale=0.5).eval()
    x = torch.randn(2, 32, 7, 10)
    with torch.no_grad():
        a_h, a_w = ela.gates(x.mean(3, keepdim=True), x.mean(2, keepdim=True))
        assert a_h.shape == (2, 32, 7, 1) and a_w.shape == (2, 32, 1, 10)
        torch.testing.assert_close(ela(x), x * a_h * a_w)
        maps = ela.attention_maps(x)
    assert set(maps) == {'h_gate', 'w_gate', 'gate'}
    torch.testing.assert_close(maps['h_gate'].values, a_h.mean(1).expand(2, 7, 10))
    torch.testing.assert_close(maps['w_gate'].values, a_w.mean(1).expand(2, 7, 10))
    torch.testing.assert_close(maps['gate'].values, (a_h * a_w).mean(1))
    assert all(((m.values >= 0) & (m.values <= 1)).all() for m in maps.values())


def test_batch_norm_option_at_batch_one_and_one_position():
    """A BN sees one value per channel (batch 1, 1x1 map): it uses its running statistics
    in training and leaves them unchanged."""
    ela = perturb_parameters(ELA(16, norm_cfg=dict(type='BN')), scale=0.5).train()
    x = torch.randn(1, 16, 1, 1)
    before = ela.gn.running_mean.clone()
    with torch.no_grad():
        out = ela(x)
        assert torch.equal(ela.gn.running_mean, before)
        torch.testing.assert_close(out, ela.eval()(x))


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(variant='XL'), 'variant'),
    (dict(kernel_size=4), 'kernel_size'), (dict(kernel_size=0), 'kernel_size'),
    (dict(group_width=0), 'group_width'), (dict(in_channels=36, group_width=8), 'in_channels'),
    (dict(in_channels=24), 'in_channels'), (dict(variant='T', in_channels=48), 'in_channels'),
    (dict(norm_cfg=dict(type='GN')), 'num_groups')])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'ELA: {argument}'):
        ELA(**dict(dict(in_channels=32), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyELA', (ELA, ), {'_abbr_': 'my_ela'})
    with pytest.raises(ValueError, match='MyELA: kernel_size'):
        sub(32, kernel_size=2)
