"""GatherExcite: its equations (every variant), parameter counts, initialisation, size policy,
maps, argument checks, the full-map depthwise conv layer and timm's parameter-free peer."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn_mm.analysis.complexity import count_flops
from cvattn_mm.attention.channel.gather_excite import FullDepthwiseConv2d, GatherExcite

from .contract import check_onnx, check_torch_compile, perturb_parameters, run_contract

DOUBLE = torch.float64


@pytest.mark.parametrize('kwargs', [
    dict(extent=8), dict(extent=3), dict(variant='theta', extent=8),
    dict(variant='theta', grid_size=(4, 5)), dict(variant='theta_plus', grid_size=5),
    dict(variant='theta_plus', extent=4, reduction=4),
    dict(variant='theta', extent=2, norm_cfg=dict(type='GN', num_groups=4))],
    ids=['minus-e8', 'minus-e3', 'theta-e8', 'theta-global', 'plus-global', 'plus-e4',
         'theta-e2-gn'])
def test_contract_variants(kwargs):
    run_contract(lambda: GatherExcite(16, **kwargs))


@pytest.mark.parametrize('kwargs', [dict(extent=8), dict(variant='theta', extent=4),
                                    dict(variant='theta_plus', grid_size=4, reduction=4)],
                         ids=['minus-e8', 'theta-e4', 'plus-global-pooled'])
def test_onnx_variants(kwargs, tmp_path):
    check_onnx(lambda: GatherExcite(16, **kwargs), tmp_path)


def test_torch_compile_full_map_conv():
    """Compiled, the full-map depthwise conv is traced as the conv (on the grid size)."""
    check_torch_compile(lambda: GatherExcite(16, variant='theta_plus', grid_size=(7, 9),
                                             reduction=4))


# --- the equations, written from the paper and the official prototxts ------------------


def bn_train(z, weight, bias, eps=1e-5):
    """A batch norm in training mode on (N, C, h, w): batch statistics, biased variance."""
    mean = z.mean((0, 2, 3), keepdim=True)
    var = ((z - mean) ** 2).mean((0, 2, 3), keepdim=True)
    return (z - mean) / torch.sqrt(var + eps) * weight[:, None, None] + bias[:, None, None]


def cells(size, e):
    """The ceil(size / e) windows of the extent-e average pooling: centre i e, radius e - 1,
    clipped to the map (the padded zeros are not counted)."""
    return [range(max(i * e - (e - 1), 0), min(i * e + e, size)) for i in range(-(-size // e))]


def extent_pool(x, e):
    n, c, h, w = x.shape
    rows, cols = cells(h, e), cells(w, e)
    out = torch.zeros(n, c, len(rows), len(cols), dtype=x.dtype)
    for i, r in enumerate(rows):
        for j, s in enumerate(cols):
            out[:, :, i, j] = x[:, :, r][:, :, :, s].mean((2, 3))
    return out


def nearest(g, size):
    """Nearest resize: output position p takes cell floor(p h' / H)."""
    rows = [p * g.shape[2] // size[0] for p in range(size[0])]
    cols = [p * g.shape[3] // size[1] for p in range(size[1])]
    return g[:, :, rows][:, :, :, cols]


def adaptive_pool(x, grid):
    """PyTorch's adaptive average pooling: window floor(i H / g) to ceil((i + 1) H / g)."""
    n, c, h, w = x.shape
    out = torch.zeros(n, c, *grid, dtype=x.dtype)
    for i in range(grid[0]):
        for j in range(grid[1]):
            r = range(i * h // grid[0], -(-(i + 1) * h // grid[0]))
            s = range(j * w // grid[1], -(-(j + 1) * w // grid[1]))
            out[:, :, i, j] = x[:, :, r][:, :, :, s].mean((2, 3))
    return out


def depthwise_stride2(x, weight):
    """A depthwise 3x3 conv, stride 2, padding 1, no bias: ceil(H/2) x ceil(W/2)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    out = torch.zeros(n, c, -(-h // 2), -(-w // 2), dtype=x.dtype)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            window = padded[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            out[:, :, i, j] = (window * weight[:, 0]).sum((2, 3))
    return out


def excite_mlp(z, ge):
    """theta-plus excite: 1x1 conv C -> C/r, ReLU, 1x1 conv C/r -> C (biased)."""
    w1, b1 = ge.mlp.fc1.weight[:, :, 0, 0], ge.mlp.fc1.bias
    w2, b2 = ge.mlp.fc2.weight[:, :, 0, 0], ge.mlp.fc2.bias
    hidden = torch.einsum('oc,nchw->nohw', w1, z) + b1[:, None, None]
    return torch.einsum('co,nohw->nchw', w2, hidden.clamp_min(0)) + b2[:, None, None]


def reference(x, ge):
    """y = x * sigmoid(interp(excite(gather(x)))) in training mode, by the paper and the
    prototxts (GEPF: GAP; GEP: depthwise conv of the map's size + BN; GEPP: + ReLU and the
    excite convs; figures GEPF8 / GEP8 for the extents)."""
    if ge.variant == 'theta_minus':
        z = x.mean((2, 3), keepdim=True) if ge.extent == 0 else extent_pool(x, ge.extent)
    elif ge.extent == 0:
        grid = ge.grid_size
        pooled = x if x.shape[2:] == grid else adaptive_pool(x, grid)
        weight = ge.gather.conv1.weight[:, 0]  # (C, g_h, g_w)
        z = (pooled * weight).sum((2, 3), keepdim=True)
        z = bn_train(z, ge.gather.norm1.weight, ge.gather.norm1.bias)
    else:
        z = x
        steps = int(math.log2(ge.extent))
        for i in range(1, steps + 1):
            z = depthwise_stride2(z, getattr(ge.gather, f'conv{i}').weight)
            norm = getattr(ge.gather, f'norm{i}')
            z = bn_train(z, norm.weight, norm.bias)
            if i < steps:
                z = z.clamp_min(0)
    if ge.variant == 'theta_plus':
        z = excite_mlp(z.clamp_min(0), ge)
    gate = torch.sigmoid(z)
    if ge.extent:
        gate = nearest(gate, x.shape[2:])
    return x * gate


EQUATION_CASES = [
    (dict(), (5, 7)), (dict(extent=8), (16, 16)), (dict(extent=8), (13, 9)),
    (dict(extent=2), (5, 7)), (dict(extent=3), (7, 10)),
    (dict(variant='theta', extent=8), (16, 12)), (dict(variant='theta', extent=4), (9, 6)),
    (dict(variant='theta', extent=2), (5, 5)),
    (dict(variant='theta', grid_size=(5, 7)), (5, 7)),  # the official size: no pooling
    (dict(variant='theta', grid_size=4), (9, 6)),  # pooled to the grid
    (dict(variant='theta', grid_size=4), (3, 2)),  # a grid larger than the map
    (dict(variant='theta_plus', grid_size=6), (6, 6)),
    (dict(variant='theta_plus', grid_size=3, reduction=4), (7, 5)),
    (dict(variant='theta_plus', extent=4, reduction=4), (9, 11)),
]


@pytest.mark.parametrize('kwargs, size', EQUATION_CASES,
                         ids=[f'{"-".join(map(str, k.values())) or "default"}-{h}x{w}'
                              for k, (h, w) in EQUATION_CASES])
def test_equation(kwargs, size):
    torch.manual_seed(0)
    ge = perturb_parameters(GatherExcite(16, **kwargs), scale=0.3).to(DOUBLE).train()
    x = torch.randn(3, 16, *size, dtype=DOUBLE)
    torch.testing.assert_close(ge(x), reference(x, ge))


def test_eval_mode_uses_running_statistics():
    torch.manual_seed(0)
    ge = perturb_parameters(GatherExcite(8, variant='theta_plus', grid_size=4, reduction=4),
                            0.3).to(DOUBLE)
    norm = ge.gather.norm1
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    ge.eval()
    x = torch.randn(2, 8, 4, 4, dtype=DOUBLE)
    z = (x * ge.gather.conv1.weight[:, 0]).sum((2, 3), keepdim=True)
    z = ((z - norm.running_mean[:, None, None]) / (norm.running_var[:, None, None] + 1e-5).sqrt()
         * norm.weight[:, None, None] + norm.bias[:, None, None])
    torch.testing.assert_close(ge(x), x * torch.sigmoid(excite_mlp(z.clamp_min(0), ge)))


@pytest.mark.parametrize('kwargs', [dict(variant='theta', grid_size=3),
                                    dict(variant='theta', extent=4)], ids=['global', 'e4'])
def test_batch_one_gather_norm_uses_running_statistics(kwargs):
    """In training, a gather BN that sees one value per channel (batch 1, a 1x1 gather)
    normalises with its running statistics and leaves them unchanged (README, known limits)."""
    ge = perturb_parameters(GatherExcite(8, **kwargs), 0.3).train()
    x = torch.randn(1, 8, 3, 3)
    y = ge(x)
    norm = ge.gather[-1]  # the last gather BN: 1x1 (e4: 3x3 -> 2x2 -> 1x1)
    assert torch.equal(norm.running_mean, torch.zeros(8)) and norm.num_batches_tracked == 0
    if ge.extent == 0:  # the only BN: the training output is the eval one
        torch.testing.assert_close(y, ge.eval()(x))


def test_uniform_theta_gather_is_theta_minus():
    """The spec's check: theta-global with every depthwise weight 1/S and a fresh BN in eval
    mode equals theta-minus-global up to the BN's eps."""
    theta = GatherExcite(16, variant='theta', grid_size=(6, 7)).to(DOUBLE).eval()
    with torch.no_grad():
        theta.gather.conv1.weight.fill_(1 / 42)
    x = torch.randn(2, 16, 6, 7, dtype=DOUBLE)
    minus = GatherExcite(16).to(DOUBLE)(x)
    torch.testing.assert_close(theta(x), minus, rtol=0, atol=1e-5 * x.abs().max().item())
    assert not torch.equal(theta(x), minus)  # the eps is there


# --- parameters and initialisation ---------------------------------------------------------


def expected_params(c, variant, extent=0, grid=(7, 7), r=16):
    if variant == 'theta_minus':
        return 0
    gather = c * grid[0] * grid[1] + 2 * c if extent == 0 else int(math.log2(extent)) * 11 * c
    hidden = max(c // r, 1)
    return gather + (2 * c * hidden + hidden + c if variant == 'theta_plus' else 0)


@pytest.mark.parametrize('channels', [16, 64, 256, 2048])
@pytest.mark.parametrize('kwargs', [
    dict(), dict(extent=8), dict(variant='theta', extent=8), dict(variant='theta', extent=2),
    dict(variant='theta'), dict(variant='theta', grid_size=(3, 5)),
    dict(variant='theta_plus', grid_size=4), dict(variant='theta_plus', extent=4)],
    ids=lambda k: '-'.join(map(str, k.values())) or 'default')
def test_parameter_count(channels, kwargs):
    ge = GatherExcite(channels, **kwargs)
    variant = kwargs.get('variant', 'theta_minus')
    grid = kwargs.get('grid_size', 7)
    grid = (grid, grid) if isinstance(grid, int) else grid
    assert (sum(p.numel() for p in ge.parameters())
            == expected_params(channels, variant, kwargs.get('extent', 0), grid))


def test_parameter_counts_of_the_spec():
    """C = 256: theta-minus 0, theta extent 8 8,448, theta global at 56x56 803,328,
    theta-plus global at 56x56 811,792."""
    counts = [sum(p.numel() for p in GatherExcite(256, **kw).parameters()) for kw in (
        dict(), dict(variant='theta', extent=8), dict(variant='theta', grid_size=56),
        dict(variant='theta_plus', grid_size=56))]
    assert counts == [0, 8448, 803328, 811792]


def test_official_initialisation():
    torch.manual_seed(0)
    ge = GatherExcite(256, variant='theta_plus', grid_size=28,
                      init_cfg=dict(type='Constant', val=0.5, layer='Conv2d'))
    ge.init_weights()  # init_cfg first, then the official initialisation
    conv = ge.gather.conv1.weight
    assert abs(conv.std().item() / math.sqrt(2 / 28 ** 2) - 1) < 0.01  # msra: sqrt(2 / fan_in)
    assert abs(conv.mean().item()) < 1e-3
    for fc in (ge.mlp.fc1, ge.mlp.fc2):
        assert abs(fc.weight.std().item() / 0.01 - 1) < 0.1
        assert torch.equal(fc.bias, torch.zeros_like(fc.bias))
    assert torch.equal(ge.gather.norm1.weight, torch.ones(256))
    assert torch.equal(ge.gather.norm1.bias, torch.zeros(256))
    extent = GatherExcite(64, variant='theta', extent=8)
    for i in (1, 2, 3):
        w = getattr(extent.gather, f'conv{i}').weight
        assert abs(w.std().item() / math.sqrt(2 / 9) - 1) < 0.15


def test_state_dict_keys_are_timms():
    assert sorted(GatherExcite(16, variant='theta_plus', grid_size=3).state_dict()) == [
        'gather.conv1.weight', 'gather.norm1.bias', 'gather.norm1.num_batches_tracked',
        'gather.norm1.running_mean', 'gather.norm1.running_var', 'gather.norm1.weight',
        'mlp.fc1.bias', 'mlp.fc1.weight', 'mlp.fc2.bias', 'mlp.fc2.weight']
    assert [n for n, _ in GatherExcite(16, variant='theta', extent=8).gather.named_children()] \
        == ['conv1', 'norm1', 'act1', 'conv2', 'norm2', 'act2', 'conv3', 'norm3']
    assert GatherExcite(16).state_dict() == {}


# --- size policy -------------------------------------------------------------------------


@pytest.mark.parametrize('variant', ['theta', 'theta_plus'])
def test_pool_policy_is_strict_on_the_grid_and_pools_elsewhere(variant):
    torch.manual_seed(0)
    pool = perturb_parameters(GatherExcite(8, variant=variant, grid_size=(4, 6), reduction=4),
                              0.3).eval()
    strict = GatherExcite(8, variant=variant, grid_size=(4, 6), size_policy='strict',
                          reduction=4).eval()
    strict.load_state_dict(pool.state_dict())
    x = torch.randn(2, 8, 4, 6)
    with torch.no_grad():
        assert torch.equal(pool(x), strict(x))
        big = torch.randn(2, 8, 9, 13)
        torch.testing.assert_close(pool.gate(big), strict.gate(F.adaptive_avg_pool2d(big, (4, 6))))
    with pytest.raises(ValueError, match=r"GatherExcite with size_policy='strict' was built for "
                                         r'4x6 maps .* but got 9x13'):
        strict(big)


def test_traced_on_the_grid_size_is_specialised_to_it():
    """Traced on another size, the pooled graph takes any size; traced on the grid size
    (nothing pooled), the graph runs at that size only (README, known limits)."""
    ge = perturb_parameters(GatherExcite(16, variant='theta', grid_size=(4, 6)), 0.3).eval()
    with torch.no_grad():
        pooled = torch.jit.trace(ge, torch.randn(2, 16, 9, 13), check_trace=False)
        on_grid = torch.jit.trace(ge, torch.randn(2, 16, 4, 6), check_trace=False)
        for size in ((4, 6), (16, 16), (5, 7)):
            x = torch.randn(2, 16, *size)
            torch.testing.assert_close(pooled(x), ge(x))
        with pytest.raises(RuntimeError):
            on_grid(torch.randn(2, 16, 9, 13))


def test_size_agnostic_variants_ignore_the_grid():
    x = torch.randn(1, 8, 5, 3)
    for kwargs in (dict(), dict(extent=4), dict(variant='theta', extent=2)):
        ge = GatherExcite(8, size_policy='strict', grid_size=2, **kwargs).eval()
        assert ge(x).shape == x.shape


# --- the full-map depthwise conv -----------------------------------------------------------


def test_full_depthwise_conv_is_the_conv():
    torch.manual_seed(0)
    conv = FullDepthwiseConv2d(6, (4, 5)).to(DOUBLE)
    plain = nn.Conv2d(6, 6, (4, 5), groups=6, bias=False).to(DOUBLE)
    plain.load_state_dict(conv.state_dict())
    for size in ((4, 5), (6, 7)):  # the fast sum; the conv (another size)
        x = torch.randn(3, 6, *size, dtype=DOUBLE, requires_grad=True)
        y, y_plain = conv(x), plain(x)
        torch.testing.assert_close(y, y_plain)
        grads = torch.autograd.grad(y.sum() * 2, (x, conv.weight))
        grads_plain = torch.autograd.grad(y_plain.sum() * 2, (x, plain.weight))
        for g, g_plain in zip(grads, grads_plain):
            torch.testing.assert_close(g, g_plain)
    x = torch.randn(2, 6, 4, 5).to(memory_format=torch.channels_last)
    torch.testing.assert_close(conv.float()(x), plain.float()(x))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert conv(x.bfloat16()).dtype == torch.bfloat16


def test_full_depthwise_conv_counts_as_the_conv():
    """FLOP counters trace the conv (the fast sum is eager only): swapping in a plain conv
    changes neither the count nor the output."""
    ge = perturb_parameters(GatherExcite(8, variant='theta', grid_size=5)).eval()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        before, flops = ge(x), count_flops(ge, x)
        plain = nn.Conv2d(8, 8, 5, groups=8, bias=False)
        plain.load_state_dict(ge.gather.conv1.state_dict())
        ge.gather.conv1 = plain
        torch.testing.assert_close(ge(x), before)
    assert count_flops(ge, x) == flops
    assert flops >= 2 * 8 * 25  # the depthwise conv's multiply-adds


# --- the gate, the maps ----------------------------------------------------------------------


@pytest.mark.parametrize('kwargs', [dict(), dict(extent=4), dict(variant='theta', extent=4),
                                    dict(variant='theta_plus', grid_size=3)],
                         ids=['minus', 'minus-e4', 'theta-e4', 'plus'])
def test_gate_rebuilds_the_forward_and_is_the_map(kwargs):
    torch.manual_seed(0)
    ge = perturb_parameters(GatherExcite(16, **kwargs), 0.3).eval()
    x = torch.randn(2, 16, 7, 10)
    with torch.no_grad():
        gate = ge.gate(x)
        torch.testing.assert_close(ge(x), x * gate, rtol=0, atol=0)
        maps = ge.attention_maps(x)
    if ge.extent:
        assert gate.shape == x.shape
        assert set(maps) == {'channel_gate', 'spatial_gate'}
        assert torch.equal(maps['channel_gate'].values, gate.mean((2, 3)))
        assert torch.equal(maps['spatial_gate'].values, gate.mean(1))
    else:
        assert gate.shape == (2, 16, 1, 1)
        assert set(maps) == {'channel_gate'}
        assert torch.equal(maps['channel_gate'].values, gate.flatten(1))


def test_theta_minus_at_initialisation():
    x = torch.randn(2, 8, 5, 6)
    ge = GatherExcite(8)
    ge.init_weights()
    assert torch.equal(ge(x), x * torch.sigmoid(x.mean((2, 3), keepdim=True)))


def test_extent_gate_is_constant_on_each_cell():
    ge = GatherExcite(4, extent=4).eval()
    x = torch.randn(1, 4, 8, 8)
    gate = ge.gate(x)
    for i in (0, 4):
        assert torch.equal(gate[..., i, :], gate[..., i + 1, :])
    assert ge.gather_context(x).shape == (1, 4, 2, 2)


# --- timm's GatherExcite (parameter-free: no weights to copy) ------------------------------


@pytest.mark.parametrize('extent, size', [(0, (7, 9)), (8, (16, 16)), (8, (13, 17)),
                                          (2, (5, 7)), (4, (1, 6))])
def test_equal_to_timm(extent, size):
    from timm.layers.gather_excite import GatherExcite as TimmGatherExcite
    ours = GatherExcite(16, extent=extent).to(DOUBLE)
    theirs = TimmGatherExcite(16, extent=extent, use_mlp=False).to(DOUBLE)
    x = torch.randn(2, 16, *size, dtype=DOUBLE)
    outputs, grads = [], []
    for module in (ours, theirs):
        xi = x.clone().requires_grad_()
        y = module(xi)
        outputs.append(y)
        grads.append(torch.autograd.grad((y * x.flip(0)).sum(), xi)[0])
    torch.testing.assert_close(*outputs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(*grads, rtol=1e-12, atol=1e-12)


# --- arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize('kwargs, match', [
    (dict(in_channels=0), 'in_channels'),
    (dict(variant='theta-'), 'variant must be one of'),
    (dict(extent=-1), 'extent must be >= 0'),
    (dict(extent=1), r'extent must be 0 \(global\) or >= 2, got 1'),
    (dict(extent=2.0), 'extent must be an integer'),
    (dict(variant='theta', extent=6), 'extent must be 0 or a power of two'),
    (dict(variant='theta_plus', extent=12), 'extent must be 0 or a power of two'),
    (dict(grid_size=0), 'grid_size must be >= 1'),
    (dict(grid_size=(2, 3, 4)), r'grid_size must be an int or an \(h, w\) pair'),
    (dict(size_policy='crop'), 'size_policy must be one of'),
    (dict(variant='theta_plus', reduction=32), 'reduction=32 is larger than in_channels=16'),
    (dict(variant='theta_plus', reduction=0), 'reduction must be >= 1'),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=rf'GatherExcite: {match}'):
        GatherExcite(**dict(dict(in_channels=16), **kwargs))


def test_reduction_is_not_checked_without_an_excite():
    assert GatherExcite(8, reduction=16).mlp is None  # 16 > 8: only theta-plus uses it


def test_errors_name_a_subclass():
    sub = type('MyGatherExcite', (GatherExcite, ), {'_abbr_': 'my_ge'})
    with pytest.raises(ValueError, match='MyGatherExcite: variant'):
        sub(8, variant='theta-')
    strict = sub(8, variant='theta', grid_size=3, size_policy='strict')
    with pytest.raises(ValueError, match="MyGatherExcite with size_policy='strict'"):
        strict(torch.randn(1, 8, 4, 4))
