"""ACmix: its equation (both paths, strides, odd and small maps), the spec's check, the
initialisation, the parameter count, the maps, the replaced convs and the argument checks."""
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn_mm.attention.spatial.acmix import ACmix

from .contract import check_onnx, check_replaces_conv, perturb_parameters, run_contract


@pytest.mark.parametrize('kwargs', [dict(kernel_att=5, head=8), dict(kernel_att=3, head=1)],
                         ids=['k5-h8', 'k3-h1'])
def test_contract_variants(kwargs):
    run_contract(lambda: ACmix(32, **kwargs))


@pytest.mark.parametrize('kwargs', [dict(kernel_att=3, head=2), dict(kernel_att=5, head=8)],
                         ids=['k3-h2', 'k5-h8'])
def test_replaces_convs_variants(kwargs):
    check_replaces_conv(ACmix, channels=32, **kwargs)


def padded_index(n, p):
    """Source index of each position of an axis of n padded by p on both sides: reflection
    (-1 -> 1, n -> n - 2) when n > p, else replication."""
    idx = torch.arange(-p, n + p)
    if n > p:
        idx = idx.abs()
        return torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)
    return idx.clamp(0, n - 1)


def acmix_reference(x, m):
    """The paper's two paths with plain tensor ops and explicit loops over output positions
    (the weights read from the module ``m``)."""
    n, _, H, W = x.shape
    C, h, s, ka = m.out_channels, m.head, m.stride, m.kernel_att
    d, p = C // h, ka // 2
    ho, wo = math.ceil(H / s), math.ceil(W / s)

    def one_by_one(conv, t):
        return torch.einsum('oc,nchw->nohw', conv.weight[:, :, 0, 0], t) + \
            conv.bias[None, :, None, None]

    q, k, v = (one_by_one(c, x) for c in (m.conv1, m.conv2, m.conv3))
    # relative position encoding of the (x, y) coordinate map
    ys = torch.linspace(-1, 1, H, dtype=x.dtype)
    xs = torch.linspace(-1, 1, W, dtype=x.dtype)
    coords = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]))  # (2, H, W)
    pe = one_by_one(m.conv_p, coords[None])[0]  # (d, H, W)
    rows, cols = padded_index(H, p), padded_index(W, p)
    out_att = torch.zeros(n, C, ho, wo, dtype=x.dtype)
    for i in range(ho):
        for j in range(wo):
            r, c = rows[i * s:i * s + ka], cols[j * s:j * s + ka]
            keys = k[:, :, r][:, :, :, c].reshape(n, h, d, ka * ka)
            values = v[:, :, r][:, :, :, c].reshape(n, h, d, ka * ka)
            pe_j = pe[:, r][:, :, c].reshape(d, ka * ka)
            pe_i = pe[:, i * s, j * s]
            query = q[:, :, i * s, j * s].reshape(n, h, d) / math.sqrt(d)
            logits = (query[..., None] * (keys + pe_i[:, None] - pe_j)).sum(2)
            a = logits.exp() / logits.exp().sum(-1, keepdim=True)
            out_att[:, :, i, j] = (a[:, :, None] * values).sum(-1).reshape(n, C)
    # conv path: stacked [q; k; v] heads, fc over them, grouped conv (group e = o // h)
    stacked = torch.cat([t.reshape(n, h, d, H, W) for t in (q, k, v)], 1)  # (n, 3h, d, H, W)
    f = torch.einsum('tj,njehw->nethw', m.fc.weight[:, :, 0, 0], stacked)
    f = F.pad(f, (1, 1, 1, 1))  # zero padding of the 3x3 conv
    kc = m.kernel_conv
    out_conv = torch.zeros(n, C, ho, wo, dtype=x.dtype)
    weight = m.dep_conv.weight  # (C, kc^2, kc, kc)
    for o in range(C):
        for a in range(kc):
            for b in range(kc):
                window = f[:, o // h, :, a:a + (ho - 1) * s + 1:s, b:b + (wo - 1) * s + 1:s]
                out_conv[:, o] += torch.einsum('t,nthw->nhw', weight[o, :, a, b], window)
    return m.rate1 * out_att + m.rate2 * out_conv


@pytest.mark.parametrize('cfg,size', [
    (dict(), (8, 8)),
    (dict(), (7, 9)),
    (dict(stride=2), (8, 10)),
    (dict(stride=2), (7, 9)),  # odd sizes at stride 2: the official code crashes
    (dict(out_channels=24, head=3), (6, 5)),
    (dict(out_channels=8, head=2, stride=2, kernel_att=5), (5, 8)),
    (dict(), (3, 8)),  # H <= 3: replicate padding along H, reflection along W
    (dict(stride=2), (2, 5)),
    (dict(), (1, 1)),
    (dict(kernel_att=3, head=1), (4, 3)),
    (dict(kernel_att=5, head=2), (2, 3)),
], ids=lambda v: '-'.join(map(str, v.values())) if isinstance(v, dict) else 'x'.join(map(str, v)))
def test_equation(cfg, size):
    torch.manual_seed(0)
    m = perturb_parameters(ACmix(12, **cfg), scale=0.3).double()
    x = torch.randn(2, 12, *size, dtype=torch.float64)
    torch.testing.assert_close(m(x), acmix_reference(x, m), rtol=1e-12, atol=1e-12)


def test_check_uniform_attention_is_a_window_mean():
    """The spec's check: with rate2 = 0 and W_q = 0 (weight and bias), every logit is 0 and
    out = rate1 * the 7x7 mean of the reflect-padded v."""
    torch.manual_seed(0)
    m = perturb_parameters(ACmix(16), scale=0.3).double()
    with torch.no_grad():
        m.rate2.zero_()
        m.conv1.weight.zero_()
        m.conv1.bias.zero_()
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    v = m.conv3(x)
    mean = F.avg_pool2d(F.pad(v, (3, 3, 3, 3), mode='reflect'), 7, stride=1)
    torch.testing.assert_close(m(x), m.rate1 * mean, rtol=1e-13, atol=1e-13)


def test_initialisation():
    m = ACmix(16, out_channels=32)
    assert m.rate1.item() == m.rate2.item() == 0.5
    assert m.dep_conv.bias is None and m.dep_conv.groups == 8
    shift = torch.zeros(9, 3, 3)
    for t in range(9):
        shift[t, t // 3, t % 3] = 1
    assert torch.equal(m.dep_conv.weight, shift.expand(32, 9, 3, 3))
    # mmengine's init_cfg first, then init_special: the shift kernels stay
    m = ACmix(16, init_cfg=dict(type='Kaiming', layer='Conv2d'))
    with torch.no_grad():
        m.rate1.fill_(3.)
    m.init_weights()
    assert torch.equal(m.dep_conv.weight, shift.expand(16, 9, 3, 3)) and m.rate1.item() == 0.5


def test_shift_kernels_make_the_conv_path_a_sum_of_shifted_features():
    """At initialisation output channel o of the conv path is sum_t shift_t(f[o // h, t]),
    shift_t moving by the tap (t // 3 - 1, t % 3 - 1) (zero padded)."""
    torch.manual_seed(0)
    m = ACmix(8, head=2).double()
    x = torch.randn(1, 8, 5, 6, dtype=torch.float64)
    q, k, v = m.projections(x)
    f = m.fc(torch.cat([t.reshape(1, 2, 4, 30) for t in (q, k, v)], 1))  # (1, 9, d, S)
    f = F.pad(f.reshape(1, 9, 4, 5, 6), (1, 1, 1, 1))
    expected = torch.stack([sum(f[:, t, o // 2, t // 3:t // 3 + 5, t % 3:t % 3 + 6]
                                for t in range(9)) for o in range(8)], 1)
    torch.testing.assert_close(m.conv_output(q, k, v), expected)


def test_parameter_count():
    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(ACmix(256)) == 218_414  # the spec's figure (the official class, checked)
    for c, h in ((16, 4), (64, 4), (48, 8), (512, 4)):
        d = c // h
        assert count(ACmix(c, head=h)) == 3 * c * c + 84 * c + 3 * d + 27 * h + 2
    for cin, cout in ((16, 32), (64, 16)):
        d = cout // 4
        assert count(ACmix(cin, cout)) == 3 * cin * cout + 3 * cout + 3 * d + 27 * 4 + \
            81 * cout + 2


def test_state_dict_keys_are_the_official_ones():
    assert sorted(ACmix(16).state_dict()) == [
        'conv1.bias', 'conv1.weight', 'conv2.bias', 'conv2.weight', 'conv3.bias',
        'conv3.weight', 'conv_p.bias', 'conv_p.weight', 'dep_conv.weight', 'fc.weight',
        'rate1', 'rate2']


def test_forward_rebuilt_from_the_methods_and_the_maps():
    torch.manual_seed(0)
    m = perturb_parameters(ACmix(16, head=2, stride=2), scale=0.3).eval()
    x = torch.randn(2, 16, 7, 10)
    with torch.no_grad():
        q, k, v = m.projections(x)
        att = m.attention(q, k, m.position_encoding(x))
        assert att.shape == (4, 49, 4, 5)
        torch.testing.assert_close(att.sum(1), torch.ones(4, 4, 5))
        rebuilt = m.rate1 * m.attention_output(att, v) + m.rate2 * m.conv_output(q, k, v)
        torch.testing.assert_close(m(x), rebuilt)
        maps = m.attention_maps(x)
    assert set(maps) == {'self_weight', 'window'}
    per_head = att.reshape(2, 2, 49, 4, 5).mean(1)
    assert maps['self_weight'].kind == 'spatial'
    torch.testing.assert_close(maps['self_weight'].values, per_head[:, 24])
    assert maps['window'].kind == 'weights' and maps['window'].values.shape == (2, 7, 7)
    torch.testing.assert_close(maps['window'].values, per_head.mean((2, 3)).reshape(2, 7, 7))


@pytest.mark.parametrize('stride,size', [(1, (6, 9)), (2, (7, 10)), (2, (2, 5))])
def test_windows_are_the_unfolded_windows(stride, size):
    """The shifted views are the official unfold's windows of the padded map, offset-major."""
    m = ACmix(8, stride=stride, kernel_att=5)
    t = torch.randn(3, 4, *size)
    ho, wo = m.output_size(*size)
    unfolded = F.unfold(m.pad(t), 5, stride=stride).reshape(3, 4, 25, ho, wo)
    assert torch.equal(torch.stack(m.windows(t), 2), unfolded)


def test_position_encoding_in_the_input_dtype():
    m = ACmix(8)
    x = torch.randn(1, 8, 3, 5, dtype=torch.float64)
    with torch.no_grad():
        pe = m.double().position_encoding(x)
    assert pe.dtype == torch.float64 and pe.shape == (1, 2, 3, 5)
    w, b = m.conv_p.weight[:, :, 0, 0], m.conv_p.bias
    torch.testing.assert_close(pe[0, :, 2, 0], w @ torch.tensor([-1., 1.], dtype=torch.float64) + b)
    torch.testing.assert_close(pe[0, :, 1, 4], w @ torch.tensor([1., 0.], dtype=torch.float64) + b)


@pytest.mark.parametrize('cfg,size', [(dict(stride=2), (7, 9)), (dict(out_channels=32), (3, 6))],
                         ids=['stride2-odd', 'out32-replicate'])
def test_trace_and_onnx_on_replacement_geometries(cfg, size, tmp_path):
    """Stride 2 on odd sizes and the replicate fallback export (opset 17) and trace."""
    torch.manual_seed(0)
    m = perturb_parameters(ACmix(16, **cfg)).eval()
    x = torch.randn(2, 16, *size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        traced = torch.jit.trace(m, x, check_trace=False)
        torch.testing.assert_close(traced(x), m(x))
    import onnxruntime as ort
    path = str(tmp_path / 'acmix.onnx')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(m, (x, ), path, opset_version=17, dynamo=False)
    (y, ) = ort.InferenceSession(path, providers=['CPUExecutionProvider']).run(
        None, {ort.InferenceSession(path).get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), m(x), rtol=1e-4, atol=1e-4)


def test_onnx_of_a_variant(tmp_path):
    check_onnx(lambda: ACmix(16, kernel_att=5, head=2), tmp_path)


def test_built_from_a_resnet_conv():
    conv = nn.Conv2d(64, 128, 3, 2, 1, bias=False)
    m = ACmix.from_conv(conv, head=8)
    assert (m.in_channels, m.out_channels, m.stride, m.head, m.head_dim) == (64, 128, 2, 8, 16)
    assert m(torch.randn(1, 64, 7, 7)).shape == (1, 128, 4, 4)
    with pytest.raises(ValueError, match='ACmix cannot take its weights from the replaced conv'):
        m.init_from_conv(conv)


@pytest.mark.parametrize('kwargs,match', [
    (dict(kernel_att=4), 'ACmix: kernel_att must be odd'),
    (dict(kernel_att=1), 'ACmix: kernel_att must be >= 3'),
    (dict(head=0), 'ACmix: head must be >= 1'),
    (dict(head=3), 'ACmix: out_channels=16 must be divisible by head=3'),
    (dict(out_channels=10), 'ACmix: out_channels=10 must be divisible by head=4'),
    (dict(groups=2), 'ACmix cannot replace a conv with groups=2'),
    (dict(dilation=2, padding=2), 'ACmix cannot replace a conv with dilation=2'),
    (dict(bias=True), 'ACmix cannot replace a conv with bias=True'),
    (dict(kernel_size=5), r'ACmix replaces convs with kernel_size in \(3,\)'),
    (dict(padding=0), 'ACmix keeps the map size'),
    (dict(in_channels=0), 'ACmix: in_channels must be >= 1'),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ACmix(**dict(dict(in_channels=16), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyACmix', (ACmix, ), {'_abbr_': 'my_acmix'})
    with pytest.raises(ValueError, match='MyACmix: out_channels=16 must be divisible by head=3'):
        sub(16, head=3)
    with pytest.raises(ValueError, match='MyACmix: kernel_att must be odd'):
        sub(16, kernel_att=6)
    with pytest.raises(ValueError, match='MyACmix: an input of'):
        sub(16, padding=1)(torch.randn(1, 16, 0, 4))
