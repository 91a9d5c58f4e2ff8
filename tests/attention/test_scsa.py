"""SCSA: variants through the contract, the equations against a direct reference, its maps,
params."""
import functools

import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.channel_spatial.scsa import SCSA
from cvattn_mm.registry import MODELS
from cvattn_mm.visualization import extract_maps

from . import contract

VARIANTS = {
    'max_pool': dict(down_sample_mode='max_pool'),
    'recombination': dict(down_sample_mode='recombination'),
    'recombination_w3': dict(down_sample_mode='recombination', window_size=3),
    'softmax_gate': dict(gate_layer='softmax'),
    'global_max': dict(window_size=-1, down_sample_mode='max_pool'),
    'global_avg_heads': dict(window_size=-1, head_num=4, qkv_bias=True, attn_drop_ratio=0.1),
    'kernels_window2': dict(group_kernel_sizes=(1, 3, 3, 11), window_size=2, head_num=2),
}


def build(in_channels=32, **kwargs):
    return SCSA(in_channels, **kwargs)


@pytest.mark.parametrize('variant', VARIANTS)
def test_contract_variants(variant):
    torch.manual_seed(0)
    contract.run_contract(functools.partial(build, **VARIANTS[variant]))


def test_compile_and_onnx_recombination_softmax(tmp_path):
    factory = functools.partial(build, down_sample_mode='recombination', gate_layer='softmax',
                                head_num=2, qkv_bias=True)
    contract.check_torch_compile(factory)
    contract.check_onnx(factory, tmp_path)


def test_registered():
    assert MODELS.get('SCSA') is SCSA
    module = MODELS.build(dict(type='SCSA', in_channels=64))
    assert (module.head_num, module.window_size, module.group_kernel_sizes) == (1, 7, (3, 5, 7, 9))
    assert (module.down_sample_mode, module.gate_layer) == ('avg_pool', 'sigmoid')


# --- a direct reference, written after the official layer structure -------------------------

def reference(m: SCSA, x: torch.Tensor) -> torch.Tensor:
    """SCSA computed layer by layer: four separate depthwise convs per direction, pooling
    modules / space-to-depth + 1x1 conv, explicit attention matrix, mean after ``A v``."""
    n, c, h, w = x.shape
    g = c // 4
    gate = (lambda t, d: t.softmax(d)) if m.gate_layer == 'softmax' else (lambda t, d: t.sigmoid())

    # The official four convs' weights, recovered from the flat parameter by slicing.
    convs, offset = [], 0
    for i, k in enumerate(m.group_kernel_sizes):
        weight = m.smsa_weight[offset:offset + g * k].view(g, 1, k)
        convs.append((weight, m.smsa_bias[i * g:(i + 1) * g], k))
        offset += g * k

    def smsa(t, norm):  # t: (N, C, L)
        parts = [F.conv1d(t[:, i * g:(i + 1) * g], wt, b, padding=k // 2, groups=g)
                 for i, (wt, b, k) in enumerate(convs)]
        out = F.group_norm(torch.cat(parts, 1), 4, norm.weight, norm.bias, norm.eps)
        return gate(out, 2)

    x_h = x.mean(dim=3)
    x_w = x.mean(dim=2)
    x = x * smsa(x_h, m.norm_h).view(n, c, h, 1) * smsa(x_w, m.norm_w).view(n, c, 1, w)

    ws = m.window_size
    if ws == -1:
        y = x.amax((2, 3), keepdim=True) if m.down_sample_mode == 'max_pool' else x.mean(
            (2, 3), keepdim=True)
    else:
        kh, kw = min(ws, h), min(ws, w)
        if m.down_sample_mode == 'avg_pool':
            y = torch.nn.AvgPool2d((kh, kw), (kh, kw))(x)
        elif m.down_sample_mode == 'max_pool':
            y = torch.nn.MaxPool2d((kh, kw), (kh, kw))(x)
        else:
            # Zero-pad up to whole windows at the bottom/right only where the map is smaller
            # than the window, crop the rest to whole windows, space-to-depth, 1x1 conv.
            hp, wp = max(h, ws), max(w, ws)
            t = F.pad(x, (0, wp - w, 0, hp - h))[:, :, :hp // ws * ws, :wp // ws * ws]
            t = F.pixel_unshuffle(t, ws)  # (N, C * ws^2, H / ws, W / ws)
            y = F.conv2d(t, m.recombine.weight.reshape(c, c * ws * ws, 1, 1))
    y = F.group_norm(y, 1, m.norm.weight, m.norm.bias, m.norm.eps)
    qkv = []
    for i in range(3):
        bias = None if m.qkv_bias is None else m.qkv_bias[i]
        qkv.append(F.conv2d(y, m.qkv_weight[i].view(c, 1, 1, 1), bias, groups=c))
    heads, hd = m.head_num, c // m.head_num
    q, k, v = (t.reshape(n, heads, hd, -1) for t in qkv)
    attn = (q @ k.transpose(-2, -1) * hd**-0.5).softmax(-1)
    out = (attn @ v).reshape(n, c, *y.shape[2:]).mean((2, 3), keepdim=True)
    return x * gate(out, 1)


REFERENCE_CASES = [
    (dict(), (13, 17)),
    (dict(), (7, 7)),
    (dict(down_sample_mode='max_pool', gate_layer='softmax'), (9, 15)),
    (dict(down_sample_mode='recombination', window_size=3, head_num=2, qkv_bias=True), (7, 10)),
    (dict(down_sample_mode='recombination'), (3, 5)),  # map smaller than the window
    (dict(down_sample_mode='recombination'), (9, 4)),  # smaller along W only
    (dict(window_size=-1, head_num=4), (5, 6)),
    (dict(window_size=-1, down_sample_mode='max_pool'), (5, 6)),
    (dict(group_kernel_sizes=(1, 5, 3, 11), window_size=2), (6, 9)),
]


@pytest.mark.parametrize('kwargs,size', REFERENCE_CASES,
                         ids=[f'{i}' for i in range(len(REFERENCE_CASES))])
def test_matches_reference(kwargs, size):
    torch.manual_seed(0)
    m = contract.perturb_parameters(build(16, **kwargs)).eval()
    x = torch.randn(2, 16, *size)
    with torch.no_grad():
        contract.assert_close_rel(m(x), reference(m, x), 1e-5, f'{kwargs} {size}')


def test_padded_kernel_places_each_group_kernel_centred():
    m = build(8, group_kernel_sizes=(1, 3, 5, 9))
    kernel = F.pad(m.smsa_weight, (1, 0))[m.smsa_index]  # (C, 9)
    g, offset = 2, 0
    for i, k in enumerate(m.group_kernel_sizes):
        block = kernel[i * g:(i + 1) * g]
        start = (9 - k) // 2
        assert torch.equal(block[:, start:start + k],
                           m.smsa_weight[offset:offset + g * k].view(g, k))
        assert block[:, :start].abs().sum() == 0 and block[:, start + k:].abs().sum() == 0
        offset += g * k


@pytest.mark.parametrize('mode', ['avg_pool', 'max_pool'])
@pytest.mark.parametrize('size', [(1, 1), (3, 5)])
def test_map_smaller_than_window_pools_globally(mode, size):
    torch.manual_seed(0)
    windowed = contract.perturb_parameters(build(16, down_sample_mode=mode)).eval()
    global_ = build(16, down_sample_mode=mode, window_size=-1).eval()
    global_.load_state_dict(windowed.state_dict())
    x = torch.randn(2, 16, *size)
    with torch.no_grad():
        y = windowed(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
        contract.assert_close_rel(y, global_(x), 1e-6, f'{mode} {size} vs global')


@pytest.mark.parametrize('size', [(1, 1), (3, 5), (9, 4)])
def test_recombination_on_maps_smaller_than_window(size):
    torch.manual_seed(0)
    m = contract.perturb_parameters(build(16, down_sample_mode='recombination')).eval()
    seen = []
    m.recombine.register_forward_hook(lambda module, args, out: seen.append(out.shape[2:]))
    x = torch.randn(2, 16, *size)
    with torch.no_grad():
        y = m(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
        contract.assert_close_rel(y, reference(m, x), 1e-5, f'recombination {size}')
    assert seen == [(1, 1)]  # the conv itself ran, on one whole window


def test_recombination_is_space_to_depth_then_1x1():
    """The strided ws x ws conv equals moving each window into channels + a 1x1 conv."""
    torch.manual_seed(0)
    m = build(8, down_sample_mode='recombination', window_size=2)
    x = torch.randn(2, 8, 6, 4)
    w1x1 = m.recombine.weight.reshape(8, 8 * 4, 1, 1)
    expected = F.conv2d(F.pixel_unshuffle(x, 2), w1x1)
    with torch.no_grad():
        contract.assert_close_rel(m._down_sample(x), expected, 1e-6, 'recombination')


@pytest.mark.parametrize('kwargs', [
    {}, dict(gate_layer='softmax', head_num=2, qkv_bias=True, window_size=-1),
    dict(down_sample_mode='recombination', window_size=3)], ids=str)
def test_gates_rebuild_the_forward(kwargs):
    torch.manual_seed(0)
    module = contract.perturb_parameters(build(32, **kwargs), scale=0.5).eval()
    x = torch.randn(2, 32, 7, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x)
        a_h, a_w = module.smsa_gates(x.mean(3, keepdim=True), x.mean(2, keepdim=True))
        a_c = module.channel_gate(x * a_h * a_w)
        rebuilt = x * a_h * a_w * a_c
        maps = extract_maps(module, x)
    err = (rebuilt - expected).abs().max().item()
    assert err <= 1e-4 * (expected.abs().max().item() + 1e-6), f'SCSA {kwargs}: {err:.3g}'
    assert maps


def test_softmax_gates_are_distributions():
    """With x = 1, y = a_h * a_w * a_c; softmax over H, over W and over C makes it sum to 1."""
    torch.manual_seed(0)
    m = contract.perturb_parameters(build(16, gate_layer='softmax'), scale=0.5).eval()
    with torch.no_grad():
        y = m(torch.ones(2, 16, 5, 7))
    assert (y > 0).all()
    torch.testing.assert_close(y.sum((1, 2, 3)), torch.ones(2))


def test_param_count_formula():
    def formula(c, kernels=(3, 5, 7, 9), qkv_bias=False, recombination_ws=None):
        n = c // 4 * sum(kernels) + c + 4 * c + 2 * c + 3 * c * (2 if qkv_bias else 1)
        return n + (c * c * recombination_ws**2 if recombination_ws else 0)

    for c in (256, 2048):
        assert sum(p.numel() for p in build(c).parameters()) == formula(c) == 16 * c
    for c in (16, 64):
        m = build(c, group_kernel_sizes=(1, 3, 5, 11), qkv_bias=True,
                  down_sample_mode='recombination', window_size=3, head_num=4)
        assert sum(p.numel() for p in m.parameters()) == formula(c, (1, 3, 5, 11), True, 3)


def test_init_weights_bounds_and_idempotence():
    m = build(16)
    m.init_weights()
    offset = 0
    for k in m.group_kernel_sizes:
        chunk = m.smsa_weight[offset:offset + 4 * k]
        assert chunk.abs().max() <= k**-0.5 and chunk.std() > 0
        offset += 4 * k
    assert m.qkv_weight.abs().max() <= 1
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.init_weights()  # a second call must not re-randomise
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


BAD_ARGS = [
    (dict(in_channels=6), 'in_channels'),
    (dict(in_channels=8, head_num=3), 'in_channels'),
    (dict(head_num=0), 'head_num'),
    (dict(window_size=0), 'window_size'),
    (dict(window_size=-2), 'window_size'),
    (dict(window_size=-1, down_sample_mode='recombination'), 'recombination'),
    (dict(group_kernel_sizes=(3, 4, 7, 9)), 'group_kernel_sizes[1]'),
    (dict(group_kernel_sizes=(3, 5, 7)), 'group_kernel_sizes'),
    (dict(qkv_bias='yes'), 'qkv_bias'),
    (dict(down_sample_mode='bilinear'), 'down_sample_mode'),
    (dict(attn_drop_ratio=1.0), 'attn_drop_ratio'),
    (dict(attn_drop_ratio=-0.1), 'attn_drop_ratio'),
    (dict(gate_layer='relu'), 'gate_layer'),
]


@pytest.mark.parametrize('kwargs,arg', BAD_ARGS, ids=[a for _, a in BAD_ARGS])
def test_invalid_arguments(kwargs, arg):
    kwargs = dict(dict(in_channels=16), **kwargs)
    with pytest.raises(ValueError) as info:
        SCSA(**kwargs)
    assert 'SCSA' in str(info.value) and arg in str(info.value), str(info.value)


def test_errors_name_the_subclass():
    sub = type('MySCSA', (SCSA, ), {'_abbr_': 'my_scsa'})
    with pytest.raises(ValueError, match='MySCSA.*head_num'):
        sub(16, head_num=0)
    with pytest.raises(ValueError, match='MySCSA.*window_size'):
        sub(16, window_size=0)
