"""CoT: its equation, parameter count, the spec's check, maps, variants and argument checks."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn_mm.attention.spatial.cot import CoT

from . import contract
from .contract import perturb_parameters, run_contract


@pytest.mark.parametrize('kwargs', [dict(kernel_size=5),
                                    dict(key_groups=8, share_planes=4, embed_reduction=4,
                                         reduction=2, min_channels=8)],
                         ids=['k5', 'options'])
def test_contract_variants(kwargs):
    run_contract(lambda: CoT(32, **kwargs))


@pytest.mark.parametrize('kwargs', [dict(stride=2), dict(out_channels=64, stride=2)],
                         ids=['stride2', 'wider_stride2'])
def test_contract_checks_of_other_output_shapes(kwargs, tmp_path):
    """The contract checks that do not assume an output of the input's shape (CoT has no
    hand-written backward: the fast-backward check is moot)."""
    factory = lambda: CoT(32, **kwargs)  # noqa: E731
    for check in (contract.check_gradients, contract.check_channels_last,
                  contract.check_eval_mode, contract.check_jit_trace):
        check(factory)
    contract.check_layers_called(factory, compiled=False)
    contract.check_onnx(factory, tmp_path)


def test_replaces_convs_with_options():
    contract.check_replaces_conv(CoT, channels=32, share_planes=4, key_groups=2)


# --- the equation, written from the paper with plain tensor ops ----------------------------


def batch_norm(x, bn, train):
    """BN with batch statistics (biased variance) in training, running ones in eval."""
    if train:
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    x_hat = (x - mean[:, None, None]) / (var[:, None, None] + bn.eps).sqrt()
    return x_hat * bn.weight[:, None, None] + bn.bias[:, None, None]


def conv1x1(x, conv):
    y = torch.einsum('oi,nihw->nohw', conv.weight[:, :, 0, 0], x).contiguous()
    return y if conv.bias is None else y + conv.bias[:, None, None]


def cot_reference(m, x, train):
    """CoT (arXiv:2107.12292, eqs. of Sec. 3.2 and the official CotLayer's layout)."""
    k, s, g_key = m.kernel_size, m.share_planes, m.key_groups
    if m.stride == 2:  # 3x3 mean over the zero-padded input (zeros counted), stride 2
        n, c, h, w = x.shape
        cols = F.unfold(x, 3, padding=1, stride=2)
        x = (cols.view(n, c, 9, -1).sum(2) / 9).view(n, c, (h - 1) // 2 + 1, (w - 1) // 2 + 1)
    n, c_in, h, w = x.shape
    c_out = m.out_channels
    # static context: grouped k x k conv, BN, ReLU
    key_conv = m.key_embed[0]
    k1 = F.conv2d(x, key_conv.weight, padding=k // 2, groups=g_key)
    k1 = torch.relu(batch_norm(k1, m.key_embed[1], train))
    # local weights from [x; k1]: 1x1, BN, ReLU, 1x1 (+bias), group norm over G groups
    hidden = torch.relu(batch_norm(conv1x1(torch.cat([x, k1], 1), m.embed[0]), m.embed[1],
                                   train))
    wts = conv1x1(hidden, m.embed[3])
    groups = c_out // s
    gn = m.embed[4]
    grouped = wts.view(n, groups, -1)
    mean, var = grouped.mean(2, keepdim=True), grouped.var(2, unbiased=False, keepdim=True)
    wts = ((grouped - mean) / (var + gn.eps).sqrt()).view_as(wts)
    wts = (wts * gn.weight[:, None, None] + gn.bias[:, None, None]).view(n, groups, k * k, h, w)
    # values and the local aggregation: channel c uses the weights of group c mod G
    v = batch_norm(conv1x1(x, m.conv1x1[0]), m.conv1x1[1], train)
    windows = F.unfold(v, k, padding=(k - 1) // 2).view(n, c_out, k * k, h, w)
    group_of = torch.arange(c_out) % groups
    agg = (windows * wts[:, group_of]).sum(2)
    k2 = F.silu(batch_norm(agg, m.bn, train))
    # fusion: GAP of the sum, 1x1 + BN + ReLU + 1x1, softmax over the pair (2c, 2c + 1)
    z = (k1 + k2).mean((2, 3))[:, :, None, None]
    z = torch.relu(batch_norm(conv1x1(z, m.se[0]), m.se[1], train and n > 1))
    logits = conv1x1(z, m.se[3]).view(n, c_out, 2)
    a = logits.exp() / logits.exp().sum(2, keepdim=True)
    return a[:, :, 0, None, None] * k2 + a[:, :, 1, None, None] * k1


def randomised(module, seed=0):
    module = perturb_parameters(module, scale=0.5, seed=seed).double()
    with torch.no_grad():
        for name, buf in module.named_buffers():
            if name.endswith('running_mean'):
                buf.uniform_(-0.5, 0.5)
            elif name.endswith('running_var'):
                buf.uniform_(0.5, 2.)
    return module


CASES = [(dict(), (7, 9)), (dict(stride=2), (9, 6)), (dict(stride=2), (1, 1)),
         (dict(out_channels=32), (5, 7)), (dict(out_channels=8, stride=2), (6, 5)),
         (dict(kernel_size=5), (6, 7)), (dict(kernel_size=1), (4, 5)),
         (dict(key_groups=2, share_planes=4, embed_reduction=4, reduction=2, min_channels=4),
          (5, 6))]


@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('kwargs,size', CASES)
def test_equation(kwargs, size, train):
    torch.manual_seed(0)
    cot = randomised(CoT(16, **kwargs)).train(train)
    x = torch.randn(3, 16, *size, dtype=torch.float64)
    expected = cot_reference(cot, x, train)
    torch.testing.assert_close(cot(x), expected, rtol=1e-10, atol=1e-10)


def test_aggregation_is_the_official_kernel():
    """``a[n, c, h, w] = sum_{kh, kw} w[n, c mod G, kh k + kw, h, w] x[n, c, h + kh - p,
    w + kw - p]`` over the positions inside the map (the CUDA kernel's loop)."""
    cot = CoT(16, share_planes=4)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(2, 16, 4, 5, dtype=torch.float64, generator=gen)
    w = torch.randn(2, 4, 9, 4, 5, dtype=torch.float64, generator=gen)
    expected = torch.zeros_like(v)
    for h in range(4):
        for x in range(5):
            for kh in range(3):
                for kw in range(3):
                    hi, wi = h + kh - 1, x + kw - 1
                    if 0 <= hi < 4 and 0 <= wi < 5:
                        expected[:, :, h, x] += (w[:, torch.arange(16) % 4, kh * 3 + kw, h, x]
                                                 * v[:, :, hi, wi])
    torch.testing.assert_close(cot.aggregate(v, w), expected, rtol=0, atol=1e-12)


# --- the spec's check and the initialisation -----------------------------------------------


@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
def test_zero_fusion_conv_averages_the_contexts(train):
    """Fusion's last conv zero: a = (1/2, 1/2), y = (k2 + k1) / 2; with the group norm's
    affine zero too, w = 0 and k2 = SiLU(BN(0))."""
    cot = randomised(CoT(16)).train(train)
    with torch.no_grad():
        nn.init.zeros_(cot.se[3].weight)
        nn.init.zeros_(cot.se[3].bias)
    x = torch.randn(2, 16, 6, 7, dtype=torch.float64)
    state = {k: v.clone() for k, v in cot.state_dict().items()}
    key = cot.static_context(x)
    dynamic = cot.dynamic_context(x, cot.local_weights(x, key))
    cot.load_state_dict(state)  # the same running statistics for the forward
    torch.testing.assert_close(cot(x), 0.5 * (dynamic + key), rtol=0, atol=1e-14)
    with torch.no_grad():
        nn.init.zeros_(cot.embed[4].weight)
        nn.init.zeros_(cot.embed[4].bias)
    cot.load_state_dict({**state, 'embed.4.weight': cot.embed[4].weight,
                         'embed.4.bias': cot.embed[4].bias})
    bn = cot.bn
    if train:  # the batch statistics of a zero map: mean 0, variance 0
        zero = bn.bias
    else:
        zero = -bn.running_mean / (bn.running_var + bn.eps).sqrt() * bn.weight + bn.bias
    k1 = torch.relu(batch_norm(F.conv2d(x, cot.key_embed[0].weight, padding=1, groups=4),
                               cot.key_embed[1], train))
    expected = 0.5 * (F.silu(zero)[:, None, None] + k1)
    torch.testing.assert_close(cot(x), expected, rtol=0, atol=1e-14)


def test_no_initialisation_of_its_own():
    """The official CotLayer keeps PyTorch's layer initialisation (GN weight 1, bias 0)."""
    torch.manual_seed(0)
    cot = CoT(32)
    state = {k: v.clone() for k, v in cot.state_dict().items()}
    cot.init_weights()
    assert all(torch.equal(v, state[k]) for k, v in cot.state_dict().items())
    assert torch.equal(cot.embed[4].weight, torch.ones(36))
    assert torch.equal(cot.embed[4].bias, torch.zeros(36))


def test_init_from_conv_is_impossible():
    cot = CoT(16)
    with pytest.raises(ValueError, match='CoT cannot take its weights.*grouped'):
        cot.init_from_conv(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))


def test_output_is_above_the_silu_minimum():
    """The deviation under a host ReLU: y >= min(SiLU) a_0 > -0.2785 (k1 >= 0)."""
    cot = randomised(CoT(16), seed=3).eval()
    with torch.no_grad():
        cot.bn.bias.fill_(-1.)  # many negative SiLU inputs
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        key = cot.static_context(x)
        attn = cot.fusion_weights(cot.dynamic_context(x, cot.local_weights(x, key)), key)
        y = cot(x)
    silu_min = F.silu(torch.tensor(-1.2784645, dtype=torch.float64))
    assert y.min() < 0
    assert (y >= silu_min * attn[..., 0, None, None] - 1e-12).all()
    assert silu_min > -0.2785


# --- parameters, state dict ------------------------------------------------------------------


def parameter_formula(c_in, c_out=None, k=3, g=4, s=8, e=2, r=4, m=32):
    c_out = c_out or c_in
    emb, groups, hid = c_out // e, c_out // s, max(2 * c_out // r, m)
    key = k * k * c_in * c_out // g + 2 * c_out
    embed = (c_in + c_out) * emb + 2 * emb + emb * k * k * groups + k * k * groups \
        + 2 * k * k * groups
    value = c_in * c_out + 2 * c_out
    fusion = c_out * hid + hid + 2 * hid + hid * 2 * c_out + 2 * c_out
    return key + embed + value + 2 * c_out + fusion


@pytest.mark.parametrize('c_in,c_out,kwargs', [
    (64, None, {}), (256, None, {}), (512, None, {}), (2048, None, {}), (32, 64, {}),
    (64, 32, dict(k=5)), (64, None, dict(g=8, s=4, e=4, r=2, m=8))])
def test_parameter_count(c_in, c_out, kwargs):
    names = dict(k='kernel_size', g='key_groups', s='share_planes', e='embed_reduction',
                 r='reduction', m='min_channels')
    cot = CoT(c_in, c_out, **{names[a]: v for a, v in kwargs.items()})
    assert sum(p.numel() for p in cot.parameters()) == parameter_formula(c_in, c_out, **kwargs)


def test_parameter_count_of_the_spec():
    assert sum(p.numel() for p in CoT(256).parameters()) == 417_248


def test_state_dict_keys_are_the_official_ones():
    keys = {k.rsplit('.', 1)[0] for k in CoT(16).state_dict()}
    assert keys == {'key_embed.0', 'key_embed.1', 'embed.0', 'embed.1', 'embed.3', 'embed.4',
                    'conv1x1.0', 'conv1x1.1', 'bn', 'se.0', 'se.1', 'se.3'}


# --- maps --------------------------------------------------------------------------------------


@pytest.mark.parametrize('stride', [1, 2])
def test_methods_rebuild_the_forward_and_the_maps(stride):
    cot = randomised(CoT(16, stride=stride)).float().eval()
    x = torch.randn(2, 16, 7, 10)
    with torch.no_grad():
        pooled = F.avg_pool2d(x, 3, 2, 1) if stride == 2 else x
        key = cot.static_context(pooled)
        weights = cot.local_weights(pooled, key)
        dynamic = cot.dynamic_context(pooled, weights)
        attn = cot.fusion_weights(dynamic, key)
        torch.testing.assert_close(cot(x), attn[..., 0, None, None] * dynamic
                                   + attn[..., 1, None, None] * key)
        torch.testing.assert_close(attn.sum(2), torch.ones(2, 16))
        maps = cot.attention_maps(x)
    assert set(maps) == {'dynamic_context_weight', 'centre_share'}
    assert maps['dynamic_context_weight'].kind == 'channel'
    assert torch.equal(maps['dynamic_context_weight'].values, attn[..., 0])
    share = maps['centre_share']
    assert share.kind == 'spatial' and share.values.shape == (2, *pooled.shape[2:])
    expected = (weights[:, :, 4].abs() / weights.abs().sum(2)).mean(1)
    torch.testing.assert_close(share.values, expected)
    assert share.values.min() >= 0 and share.values.max() <= 1


# --- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize('kwargs,match', [
    (dict(in_channels=0), 'CoT: in_channels must be >= 1'),
    (dict(kernel_size=4), 'CoT: kernel_size must be odd'),
    (dict(stride=3), r'CoT: stride must be one of \(1, 2\), got 3'),
    (dict(groups=2), 'CoT cannot replace a conv with groups=2'),
    (dict(dilation=2), 'CoT cannot replace a conv with dilation=2'),
    (dict(bias=True), 'CoT cannot replace a conv with bias=True'),
    (dict(padding=0), 'CoT keeps the map size.*padding=0'),
    (dict(in_channels=18), 'CoT: in_channels=18 must be divisible by key_groups=4'),
    (dict(out_channels=20), 'CoT: out_channels=20 must be divisible by share_planes=8'),
    (dict(out_channels=18, share_planes=2), 'CoT: out_channels=18 must be divisible by '
     'key_groups=4'),
    (dict(key_groups=0), 'CoT: key_groups must be >= 1'),
    (dict(share_planes=0), 'CoT: share_planes must be >= 1'),
    (dict(embed_reduction=0), 'CoT: embed_reduction must be >= 1'),
    (dict(embed_reduction=32), 'CoT: embed_reduction=32 is larger than out_channels=16'),
    (dict(reduction=0), 'CoT: reduction must be >= 1'),
    (dict(min_channels=0), 'CoT: min_channels must be >= 1')])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CoT(**dict(dict(in_channels=16), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyCoT', (CoT, ), {'_abbr_': 'my_cot'})
    with pytest.raises(ValueError, match='MyCoT: stride'):
        sub(16, stride=4)
    with pytest.raises(ValueError, match='MyCoT cannot take its weights'):
        sub(16).init_from_conv(nn.Conv2d(16, 16, 3, padding=1))
