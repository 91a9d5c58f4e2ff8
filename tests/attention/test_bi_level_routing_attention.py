"""BiLevelRoutingAttention: its equation (region routing, then token attention over the routed
regions, plus lepe), the size policies, the full-attention check, parameters, maps, errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.spatial.bi_level_routing_attention import BiLevelRoutingAttention

from .contract import perturb_parameters, run_contract


@pytest.mark.parametrize('kwargs', [
    dict(n_win=3, topk=2, size_policy='zero_pad', soft_routing=True, diff_routing=True,
         param_routing=True),
    dict(n_win=1, topk=1, size_policy='strict'),
    dict(n_win=2, topk=4, qk_dim=8, qk_scale=0.5, side_dwconv=0, param_attention='qkv',
         soft_routing=True),
], ids=['zero_pad_soft_diff_param_routing', 'strict', 'qk_dim_no_lepe_no_wo'])
def test_contract_variants(kwargs):
    run_contract(lambda: BiLevelRoutingAttention(16, num_heads=2, **kwargs))


def bra_reference(x, m, policy='mask'):
    """BRA written pixel by pixel from the paper (float64): region r(i, j) = (i // rh) n +
    j // rw with rh = ceil(H / n), rw = ceil(W / n); region descriptors = the means of q and
    k over the region's pixels in the map; the top-k regions (among the regions that hold
    pixels) by (q̄ s) k̄ᵀ; each query attends per head to every pixel of those regions;
    plus lepe(v); output linear. ``policy='zero_pad'`` pads x with zeros to multiples of n
    first and crops at the end (the official auto_pad)."""
    n_win, c, cq, heads, s = m.n_win, m.in_channels, m.qk_dim, m.num_heads, m.scale
    h0, w0 = x.shape[-2:]
    if policy == 'zero_pad':
        x = F.pad(x, (0, (-w0) % n_win, 0, (-h0) % n_win))
    n, _, h, w = x.shape
    rh, rw = math.ceil(h / n_win), math.ceil(w / n_win)
    wq = m.qkv.weight
    t = torch.einsum('oc,nchw->nhwo', wq, x) + m.qkv.bias  # (N, H, W, 2 Cq + C)
    q, k, v = t[..., :cq], t[..., cq:2 * cq], t[..., 2 * cq:]
    rows = torch.arange(h)[:, None] // rh * n_win + torch.arange(w)[None, :] // rw
    region = rows.reshape(-1)  # region of each pixel, row-major pixels
    q, k, v = q.reshape(n, h * w, cq), k.reshape(n, h * w, cq), v.reshape(n, h * w, c)
    present = [r for r in range(n_win ** 2) if (region == r).any()]
    out = torch.zeros(n, h * w, c, dtype=x.dtype)
    for b in range(n):
        q_bar = torch.stack([q[b, region == r].mean(0) for r in present])
        k_bar = torch.stack([k[b, region == r].mean(0) for r in present])
        if m.router_emb is not None:
            q_bar = q_bar @ m.router_emb.weight.T + m.router_emb.bias
            k_bar = k_bar @ m.router_emb.weight.T + m.router_emb.bias
        logits = (q_bar * s) @ k_bar.T  # (present, present)
        for iq, r in enumerate(present):
            kept = torch.topk(logits[iq], min(m.topk, len(present))).indices
            weight = torch.softmax(logits[iq, kept], 0)
            keys = torch.cat([torch.nonzero(region == present[j])[:, 0] for j in kept.tolist()])
            scale_kv = torch.cat([weight[i].expand(int((region == present[j]).sum()))
                                  for i, j in enumerate(kept.tolist())])
            if not m.soft_routing:
                scale_kv = torch.ones_like(scale_kv)
            kk, vv = k[b, keys] * scale_kv[:, None], v[b, keys] * scale_kv[:, None]
            queries = torch.nonzero(region == r)[:, 0]
            dq, dv = cq // heads, c // heads
            for hd in range(heads):
                a = (q[b, queries, hd * dq:(hd + 1) * dq] * s) @ kk[:, hd * dq:(hd + 1) * dq].T
                out[b, queries, hd * dv:(hd + 1) * dv] = torch.softmax(a, 1) @ vv[
                    :, hd * dv:(hd + 1) * dv]
    out = out.reshape(n, h, w, c)
    if m.lepe is not None:
        lepe = F.conv2d(v.reshape(n, h, w, c).permute(0, 3, 1, 2), m.lepe.weight, m.lepe.bias,
                        padding=m.side_dwconv // 2, groups=c)
        out = out + lepe.permute(0, 2, 3, 1)
    if m.wo is not None:
        out = out @ m.wo.weight.T + m.wo.bias
    return out[:, :h0, :w0].permute(0, 3, 1, 2)


def build(c=16, seed=0, **kwargs):
    torch.manual_seed(seed)
    m = BiLevelRoutingAttention(c, **kwargs)
    return perturb_parameters(m, scale=0.3, seed=seed).double()


@pytest.mark.parametrize('size', [(1, 1), (7, 7), (13, 17), (8, 8)])
def test_equation_default(size):
    m = build(num_heads=2)
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    torch.testing.assert_close(m(x), bra_reference(x, m), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('kwargs,size', [
    (dict(n_win=3, topk=2, side_dwconv=5), (9, 6)),
    (dict(n_win=3, topk=9, qk_dim=8, qk_scale=0.4, param_attention='qkv', side_dwconv=0),
     (5, 7)),
    (dict(n_win=2, topk=2, soft_routing=True), (6, 5)),
    (dict(n_win=2, topk=3, soft_routing=True, diff_routing=True, param_routing=True), (4, 6)),
    (dict(n_win=4, topk=3, size_policy='zero_pad'), (5, 7)),
    (dict(n_win=4, topk=16, size_policy='zero_pad'), (1, 1)),
    (dict(n_win=3, topk=2, size_policy='strict'), (6, 9)),
])
def test_equation_variants(kwargs, size):
    m = build(num_heads=4, **kwargs)
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    policy = kwargs.get('size_policy', 'mask')
    torch.testing.assert_close(m(x), bra_reference(x, m, policy), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('size', [(5, 7), (1, 1), (4, 4)])
def test_check_one_region_is_full_multi_head_attention_plus_lepe(size):
    """The spec's check: n_win = 1, topk = 1 is full multi-head attention with scale C^-0.5
    (over the whole C, not per head) plus lepe, then W_o."""
    c, heads = 16, 4
    m = build(c, num_heads=heads, n_win=1, topk=1)
    x = torch.randn(2, c, *size, dtype=torch.float64)
    n, _, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)  # (N, L, C)
    q, k, v = (tokens @ m.qkv.weight.T + m.qkv.bias).split([c, c, c], -1)
    split = [t.reshape(n, h * w, heads, c // heads).transpose(1, 2) for t in (q, k, v)]
    attn = F.scaled_dot_product_attention(*split, scale=c ** -0.5)
    attn = attn.transpose(1, 2).reshape(n, h * w, c)
    lepe = F.conv2d(v.transpose(1, 2).reshape(n, c, h, w), m.lepe.weight, m.lepe.bias,
                    padding=1, groups=c).flatten(2).transpose(1, 2)
    expected = (attn + lepe) @ m.wo.weight.T + m.wo.bias
    torch.testing.assert_close(m(x), expected.transpose(1, 2).reshape(n, c, h, w))


def test_one_pixel_map_is_the_value_plus_lepe():
    """On a 1x1 map (n_win 7: 48 padding-only regions, topk 4 > 1 region with a pixel) the
    only key is the pixel itself: out = W_o(v + lepe(v)), finite, gradients finite."""
    m = build(64, num_heads=8)
    x = torch.randn(3, 64, 1, 1, dtype=torch.float64, requires_grad=True)
    y = m(x)
    v = x[:, :, 0, 0] @ m.qkv.weight[128:].T + m.qkv.bias[128:]
    lepe = v * m.lepe.weight[:, 0, 1, 1] + m.lepe.bias
    torch.testing.assert_close(y[:, :, 0, 0], (v + lepe) @ m.wo.weight.T + m.wo.bias)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize('size', [(14, 7), (7, 7)])
def test_policies_agree_on_divisible_sizes(size):
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    outs = []
    for policy in ('mask', 'zero_pad', 'strict'):
        m = build(num_heads=2, size_policy=policy)
        outs.append(m(x))
        assert m.region_grid(size).valid is None
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.testing.assert_close(outs[0], outs[2], rtol=0, atol=0)


def test_mask_does_not_depend_on_the_padding_but_zero_pad_does():
    """'mask': padded keys get weight 0 (every query's weights sum to 1 over the map);
    'zero_pad' (official auto_pad): padded keys take a share of the softmax."""
    x = torch.randn(2, 16, 13, 17, dtype=torch.float64)
    masked = build(num_heads=2)
    dense = masked.dense_weights(x)
    torch.testing.assert_close(dense.sum(-1), torch.ones(2, 13 * 17, dtype=torch.float64))
    zero_pad = build(num_heads=2, size_policy='zero_pad')
    assert (zero_pad.dense_weights(x).sum(-1) < 1 - 1e-6).any()  # padded keys took a share
    assert not torch.allclose(masked(x), zero_pad(x))


def test_padding_only_regions_are_never_routed_to():
    m = build(num_heads=2)  # n_win 7
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)  # padded to 14x14, regions 2x2
    att = m.routed_attention(*m.project(x))
    grid = att.grid
    assert grid.padded == (14, 14) and grid.region == (2, 2) and grid.has_empty_regions
    holding = grid.valid.any(1)
    assert int(holding.sum()) == 16  # 4 x 4 regions hold pixels
    assert holding[att.index].all()  # 16 >= topk: only regions with pixels are routed to
    # a map with fewer regions holding pixels than topk: the extra routed regions are masked
    m1 = build(num_heads=2, n_win=7, topk=49)
    x1 = torch.randn(1, 16, 3, 2, dtype=torch.float64)
    y = m1(x1)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, bra_reference(x1, m1), rtol=1e-10, atol=1e-10)


def test_strict_raises_naming_n_win():
    m = BiLevelRoutingAttention(16, num_heads=2, size_policy='strict')
    with pytest.raises(ValueError, match=r"size_policy='strict' needs H and W divisible by "
                                         r'n_win=7, got 8x7'):
        m(torch.randn(1, 16, 8, 7))
    assert m(torch.randn(1, 16, 14, 7)).shape == (1, 16, 14, 7)


def expected_params(c, k=3, cq=None, qkvo=True, param_routing=False):
    cq = c if cq is None else cq
    total = c * (2 * cq + c) + 2 * cq + c + (c * (k * k + 1) if k else 0)
    total += (c * c + c) if qkvo else 0
    total += (cq * cq + cq) if param_routing else 0
    return total


@pytest.mark.parametrize('c', [8, 16, 64, 256])
def test_parameter_count(c):
    def count(**kw):
        return sum(p.numel() for p in BiLevelRoutingAttention(c, **kw).parameters())

    assert count() == 4 * c * c + 4 * c + c * 10 == expected_params(c)
    assert count(side_dwconv=5) == 4 * c * c + 4 * c + c * 26
    assert count(num_heads=4, qk_dim=c // 2, side_dwconv=0, param_attention='qkv') == \
        expected_params(c, 0, c // 2, False)
    assert count(soft_routing=True, diff_routing=True, param_routing=True) == \
        expected_params(c, param_routing=True)
    if c == 256:
        assert count() == 265_728
        assert count(side_dwconv=5) == 269_824


def test_initialisation_and_state_dict_keys():
    torch.manual_seed(0)
    m = BiLevelRoutingAttention(64, soft_routing=True, diff_routing=True, param_routing=True)
    m.init_weights()
    for layer in (m.qkv, m.wo, m.router_emb):
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
        assert layer.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert layer.weight.abs().max().item() <= 2.0
    bound = 1 / math.sqrt(9)  # PyTorch's default conv init: kaiming_uniform(a=sqrt(5))
    assert m.lepe.weight.abs().max().item() <= bound and m.lepe.weight.std().item() > 0.1
    assert set(BiLevelRoutingAttention(8, num_heads=2).state_dict()) == {
        'qkv.weight', 'qkv.bias', 'wo.weight', 'wo.bias', 'lepe.weight', 'lepe.bias'}
    assert m.lepe.groups == 64 and m.lepe.kernel_size == (3, 3) and m.lepe.padding == (1, 1)
    assert m.scale == 64 ** -0.5  # over the whole C_qk, not per head
    assert BiLevelRoutingAttention.paper_position == 'own_block'
    assert BiLevelRoutingAttention.fallback_position == 'late_stages'


def test_routing_is_detached_unless_diff_routing():
    for diff in (False, True):
        m = build(num_heads=2, n_win=2, topk=2, soft_routing=True, diff_routing=diff)
        x = torch.randn(1, 16, 4, 4, dtype=torch.float64)
        xp, _ = m.project(x)
        grid = m.region_grid((4, 4))
        q_bar, k_bar = m.region_descriptors(xp, grid)
        weights, _ = m.route(q_bar, k_bar, grid)
        assert weights.requires_grad == diff


def test_forward_rebuilt_from_the_map_methods():
    m = build(num_heads=2, n_win=3, topk=2)
    x = torch.randn(2, 16, 7, 5, dtype=torch.float64)
    xp, qkv = m.project(x)
    att = m.routed_attention(xp, qkv)
    out = att.weights @ att.values  # (N, p2, heads, s, C / heads)
    n, p2, heads, s, d = out.shape
    (hp, wp), (rh, rw) = att.grid.padded, att.grid.region
    out = out.permute(0, 1, 3, 2, 4).reshape(n, 3, 3, rh, rw, heads * d)
    out = out.permute(0, 1, 3, 2, 4, 5).reshape(n, hp, wp, -1)[:, :7, :5]
    out = m.wo(out + m.local_context(qkv)).permute(0, 3, 1, 2)
    torch.testing.assert_close(m(x), out)
    maps = m.attention_maps(x)
    dense = m.dense_weights(x)
    torch.testing.assert_close(maps['centre_query'].values, dense[:, 3 * 5 + 2].reshape(2, 7, 5))
    torch.testing.assert_close(maps['mean_over_queries'].values, dense.mean(1).reshape(2, 7, 5))
    torch.testing.assert_close(dense.sum(-1), torch.ones(2, 35, dtype=torch.float64))
    # the dense rows are the token softmax: out = W_o(dense V (mean over heads when 1 head))
    m1 = build(num_heads=1, n_win=3, topk=2)
    xp, qkv = m1.project(x)
    v = qkv[..., 32:].reshape(2, 35, 16)
    expected = m1.wo((m1.dense_weights(x) @ v).reshape(2, 7, 5, 16)
                     + m1.local_context(qkv)).permute(0, 3, 1, 2)
    torch.testing.assert_close(m1(x), expected)
    # the routed regions are the only nonzero keys: topk 2 regions of 3x2 pixels at most
    assert int((dense[0] > 0).sum(-1).max()) <= 2 * 6


@pytest.mark.parametrize('kwargs,match', [
    (dict(in_channels=0), 'BiLevelRoutingAttention: in_channels must be >= 1'),
    (dict(in_channels=12), r'in_channels=12 must be divisible by num_heads=8'),
    (dict(in_channels=16, qk_dim=12), r'qk_dim=12 must be divisible by num_heads=8'),
    (dict(in_channels=16, num_heads=0), 'num_heads must be >= 1'),
    (dict(in_channels=16, n_win=0), 'n_win must be >= 1'),
    (dict(in_channels=16, topk=0), 'topk must be >= 1 and <= 49'),
    (dict(in_channels=16, n_win=2, topk=5), 'topk must be >= 1 and <= 4, got 5'),
    (dict(in_channels=16, side_dwconv=4), 'side_dwconv must be odd'),
    (dict(in_channels=16, side_dwconv=-1), 'side_dwconv must be >= 0'),
    (dict(in_channels=16, qk_scale=-1.0), 'qk_scale must be finite and > 0'),
    (dict(in_channels=16, param_attention='qkvo2'), 'param_attention must be one of'),
    (dict(in_channels=16, diff_routing=True), 'diff_routing=True needs soft_routing=True'),
    (dict(in_channels=16, soft_routing=True, param_routing=True),
     'param_routing=True needs diff_routing=True'),
    (dict(in_channels=16, soft_routing=1), 'soft_routing must be a bool'),
    (dict(in_channels=16, size_policy='pool'), 'size_policy must be one of'),
])
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BiLevelRoutingAttention(**kwargs)


def test_errors_name_the_subclass():
    class MyBRA(BiLevelRoutingAttention):
        pass

    with pytest.raises(ValueError, match='MyBRA: topk must be'):
        MyBRA(16, topk=50)
    with pytest.raises(ValueError, match='MyBRA was built for in_channels=16'):
        MyBRA(16)(torch.randn(1, 8, 5, 5))
    with pytest.raises(ValueError, match="MyBRA with size_policy='strict'"):
        MyBRA(16, size_policy='strict')(torch.randn(1, 16, 5, 5))


def test_reference_pair_says_why_strict_sizes_are_incomparable():
    from cvattn_mm.analysis.peers import build_pair
    from cvattn_mm.analysis.references import peers_of

    (peer, ) = peers_of('BiLevelRoutingAttention')
    ours, _ = build_pair(peer, 16, num_heads=2, size_policy='strict')
    assert 'divisible by n_win=7' in peer.incomparable(ours, (1, 16, 8, 7))
    assert peer.incomparable(ours, (1, 16, 14, 7)) is None
    assert peer.incomparable(build_pair(peer, 16, num_heads=2)[0], (1, 16, 8, 7)) is None
