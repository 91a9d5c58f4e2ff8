"""SCConv: its equation, block-diagonality, parameter count, initialisation, maps, pooling
modes, variants and argument checks."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn_mm.attention.spatial.scconv import SCConv

from .contract import (
    ALL_CHECKS,
    check_autocast,
    check_layers_called,
    check_replaces_conv,
    perturb_parameters,
    run_contract,
)


@pytest.mark.parametrize('kwargs', [dict(pooling_r=2), dict(upsample_mode='bilinear'),
                                    dict(norm_cfg=dict(type='GN', num_groups=4)),
                                    dict(groups=4), dict(dilation=2)],
                         ids=['r2', 'bilinear', 'gn', 'groups', 'dilation'])
def test_contract_variants(kwargs):
    run_contract(lambda: SCConv(64, **kwargs))


def test_contract_floor_mode():
    """The official floor pooling: every check (they run on maps of 5 to 9 per side) but
    the shape check, which includes 1x1 maps; shapes are checked here from 4x4 up."""
    factory = lambda: SCConv(64, ceil_mode=False)  # noqa: E731
    for check in ALL_CHECKS:
        if check is check_layers_called:
            check(factory, compiled=False)
        elif check.__name__ != 'check_shapes':
            check(factory)
    check_autocast(factory, torch.bfloat16)
    module = factory()
    for size in [(4, 4), (7, 7), (13, 17), (8, 5)]:
        x = torch.randn(2, 64, *size)
        assert module(x).shape == x.shape


@pytest.mark.parametrize('options', [dict(pooling_r=2, upsample_mode='bilinear'),
                                     dict(norm_cfg=dict(type='GN', num_groups=2))])
def test_replaces_conv_variants(options):
    check_replaces_conv(SCConv, **options)


# --- the equation, written from the paper with plain tensor ops --------------------------


def conv(x, layer, stride=1):
    return F.conv2d(x, layer.weight, None, stride, layer.dilation, layer.dilation,
                    layer.groups)


def avg_pool(x, r, ceil):
    """Means over r x r windows at stride r; in ceil mode the last window of a row or column
    covers what remains (fewer than r positions); in floor mode the remainder is dropped."""
    h, w = x.shape[-2:]
    rows = -(-h // r) if ceil else h // r
    cols = -(-w // r) if ceil else w // r
    out = torch.empty(*x.shape[:2], rows, cols, dtype=x.dtype)
    for i in range(rows):
        for j in range(cols):
            out[..., i, j] = x[..., i * r:(i + 1) * r, j * r:(j + 1) * r].mean((-2, -1))
    return out


def nearest_up(y, size):
    """Position i of the output reads position floor(i * h / H) of the (h, w) input."""
    rows = [i * y.shape[-2] // size[0] for i in range(size[0])]
    cols = [j * y.shape[-1] // size[1] for j in range(size[1])]
    return y[..., rows, :][..., cols]


def bilinear_up(y, size):
    """Bilinear resize with half-pixel centres (align_corners=False), clamped at the border."""
    def weights(n_in, n_out):
        m = torch.zeros(n_out, n_in, dtype=y.dtype)
        for i in range(n_out):
            src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = min(int(src), n_in - 1)
            i1 = min(i0 + 1, n_in - 1)
            lam = src - i0
            m[i, i0] += 1 - lam
            m[i, i1] += lam
        return m
    rows, cols = weights(y.shape[-2], size[0]), weights(y.shape[-1], size[1])
    return torch.einsum('hi,ncij,wj->nchw', rows, y, cols)


def batch_norm(z, norm, training):
    if training:
        mean = z.mean((0, 2, 3), keepdim=True)
        var = z.var((0, 2, 3), unbiased=False, keepdim=True)
    else:
        mean = norm.running_mean[:, None, None]
        var = norm.running_var[:, None, None]
    return (z - mean) / torch.sqrt(var + norm.eps) * norm.weight[:, None, None] \
        + norm.bias[:, None, None]


def scconv_reference(m, x, training):
    c = x.shape[1] // 2
    x_a, x_b = x[:, :c], x[:, c:]
    y_a = conv(x_a, m.k1, m.stride)
    t1 = avg_pool(x_b, m.pooling_r, m.ceil_mode)
    context = batch_norm(conv(t1, m.k2), m.k2_norm, training)
    up = nearest_up if m.upsample_mode == 'nearest' else bilinear_up
    x1 = up(context, x_b.shape[-2:])
    y1 = batch_norm(conv(x_b, m.k3), m.k3_norm, training) * torch.sigmoid(x_b + x1)
    y_b = conv(y1, m.k4, m.stride)
    return torch.cat([y_a, y_b], 1)


def randomized(module):
    module = perturb_parameters(module, scale=0.5).double()
    with torch.no_grad():
        for norm in (module.k2_norm, module.k3_norm):
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
    return module


@pytest.mark.parametrize('kwargs, size', [
    (dict(), (7, 9)),
    (dict(), (8, 12)),
    (dict(), (3, 2)),  # smaller than r: one partial window, the global mean
    (dict(), (1, 1)),
    (dict(out_channels=24, stride=2, dilation=2, groups=4), (13, 10)),
    (dict(ceil_mode=False), (9, 13)),
    (dict(pooling_r=2, upsample_mode='bilinear'), (7, 5)),
    (dict(upsample_mode='bilinear', stride=2), (9, 6)),
], ids=['default', 'divisible', 'small', '1x1', 'geometry', 'floor', 'r2-bilinear',
        'bilinear-stride'])
@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
def test_equation(kwargs, size, training):
    torch.manual_seed(0)
    m = randomized(SCConv(16, **kwargs)).train(training)
    n = 3 if training else 2
    x = torch.randn(n, 16, *size, dtype=torch.float64)
    with torch.no_grad():
        expected = scconv_reference(m, x, training)
        out = m(x)
    assert out.shape == (n, m.out_channels, *m.output_size(*size))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_small_maps_calibrate_with_the_global_mean():
    """On maps no larger than r the pooled context is the mean of the whole map."""
    m = randomized(SCConv(8)).eval()
    x_b = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        context = m.k2_norm(m.k2(x_b.mean((2, 3), keepdim=True)))
        torch.testing.assert_close(m.calibration(x_b), torch.sigmoid(x_b + context))


@pytest.mark.parametrize('size', [(8, 8), (16, 12), (4, 20)])
def test_ceil_mode_is_the_official_floor_mode_when_r_divides_the_map(size):
    ceil = randomized(SCConv(16)).eval()
    floor = SCConv(16, ceil_mode=False).double().eval()
    floor.load_state_dict(ceil.state_dict())
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(ceil(x), floor(x))


def test_floor_mode_ignores_the_remainder_in_the_context():
    """At 7x7 the official floor pool sees only the top-left 4x4 window."""
    m = randomized(SCConv(8, ceil_mode=False)).eval()
    x = torch.randn(1, 8, 7, 7, dtype=torch.float64)
    changed = x.clone()
    changed[:, 4:, 5:, :] += 1  # x_b outside the 4x4 window...
    with torch.no_grad():
        t, t_changed = m.calibration(x[:, 4:]), m.calibration(changed[:, 4:])
    # ...changes the gate only where x_b itself changed (the context is the same)
    assert torch.equal(t[..., :5, :], t_changed[..., :5, :])
    assert not torch.equal(t, t_changed)


# --- the spec's check: block-diagonality and parameter count ----------------------------


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
def test_halves_are_block_diagonal(training):
    m = randomized(SCConv(16, 32, stride=2)).train(training)
    x = torch.randn(3, 16, 9, 10, dtype=torch.float64)
    x_new_b, x_new_a = x.clone(), x.clone()
    x_new_b[:, 8:] = torch.randn(3, 8, 9, 10, dtype=torch.float64)
    x_new_a[:, :8] = torch.randn(3, 8, 9, 10, dtype=torch.float64)
    with torch.no_grad():
        out, out_new_b, out_new_a = m(x), m(x_new_b), m(x_new_a)
    assert torch.equal(out[:, :16], out_new_b[:, :16]), 'out_a depends on x_b'
    assert not torch.equal(out[:, 16:], out_new_b[:, 16:])
    assert torch.equal(out[:, 16:], out_new_a[:, 16:]), 'out_b depends on x_a'
    assert not torch.equal(out[:, :16], out_new_a[:, :16])


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('channels, groups', [(8, 1), (64, 1), (64, 4), (256, 1), (256, 32)])
def test_parameter_count_is_the_replaced_conv_plus_2c(channels, groups):
    replaced = nn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=False)
    m = SCConv.from_conv(replaced)
    assert count(m) == count(replaced) + 2 * channels == 9 * channels ** 2 // groups \
        + 2 * channels


def test_parameter_count_at_256_and_with_other_widths():
    assert count(SCConv(256)) == 590_336
    for c_in, c_out, g in [(16, 32, 1), (64, 32, 2), (32, 128, 4)]:
        expected = 9 * (c_in * c_out // 2 + c_in ** 2 // 2) // g + 2 * c_in
        assert count(SCConv(c_in, c_out, groups=g)) == expected


def test_convs_take_the_replaced_geometry():
    m = SCConv.from_conv(nn.Conv2d(64, 128, 3, 2, padding=2, dilation=2, groups=4,
                                   bias=False))
    for layer, c_out, stride in [(m.k1, 64, 2), (m.k2, 32, 1), (m.k3, 32, 1), (m.k4, 64, 2)]:
        assert (layer.in_channels, layer.out_channels) == (32, c_out)
        assert layer.stride == (stride, stride)
        assert layer.dilation == (2, 2) and layer.padding == (2, 2) and layer.groups == 4
        assert layer.bias is None


def test_state_dict_keys():
    assert sorted(SCConv(8).state_dict()) == sorted(
        ['k1.weight', 'k2.weight', 'k3.weight', 'k4.weight'] + [
            f'{n}.{k}' for n in ('k2_norm', 'k3_norm')
            for k in ('weight', 'bias', 'running_mean', 'running_var',
                      'num_batches_tracked')])


# --- initialisation, maps ----------------------------------------------------------------


def test_initialisation_is_the_official_kaiming_fan_out():
    m = SCConv(16, 32, groups=2)
    with torch.no_grad():
        for layer in (m.k2_norm, m.k3_norm):
            layer.weight.fill_(3)
            layer.bias.fill_(3)
    torch.manual_seed(5)
    m.init_special()
    torch.manual_seed(5)
    for layer in (m.k1, m.k2, m.k3, m.k4):
        expected = torch.empty_like(layer.weight)
        nn.init.kaiming_normal_(expected, mode='fan_out', nonlinearity='relu')
        assert torch.equal(layer.weight, expected)
    for layer in (m.k2_norm, m.k3_norm):
        assert torch.equal(layer.weight, torch.ones(8))
        assert torch.equal(layer.bias, torch.zeros(8))
    # fan_out = 9 * 128 for K1 of SCConv(256) (128 -> 128): std sqrt(2 / fan_out)
    big = SCConv(256)
    std = big.k1.weight.std().item()
    assert abs(std - (2 / (9 * 128)) ** 0.5) < 0.02 * std


def test_init_weights_ends_with_the_official_initialisation():
    m = SCConv(16, init_cfg=dict(type='Constant', val=0.5, layer='Conv2d'))
    m.init_weights()
    assert not torch.equal(m.k1.weight, torch.full_like(m.k1.weight, 0.5))


def test_cannot_start_as_the_replaced_conv():
    with pytest.raises(ValueError, match='block-diagonal between the halves'):
        SCConv(16).init_from_conv(nn.Conv2d(16, 16, 3, padding=1, bias=False))


@pytest.mark.parametrize('mode', ['nearest', 'bilinear'])
def test_gate_rebuilds_the_forward_and_is_the_map(mode):
    m = perturb_parameters(SCConv(16, 32, stride=2, upsample_mode=mode), scale=0.5).eval()
    x = torch.randn(2, 16, 7, 10)
    with torch.no_grad():
        x_a, x_b = m.halves(x)
        assert torch.equal(torch.cat([x_a, x_b], 1), x)
        gate = m.calibration(x_b)
        assert gate.shape == (2, 8, 7, 10) and gate.min() > 0 and gate.max() < 1
        rebuilt = torch.cat([m.k1(x_a), m.k4(m.k3_norm(m.k3(x_b)) * gate)], 1)
        torch.testing.assert_close(m(x), rebuilt)
        maps = m.attention_maps(x)
    assert set(maps) == {'calibration_gate'}
    assert maps['calibration_gate'].kind == 'spatial'
    assert torch.equal(maps['calibration_gate'].values, gate.mean(1))


def test_batch_one_on_a_one_by_one_map_trains():
    """A BN over one value per channel (batch 1, 1x1 map) uses its running statistics."""
    m = perturb_parameters(SCConv(16)).train()
    out = m(torch.randn(1, 16, 1, 1))
    assert torch.isfinite(out).all()
    assert m.k2_norm.training and m.k3_norm.training


# --- argument errors ---------------------------------------------------------------------


@pytest.mark.parametrize('kwargs, match', [
    (dict(in_channels=15), r'SCConv: in_channels=15 must be divisible by 2 \* groups = 2'),
    (dict(out_channels=18, groups=2), r'out_channels=18 must be divisible by 2 \* groups = 4'),
    (dict(groups=16), r'in_channels=16 must be divisible by 2 \* groups = 32'),
    (dict(pooling_r=0), 'SCConv: pooling_r must be >= 1'),
    (dict(ceil_mode='yes'), 'SCConv: ceil_mode must be True or False'),
    (dict(upsample_mode='bicubic'), 'SCConv: upsample_mode must be one of'),
    (dict(kernel_size=5), r'SCConv replaces convs with kernel_size in \(3,\)'),
    (dict(padding=0), 'SCConv keeps the map size'),
    (dict(bias=True), 'SCConv cannot replace a conv with bias=True'),
    (dict(stride=0), 'SCConv: stride must be >= 1'),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SCConv(**dict(dict(in_channels=16), **kwargs))


@pytest.mark.parametrize('size', [(3, 8), (8, 1)])
def test_floor_mode_refuses_maps_smaller_than_r(size):
    m = SCConv(16, ceil_mode=False)
    with pytest.raises(ValueError, match=rf'SCConv: ceil_mode=False .* pooling_r=4 .* got '
                                         rf'\({size[0]}, {size[1]}\)'):
        m(torch.randn(1, 16, *size))


def test_errors_name_a_subclass():
    sub = type('MySCConv', (SCConv, ), {'_abbr_': 'my_scconv'})
    with pytest.raises(ValueError, match='MySCConv: upsample_mode'):
        sub(16, upsample_mode='area')
    with pytest.raises(ValueError, match='MySCConv: ceil_mode=False'):
        sub(16, ceil_mode=False)(torch.randn(1, 16, 2, 2))
    with pytest.raises(ValueError, match='MySCConv cannot take its weights'):
        sub(16).init_from_conv(nn.Conv2d(16, 16, 3, padding=1, bias=False))
