"""SpatialTransformer: the sampler's equation per transform family, identity at init, the
one-pixel shift, parameter count, maps, variants and argument checks."""
import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.spatial.spatial_transformer import SpatialTransformer

from .contract import perturb_parameters, run_contract


@pytest.mark.parametrize('kwargs', [
    dict(transform='attention'), dict(transform='translation'),
    dict(padding_mode='border'), dict(padding_mode='reflection'),
    dict(loc_channels=(8, 4), fc_channels=6), dict(norm_cfg=dict(type='GN', num_groups=4))],
    ids=['attention', 'translation', 'border', 'reflection', 'widths', 'gn'])
def test_contract_variants(kwargs):
    run_contract(lambda: SpatialTransformer(64, **kwargs))


def batch_norm_train(x, weight, bias, eps=1e-5):
    mean = x.mean((0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean((0, 2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight[:, None, None] + bias[:, None, None]


def theta_reference(stn, x):
    """The localisation net (training mode, batch statistics) and the transform family's
    matrix, written with plain ops from the module's weights."""
    h = F.conv2d(x, stn.conv1.weight, stride=2, padding=3)
    h = batch_norm_train(h, stn.norm1.weight, stn.norm1.bias).clamp_min(0)
    h = F.max_pool2d(h, 2, 2, ceil_mode=True)
    h = F.conv2d(h, stn.conv2.weight, stride=2, padding=2)
    h = batch_norm_train(h, stn.norm2.weight, stn.norm2.bias).clamp_min(0)
    v = h.mean((2, 3)) @ stn.fc1.weight.T + stn.fc1.bias
    p = v.clamp_min(0) @ stn.fc2.weight.T + stn.fc2.bias
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=x.dtype)
    if stn.transform == 'affine':
        theta = p.reshape(n, 2, 3)
    elif stn.transform == 'attention':  # [[s, 0, tx], [0, s, ty]]
        theta[:, 0, 0] = theta[:, 1, 1] = p[:, 0]
        theta[:, 0, 2], theta[:, 1, 2] = p[:, 1], p[:, 2]
    else:  # [[1, 0, tx], [0, 1, ty]]
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        theta[:, 0, 2], theta[:, 1, 2] = p[:, 0], p[:, 1]
    return theta


def sampler_reference(x, theta, padding_mode='zeros'):
    """Grid generator and bilinear sampler of the paper (eq. 1 and 5), align_corners=False:
    the output pixel centre (j, i) is x_t = (2 j + 1) / W - 1, y_t = (2 i + 1) / H - 1; its
    source (x_s, y_s) = theta (x_t, y_t, 1); in pixels u = ((x_s + 1) W - 1) / 2,
    v = ((y_s + 1) H - 1) / 2; y = sum_{h, w} x[h, w] max(0, 1 - |u - w|) max(0, 1 - |v - h|)
    (zero outside the map; 'border' clamps u, v to the map first)."""
    n, c, height, width = x.shape
    out = torch.zeros_like(x)
    for b in range(n):
        for i in range(height):
            for j in range(width):
                xt = (2 * j + 1) / width - 1
                yt = (2 * i + 1) / height - 1
                xs = theta[b, 0, 0] * xt + theta[b, 0, 1] * yt + theta[b, 0, 2]
                ys = theta[b, 1, 0] * xt + theta[b, 1, 1] * yt + theta[b, 1, 2]
                u = ((xs + 1) * width - 1) / 2
                v = ((ys + 1) * height - 1) / 2
                if padding_mode == 'border':
                    u, v = u.clamp(0, width - 1), v.clamp(0, height - 1)
                kx = (1 - (u - torch.arange(width, dtype=x.dtype)).abs()).clamp_min(0)
                ky = (1 - (v - torch.arange(height, dtype=x.dtype)).abs()).clamp_min(0)
                out[b, :, i, j] = (x[b] * ky[:, None] * kx[None, :]).sum((1, 2))
    return out


@pytest.mark.parametrize('transform', ['affine', 'attention', 'translation'])
@pytest.mark.parametrize('padding_mode', ['zeros', 'border'])
def test_equation(transform, padding_mode):
    torch.manual_seed(0)
    stn = SpatialTransformer(5, transform=transform, padding_mode=padding_mode)
    stn = perturb_parameters(stn, scale=0.3).double().train()
    x = torch.randn(3, 5, 6, 7, dtype=torch.float64)
    theta = theta_reference(stn, x)
    assert (theta - torch.eye(2, 3, dtype=x.dtype)).abs().max() > 0.05  # a real warp
    torch.testing.assert_close(stn.theta(x), theta)
    torch.testing.assert_close(stn(x), sampler_reference(x, theta, padding_mode))


def test_transform_families_constrain_theta():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 9, 9)
    for transform, free in [('attention', 3), ('translation', 2)]:
        stn = perturb_parameters(SpatialTransformer(3, transform=transform), 0.5).eval()
        theta = stn.theta(x).detach()
        assert stn.fc2.out_features == free
        assert torch.all(theta[:, 0, 1] == 0) and torch.all(theta[:, 1, 0] == 0)
        assert torch.equal(theta[:, 0, 0], theta[:, 1, 1])
        if transform == 'translation':
            assert torch.all(theta[:, :, :2] == torch.eye(2))


@pytest.mark.parametrize('transform', ['affine', 'attention', 'translation'])
def test_identity_at_initialisation(transform):
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        stn = SpatialTransformer(3, transform=transform).to(dtype)
        stn.init_weights()
        x = torch.rand(2, 3, 13, 16, dtype=dtype)  # values in [0, 1]: tol is relative
        for mode in ('train', 'eval'):
            getattr(stn, mode)()
            with torch.no_grad():
                assert torch.equal(stn.theta(x), torch.eye(2, 3, dtype=dtype).expand(2, 2, 3))
                assert (stn(x) - x).abs().max() <= tol, (dtype, mode)


def test_theta_two_over_w_shifts_by_one_pixel():
    """The spec's check: theta = [[1, 0, 2/W], [0, 1, 0]] reads pixel j + 1 at column j."""
    width = 10
    stn = SpatialTransformer(4).double().eval()
    with torch.no_grad():
        stn.fc2.bias.copy_(torch.tensor([1, 0, 2 / width, 0, 1, 0], dtype=torch.float64))
    x = torch.randn(2, 4, 6, width, dtype=torch.float64)
    y = stn(x)
    torch.testing.assert_close(y[..., :-1], x[..., 1:], rtol=0, atol=1e-12)
    assert y[..., -1].abs().max() <= 1e-12  # beyond the map: zero padding


def test_traced_grid_equals_affine_grid():
    """Under jit.trace (ONNX) the grid is built by hand: the same as F.affine_grid."""
    torch.manual_seed(0)
    theta = torch.randn(3, 2, 3, dtype=torch.float64)
    for shape in [(3, 2, 1, 1), (3, 2, 5, 8), (3, 2, 16, 3)]:
        expected = F.affine_grid(theta, list(shape), align_corners=False)
        traced = torch.jit.trace(lambda t, s=shape: SpatialTransformer.sampling_grid(t, s), theta,
                                 check_trace=False)
        torch.testing.assert_close(traced(theta), expected, rtol=0, atol=1e-14)
        torch.testing.assert_close(SpatialTransformer.sampling_grid(theta, shape), expected,
                                   rtol=0, atol=0)


def default_parameter_count(channels, free, c1=16, c2=32, f=32):
    return 49 * channels * c1 + 2 * c1 + 25 * c1 * c2 + 2 * c2 + f * c2 + f + (f + 1) * free


@pytest.mark.parametrize('channels', [1, 3, 16, 64])
@pytest.mark.parametrize('transform,free', [('affine', 6), ('attention', 3),
                                            ('translation', 2)])
def test_parameter_count(channels, transform, free):
    stn = SpatialTransformer(channels, transform=transform)
    count = sum(p.numel() for p in stn.parameters())
    assert count == default_parameter_count(channels, free) == 784 * channels + 13952 + 33 * free
    small = SpatialTransformer(channels, transform=transform, loc_channels=(8, 4), fc_channels=6)
    assert sum(p.numel() for p in small.parameters()) == default_parameter_count(
        channels, free, 8, 4, 6)


def test_spec_parameter_count_for_an_image():
    assert sum(p.numel() for p in SpatialTransformer(3).parameters()) == 16502


def test_methods_rebuild_the_forward_and_the_map():
    torch.manual_seed(0)
    stn = perturb_parameters(SpatialTransformer(8), scale=0.3).eval()
    x = torch.randn(2, 8, 40, 7)
    with torch.no_grad():
        theta = stn.theta(x)
        grid = stn.sampling_grid(theta, x.shape)
        torch.testing.assert_close(stn(x), stn.sample(x, grid))
        torch.testing.assert_close(
            stn(x), F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False),
                                  align_corners=False))
        maps = stn.attention_maps(x)
    assert set(maps) == {'sampling_points'}
    m = maps['sampling_points']
    rows, cols = torch.arange(0, 40, 3), torch.arange(7)  # at most 16 rows: every third
    assert m.kind == 'points' and m.values.shape == (2, len(rows) * len(cols), 2)
    torch.testing.assert_close(m.values, grid[:, rows][:, :, cols].flatten(1, 2))
    identity = F.affine_grid(torch.eye(2, 3).expand(2, 2, 3), list(x.shape),
                             align_corners=False)
    torch.testing.assert_close(m.origins, identity[:, rows][:, :, cols].flatten(1, 2))


def test_any_size_and_batch_one_in_training():
    stn = perturb_parameters(SpatialTransformer(3)).train()
    for size in [(1, 1), (2, 3), (5, 1), (16, 16)]:
        x = torch.randn(1, 3, *size)
        assert stn(x).shape == x.shape


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(transform='projective'), 'transform'),
    (dict(loc_channels=(16, )), 'loc_channels'), (dict(loc_channels=(16, 0)), 'loc_channels'),
    (dict(loc_channels=(16, 2.5)), 'loc_channels'), (dict(loc_channels='ab'), 'loc_channels'),
    (dict(fc_channels=0), 'fc_channels'), (dict(padding_mode='circular'), 'padding_mode')])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'SpatialTransformer: {argument}'):
        SpatialTransformer(**dict(dict(in_channels=3), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MySTN', (SpatialTransformer, ), {'_abbr_': 'my_stn'})
    with pytest.raises(ValueError, match='MySTN: transform'):
        sub(3, transform='projective')
    with pytest.raises(ValueError, match='MySTN was built for in_channels=3'):
        sub(3)(torch.randn(1, 4, 8, 8))


def test_paper_position_is_the_image_input_of_a_classifier_only():
    from mmengine.registry import DefaultScope

    from cvattn_mm.registry import MODELS

    def build(scope):
        with DefaultScope.overwrite_default_scope(scope):
            return MODELS.build(dict(
                type='InsertAttention', module=dict(type='ResNet', depth=18, out_indices=(3, )),
                insertions=[dict(attention=dict(type='SpatialTransformer'), at='paper')]))

    model = build('mmpretrain')
    stn = model.attention_sites['conv1:input'].attentions['stn']
    assert isinstance(stn, SpatialTransformer) and stn.in_channels == 3
    model.init_weights()
    model.eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        y = model(x)[-1]
        model.attention_sites['conv1:input'].attentions['stn'] = torch.nn.Identity()
        torch.testing.assert_close(y, model(x)[-1], rtol=0, atol=1e-4)
    for scope in ('mmdet', 'mmseg'):
        with pytest.raises(ValueError, match='SpatialTransformer warps the features'):
            build(scope)
