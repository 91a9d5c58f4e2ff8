"""SKConv: variants through the contract, the SK unit in float64 from the paper's equations,
the exact init from a conv, the timm peer, params, maps and argument checks."""
import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn_mm.attention.branch.sk import SK
from cvattn_mm.attention.branch.sk_conv import SKConv
from cvattn_mm.registry import MODELS
from cvattn_mm.visualization import extract_maps

from . import contract

VARIANTS = {
    'g32': dict(groups=32),
    'd2_m3_bg8_r4_l8': dict(dilation=2, num_branches=3, branch_groups=8, reduction=4,
                            min_channels=8),
    'gn_silu': dict(groups=4, norm_cfg=dict(type='GN', num_groups=8),
                    act_cfg=dict(type='SiLU')),
}


def build(in_channels=64, **kwargs):
    return SKConv(in_channels, **kwargs)


def randomise_bn_stats(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return module


@pytest.mark.parametrize('variant', VARIANTS)
def test_contract_variants(variant):
    torch.manual_seed(0)
    contract.run_contract(functools.partial(build, **VARIANTS[variant]))


@pytest.mark.parametrize('options', [dict(branch_groups=4), dict(num_branches=3)], ids=str)
def test_replaces_convs_variants(options):
    """Stride 2, 2C outputs, groups 4, dilation 2 on 8x8, 7x7, 13x17 and 1x1 maps."""
    contract.check_replaces_conv(SKConv, **options)


def test_registered_and_declared():
    assert MODELS.get('SKConv') is SKConv
    module = MODELS.build(dict(type='SKConv', in_channels=64, groups=32))
    assert (module.num_branches, module.branch_groups, module.hidden) == (2, 32, 32)
    assert SKConv.absorbs_norm and SKConv.takes_groups and SKConv.takes_dilation
    assert not SKConv.takes_bias and SKConv.paper_position == 'replaces_mid_conv'
    assert SKConv._abbr_ == 'skconv' and SKConv.family == 'branch'


@pytest.mark.parametrize('kwargs', [dict(), dict(stride=2, dilation=3, num_branches=3)],
                         ids=['default', 's2_d3_m3'])
def test_branch_geometry(kwargs):
    m = build(**kwargs)
    d, s = m.dilation, m.stride
    for i, branch in enumerate(m.branches, 1):
        conv = branch.conv
        assert conv.dilation == conv.padding == (i * d, i * d)
        assert conv.stride == (s, s) and conv.kernel_size == (3, 3) and conv.bias is None


def bn_eval(t, norm):
    return (t - norm.running_mean[:, None, None]) / (norm.running_var[:, None, None]
                                                     + norm.eps).sqrt() \
        * norm.weight[:, None, None] + norm.bias[:, None, None]


def bn_train(t):
    """Batch statistics over (N, H, W), biased variance; (N, C, H, W) or (N, C)."""
    dims = (0, 2, 3) if t.dim() == 4 else (0, )
    mean = t.mean(dims, keepdim=True)
    return (t - mean) / (((t - mean) ** 2).mean(dims, keepdim=True) + 1e-5).sqrt()


def conv_by_taps(x, weight, stride, dilation, groups):
    """A 3x3 grouped conv with dilation d, padding d, as a sum over the 9 taps of shifted
    inputs (no F.conv2d)."""
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    d = dilation
    h_out, w_out = (h - 1) // stride + 1, (w - 1) // stride + 1
    padded = F.pad(x, (d, d, d, d)).reshape(n, groups, c_in // groups, h + 2 * d, w + 2 * d)
    wg = weight.reshape(groups, c_out // groups, c_in // groups, 3, 3)
    out = 0
    for ky in range(3):
        for kx in range(3):
            patch = padded[..., ky * d:ky * d + (h_out - 1) * stride + 1:stride,
                           kx * d:kx * d + (w_out - 1) * stride + 1:stride]
            out = out + torch.einsum('goi,ngihw->ngohw', wg[..., ky, kx], patch)
    return out.reshape(n, c_out, h_out, w_out)


def sk_equation(m, x, train):
    """The SK unit from the paper's equations (split, fuse, select) in plain tensor ops."""
    bn = bn_train if train else None
    feats = []
    for i, branch in enumerate(m.branches, 1):
        u = conv_by_taps(x, branch.conv.weight, m.stride, i * m.dilation, m.branch_groups)
        norm = branch.norm
        u = (bn_train(u) * norm.weight[:, None, None] + norm.bias[:, None, None]) if bn \
            else bn_eval(u, norm)
        feats.append(u.clamp(min=0))
    s = sum(feats).mean((2, 3))  # (N, C)
    z = s @ m.fc_reduce.weight.flatten(1).t()  # (N, d)
    fn = m.fc_norm
    z = (bn_train(z) * fn.weight + fn.bias) if bn else \
        (z - fn.running_mean) / (fn.running_var + fn.eps).sqrt() * fn.weight + fn.bias
    z = z.clamp(min=0)
    c = m.out_channels
    w_s = m.fc_select.weight.flatten(1)  # (M C, d), branch-major
    logits = torch.stack([z @ w_s[i * c:(i + 1) * c].t() for i in range(m.num_branches)], 1)
    e = (logits - logits.amax(1, keepdim=True)).exp()
    a = e / e.sum(1, keepdim=True)  # (N, M, C)
    return sum(a[:, i, :, None, None] * f for i, f in enumerate(feats)), a


@pytest.mark.parametrize('kwargs,size', [
    (dict(groups=32), (13, 11)),
    (dict(out_channels=128, stride=2, groups=32), (7, 9)),
    (dict(dilation=2, num_branches=3, groups=4), (6, 5)),
    (dict(branch_groups=8, reduction=2, min_channels=4), (1, 1)),
], ids=['g32', 'out128_s2', 'd2_m3', 'g8_1x1'])
@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
def test_equation_float64(kwargs, size, train):
    torch.manual_seed(0)
    m = randomise_bn_stats(contract.perturb_parameters(build(**kwargs), 0.3)).double()
    m.train(train)
    x = torch.randn(3, 64, *size, dtype=torch.float64)
    with torch.no_grad():
        expected, _ = sk_equation(m, x, train)
        torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-10)


def test_selection_is_branch_major_softmax():
    torch.manual_seed(0)
    m = randomise_bn_stats(contract.perturb_parameters(build(num_branches=3), 0.5)).double()
    m.eval()
    x = torch.randn(2, 64, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        a = m.selection(sum(u.mean((2, 3), keepdim=True) for u in m.branch_outputs(x)))
        _, expected = sk_equation(m, x, False)
    assert a.shape == (2, 3, 64, 1, 1)
    torch.testing.assert_close(a.flatten(2), expected)
    torch.testing.assert_close(a.sum(1), torch.ones_like(a[:, 0]))


def test_output_is_non_negative_so_the_host_relu_is_harmless():
    m = contract.perturb_parameters(build(groups=32), 0.5).train()
    y = m(torch.randn(2, 64, 6, 7))
    assert (y >= 0).all() and torch.equal(F.relu(y), y)


def params_formula(c_in, c, m=2, g=1, r=16, floor=32):
    d = max(c // r, floor)
    return m * (9 * c_in * c // g + 2 * c) + c * d + 2 * d + m * c * d


@pytest.mark.parametrize('kwargs', [dict(in_channels=256, groups=32),
                                    dict(in_channels=64),
                                    dict(in_channels=512, groups=32),
                                    dict(in_channels=64, out_channels=128, groups=4,
                                         num_branches=3, reduction=4, min_channels=8),
                                    dict(in_channels=64, branch_groups=32)])
def test_param_count_formula(kwargs):
    m = SKConv(**kwargs)
    expected = params_formula(m.in_channels, m.out_channels, m.num_branches, m.branch_groups,
                              kwargs.get('reduction', 16), kwargs.get('min_channels', 32))
    assert sum(p.numel() for p in m.parameters()) == expected


def test_spec_counts():
    """62,528 at C = 256, G = 32 (the spec's hand count, = the plug-in SK's)."""
    assert sum(p.numel() for p in SKConv(256, groups=32).parameters()) == 62528
    assert sum(p.numel() for p in SK(256).parameters()) == 62528
    assert sum(p.numel() for p in SKConv(256, branch_groups=32).parameters()) == 62528
    assert SKConv(1024, groups=32).hidden == 64 and SKConv(128, groups=32).hidden == 32


def test_state_dict_keys():
    keys = sorted(k for k in build(groups=32).state_dict() if 'num_batches' not in k)
    assert keys == sorted(
        [f'branches.{i}.conv.weight' for i in range(2)]
        + [f'branches.{i}.norm.{p}' for i in range(2)
           for p in ('weight', 'bias', 'running_mean', 'running_var')]
        + ['fc_reduce.weight', 'fc_select.weight']
        + [f'fc_norm.{p}' for p in ('weight', 'bias', 'running_mean', 'running_var')])


def test_official_initialisation():
    torch.manual_seed(0)
    m = SKConv(256, 512, groups=32)
    m.init_weights()
    fan_in = 256 // 32 * 9
    for branch in m.branches:
        std = branch.conv.weight.std().item()
        assert abs(std - (2 / fan_in) ** 0.5) < 0.02 * (2 / fan_in) ** 0.5
        assert torch.equal(branch.norm.weight, torch.ones(512))
        assert torch.equal(branch.norm.bias, torch.zeros(512))
    for fc in (m.fc_reduce, m.fc_select):
        assert abs(fc.weight.std().item() - 0.01) < 0.001


def test_training_with_batch_one():
    torch.manual_seed(0)
    m = randomise_bn_stats(contract.perturb_parameters(build(groups=32))).train()
    z_stats = m.fc_norm.running_mean.clone()
    branch_stats = m.branches[0].norm.running_mean.clone()
    y = m(torch.randn(1, 64, 7, 5))
    assert y.shape == (1, 64, 7, 5) and torch.isfinite(y).all()
    assert torch.equal(m.fc_norm.running_mean, z_stats), 'z statistics must not be updated'
    assert not torch.equal(m.branches[0].norm.running_mean, branch_stats)
    # stride 2 on a 1x1 map at batch 1: every BN sees one value per channel
    s2 = build(stride=2, groups=32).train()
    assert s2(torch.randn(1, 64, 1, 1)).shape == (1, 64, 1, 1)


# --- init_from_conv -------------------------------------------------------------------


def host_pair(c_in=64, c_out=64, stride=1, dilation=1, groups=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, 3, stride, dilation, dilation, groups, bias=False)
    norm = nn.BatchNorm2d(c_out)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.2)
        norm.weight.copy_(torch.randn(c_out, generator=gen))
        norm.bias.copy_(torch.randn(c_out, generator=gen))
        norm.running_mean.copy_(torch.randn(c_out, generator=gen))
        norm.running_var.copy_(torch.rand(c_out, generator=gen) + 0.5)
    return conv.double(), norm.double()


@pytest.mark.parametrize('geometry', [dict(), dict(c_out=128, stride=2),
                                      dict(dilation=2, groups=4), dict(groups=1)],
                         ids=['g32', 'out128_s2', 'd2_g4', 'dense'])
@pytest.mark.parametrize('num_branches', [2, 3])
def test_init_from_conv_is_exactly_the_conv(geometry, num_branches):
    conv, norm = host_pair(**geometry)
    m = SKConv.from_conv(conv, num_branches=num_branches).double()
    contract.perturb_parameters(m, 0.5)
    assert m.init_from_conv(conv, norm) is True
    x = torch.randn(2, 64, 9, 7, dtype=torch.float64)
    m.eval()
    norm.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), F.relu(norm(conv(x))), rtol=1e-13, atol=1e-13)
    # training mode (batch statistics): also the conv, its BN and ReLU
    m.train()
    norm.train()
    with torch.no_grad():
        torch.testing.assert_close(m(x), F.relu(norm(conv(x))), rtol=1e-12, atol=1e-12)


def test_init_from_conv_is_bitwise_at_two_branches():
    conv, norm = host_pair()
    m = SKConv.from_conv(conv).double()
    m.init_from_conv(conv, norm)
    m.eval()
    norm.eval()
    x = torch.randn(2, 64, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(m.selection(torch.randn(2, 64, 1, 1, dtype=torch.float64)),
                           torch.full((2, 2, 64, 1, 1), 0.5, dtype=torch.float64))
        assert torch.equal(m.branch_outputs(x)[1], torch.zeros(2, 64, 8, 8,
                                                              dtype=torch.float64))
        torch.testing.assert_close(m(x), F.relu(norm(conv(x))), rtol=0, atol=1e-15)


def test_init_from_conv_leaves_the_other_branches_without_gradient():
    """ReLU'(0) = 0: the zeroed branches stay dead under gradient descent (documented)."""
    conv, norm = host_pair()
    m = SKConv.from_conv(conv).double()
    m.init_from_conv(conv, norm)
    m.train()
    y = m(torch.randn(2, 64, 8, 8, dtype=torch.float64))
    y.mul(torch.randn_like(y)).sum().backward()
    for p in m.branches[1].parameters():
        assert torch.equal(p.grad, torch.zeros_like(p))
    assert m.branches[0].conv.weight.grad.abs().sum() > 0
    assert m.fc_select.weight.grad.abs().sum() > 0


def test_init_from_conv_errors():
    conv, norm = host_pair(groups=1)
    m = SKConv.from_conv(conv, branch_groups=32).double()
    with pytest.raises(ValueError, match=r'SKConv.init_from_conv: the branches have '
                                         r'branch_groups=32 but the conv has groups=1'):
        m.init_from_conv(conv, norm)
    m = SKConv.from_conv(conv).double()
    with pytest.raises(ValueError, match='needs the BatchNorm after the conv'):
        m.init_from_conv(conv, None)
    with pytest.raises(ValueError, match='needs the BatchNorm after the conv'):
        m.init_from_conv(conv, nn.GroupNorm(4, 64))
    with pytest.raises(ValueError, match='is not the conv this module was built from'):
        m.init_from_conv(nn.Conv2d(64, 64, 3, 2, 1, bias=False), norm)
    with pytest.raises(ValueError, match='takes an nn.Conv2d'):
        m.init_from_conv(nn.Linear(3, 3), norm)
    with pytest.raises(ValueError, match='eps='):
        m.init_from_conv(conv, nn.BatchNorm2d(64, eps=1e-3))
    with pytest.raises(ValueError, match='needs ReLU branch activations'):
        SKConv.from_conv(conv, act_cfg=dict(type='SiLU')).init_from_conv(conv, norm)
    with pytest.raises(ValueError, match='needs BatchNorm branch norms'):
        SKConv.from_conv(conv, norm_cfg=dict(type='GN', num_groups=8)).init_from_conv(conv,
                                                                                      norm)


# --- the timm peer -------------------------------------------------------------------------


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('channels', [64, 32])
def test_equals_timm_selective_kernel(stride, channels):
    """The spec's check: timm SelectiveKernel(C, C, stride=s, groups=32, split_input=False,
    rd_channels=max(C // 16, 32)) with copied weights."""
    from timm.layers import SelectiveKernel
    torch.manual_seed(0)
    ours = randomise_bn_stats(contract.perturb_parameters(
        SKConv(channels, stride=stride, groups=32), 0.3)).double().eval()
    theirs = SelectiveKernel(channels, channels, stride=stride, groups=32, split_input=False,
                             rd_channels=max(channels // 16, 32)).double().eval()
    state = {}
    for key, value in ours.state_dict().items():
        key = key.replace('branches.', 'paths.').replace('.norm.', '.bn.')
        key = key.replace('fc_norm.', 'attn.bn.').replace('fc_reduce', 'attn.fc_reduce')
        state[key.replace('fc_select', 'attn.fc_select')] = value
    theirs.load_state_dict(state, strict=True)
    x = torch.randn(2, channels, 9, 7, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)


# --- maps and errors ----------------------------------------------------------------------


@pytest.mark.parametrize('kwargs', [dict(groups=4), dict(num_branches=3, stride=2)], ids=str)
def test_maps_rebuild_the_forward(kwargs):
    torch.manual_seed(0)
    m = contract.perturb_parameters(build(32, min_channels=4, **kwargs), 0.5).eval()
    x = torch.randn(2, 32, 7, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = m(x)
        maps = extract_maps(m, x)
        feats = m.branch_outputs(x)
        weights = m.selection(sum(f.mean((2, 3), keepdim=True) for f in feats)).flatten(2)
        assert set(maps) == {f'branch_{i + 1}' for i in range(m.num_branches)}
        for i in range(m.num_branches):
            assert maps[f'branch_{i + 1}'].kind == 'channel'
            assert torch.equal(maps[f'branch_{i + 1}'].values, weights[:, i])
        rebuilt = sum(weights[:, i, :, None, None] * f for i, f in enumerate(feats))
    torch.testing.assert_close(rebuilt, expected)
    assert (weights.std(1) > 1e-3).any(), 'the branches are not weighted differently'


BAD_ARGS = [
    (dict(in_channels=48, groups=32), 'in_channels=48 must be divisible by groups=32'),
    (dict(in_channels=48, branch_groups=32), 'in_channels=48 must be divisible by '
                                             'branch_groups=32'),
    (dict(out_channels=40, branch_groups=16), 'out_channels=40 must be divisible by '
                                              'branch_groups=16'),
    (dict(branch_groups=0), 'branch_groups'),
    (dict(num_branches=1), 'num_branches'),
    (dict(reduction=0), 'reduction'),
    (dict(min_channels=0), 'min_channels'),
    (dict(reduction=128, min_channels=1), 'reduction=128 is larger'),
    (dict(kernel_size=5), r'kernel_size in \(3,\)'),
    (dict(bias=True), 'bias=True'),
    (dict(padding=0), 'padding=0'),
    (dict(stride=0), 'stride'),
]


@pytest.mark.parametrize('kwargs,match', BAD_ARGS, ids=[f'{i}' for i in range(len(BAD_ARGS))])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=rf'SKConv.*{match}'):
        SKConv(**dict(dict(in_channels=64), **kwargs))


def test_from_conv_takes_the_conv():
    conv = nn.Conv2d(64, 128, 3, 2, 2, 2, 32, bias=False)
    m = SKConv.from_conv(conv)
    assert (m.in_channels, m.out_channels, m.stride, m.dilation, m.groups, m.branch_groups) \
        == (64, 128, 2, 2, 32, 32)
    with pytest.raises(ValueError, match=r"SKConv: \['groups'\] are taken from the replaced"):
        SKConv.from_conv(conv, groups=4)


def test_errors_name_the_subclass():
    sub = type('MySKConv', (SKConv, ), {'_abbr_': 'my_skconv'})
    with pytest.raises(ValueError, match='MySKConv: num_branches'):
        sub(64, num_branches=1)
    with pytest.raises(ValueError, match='MySKConv: in_channels=48 must be divisible by '
                                         'branch_groups'):
        sub(48, branch_groups=32)
    conv, norm = host_pair(groups=1)
    with pytest.raises(ValueError, match='MySKConv.init_from_conv: the branches'):
        sub.from_conv(conv, branch_groups=32).init_from_conv(conv, norm)
