"""SASA: its equation (float64, written from the paper), the W_Q = 0 check, parameter count,
initialisation, maps, stride and boundary variants and argument checks."""
import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.spatial.sasa import SASA

from .contract import check_onnx, check_replaces_conv, perturb_parameters, run_contract


@pytest.mark.parametrize('kwargs', [dict(boundary='zeros', scale=True),
                                    dict(embedding='shared', projection='grouped',
                                         spatial_extent=3, heads=4)],
                         ids=['zeros-scaled', 'shared-grouped-k3'])
def test_contract_variants(kwargs):
    run_contract(lambda: SASA(32, **kwargs))


@pytest.mark.parametrize('kwargs', [dict(downsample='strided'),
                                    dict(boundary='zeros', heads=4)], ids=['strided', 'zeros'])
def test_replaces_conv_variants(kwargs):
    check_replaces_conv(SASA, channels=32, **kwargs)


def test_pooled_stride_exports_to_onnx(tmp_path):
    check_onnx(lambda: SASA(16, 32, stride=2, heads=4), tmp_path)


def _projection(weight, groups):
    """A 1x1 conv weight (out, in / g, 1, 1) of g groups as its full (out, in) matrix."""
    return torch.block_diag(*weight.flatten(1).chunk(groups, 0))


def sasa_reference(x, m):
    """The paper's eq. 3 pixel by pixel: for each query centre, the logits
    ``q . (k_ab + [r_row(a - i); r_col(b - j)])`` per head over the k x k neighbours inside
    the image (or all of them with zero keys and values for boundary='zeros'), a softmax,
    the weighted sum of the values; then the s x s average of the valid pixels of each
    output block for downsample='pool'."""
    groups = m.heads if m.projection == 'grouped' else 1
    wq, wk, wv = (_projection(conv.weight, groups) for conv in (m.query, m.key, m.value))
    q, k, v = (torch.einsum('oc,nchw->nohw', w, x) for w in (wq, wk, wv))
    n, c, hgt, wid = q.shape
    h, d, size = m.heads, c // m.heads, m.spatial_extent
    r = size // 2
    rows = m.rel_rows.expand(h, -1, -1)  # (h, d / 2, k)
    cols = m.rel_cols.expand(h, -1, -1)
    s = m.stride if m.downsample == 'strided' else 1
    centres_i, centres_j = range(0, hgt, s), range(0, wid, s)
    y = torch.zeros(n, c, len(centres_i), len(centres_j), dtype=x.dtype)
    for oi, i in enumerate(centres_i):
        for oj, j in enumerate(centres_j):
            qij = q[:, :, i, j].reshape(n, h, d)
            logits, values = [], []
            for a in range(i - r, i + r + 1):
                for b in range(j - r, j + r + 1):
                    inside = 0 <= a < hgt and 0 <= b < wid
                    if not inside and m.boundary == 'mask':
                        continue
                    key = k[:, :, a, b] if inside else torch.zeros(n, c, dtype=x.dtype)
                    value = v[:, :, a, b] if inside else torch.zeros(n, c, dtype=x.dtype)
                    rel = torch.cat([rows[:, :, a - i + r], cols[:, :, b - j + r]], 1)  # (h, d)
                    logit = (qij * (key.reshape(n, h, d) + rel)).sum(2)  # (n, h)
                    logits.append(logit / d**0.5 if m.scale else logit)
                    values.append(value.reshape(n, h, d))
            weights = torch.softmax(torch.stack(logits, 2), 2)  # (n, h, neighbours)
            out = (weights[..., None] * torch.stack(values, 2)).sum(2)
            y[:, :, oi, oj] = out.reshape(n, c)
    if m.downsample == 'pool' and m.stride > 1:
        s = m.stride
        ho, wo = -(-hgt // s), -(-wid // s)
        pooled = torch.zeros(n, c, ho, wo, dtype=x.dtype)
        for oi in range(ho):
            for oj in range(wo):
                pooled[:, :, oi, oj] = y[:, :, s * oi:s * oi + s, s * oj:s * oj + s].mean((2, 3))
        y = pooled
    return y


EQUATION_CASES = [
    (dict(), (5, 6)),
    (dict(boundary='zeros'), (5, 6)),
    (dict(scale=True, embedding='shared'), (4, 7)),
    (dict(projection='grouped', spatial_extent=3), (5, 6)),
    (dict(out_channels=32, heads=4), (3, 4)),
    (dict(stride=2, spatial_extent=3), (5, 7)),
    (dict(stride=2, out_channels=24, heads=2, downsample='strided'), (5, 7)),
    (dict(stride=2, boundary='zeros', spatial_extent=5), (6, 5)),
    (dict(), (1, 1)),
]


@pytest.mark.parametrize('kwargs,size', EQUATION_CASES,
                         ids=[f'{i}' for i in range(len(EQUATION_CASES))])
def test_equation(kwargs, size):
    torch.manual_seed(0)
    kwargs = {'heads': 2, **kwargs}
    m = perturb_parameters(SASA(16, **kwargs), scale=0.3).double()
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    torch.testing.assert_close(m(x), sasa_reference(x, m), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('boundary,include_pad', [('mask', False), ('zeros', True)])
def test_zero_query_is_a_local_average(boundary, include_pad):
    """The spec's check: with W_Q = 0 every logit is 0, the attention is uniform over the
    window (its valid neighbours for 'mask') and y is a 7x7 average pool of v."""
    m = perturb_parameters(SASA(16, heads=4, boundary=boundary)).double()
    with torch.no_grad():
        m.query.weight.zero_()
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    v = m.value(x)
    expected = F.avg_pool2d(v, 7, stride=1, padding=3, count_include_pad=include_pad)
    torch.testing.assert_close(m(x), expected, rtol=1e-13, atol=1e-13)
    # stride 2: the same, then the 2x2 ceil-mode average pool
    m2 = SASA(16, stride=2, heads=4, boundary=boundary).double()
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2(x), F.avg_pool2d(expected, 2, 2, ceil_mode=True),
                               rtol=1e-13, atol=1e-13)
    assert m2(x).shape[-2:] == (5, 6)


def test_one_pixel_map_returns_its_value():
    """On a 1x1 map only the centre is inside: its weight is 1 and y = v (no NaN)."""
    m = perturb_parameters(SASA(16, heads=2), scale=1.0)
    x = torch.randn(3, 16, 1, 1)
    y = m(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, m.value(x))


@pytest.mark.parametrize('channels', [16, 64, 256])
def test_parameter_count(channels):
    def count(**kw):
        return sum(p.numel() for p in SASA(channels, **kw).parameters())

    k = 7
    assert count() == 3 * channels**2 + k * channels
    assert count(out_channels=2 * channels) == 3 * channels * 2 * channels + k * 2 * channels
    assert count(projection='grouped') == 3 * channels**2 // 8 + k * channels
    assert count(embedding='shared') == 3 * channels**2 + k * channels // 8
    assert count(spatial_extent=3, heads=4) == 3 * channels**2 + 3 * channels
    if channels == 256:
        assert count() == 198_400  # the spec's figure


def test_initialisation():
    torch.manual_seed(0)
    m = SASA(256, heads=4)
    m.init_weights()
    d = 64
    for table in (m.rel_rows, m.rel_cols):
        assert table.shape == (4, d // 2, 7)
        assert abs(table.std().item() - d**-0.5) < 0.1 * d**-0.5
    # weights are a softmax: positive inside the image, 0 outside, summing to one
    x = torch.randn(2, 256, 5, 4)
    q, k, _ = m.projections(x)
    attn = m.attention(q, k)
    assert attn.shape == (2, 4, 49, 5, 4)
    torch.testing.assert_close(attn.sum(2), torch.ones(2, 4, 5, 4))
    assert attn[:, :, 0, 0, 0].eq(0).all()  # offset (-3, -3) of the corner query
    assert attn[:, :, 24].gt(0).all()  # the centre


def test_no_conv_init():
    assert SASA.no_conv_init and not SASA.conv_init
    with pytest.raises(ValueError, match='SASA cannot take its weights from the replaced conv'):
        SASA(16, heads=2).init_from_conv(torch.nn.Conv2d(16, 16, 3, padding=1, bias=False))


@pytest.mark.parametrize('kwargs', [dict(), dict(stride=2), dict(stride=2, downsample='strided')])
def test_forward_from_the_map_methods(kwargs):
    m = perturb_parameters(SASA(16, heads=2, **kwargs), scale=0.5).eval()
    x = torch.randn(2, 16, 7, 6)
    with torch.no_grad():
        q, k, v = m.projections(x)
        attn = m.attention(q, k)
        torch.testing.assert_close(m(x), m.pool(m.aggregate(attn, v)))
        maps = m.attention_maps(x)
    grid = tuple(q.shape[-2:])
    assert maps['self_weight'].kind == 'spatial'
    assert maps['self_weight'].values.shape == (2, *grid)
    torch.testing.assert_close(maps['self_weight'].values, attn[:, :, 24].mean(1))
    assert maps['window'].values.shape == (2, 7, 7)
    torch.testing.assert_close(maps['window'].values.sum((1, 2)), torch.ones(2))
    torch.testing.assert_close(maps['window'].values.flatten(1), attn.mean((1, 3, 4)))


def test_strided_queries_are_the_strided_centres():
    """downsample='strided' computes the stride-1 output at the centres (s i, s j)."""
    m1 = perturb_parameters(SASA(16, heads=2), scale=0.5).double()
    m2 = SASA(16, stride=2, heads=2, downsample='strided').double()
    m2.load_state_dict(m1.state_dict())
    x = torch.randn(2, 16, 7, 8, dtype=torch.float64)
    torch.testing.assert_close(m2(x), m1(x)[:, :, ::2, ::2], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize('kwargs,match', [
    (dict(spatial_extent=6), 'SASA: spatial_extent must be odd'),
    (dict(spatial_extent=0), 'SASA: spatial_extent'),
    (dict(heads=0), 'SASA: heads'),
    (dict(heads=3), r'SASA: out_channels=16 must be divisible by heads=3'),
    (dict(heads=16), r'head width out_channels / heads = 1 must be even'),
    (dict(downsample='max'), r'SASA: downsample must be one of \(\'pool\', \'strided\'\)'),
    (dict(boundary='reflect'), r'SASA: boundary must be one of'),
    (dict(embedding='global'), r'SASA: embedding must be one of'),
    (dict(projection='depthwise'), r'SASA: projection must be one of'),
    (dict(scale=0.5), r'SASA: scale must be one of'),
    (dict(in_channels=12, out_channels=16, heads=8, projection='grouped'),
     r"projection='grouped' needs in_channels=12 divisible by heads=8"),
    (dict(groups=2), 'SASA cannot replace a conv with groups=2'),
    (dict(dilation=2, padding=2), 'SASA cannot replace a conv with dilation=2'),
    (dict(bias=True), 'SASA cannot replace a conv with bias=True'),
    (dict(kernel_size=5), r'SASA replaces convs with kernel_size in \(3,\)'),
    (dict(padding=0), 'SASA keeps the map size'),
])
def test_argument_errors(kwargs, match):
    kwargs = {'in_channels': 16, **kwargs}
    with pytest.raises(ValueError, match=match):
        SASA(**kwargs)


def test_subclass_errors_name_the_subclass():
    class MySASA(SASA):
        pass

    with pytest.raises(ValueError, match='MySASA: heads'):
        MySASA(16, heads=0)
    with pytest.raises(ValueError, match='MySASA was built for in_channels=16'):
        MySASA(16, heads=2)(torch.randn(1, 8, 4, 4))


@pytest.mark.parametrize('kwargs,size', [(dict(stride=2, out_channels=32), (7, 6)),
                                         (dict(), (1, 1))])
def test_equal_to_the_unfold_reference(kwargs, size):
    """The benchmark's reference (k and v unfolded to k^2 copies) with copied weights."""
    from cvattn_mm.analysis.references import SASAReference
    ours = perturb_parameters(SASA(16, heads=4, **kwargs), scale=0.5).double()
    theirs = SASAReference(ours).double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
