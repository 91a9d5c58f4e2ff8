"""DeformableAttention2D: sampling geometry, the defining equation, parameters, variants."""
import copy
import functools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn_mm.attention.map_norm import ChannelLayerNorm
from cvattn_mm.attention.spatial.deformable_attention import DeformableAttention2D, TallLinear
from cvattn_mm.registry import MODELS
from cvattn_mm.visualization import extract_maps

from . import contract


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def expected_params(c, dim_head=64, heads=8, groups=None, k=6, group_queries=False,
                    group_key_values=False, cpb_dim=32, cpb_depth=1):
    """The docstring's formula with the default biases (q, v, out; none on k)."""
    g = heads if groups is None else groups
    e = heads * dim_head
    gq = g if group_queries else 1
    gkv = g if group_key_values else 1
    qkv = (c * e // gq + e) + c * e // gkv + (c * e // gkv + e)
    offsets = e // g * (k * k + 1) + 2 * e // g
    cpb = 3 * cpb_dim + (cpb_depth - 1) * (cpb_dim * cpb_dim + cpb_dim) + cpb_dim * heads // g
    return qkv + offsets + cpb + e * c + c


@pytest.mark.parametrize('channels', [256, 2048])
def test_parameter_count(channels):
    params = n_params(DeformableAttention2D(channels))
    print(f'DeformableAttention2D C={channels}: {params} params')
    assert params == expected_params(channels)
    variant = DeformableAttention2D(channels, dim_head=32, heads=4, offset_groups=2,
                                    offset_kernel_size=5, group_queries=True,
                                    group_key_values=True, cpb_dim=16, cpb_depth=2)
    assert n_params(variant) == expected_params(channels, 32, 4, 2, 5, True, True, 16, 2)


def test_parameter_count_values():
    assert n_params(DeformableAttention2D(256)) == 528192
    assert n_params(DeformableAttention2D(2048)) == 4200000


SMALL = dict(in_channels=32, dim_head=8, heads=4)
VARIANTS = {
    'grouped_qkv': dict(SMALL, group_queries=True, group_key_values=True),
    'two_groups': dict(SMALL, offset_groups=2),  # two heads per offset group
    'stride2_odd_kernel': dict(SMALL, downsample_factor=2, offset_kernel_size=3),
    'stride1': dict(SMALL, downsample_factor=1, offset_kernel_size=1, offset_scale=0.5),
    'norm_deep_cpb': dict(SMALL, norm_cfg=dict(type='GN', num_groups=1), cpb_dim=8,
                          cpb_depth=2, to_k_bias=False, to_out_bias=False),
    'dropout': dict(SMALL, dropout=0.1),
    'floor_key_grid': dict(SMALL, key_grid='floor'),
    'dat_geometry': dict(SMALL, geometry='dat', offset_groups=2),
    'dat_geometry_stride1': dict(SMALL, geometry='dat', downsample_factor=1,
                                 offset_kernel_size=3),
    'layer_norm': dict(SMALL, norm_cfg=dict(type='LN')),
}


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_contract_variants(variant):
    torch.manual_seed(0)
    contract.run_contract(functools.partial(DeformableAttention2D, **VARIANTS[variant]))


@pytest.mark.parametrize('variant', ['two_groups', 'dat_geometry', 'layer_norm'])
def test_onnx(variant, tmp_path):
    contract.check_onnx(functools.partial(DeformableAttention2D, **VARIANTS[variant]), tmp_path)


def test_builds_from_registry():
    module = MODELS.build(dict(type='DeformableAttention2D', in_channels=64, heads=2))
    assert isinstance(module, DeformableAttention2D) and module.offset_groups == 2


def _zero_offsets(module):
    with torch.no_grad():
        module.to_offsets[-1].weight.zero_()
    return module


@pytest.mark.parametrize('size', [(12, 20), (20, 12)])
def test_zero_offsets_sample_the_reference_cell_centres(size):
    """r = 4: the keys are the cell centres, between 2x2 pixels (non-square map)."""
    torch.manual_seed(0)
    module = _zero_offsets(DeformableAttention2D(16, dim_head=4, heads=2)).double()
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    with torch.no_grad():
        locations = module.sampling_locations(module.to_q(x))
        sampled = module.sample(x, locations)
    h, w = size
    assert locations.shape == (2 * 2, h // 4, w // 4, 2)
    expected = (x[:, :, 1::4, 1::4] + x[:, :, 2::4, 1::4] + x[:, :, 1::4, 2::4] +
                x[:, :, 2::4, 2::4]) / 4
    assert sampled.shape == expected.shape == (2, 16, h // 4, w // 4)
    torch.testing.assert_close(sampled, expected, rtol=0, atol=1e-12)


def test_zero_offsets_sample_exact_pixels_with_odd_stride():
    """r = 3 on 12x21: the cell centres are pixels, so sampling is plain strided indexing."""
    torch.manual_seed(0)
    module = _zero_offsets(DeformableAttention2D(16, dim_head=4, heads=4, downsample_factor=3,
                                                 offset_kernel_size=5)).double()
    x = torch.randn(2, 16, 12, 21, dtype=torch.float64)
    with torch.no_grad():
        sampled = module.sample(x, module.sampling_locations(module.to_q(x)))
    torch.testing.assert_close(sampled, x[:, :, 1::3, 1::3], rtol=0, atol=1e-12)


@pytest.mark.parametrize('key_grid,size,keys', [
    ('ceil', (14, 14), (4, 4)), ('floor', (14, 14), (3, 3)), ('ceil', (16, 9), (4, 3)),
    ('floor', (16, 9), (4, 2)), ('ceil', (3, 1), (1, 1)), ('floor', (3, 1), (1, 1))])
def test_key_grid_rounding(key_grid, size, keys):
    module = DeformableAttention2D(16, dim_head=4, heads=2, key_grid=key_grid)  # r = 4
    x = torch.randn(1, 16, *size)
    with torch.no_grad():
        assert module.sampling_locations(module.to_q(x)).shape == (2, *keys, 2)
        assert module.attention_map(x).shape == (1, 2, size[0] * size[1], keys[0] * keys[1])


def test_locations_follow_offsets_within_the_offset_scale():
    torch.manual_seed(0)
    module = contract.perturb_parameters(
        DeformableAttention2D(16, dim_head=4, heads=2, offset_scale=1.5), scale=1.0)
    x = torch.randn(1, 16, 12, 20)
    with torch.no_grad():
        locations = module.sampling_locations(module.to_q(x))
        reference = module.sampling_locations(_zero_offsets(module).to_q(x))
    spacing = torch.tensor([2 / 5, 2 / 3])  # grid spacing of a 3x5 key grid, (x, y)
    moved = (locations - reference) / spacing
    assert moved.abs().max() > 0.1  # the offsets do move the keys
    assert moved.abs().max() <= 1.5 + 1e-5


def test_attention_rows_sum_to_one():
    torch.manual_seed(0)
    module = contract.perturb_parameters(DeformableAttention2D(**SMALL), scale=0.5)
    x = torch.randn(2, 32, 9, 14)
    with torch.no_grad():
        attn = module.attention_map(x)
    assert attn.shape == (2, 4, 9 * 14, 3 * 4)
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 4, 9 * 14))
    assert attn.std(-1).mean() > 0  # not uniform


def _bilinear(img, px, py):
    """Bilinear samples of ``img`` (C, H, W) at pixel coordinates, zero outside."""
    _, h, w = img.shape
    x0, y0 = px.floor(), py.floor()
    out = 0
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - (px - xi).abs()) * (1 - (py - yi).abs())
            inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
            xc, yc = xi.clamp(0, w - 1).long(), yi.clamp(0, h - 1).long()
            out = out + img[:, yc, xc] * (weight * inside)
    return out


def _dat_points(module, q):
    """DAT's sampling points (its CVPR 2022 code) for the query map q: normalised (x, y) in
    align_corners=True coordinates and in pixels, each (N, G, H_k, W_k), and (H_k, W_k).

    The offset conv pads k // 2 on each side; reference point i is (i + 0.5) / H_k * 2 - 1
    and the offset offset_range_factor * tanh(o) / H_k, offset_range_factor = 2 s.
    """
    n, _, h, w = q.shape
    g, r, k = module.offset_groups, module.downsample_factor, module.offset_kernel_size
    dw = module.to_offsets[0]
    raw = F.conv2d(q.reshape(n * g, -1, h, w), dw.weight, dw.bias, stride=r, padding=k // 2,
                   groups=dw.groups)
    raw = module.to_offsets[1:](raw)
    hk, wk = raw.shape[-2:]
    factor = 2 * module.offset_scale
    offset = torch.tanh(raw).reshape(n, g, 2, hk, wk) * factor
    ref_y = torch.linspace(0.5, hk - 0.5, hk, dtype=q.dtype) / hk * 2 - 1
    ref_x = torch.linspace(0.5, wk - 0.5, wk, dtype=q.dtype) / wk * 2 - 1
    ny = ref_y[:, None] + offset[:, :, 1] / hk
    nx = ref_x[None, :] + offset[:, :, 0] / wk
    return (nx, ny), ((nx + 1) / 2 * (w - 1), (ny + 1) / 2 * (h - 1)), (hk, wk)


def _centre_points(module, q):
    """Our sampling points ('centres') for q: normalised (x, y) in align_corners=False
    coordinates and in pixels, each (N, G, H_k, W_k), and (H_k, W_k)."""
    n, _, h, w = q.shape
    g, r, k, s = (module.offset_groups, module.downsample_factor, module.offset_kernel_size,
                  module.offset_scale)
    if module.key_grid == 'ceil':
        # Zero padding up to whole windows over every pixel, half before (odd one after).
        hk, wk = math.ceil(h / r), math.ceil(w / r)
        pad_h, pad_w = (hk - 1) * r + k - h, (wk - 1) * r + k - w
        grouped = F.pad(q.reshape(n * g, -1, h, w),
                        (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    else:
        # The first windows start (k - r) // 2 before the map, every r pixels; zeros beyond it.
        hk, wk = max(h // r, 1), max(w // r, 1)
        before = (k - r) // 2
        grouped = F.pad(q.reshape(n * g, -1, h, w), (before, k, before, k))
    dw = module.to_offsets[0]  # the depthwise conv on the padded input, without its padding
    offsets = F.conv2d(grouped, dw.weight, dw.bias, stride=r, groups=dw.groups)
    offsets = module.to_offsets[1:](offsets)[:, :, :hk, :wk]
    offsets = s * torch.tanh(offsets).reshape(n, g, 2, hk, wk)
    # Reference points: the centres of an hk x wk grid of cells over the map, in pixels.
    ref_y = (torch.arange(hk, dtype=q.dtype) + 0.5) * h / hk - 0.5
    ref_x = (torch.arange(wk, dtype=q.dtype) + 0.5) * w / wk - 0.5
    py = ref_y[:, None] + offsets[:, :, 1] * h / hk
    px = ref_x[None, :] + offsets[:, :, 0] * w / wk
    # The pixel centre u maps to (2u + 1) / size - 1.
    return ((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), (px, py), (hk, wk)


def _direct(module, x):
    """The defining equation with explicit pixel geometry, loops and matrix products."""
    n, c, h, w = x.shape
    g, heads, d = module.offset_groups, module.heads, module.dim_head
    hpg, cg = heads // g, c // g

    def conv1x1(layer, t):
        out = torch.einsum('oc,nchw->nohw', layer.weight[:, :, 0, 0], t)
        return out if layer.bias is None else out + layer.bias.view(1, -1, 1, 1)

    q = conv1x1(module.to_q, x)  # group_queries=False
    points = _dat_points if module.geometry == 'dat' else _centre_points
    (nx, ny), (px, py), _ = points(module, q)
    # The queries, normalised: (2u + 1) / size - 1 in both geometries (DAT: its reference
    # points of the H x W grid).
    qy, qx = torch.meshgrid((2 * torch.arange(h, dtype=x.dtype) + 1) / h - 1,
                            (2 * torch.arange(w, dtype=x.dtype) + 1) / w - 1, indexing='ij')
    linears = [m for m in module.rel_pos_bias if isinstance(m, nn.Linear)]
    out = torch.zeros(n, heads * d, h * w, dtype=x.dtype)
    for b in range(n):
        sampled = torch.cat([_bilinear(x[b, gi * cg:(gi + 1) * cg], px[b, gi], py[b, gi])
                             .reshape(cg, -1) for gi in range(g)])  # (C, Nk)
        keys = module.to_k.weight[:, :, 0, 0] @ sampled
        values = module.to_v.weight[:, :, 0, 0] @ sampled + module.to_v.bias[:, None]
        for head in range(heads):
            gi = head // hpg
            dx = qx.reshape(-1, 1) - nx[b, gi].reshape(1, -1)
            dy = qy.reshape(-1, 1) - ny[b, gi].reshape(1, -1)
            hidden = torch.stack([dx, dy], -1)
            hidden = torch.sign(hidden) * torch.log(1 + hidden.abs())
            for layer in linears[:-1]:
                hidden = torch.relu(hidden @ layer.weight.T + layer.bias)
            bias = (hidden @ linears[-1].weight.T)[..., head % hpg]
            qh = q[b, head * d:(head + 1) * d].reshape(d, -1)
            kh, vh = keys[head * d:(head + 1) * d], values[head * d:(head + 1) * d]
            logits = qh.T @ kh / math.sqrt(d) + bias
            attn = torch.exp(logits - logits.max(1, keepdim=True).values)
            attn = attn / attn.sum(1, keepdim=True)
            out[b, head * d:(head + 1) * d] = vh @ attn.T
    return conv1x1(module.to_out, out.reshape(n, -1, h, w))


@pytest.mark.parametrize('kwargs,size', [
    (dict(offset_groups=2, cpb_depth=2), (10, 13)),
    (dict(downsample_factor=3, offset_kernel_size=5), (7, 5)),
    (dict(), (1, 1)),
    (dict(key_grid='floor', offset_groups=2), (10, 13)),
    (dict(key_grid='floor'), (3, 2)),
    (dict(key_grid='floor', downsample_factor=3, offset_kernel_size=4), (7, 5)),
    (dict(geometry='dat', offset_groups=2), (10, 13)),
    (dict(geometry='dat', downsample_factor=1, offset_kernel_size=5), (7, 5)),  # DAT-T's
    (dict(geometry='dat', downsample_factor=3, offset_kernel_size=4, cpb_depth=2), (8, 11)),
    (dict(geometry='dat', offset_scale=3), (9, 6)),
    (dict(geometry='dat'), (1, 1)),
])
def test_equation_against_direct_computation(kwargs, size):
    torch.manual_seed(0)
    module = DeformableAttention2D(8, dim_head=4, heads=4, cpb_dim=8, **kwargs)
    module = contract.perturb_parameters(module, scale=0.5).double().eval()
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(module(x), _direct(module, x), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize('shape', [(5, ), (7, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize('bias', [True, False])
def test_tall_linear_is_a_linear(shape, bias):
    """The position-bias MLP's layer type: nn.Linear's values and gradients for any
    (..., in_features) input; a matrix input gives the product itself, not a view."""
    torch.manual_seed(0)
    plain = nn.Linear(5, 3, bias=bias).double()
    tall = TallLinear(5, 3, bias=bias).double()
    tall.load_state_dict(plain.state_dict())
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    outs, grads = [], []
    for layer in (plain, tall):
        y = layer(x)
        y.backward(torch.ones_like(y))
        outs.append(y)
        grads.append([x.grad.clone()] + [p.grad for p in layer.parameters()])
        x.grad = None
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-14)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    if len(shape) == 2:
        assert outs[1]._base is None


class _LowRank(nn.Module):
    """A LoRA-style wrapper of a Linear layer: ``base(x) + up(down(x))``."""

    def __init__(self, base, rank=1):
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)

    def forward(self, x):
        return self.base(x) + self.up(self.down(x))


def test_a_wrapped_first_bias_layer_is_applied_exactly():
    """The position-bias MLP's first layer is called on (..., 2) inputs: a LoRA wrapper of it
    computes what the merged weights compute, and its hooks see in_features = 2."""
    torch.manual_seed(0)
    module = DeformableAttention2D(8, dim_head=4, heads=4, cpb_dim=8, offset_groups=2,
                                   offset_scale=1)  # the keys stay on the map
    module = contract.perturb_parameters(module, scale=0.5).double().eval()
    x = torch.randn(2, 8, 9, 11, dtype=torch.float64)
    lora = _LowRank(module.rel_pos_bias[0]).double()
    nn.init.normal_(lora.up.weight)
    merged = copy.deepcopy(module)
    with torch.no_grad():
        merged.rel_pos_bias[0].weight += lora.up.weight @ lora.down.weight
    module.rel_pos_bias[0] = lora
    inputs = []
    lora.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
    with torch.no_grad():
        y = module(x)
        plain = _with_linear(module, lora.base)(x)
        torch.testing.assert_close(y, merged(x), rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(y, _direct(merged, x), rtol=1e-9, atol=1e-10)
    assert (y - plain).abs().max() > 1e-3  # the wrapper does change the bias
    assert len(inputs) == 2 and all(t.shape[-1] == 2 for t in inputs)  # (f_x, 0), (0, f_y)


def _with_linear(module, first):
    module = copy.deepcopy(module)
    module.rel_pos_bias[0] = first
    return module


def test_offsets_change_the_output():
    """The offset network is live: zeroing it changes the output (gradients reach it too)."""
    torch.manual_seed(0)
    module = contract.perturb_parameters(DeformableAttention2D(**SMALL), scale=0.5).eval()
    x = torch.randn(1, 32, 12, 12)
    with torch.no_grad():
        y = module(x)
        y0 = _zero_offsets(module)(x)
    assert (y - y0).abs().max() > 1e-3


@pytest.mark.parametrize('kwargs,argument', [
    (dict(heads=0), 'heads'),
    (dict(heads=2.5), 'heads'),
    (dict(dim_head=0), 'dim_head'),
    (dict(heads=8, offset_groups=3), 'heads'),
    (dict(heads=4, offset_groups=0), 'offset_groups'),
    (dict(in_channels=30, heads=4), 'in_channels'),
    (dict(downsample_factor=0), 'downsample_factor'),
    (dict(offset_kernel_size=3), 'offset_kernel_size'),
    (dict(offset_scale=0), 'offset_scale'),
    (dict(offset_scale=float('inf')), 'offset_scale'),
    (dict(dropout=1.0), 'dropout'),
    (dict(dropout=-0.1), 'dropout'),
    (dict(cpb_dim=0), 'cpb_dim'),
    (dict(cpb_depth=0), 'cpb_depth'),
    (dict(in_channels=0), 'in_channels'),
    (dict(key_grid='round'), "key_grid must be 'ceil' or 'floor', got 'round'"),
    (dict(geometry='corners'), 'geometry must be one of'),
    (dict(geometry='dat', key_grid='floor'), "key_grid='floor' applies to geometry='centres'"),
])
def test_invalid_arguments(kwargs, argument):
    kwargs = dict(dict(in_channels=32), **kwargs)
    with pytest.raises(ValueError, match=f'DeformableAttention2D.*{argument}'):
        DeformableAttention2D(**kwargs)


def test_errors_name_the_subclass():
    sub = type('MyDeformable', (DeformableAttention2D, ), {'_abbr_': 'my_dat'})
    with pytest.raises(ValueError, match='MyDeformable: offset_kernel_size'):
        sub(32, offset_kernel_size=3)


def test_sampling_points_map_is_the_module_sampling_locations():
    torch.manual_seed(0)
    module = contract.perturb_parameters(
        DeformableAttention2D(32, dim_head=8, heads=4, downsample_factor=2,
                              offset_kernel_size=3), scale=0.5).eval()
    x = torch.randn(2, 32, 8, 10, generator=torch.Generator().manual_seed(1))
    m = extract_maps(module, x)['sampling_points']
    with torch.no_grad():
        locations = module.sampling_locations(module.to_q(x))  # (N * G, 4, 5, 2)
    assert torch.equal(m.values, locations.reshape(2, -1, 2))
    bound = 2 * module.offset_scale / torch.tensor([5., 4.])
    assert ((m.values - m.origins).abs() <= bound + 1e-6).all()
    assert torch.equal(m.origins[0, :20], m.origins[0, 20:40])  # one grid per group


# --- geometry='dat': DAT's sampling geometry and offset range ---------------------------------


@pytest.mark.parametrize('kwargs,size', [
    (dict(), (14, 10)), (dict(offset_scale=2.5, offset_groups=1), (9, 17)),
    (dict(downsample_factor=1, offset_kernel_size=5), (7, 7)),
    (dict(downsample_factor=8, offset_kernel_size=9), (56, 40)), (dict(), (1, 1))])
def test_dat_reference_points_and_offset_scaling_are_the_official_equations(kwargs, size):
    """float64: the locations are DAT's reference points (i + 0.5) / H_k * 2 - 1 moved by
    offset_range_factor * tanh(o) / H_k (offset_range_factor = 2 s), with H_k from a conv
    padded by k // 2, in align_corners=True coordinates (:func:`_dat_points`)."""
    torch.manual_seed(0)
    module = DeformableAttention2D(16, dim_head=4, heads=2, geometry='dat', **kwargs)
    module = contract.perturb_parameters(module, scale=0.5).double()
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    with torch.no_grad():
        q = module.to_q(x)
        locations = module.sampling_locations(q)
        (nx, ny), _, (hk, wk) = _dat_points(module, q)
    r, k = module.downsample_factor, module.offset_kernel_size
    assert (hk, wk) == tuple((n + 2 * (k // 2) - k) // r + 1 for n in size)
    expected = torch.stack((nx, ny), -1).flatten(0, 1)  # (N * G, H_k, W_k, 2)
    torch.testing.assert_close(locations, expected, rtol=0, atol=1e-12)
    assert (nx - locations[..., 0].reshape(nx.shape)).abs().max() < 1e-12


@pytest.mark.parametrize('geometry,pixels', [
    ('centres', (1.25, 4.75, 8.25, 11.75)), ('dat', (1.625, 4.875, 8.125, 11.375))])
def test_zero_offset_keys_in_pixels_on_a_14_pixel_axis(geometry, pixels):
    """The docstring's key positions (r = 4, k = 6: four keys per axis in both geometries),
    read from the sampling-points map (align_corners=False: pixel (u + 1) size / 2 - 1/2)."""
    module = _zero_offsets(DeformableAttention2D(16, dim_head=4, heads=2, geometry=geometry))
    x = torch.randn(1, 16, 14, 14, dtype=torch.float64)
    points = extract_maps(module.double(), x)['sampling_points']
    pixels = torch.tensor(pixels)
    ys = ((points.values[0, :, 1] + 1) * 7 - 0.5).reshape(2, 4, 4)
    xs = ((points.values[0, :, 0] + 1) * 7 - 0.5).reshape(2, 4, 4)
    torch.testing.assert_close(ys, pixels[:, None].expand(2, 4, 4), rtol=0, atol=1e-6)
    torch.testing.assert_close(xs, pixels.expand(2, 4, 4), rtol=0, atol=1e-6)
    torch.testing.assert_close(points.origins, points.values, rtol=0, atol=1e-7)


@pytest.mark.parametrize('geometry,pixels', [('centres', 14.0), ('dat', 3.25)])
def test_offset_range_in_pixels_on_a_14x14_map(geometry, pixels):
    """Saturated offsets move every key by the docstring's range: r = 4 spacings of 3.5
    pixels (ours) or offset_range_factor / H_k * (H - 1) / 2 = 2 / 4 * 6.5 (DAT's)."""
    module = DeformableAttention2D(16, dim_head=4, heads=2, geometry=geometry).double()
    with torch.no_grad():
        module.to_offsets[0].bias.fill_(10.0)  # GELU inputs > 0: the offsets saturate
        module.to_offsets[-1].weight.fill_(1e3)
    x = torch.randn(2, 16, 14, 14, dtype=torch.float64)
    points = extract_maps(module, x)['sampling_points']
    moved = (points.values - points.origins) * 7  # align_corners=False: size / 2 per unit
    torch.testing.assert_close(moved, torch.full_like(moved, pixels), rtol=0, atol=1e-6)


def test_dat_sampling_points_map_is_in_the_maps_frame():
    """geometry='dat' samples with align_corners=True; its map gives the same pixels in the
    maps' align_corners=False coordinates."""
    torch.manual_seed(0)
    module = contract.perturb_parameters(
        DeformableAttention2D(16, dim_head=4, heads=2, geometry='dat'), scale=0.5).double()
    x = torch.randn(2, 16, 9, 13, dtype=torch.float64)
    points = extract_maps(module, x)['sampling_points']
    with torch.no_grad():
        _, (px, py), _ = _dat_points(module, module.to_q(x))
    # extract_maps hands over float32 maps
    torch.testing.assert_close(((points.values[..., 0] + 1) * 13 - 1) / 2,
                               px.reshape(2, -1).float())
    torch.testing.assert_close(((points.values[..., 1] + 1) * 9 - 1) / 2,
                               py.reshape(2, -1).float())


# --- norm_cfg=dict(type='LN'): a LayerNorm over the offset network's channels ----------------


@pytest.mark.parametrize('size', [(14, 14), (32, 32)])
def test_layer_norm_config_normalises_the_channels(size):
    """At 14x14 mmcv's LayerNorm(8) on NCHW raised; at 32x32 (W_k = 8 = channels) it
    normalised the width. Now every position's 8 channels are normalised."""
    torch.manual_seed(0)
    module = DeformableAttention2D(32, dim_head=8, heads=4, norm_cfg=dict(type='LN', eps=1e-6))
    norm = module.to_offsets[1]
    assert isinstance(norm, ChannelLayerNorm) and norm.norm.eps == 1e-6
    seen = []
    norm.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    module(torch.randn(2, 32, *size))
    inp, out = seen[0]
    keys = (2 * 4, math.ceil(size[0] / 4), math.ceil(size[1] / 4))
    assert out.shape == inp.shape == (keys[0], 8, *keys[1:])
    torch.testing.assert_close(out.mean(1), torch.zeros(keys), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.var(1, unbiased=False), torch.ones(keys), rtol=0, atol=1e-3)
    expected = F.layer_norm(inp.permute(0, 2, 3, 1), (8, ), eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, expected)


def test_layer_norm_keys_and_parameters():
    module = DeformableAttention2D(64, norm_cfg=dict(type='LN'))
    keys = [k for k in module.state_dict() if k.startswith('to_offsets.')]
    assert keys == ['to_offsets.0.weight', 'to_offsets.0.bias', 'to_offsets.1.norm.weight',
                    'to_offsets.1.norm.bias', 'to_offsets.3.weight']
    assert n_params(module) == expected_params(64) + 2 * 64  # E / G = 512 / 8 channels
