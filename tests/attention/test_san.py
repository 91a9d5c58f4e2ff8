"""SAN: its equations (float64, pixel by pixel from the paper), the spec's checks (uniform
pairwise weights, zero patchwise weights, interleaved weight sharing), parameter counts,
initialisation, maps, stride, dilation, small maps and argument checks."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn_mm.attention.spatial.san import SAN, pad_reflect

from .contract import check_onnx, check_replaces_conv, perturb_parameters, run_contract


@pytest.mark.parametrize('kwargs', [dict(relation='patchwise'),
                                    dict(spatial_extent=3, share_planes=4, rel_reduction=8)],
                         ids=['patchwise', 'k3-share4'])
def test_contract_variants(kwargs):
    run_contract(lambda: SAN(32, **kwargs))


@pytest.mark.parametrize('kwargs', [dict(relation='patchwise'),
                                    dict(relation='patchwise', spatial_extent=3)],
                         ids=['patchwise', 'patchwise-k3'])
def test_replaces_conv_variants(kwargs):
    check_replaces_conv(SAN, channels=32, **kwargs)


def test_strided_patchwise_exports_to_onnx(tmp_path):
    check_onnx(lambda: SAN(16, 32, stride=2, relation='patchwise', spatial_extent=3), tmp_path)


# ---------------------------------------------------------------- the equations


def _index(i, size, pad):
    """Reflection at the border (the kernels' one reflection), replication when the side is
    too small for it."""
    if size <= pad:
        return min(max(i, 0), size - 1)
    if i < 0:
        i = -i
    if i >= size:
        i = 2 * (size - 1) - i
    return i


def _conv1x1(conv, v):
    """A 1x1 conv on vectors (N, C_in)."""
    out = v @ conv.weight.flatten(1).t()
    return out if conv.bias is None else out + conv.bias


def _bn_eval(bn, v):
    return (v - bn.running_mean) / (bn.running_var + bn.eps).sqrt() * bn.weight + bn.bias


def _gamma(m, v):
    """gamma = BN-ReLU-1x1-BN-ReLU-1x1 (eval) on vectors (N, C)."""
    bn1, _, conv1, bn2, _, conv2 = m.conv_w
    v = _conv1x1(conv1, torch.relu(_bn_eval(bn1, v)))
    return _conv1x1(conv2, torch.relu(_bn_eval(bn2, v)))


def san_reference(x, m):
    """The paper's eq. 3-6 pixel by pixel (eval mode): for each output position i = s o and
    each neighbour j = i + d (a - r, b - r) (reflected at the border), pairwise: gamma of
    [x1(i) - x2(j); p(i) - p(j)], a softmax over the neighbours; patchwise: gamma of
    [x1(i); x2(j) for every j], reshaped to (C_w, k^2); then
    y_c(i) = sum_j w_{c mod C_w}(i, j) x3_c(j)."""
    n, _, hgt, wid = x.shape
    x1, x2, x3 = (torch.einsum('oc,nchw->nohw', conv.weight.flatten(1), x)
                  + conv.bias[:, None, None] for conv in (m.conv1, m.conv2, m.conv3))
    k, s, d = m.spatial_extent, m.stride, m.dilation
    r, pad = k // 2, d * (k // 2)
    c_out, c_w = x3.shape[1], m.weight_channels
    if m.relation == 'pairwise':
        cols = torch.linspace(-1, 1, wid, dtype=x.dtype)
        rows = torch.linspace(-1, 1, hgt, dtype=x.dtype)
        loc = torch.stack([cols[None, :].expand(hgt, wid), rows[:, None].expand(hgt, wid)])
        p = torch.einsum('oc,chw->ohw', m.conv_p.weight.flatten(1), loc) \
            + m.conv_p.bias[:, None, None]
    centres_i, centres_j = range(0, hgt, s), range(0, wid, s)
    y = torch.zeros(n, c_out, len(centres_i), len(centres_j), dtype=x.dtype)
    for oi, i in enumerate(centres_i):
        for oj, j in enumerate(centres_j):
            neighbours = [(_index(i + d * (a - r), hgt, pad), _index(j + d * (b - r), wid, pad))
                          for a in range(k) for b in range(k)]
            if m.relation == 'pairwise':
                logits = [_gamma(m, torch.cat([x1[:, :, i, j] - x2[:, :, u, v],
                                               (p[:, i, j] - p[:, u, v]).expand(n, 2)], 1))
                          for u, v in neighbours]
                w = torch.softmax(torch.stack(logits, 2), 2)  # (N, C_w, k^2)
            else:
                patch = torch.stack([x2[:, :, u, v] for u, v in neighbours], 2)  # (N, c_r, k^2)
                w = _gamma(m, torch.cat([x1[:, :, i, j], patch.flatten(1)], 1))
                w = w.view(n, c_w, k * k)
            for c in range(c_out):
                values = torch.stack([x3[:, c, u, v] for u, v in neighbours], 1)  # (N, k^2)
                y[:, c, oi, oj] = (w[:, c % c_w] * values).sum(1)
    return y


def _random_statistics(m):
    with torch.no_grad():
        for module in m.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 1.5)
    return m


EQUATION_CASES = [
    (dict(), (9, 8)),
    (dict(relation='patchwise'), (7, 6)),
    (dict(spatial_extent=5, dilation=2, padding=2), (9, 11)),
    (dict(stride=2, out_channels=32), (7, 9)),
    (dict(relation='patchwise', stride=2, dilation=2, padding=2, spatial_extent=3), (9, 8)),
    (dict(share_planes=4, rel_reduction=8, spatial_extent=3), (5, 4)),
    (dict(), (2, 3)),  # both sides <= 3: replicate padding
    (dict(relation='patchwise', spatial_extent=5), (5, 2)),  # H reflects, W replicates
    (dict(relation='patchwise'), (1, 1)),
]


@pytest.mark.parametrize('kwargs,size', EQUATION_CASES,
                         ids=[f'{i}' for i in range(len(EQUATION_CASES))])
def test_equation(kwargs, size):
    torch.manual_seed(0)
    m = _random_statistics(perturb_parameters(SAN(16, **kwargs), scale=0.3)).double().eval()
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    torch.testing.assert_close(m(x), san_reference(x, m), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the spec's checks


@pytest.mark.parametrize('train', [False, True])
def test_pairwise_with_zero_last_gamma_conv_is_the_reflect_padded_mean(train):
    """Zero logits: uniform weights, y = the 7x7 mean of the reflection-padded x3 (at the
    strided centres at stride 2)."""
    m = perturb_parameters(SAN(16)).double().train(train)
    with torch.no_grad():
        m.conv_w[-1].weight.zero_()
        m.conv_w[-1].bias.zero_()
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    mean = F.avg_pool2d(F.pad(m.conv3(x), (3, 3, 3, 3), mode='reflect'), 7, stride=1)
    torch.testing.assert_close(m(x), mean, rtol=1e-13, atol=1e-13)
    w = m.attention(*m.projections(x)[:2])
    torch.testing.assert_close(w, torch.full_like(w, 1 / 49))
    strided = SAN(16, stride=2).double().train(train)
    strided.load_state_dict(m.state_dict())
    torch.testing.assert_close(strided(x), mean[:, :, ::2, ::2], rtol=1e-13, atol=1e-13)


def test_patchwise_with_zero_last_gamma_conv_is_zero():
    m = perturb_parameters(SAN(16, relation='patchwise')).double()
    with torch.no_grad():
        m.conv_w[-1].weight.zero_()
        m.conv_w[-1].bias.zero_()
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    assert m(x).eq(0).all()


@pytest.mark.parametrize('relation', ['pairwise', 'patchwise'])
def test_channels_c_and_c_plus_c_over_8_share_their_weights(relation):
    """The weight of channel c is w_{c mod C_w} (interleaved), not w_{c // 8} (contiguous):
    with equal x3 channels 1 and 1 + C_w (C_w = 32 / 8 = 4) the outputs are equal, with equal
    x3 channels 1 and 2 (the same contiguous group of 8) they are not."""
    m = perturb_parameters(SAN(32, relation=relation), scale=0.5).double().eval()
    assert m.weight_channels == 4
    with torch.no_grad():
        for twin in (5, 2):
            m.conv3.weight[twin] = m.conv3.weight[1]
            m.conv3.bias[twin] = m.conv3.bias[1]
    x = torch.randn(2, 32, 7, 6, dtype=torch.float64)
    y = m(x)
    torch.testing.assert_close(y[:, 5], y[:, 1], rtol=0, atol=1e-14)
    assert (y[:, 2] - y[:, 1]).abs().max() > 1e-3
    # and directly: every channel c uses weight channel c mod C_w
    w = torch.rand(2, 4, 49, 7, 6, dtype=torch.float64)
    x3 = torch.randn(2, 32, 7, 6, dtype=torch.float64)
    padded = F.pad(x3, (3, 3, 3, 3), mode='reflect').unfold(2, 7, 1).unfold(3, 7, 1)
    expected = torch.einsum('nchwk,nckhw->nchw', padded.flatten(-2), w.repeat(1, 8, 1, 1, 1))
    torch.testing.assert_close(m.aggregate(w, x3), expected, rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------- counts and init


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('channels', [16, 64, 256])
def test_parameter_count(channels):
    for c_out, k, r, share in [(channels, 7, 16, 8), (2 * channels, 7, 16, 8),
                               (channels, 3, 8, 4)]:
        c_r, c_w, area = channels // r, c_out // share, k * k
        projections = 2 * (channels + 1) * c_r + (channels + 1) * c_out
        pairwise = 2 * (c_r + 2) + (c_r + 2) * c_r + 2 * c_r + (c_r + 1) * c_w + 4
        patchwise = 2 * c_r * (area + 1) + c_r * (area + 1) * c_w + 2 * c_w + (c_w + 1) * area * c_w
        kw = dict(out_channels=c_out, spatial_extent=k, rel_reduction=r, share_planes=share)
        assert _count(SAN(channels, **kw)) == projections + pairwise
        assert _count(SAN(channels, relation='patchwise', **kw)) == projections + patchwise
    if channels == 256:  # the spec's figures; conv_p's bias (2) is a buffer here
        assert _count(SAN(256)) + SAN(256).conv_p.bias.numel() == 74_922
        assert _count(SAN(256, relation='patchwise')) == 153_024


def test_conv_p_bias_cancels_and_is_a_buffer():
    """p(i) - p(j) does not depend on conv_p's bias: a buffer under the official key."""
    m = perturb_parameters(SAN(16)).double()
    x = torch.randn(2, 16, 6, 7, dtype=torch.float64)
    y = m(x)
    assert 'conv_p.bias' in m.state_dict() and 'conv_p.bias' not in dict(m.named_parameters())
    with torch.no_grad():
        m.conv_p.bias.add_(5.0)
    torch.testing.assert_close(m(x), y, rtol=1e-14, atol=1e-14)


def test_initialisation_and_the_official_keys():
    """PyTorch's default initialisation (the official code has none of its own), the
    official SAM's state-dict keys, and softmax weights: positive, summing to one."""
    torch.manual_seed(0)
    m = SAN(64)
    m.init_weights()
    keys = ['conv1', 'conv2', 'conv3', 'conv_w.2', 'conv_w.5', 'conv_p']
    assert [n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d)] == keys
    assert sorted(k for k in m.state_dict() if k.startswith('conv_w.0')) == [
        'conv_w.0.bias', 'conv_w.0.num_batches_tracked', 'conv_w.0.running_mean',
        'conv_w.0.running_var', 'conv_w.0.weight']
    for name in keys:
        conv = m.get_submodule(name)
        bound = conv.weight[0].numel()**-0.5  # kaiming_uniform(a=sqrt(5)): 1 / sqrt(fan_in)
        assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.5 * bound
    for bn in (m.conv_w[0], m.conv_w[3]):
        assert bn.weight.eq(1).all() and bn.bias.eq(0).all()
    x = torch.randn(2, 64, 6, 5)
    w = m.attention(*m.projections(x)[:2])
    assert w.shape == (2, 8, 49, 6, 5)
    assert w.gt(0).all()
    torch.testing.assert_close(w.sum(2), torch.ones(2, 8, 6, 5))


def test_no_conv_init():
    assert SAN.no_conv_init and not SAN.conv_init
    assert SAN.takes_dilation and not (SAN.takes_groups or SAN.takes_bias or SAN.any_padding)
    with pytest.raises(ValueError, match='SAN cannot take its weights from the replaced conv'):
        SAN(16).init_from_conv(nn.Conv2d(16, 16, 3, padding=1, bias=False))


# ---------------------------------------------------------------- forward and maps


@pytest.mark.parametrize('kwargs', [dict(), dict(relation='patchwise'), dict(stride=2)])
def test_forward_from_the_map_methods(kwargs):
    m = perturb_parameters(SAN(16, **kwargs), scale=0.5).eval()
    x = torch.randn(2, 16, 7, 6)
    with torch.no_grad():
        x1, x2, x3 = m.projections(x)
        w = m.attention(x1, x2)
        torch.testing.assert_close(m(x), m.aggregate(w, x3))
        maps = m.attention_maps(x)
    grid = tuple(x1.shape[-2:])
    share = w.abs() / w.abs().sum(2, keepdim=True)  # pairwise: w itself
    if m.relation == 'pairwise':
        torch.testing.assert_close(share, w)
    assert maps['centre_weight'].kind == 'spatial'
    assert maps['centre_weight'].values.shape == (2, *grid)
    torch.testing.assert_close(maps['centre_weight'].values, share[:, :, 24].mean(1))
    assert maps['window'].kind == 'weights' and maps['window'].values.shape == (2, 7, 7)
    torch.testing.assert_close(maps['window'].values.flatten(1), share.mean((1, 3, 4)))
    torch.testing.assert_close(maps['window'].values.sum((1, 2)), torch.ones(2))


@pytest.mark.parametrize('relation', ['pairwise', 'patchwise'])
def test_stride_computes_the_strided_centres(relation):
    """Stride s (an extension) gives the stride-1 output at the centres (s i, s j)."""
    m1 = _random_statistics(perturb_parameters(SAN(16, relation=relation), 0.5)).double().eval()
    m2 = SAN(16, stride=2, relation=relation).double().eval()
    m2.load_state_dict(m1.state_dict())
    x = torch.randn(2, 16, 7, 8, dtype=torch.float64)
    torch.testing.assert_close(m2(x), m1(x)[:, :, ::2, ::2], rtol=1e-13, atol=1e-13)


def test_one_pixel_map():
    """Every neighbour of a 1x1 map is the pixel itself: pairwise y = x3; patchwise
    y = x3 times the sum of the k^2 weights (and no NaN)."""
    m = perturb_parameters(SAN(16), scale=1.0).double().eval()
    x = torch.randn(3, 16, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(m(x), m.conv3(x))
    p = perturb_parameters(SAN(16, relation='patchwise'), scale=1.0).double().eval()
    w = p.attention(*p.projections(x)[:2]).sum(2)  # (N, C_w, 1, 1)
    torch.testing.assert_close(p(x), p.conv3(x) * w.repeat(1, 8, 1, 1))


def test_patchwise_batch_one_one_pixel_in_training():
    """gamma's batch norms see one value per channel: running statistics, left unchanged."""
    m = perturb_parameters(SAN(16, relation='patchwise')).train()
    before = m.conv_w[0].running_mean.clone()
    y = m(torch.randn(1, 16, 1, 1))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(m.conv_w[0].running_mean, before)


def test_padding_reflects_or_replicates_per_axis():
    t = torch.randn(2, 3, 5, 2)
    torch.testing.assert_close(pad_reflect(t, 2)[:, :, :, 2:4],
                               F.pad(t, (0, 0, 2, 2), mode='reflect'))  # H: 5 > 2
    torch.testing.assert_close(pad_reflect(t, 2)[:, :, 2:7],
                               F.pad(t, (2, 2, 0, 0), mode='replicate'))  # W: 2 <= 2
    torch.testing.assert_close(pad_reflect(t, 1), F.pad(t, (1, 1, 1, 1), mode='reflect'))
    torch.testing.assert_close(pad_reflect(t, 5), F.pad(t, (5, 5, 5, 5), mode='replicate'))
    assert pad_reflect(t, 0) is t


@pytest.mark.parametrize('kwargs,size', [(dict(stride=2, out_channels=32), (9, 7)),
                                         (dict(stride=2, dilation=2, padding=2,
                                               spatial_extent=3), (8, 9)),
                                         (dict(relation='patchwise', spatial_extent=5), (6, 5))])
def test_equal_to_the_official_unfold_reference(kwargs, size):
    """The benchmark's reference (the official SAM with its refpad ops in unfold form) with
    copied weights, in training (batch statistics) and eval."""
    from cvattn_mm.analysis.references import SANReference
    ours = perturb_parameters(SAN(16, **kwargs), scale=0.5).double()
    theirs = SANReference(ours).double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    for train in (True, False):
        ours.train(train)
        theirs.train(train)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize('kwargs,match', [
    (dict(relation='concat'), r"SAN: relation must be one of \('pairwise', 'patchwise'\)"),
    (dict(spatial_extent=6), 'SAN: spatial_extent must be odd'),
    (dict(spatial_extent=0), 'SAN: spatial_extent'),
    (dict(rel_reduction=0), 'SAN: rel_reduction'),
    (dict(share_planes=0), 'SAN: share_planes'),
    (dict(in_channels=8), r'SAN: in_channels=8 must be >= rel_reduction=16'),
    (dict(out_channels=20), r'SAN: out_channels=20 must be divisible by share_planes=8'),
    (dict(groups=2), 'SAN cannot replace a conv with groups=2'),
    (dict(bias=True), 'SAN cannot replace a conv with bias=True'),
    (dict(kernel_size=5), r'SAN replaces convs with kernel_size in \(3,\)'),
    (dict(padding=0), 'SAN keeps the map size'),
    (dict(dilation=2, padding=1), 'SAN keeps the map size'),
])
def test_argument_errors(kwargs, match):
    kwargs = {'in_channels': 16, **kwargs}
    with pytest.raises(ValueError, match=match):
        SAN(**kwargs)


def test_subclass_errors_name_the_subclass():
    class MySAN(SAN):
        pass

    with pytest.raises(ValueError, match='MySAN: share_planes'):
        MySAN(16, share_planes=0)
    with pytest.raises(ValueError, match='MySAN was built for in_channels=16'):
        MySAN(16)(torch.randn(1, 8, 4, 4))


def test_onnx_coordinates_are_linspace(monkeypatch):
    """The arange form used during an ONNX export gives linspace's values (up to an ulp)."""
    from cvattn_mm.attention.spatial import san
    like = torch.zeros(1, dtype=torch.float64)
    eager = [san.linspace(n, like) for n in (1, 2, 7, 16)]
    monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: True)
    for n, expected in zip((1, 2, 7, 16), eager):
        torch.testing.assert_close(san.linspace(n, like), expected, rtol=0, atol=1e-15)
        assert torch.equal(expected, torch.linspace(-1, 1, n, dtype=torch.float64))
