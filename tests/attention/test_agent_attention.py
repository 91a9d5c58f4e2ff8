"""AgentAttention: its equations, size policy, parameter count, initialisation, maps, checks."""
import math

import pytest
import torch

from cvattn_mm.attention.spatial.agent_attention import AgentAttention, resize_along

from .contract import check_onnx, perturb_parameters, run_contract


@pytest.mark.parametrize('kwargs', [
    dict(num_heads=2, agent_num=9, sr_ratio=2, qkv_bias=True, bias_size=8),
    dict(num_heads=4, agent_num=4, bias_size=7),
], ids=['sr2-qkv_bias', 'agents4-bias7'])
def test_contract_variants(kwargs):
    run_contract(lambda: AgentAttention(16, **kwargs))


def test_onnx_export_with_sr_ratio(tmp_path):
    check_onnx(lambda: AgentAttention(16, num_heads=2, agent_num=9, sr_ratio=2, qkv_bias=True,
                                      bias_size=8), tmp_path)


# --- the equations, written from the paper with plain tensor ops ---------------------------

def linear_matrix(size_in, size_out):
    """(size_out, size_in) weights of 1-D linear interpolation with half-pixel centres
    (output i samples the input at (i + 1/2) size_in / size_out - 1/2, clamped to the ends)."""
    m = torch.zeros(size_out, size_in, dtype=torch.float64)
    for i in range(size_out):
        src = max((i + 0.5) * size_in / size_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), size_in - 1)
        i1 = min(i0 + 1, size_in - 1)
        frac = src - i0
        m[i, i0] += 1 - frac
        m[i, i1] += frac
    return m


def pool_matrix(size_in, size_out):
    """(size_out, size_in) weights of adaptive average pooling: output i averages the inputs
    floor(i size_in / size_out) to ceil((i + 1) size_in / size_out) - 1."""
    m = torch.zeros(size_out, size_in, dtype=torch.float64)
    for i in range(size_out):
        lo, hi = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def agent_reference(x, m):
    """Agent attention of ``x`` (N, C, H, W) with the parameters of ``m``, float64."""
    n, c, h, w = x.shape
    heads, d, a = m.num_heads, c // m.num_heads, m.agent_num
    p = math.isqrt(a)
    tokens = x.reshape(n, c, h * w).transpose(1, 2)  # row-major positions
    q = tokens @ m.q.weight.T + (m.q.bias if m.qkv_bias else 0)
    if m.sr_ratio > 1:
        r = m.sr_ratio
        hp, wp = max(h, r), max(w, r)
        padded = torch.zeros(n, c, hp, wp, dtype=x.dtype)
        padded[:, :, :h, :w] = x
        hk, wk = hp // r, wp // r
        red = torch.zeros(n, c, hk, wk, dtype=x.dtype)
        for i in range(hk):
            for j in range(wk):
                patch = padded[:, :, i * r:(i + 1) * r, j * r:(j + 1) * r]
                red[:, :, i, j] = torch.einsum('ncuv,ocuv->no', patch, m.sr.weight) + m.sr.bias
        t = red.reshape(n, c, hk * wk).transpose(1, 2)
        mu = t.mean(-1, keepdim=True)
        var = ((t - mu) ** 2).mean(-1, keepdim=True)
        kv_in = (t - mu) / torch.sqrt(var + m.norm.eps) * m.norm.weight + m.norm.bias
    else:
        hk, wk = h, w
        kv_in = tokens
    kv = kv_in @ m.kv.weight.T + (m.kv.bias if m.qkv_bias else 0)
    k, v = kv[..., :c], kv[..., c:]
    # agents: q as a map, adaptive-average-pooled to p x p
    q_map = q.transpose(1, 2).reshape(n, c, h, w)
    agents = torch.einsum('ih,nchw,jw->ncij', pool_matrix(h, p), q_map, pool_matrix(w, p))
    agents = agents.reshape(n, c, a).transpose(1, 2)
    # biases: the 7x7 tables bilinearly resized, the row / column tables linearly resized
    an = torch.einsum('ih,eahw,jw->eaij', linear_matrix(7, hk), m.an_bias, linear_matrix(7, wk))
    na = torch.einsum('ih,eahw,jw->eaij', linear_matrix(7, h), m.na_bias, linear_matrix(7, w))
    ah = torch.einsum('ih,eah->eai', linear_matrix(m.ah_bias.shape[2], hk), m.ah_bias)
    aw = torch.einsum('ih,eah->eai', linear_matrix(m.aw_bias.shape[2], wk), m.aw_bias)
    ha = linear_matrix(m.ha_bias.shape[1], h) @ m.ha_bias  # (heads, h, a)
    wa = linear_matrix(m.wa_bias.shape[1], w) @ m.wa_bias  # (heads, w, a)
    b1 = an + ah[..., :, None] + aw[..., None, :]  # (heads, a, hk, wk)
    b2 = na.permute(0, 2, 3, 1) + ha[:, :, None, :] + wa[:, None, :, :]  # (heads, h, w, a)
    out = torch.zeros(n, h * w, c, dtype=x.dtype)
    for e in range(heads):
        sl = slice(e * d, (e + 1) * d)
        logits1 = agents[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d)
        va = torch.softmax(logits1 + b1[e].reshape(a, hk * wk), -1) @ v[..., sl]
        logits2 = q[..., sl] @ agents[..., sl].transpose(1, 2) / math.sqrt(d)
        out[..., sl] = torch.softmax(logits2 + b2[e].reshape(h * w, a), -1) @ va
    v_map = v.transpose(1, 2).reshape(n, c, hk, wk)
    if m.sr_ratio > 1:
        v_map = torch.einsum('ih,nchw,jw->ncij', linear_matrix(hk, h), v_map,
                             linear_matrix(wk, w))
    vp = torch.nn.functional.pad(v_map, (1, 1, 1, 1))
    dw = m.dwc.bias.reshape(1, c, 1, 1).expand(n, c, h, w).clone()
    for i in range(3):
        for j in range(3):
            dw = dw + vp[:, :, i:i + h, j:j + w] * m.dwc.weight[:, 0, i, j].reshape(1, c, 1, 1)
    out = out + dw.reshape(n, c, h * w).transpose(1, 2)
    out = out @ m.proj.weight.T + m.proj.bias
    return out.transpose(1, 2).reshape(n, c, h, w)


def module(c=16, scale=0.5, **kwargs):
    torch.manual_seed(0)
    return perturb_parameters(AgentAttention(c, **kwargs), scale=scale).double()


@pytest.mark.parametrize('size', [(14, 14), (5, 7), (1, 1), (16, 11)])
def test_equation(size):
    m = module(16, num_heads=4)
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    torch.testing.assert_close(m(x), agent_reference(x, m), rtol=0, atol=1e-12)


@pytest.mark.parametrize('size', [(8, 8), (9, 6), (1, 1), (3, 1)])
def test_equation_sr_ratio_and_qkv_bias(size):
    m = module(16, num_heads=2, agent_num=9, sr_ratio=2, qkv_bias=True, bias_size=8)
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    torch.testing.assert_close(m(x), agent_reference(x, m), rtol=0, atol=1e-12)


def test_check_zero_queries_and_biases_give_mean_plus_depthwise():
    """The spec's check: q projection and position biases zero -> the agents are 0, both
    softmaxes uniform, out = Linear(mean_S(v) + DW3x3(v))."""
    for kwargs, size in ((dict(), (6, 5)), (dict(sr_ratio=2, bias_size=8), (8, 8))):
        m = module(16, num_heads=4, **kwargs)
        with torch.no_grad():
            m.q.weight.zero_()
            for t in (m.an_bias, m.na_bias, m.ah_bias, m.aw_bias, m.ha_bias, m.wa_bias):
                t.zero_()
        x = torch.randn(2, 16, *size, dtype=torch.float64)
        q, k, v, key_hw = m.projections(x)
        agents = m.agent_tokens(q, size)
        assert torch.equal(agents, torch.zeros_like(agents))
        agent_attn, query_attn = m.attention(q, k, agents, size, key_hw)
        uniform = torch.full_like(agent_attn, 1 / agent_attn.shape[-1])
        torch.testing.assert_close(agent_attn, uniform)
        torch.testing.assert_close(query_attn, torch.full_like(query_attn, 1 / 49))
        v_map = v.transpose(1, 2).reshape(2, 16, *key_hw)
        if m.sr_ratio > 1:
            v_map = torch.nn.functional.interpolate(v_map, size=size, mode='bilinear')
        expected = m.proj(v.mean(1, keepdim=True) + m.dwc(v_map).flatten(2).transpose(1, 2))
        torch.testing.assert_close(m(x), expected.transpose(1, 2).reshape(x.shape))


# --- the size policy ---------------------------------------------------------------------

def test_default_equals_strict_at_the_bias_size_and_resizes_elsewhere():
    """At H = W = bias_size the default is the official computation ('strict') bit for bit
    and no table is resized; at other sizes the tables are resized (strict raises)."""
    for kwargs in (dict(), dict(sr_ratio=2, qkv_bias=True)):
        torch.manual_seed(0)
        default = perturb_parameters(AgentAttention(16, num_heads=4, **kwargs)).double()
        strict = AgentAttention(16, num_heads=4, size_policy='strict', **kwargs).double()
        strict.load_state_dict(default.state_dict())
        x = torch.randn(2, 16, 14, 14, dtype=torch.float64)
        assert torch.equal(default(x), strict(x))
        key = 14 // default.sr_ratio
        b1, b2 = default.position_biases((14, 14), (key, key))
        h = default.num_heads
        tables = default.ah_bias[..., :, None] + default.aw_bias[..., None, :]
        assert torch.equal(b1, torch.nn.functional.interpolate(
            default.an_bias, size=(key, key), mode='bilinear').reshape(1, h, 49, -1)
            + tables.reshape(1, h, 49, -1))
        tables = default.ha_bias[:, :, None, :] + default.wa_bias[:, None, :, :]
        assert torch.equal(b2, torch.nn.functional.interpolate(
            default.na_bias, size=(14, 14), mode='bilinear').reshape(1, h, 49, -1)
            .transpose(2, 3) + tables.reshape(1, h, -1, 49))
        with pytest.raises(ValueError, match=r"size_policy='strict' was built for 14x14 maps "
                                             r'\(bias_size=14\) but got 13x14'):
            strict(torch.randn(1, 16, 13, 14))
        with pytest.raises(ValueError, match='built for 14x14 maps'):
            strict.attention_maps(torch.randn(1, 16, 7, 7))
        y = default(torch.randn(1, 16, 13, 15, dtype=torch.float64))
        assert y.shape == (1, 16, 13, 15)


def test_resize_along_is_linear_interpolation_of_one_axis():
    table = torch.randn(3, 14, 5, dtype=torch.float64)
    for size in (1, 6, 14, 20):
        out = resize_along(table, 1, size)
        assert out.shape == (3, size, 5)
        torch.testing.assert_close(out, linear_matrix(14, size) @ table)
    assert resize_along(table, 1, 14) is table


@pytest.mark.parametrize('size', [(1, 1), (7, 7), (3, 16), (2, 5)])
def test_maps_smaller_than_the_agent_grid_are_finite(size):
    """Adaptive pooling repeats positions when the map is smaller than the 7x7 agent grid:
    no empty window, no NaN (float32, forward and backward)."""
    torch.manual_seed(0)
    m = perturb_parameters(AgentAttention(16, num_heads=4))
    x = torch.randn(2, 16, *size, requires_grad=True)
    y = m(x)
    y.square().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    if size == (1, 1):
        q = m.projections(x)[0]
        agents = m.agent_tokens(q, size)
        assert torch.equal(agents, q.expand(2, 49, 16))


# --- parameters, initialisation, layers ---------------------------------------------------

def expected_parameters(c, h=8, n=49, r=1, qkv_bias=False, s=14):
    count = 4 * c * c + c + 10 * c + 2 * h * n * 49 + 2 * h * n * (s + s // r)
    if qkv_bias:
        count += 3 * c
    if r > 1:
        count += r * r * c * c + c + 2 * c
    return count


@pytest.mark.parametrize('c', [8, 64, 256])
def test_parameter_count(c):
    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(AgentAttention(c)) == expected_parameters(c)
    assert count(AgentAttention(c, num_heads=4, agent_num=16, sr_ratio=2, qkv_bias=True,
                                bias_size=7)) == expected_parameters(c, 4, 16, 2, True, 7)
    assert count(AgentAttention(c, num_heads=1, agent_num=9, sr_ratio=4, bias_size=28)) == \
        expected_parameters(c, 1, 9, 4, False, 28)
    if c == 256:
        assert count(AgentAttention(c)) == 325_328
        assert count(AgentAttention(c, bias_size=56)) == 391_184  # the spec's 56x56 figure


def test_layers_and_state_dict_are_the_official():
    m = AgentAttention(16, num_heads=4, sr_ratio=2, bias_size=8)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        'q.weight': (16, 16), 'kv.weight': (32, 16), 'proj.weight': (16, 16),
        'proj.bias': (16, ), 'sr.weight': (16, 16, 2, 2), 'sr.bias': (16, ),
        'norm.weight': (16, ), 'norm.bias': (16, ), 'dwc.weight': (16, 1, 3, 3),
        'dwc.bias': (16, ), 'an_bias': (4, 49, 7, 7), 'na_bias': (4, 49, 7, 7),
        'ah_bias': (4, 49, 4), 'aw_bias': (4, 49, 4),
        'ha_bias': (4, 8, 49), 'wa_bias': (4, 8, 49)}
    assert m.sr.stride == (2, 2) and m.dwc.groups == 16 and m.dwc.padding == (1, 1)
    assert m.scale == 4 ** -0.5
    assert AgentAttention.paper_position == 'own_block'
    assert AgentAttention.fallback_position == 'late_stages'


def test_loads_the_official_five_dimensional_tables():
    """The official state dict stores the row / column tables with unit axes
    (1, h, n, s_k, 1), (1, h, n, 1, s_k), (1, h, s, 1, n), (1, h, 1, s, n)."""
    m = AgentAttention(16, num_heads=4, sr_ratio=2, bias_size=8)
    official = {k: v.clone() for k, v in m.state_dict().items()}
    new = {'ah_bias': torch.randn(1, 4, 49, 4, 1), 'aw_bias': torch.randn(1, 4, 49, 1, 4),
           'ha_bias': torch.randn(1, 4, 8, 1, 49), 'wa_bias': torch.randn(1, 4, 1, 8, 49)}
    official.update(new)
    m.load_state_dict(official)
    for name, value in new.items():
        assert torch.equal(getattr(m, name).detach(), value.reshape(getattr(m, name).shape))
    torch.testing.assert_close(m.ah_bias[1, 2, 3], new['ah_bias'][0, 1, 2, 3, 0])
    torch.testing.assert_close(m.wa_bias[1, 5, 7], new['wa_bias'][0, 1, 0, 5, 7])
    with pytest.raises(RuntimeError, match='size mismatch for ha_bias'):
        m.load_state_dict({**official, 'ha_bias': torch.randn(1, 4, 7, 1, 49)})


def test_initialisation_is_agent_pvt_s():
    torch.manual_seed(0)
    m = AgentAttention(64, sr_ratio=2, qkv_bias=True)
    m.init_weights()
    for layer in (m.q, m.kv, m.proj):
        assert abs(layer.weight.mean().item()) < 0.002  # truncated at +-2 (absolute): a no-op
        assert layer.weight.std().item() == pytest.approx(0.02, rel=0.15)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    assert torch.equal(m.norm.weight, torch.ones(64)) and torch.equal(m.norm.bias, torch.zeros(64))
    tables = torch.cat([t.flatten() for t in (m.an_bias, m.na_bias, m.ah_bias, m.aw_bias,
                                              m.ha_bias, m.wa_bias)])
    assert abs(tables.mean().item()) < 0.002 and tables.std().item() == pytest.approx(0.02, rel=0.1)
    bound = 1 / 3  # PyTorch's default for the depthwise 3x3: U(-1/sqrt(9), 1/sqrt(9))
    assert m.dwc.weight.abs().max() <= bound and m.dwc.weight.std() > 0.5 * bound / math.sqrt(3)


def test_forward_rebuilt_from_the_map_methods():
    for kwargs in (dict(), dict(sr_ratio=2, bias_size=8)):
        m = module(16, num_heads=4, **kwargs)
        x = torch.randn(2, 16, 6, 9, dtype=torch.float64)
        q, k, v, key_hw = m.projections(x)
        agent_attn, query_attn = m.attention(q, k, m.agent_tokens(q, (6, 9)), (6, 9), key_hw)
        vh = v.reshape(2, -1, 4, 4).transpose(1, 2)
        out = (query_attn @ (agent_attn @ vh)).transpose(1, 2).reshape(2, 54, 16)
        v_map = v.transpose(1, 2).reshape(2, 16, *key_hw)
        if m.sr_ratio > 1:
            v_map = torch.nn.functional.interpolate(v_map, size=(6, 9), mode='bilinear')
        out = m.proj(out + m.dwc(v_map).flatten(2).transpose(1, 2))
        torch.testing.assert_close(m(x), out.transpose(1, 2).reshape(x.shape))
        maps = m.attention_maps(x)
        weights = (query_attn @ agent_attn).mean(1)
        assert maps['centre_query'].values.shape == (2, *key_hw)
        torch.testing.assert_close(maps['centre_query'].values,
                                   weights[:, 3 * 9 + 4].reshape(2, *key_hw))
        torch.testing.assert_close(maps['mean_over_queries'].values,
                                   weights.mean(1).reshape(2, *key_hw))
        for amap in maps.values():
            torch.testing.assert_close(amap.values.sum((1, 2)), torch.ones(2, dtype=x.dtype))


def test_softmax_in_float32_under_bfloat16():
    m = perturb_parameters(AgentAttention(16, num_heads=4)).bfloat16()
    x = torch.randn(1, 16, 5, 5, dtype=torch.bfloat16)
    q, k, _, key_hw = m.projections(x)
    agent_attn, query_attn = m.attention(q, k, m.agent_tokens(q, (5, 5)), (5, 5), key_hw)
    assert agent_attn.dtype == query_attn.dtype == torch.float32
    assert m(x).dtype == torch.bfloat16


# --- errors -------------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs,match', [
    (dict(in_channels=0), 'AgentAttention: in_channels must be >= 1'),
    (dict(in_channels=12), 'AgentAttention: in_channels=12 must be divisible by num_heads=8'),
    (dict(in_channels=16, num_heads=0), 'AgentAttention: num_heads must be >= 1'),
    (dict(in_channels=16, agent_num=0), 'AgentAttention: agent_num must be >= 1'),
    (dict(in_channels=16, agent_num=50), 'AgentAttention: agent_num must be a perfect square'),
    (dict(in_channels=16, sr_ratio=0), 'AgentAttention: sr_ratio must be >= 1'),
    (dict(in_channels=16, sr_ratio=1.5), 'AgentAttention: sr_ratio must be an integer'),
    (dict(in_channels=16, qkv_bias=1), 'AgentAttention: qkv_bias must be True or False'),
    (dict(in_channels=16, bias_size=0), 'AgentAttention: bias_size must be >= 1'),
    (dict(in_channels=16, sr_ratio=4, bias_size=3), 'AgentAttention: bias_size must be >= 4'),
    (dict(in_channels=16, size_policy='pool'), 'AgentAttention: size_policy must be one of'),
])
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AgentAttention(**kwargs)


def test_errors_name_the_subclass():
    class MyAgent(AgentAttention):
        pass

    with pytest.raises(ValueError, match='MyAgent: agent_num must be a perfect square'):
        MyAgent(16, agent_num=8)
    with pytest.raises(ValueError, match='MyAgent was built for in_channels=16'):
        MyAgent(16)(torch.randn(1, 8, 5, 5))
    with pytest.raises(ValueError, match="MyAgent with size_policy='strict' was built for 7x7"):
        MyAgent(16, bias_size=7, size_policy='strict')(torch.randn(1, 16, 5, 5))
