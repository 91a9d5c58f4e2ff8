"""PolarizedSelfAttention: the paper's and the official equations in both layouts, parameter
counts, initialisation, the spec's checks, maps and argument checks."""
import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.channel_spatial.polarized_self_attention import PolarizedSelfAttention

from .contract import perturb_parameters, run_contract

VARIANTS = [dict(mode='parallel'), dict(mode='parallel', form='official'),
            dict(mode='sequential', form='official'), dict(reduction=4),
            dict(norm_cfg=dict(type='BN'))]
VARIANT_IDS = ['paper-parallel', 'official-parallel', 'official-sequential', 'reduction4', 'bn']


@pytest.mark.parametrize('kwargs', VARIANTS, ids=VARIANT_IDS)
def test_contract_variants(kwargs):
    run_contract(lambda: PolarizedSelfAttention(16, **kwargs))


def conv(x, weight, bias=None):
    """A 1x1 conv on the full map, as the official code computes it."""
    return F.conv2d(x, weight, bias)


def layer_norm(z, weight, bias, eps=1e-5):
    """LayerNorm over the channels of an (N, C, 1, 1) vector."""
    mu = z.mean(1, keepdim=True)
    var = ((z - mu) ** 2).mean(1, keepdim=True)
    return (z - mu) / torch.sqrt(var + eps) * weight.reshape(1, -1, 1, 1) + bias.reshape(
        1, -1, 1, 1)


def channel_reference(m, x):
    """A_ch from the equations: softmax over positions of W_q x, W_v x times it, W_z, (LN), σ."""
    n, c, h, w = x.shape
    q = conv(x, m.conv_q_right.weight).reshape(n, 1, h * w)
    q = torch.exp(q - q.amax(2, keepdim=True))
    q = q / q.sum(2, keepdim=True)
    v = conv(x, m.conv_v_right.weight).reshape(n, -1, h * w)
    z = (v * q).sum(2)[:, :, None, None]
    if m.form == 'paper':
        z = layer_norm(conv(z, m.conv_up.weight), m.norm.weight, m.norm.bias)
    elif m.mode == 'parallel':
        z = conv(z, m.conv_up.weight)
    else:
        c1, ln, _, c2 = m.conv_up
        z = conv(torch.relu(layer_norm(conv(z, c1.weight, c1.bias), ln.weight, ln.bias)),
                 c2.weight, c2.bias)
    return 1 / (1 + torch.exp(-z))


def spatial_reference(m, x):
    """A_sp from the equations: GAP of W_q' x on the full map, W_v' x, their product, σ."""
    n, c, h, w = x.shape
    q = conv(x, m.conv_q_left.weight).mean((2, 3))  # (N, d)
    v = conv(x, m.conv_v_left.weight).reshape(n, -1, h * w)
    if m.form == 'paper':
        q = torch.exp(q) / torch.exp(q).sum(1, keepdim=True)
        s = (q[:, :, None] * v).sum(1)
    elif m.mode == 'parallel':
        s = (q[:, :, None] * v).sum(1)
        s = torch.exp(s) / torch.exp(s).sum(1, keepdim=True)
    else:
        v = torch.exp(v) / torch.exp(v).sum(2, keepdim=True)
        s = (q[:, :, None] * v).sum(1)
    return (1 / (1 + torch.exp(-s))).reshape(n, 1, h, w)


def psa_reference(m, x):
    if m.mode == 'parallel':
        return channel_reference(m, x) * x + spatial_reference(m, x) * x
    y = channel_reference(m, x) * x
    return spatial_reference(m, y) * y


@pytest.mark.parametrize('form', ['paper', 'official'])
@pytest.mark.parametrize('mode', ['parallel', 'sequential'])
@pytest.mark.parametrize('size', [(5, 7), (1, 1)])
def test_equation(mode, form, size):
    torch.manual_seed(0)
    m = perturb_parameters(PolarizedSelfAttention(32, mode=mode, form=form), 0.3).double()
    x = torch.randn(3, 32, *size, dtype=torch.float64)
    torch.testing.assert_close(m(x), psa_reference(m, x))


@pytest.mark.parametrize('channels', [16, 64, 256, 2048])
def test_parameter_count(channels):
    def count(**kwargs):
        return sum(p.numel() for p in PolarizedSelfAttention(channels, **kwargs).parameters())

    c, d = channels, channels // 2
    e = d // 4
    for mode in ('parallel', 'sequential'):
        assert count(mode=mode) == 4 * c * d + c + 2 * c
    assert count(mode='parallel', form='official') == 4 * c * d + c
    assert count(mode='sequential', form='official') == (3 * c * d + c + d * e + e + 2 * e
                                                         + e * c + c)


def test_parameter_count_at_256_is_the_spec_figure():
    def count(**kwargs):
        return sum(p.numel() for p in PolarizedSelfAttention(256, **kwargs).parameters())

    assert count(mode='parallel') == count(mode='sequential') == 131840
    assert count(mode='parallel', form='official') == 131328
    assert count(mode='sequential', form='official') == 111200


def test_narrow_official_bottleneck_has_a_floor():
    m = PolarizedSelfAttention(4, form='official')
    assert m.channels == 2 and m.conv_up[0].out_channels == 1
    assert PolarizedSelfAttention(3).channels == 1


def test_initialisation_is_kaiming_fan_in():
    torch.manual_seed(0)
    m = PolarizedSelfAttention(256)
    for conv_ in (m.conv_v_right, m.conv_q_left, m.conv_v_left):
        std = conv_.weight.std().item()
        assert abs(std - (2 / 256) ** 0.5) < 0.05 * (2 / 256) ** 0.5
    assert torch.equal(m.norm.weight, torch.ones(256))
    assert torch.equal(m.norm.bias, torch.zeros(256))


def test_check_official_parallel_zero_convs():
    """The spec's check: conv_up and conv_q_left zero give 0.5 x + sigmoid(1 / S) x."""
    m = PolarizedSelfAttention(16, mode='parallel', form='official').double()
    with torch.no_grad():
        m.conv_up.weight.zero_()
        m.conv_q_left.weight.zero_()
    x = torch.randn(2, 16, 5, 3, dtype=torch.float64)
    expected = 0.5 * x + torch.sigmoid(torch.tensor(1 / 15, dtype=torch.float64)) * x
    torch.testing.assert_close(m(x), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize('mode', ['parallel', 'sequential'])
def test_check_paper_zero_up_conv_gives_half_channel_gate(mode):
    m = PolarizedSelfAttention(16, mode=mode)
    with torch.no_grad():
        m.conv_up.weight.zero_()
    x = torch.randn(2, 16, 4, 6)
    assert torch.equal(m.channel_gate(x), torch.full((2, 16, 1, 1), 0.5))


def test_state_dict_keys_are_the_official_ones():
    keys = ['conv_q_left.weight', 'conv_q_right.weight', 'conv_v_left.weight',
            'conv_v_right.weight']
    official_p = PolarizedSelfAttention(16, mode='parallel', form='official')
    assert sorted(official_p.state_dict()) == sorted(keys + ['conv_up.weight'])
    official_s = PolarizedSelfAttention(16, form='official')
    assert sorted(official_s.state_dict()) == sorted(keys + [
        'conv_up.0.bias', 'conv_up.0.weight', 'conv_up.1.norm.bias', 'conv_up.1.norm.weight',
        'conv_up.3.bias', 'conv_up.3.weight'])
    assert official_s.conv_up[0].weight.shape == (2, 8, 1, 1)


@pytest.mark.parametrize('mode', ['parallel', 'sequential'])
def test_gates_rebuild_the_forward_and_are_the_maps(mode):
    m = perturb_parameters(PolarizedSelfAttention(16, mode=mode), 0.3).eval()
    x = torch.randn(2, 16, 7, 10)
    with torch.no_grad():
        a_ch = m.channel_gate(x)
        if mode == 'parallel':
            a_sp = m.spatial_gate(x)
            torch.testing.assert_close(m(x), x * a_ch + x * a_sp)
        else:
            a_sp = m.spatial_gate(x * a_ch)
            torch.testing.assert_close(m(x), x * a_ch * a_sp)
        maps = m.attention_maps(x)
    assert set(maps) == {'channel_gate', 'spatial_gate'}
    assert torch.equal(maps['channel_gate'].values, a_ch.flatten(1))
    assert torch.equal(maps['spatial_gate'].values, a_sp[:, 0])
    assert a_ch.shape == (2, 16, 1, 1) and a_sp.shape == (2, 1, 7, 10)


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(mode='cascade'), 'mode'),
    (dict(form='timm'), 'form'), (dict(reduction=0), 'reduction'),
    (dict(reduction=32), 'reduction'), (dict(bottleneck_ratio=0), 'bottleneck_ratio'),
    (dict(min_channels=0), 'min_channels')])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'PolarizedSelfAttention: {argument}'):
        PolarizedSelfAttention(**dict(dict(in_channels=16), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyPSA', (PolarizedSelfAttention, ), {'_abbr_': 'my_psa'})
    with pytest.raises(ValueError, match='MyPSA: mode'):
        sub(8, mode='cascade')


def test_psa_is_not_registered():
    from cvattn_mm.registry import MODELS
    with pytest.raises(KeyError):
        MODELS.build(dict(type='PSA', in_channels=8))
    assert type(MODELS.build(dict(type='PolarizedSelfAttention', in_channels=8))) is \
        PolarizedSelfAttention
