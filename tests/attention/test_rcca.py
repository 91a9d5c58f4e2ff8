"""RCCA: its equation, recurrence, initialisation, parameter count, maps, mmcv's
CrissCrossAttention as a peer and argument checks."""
import pytest
import torch
from mmcv.ops import CrissCrossAttention

from cvattn_mm.attention.spatial.rcca import RCCA

from .contract import perturb_parameters, run_contract


@pytest.mark.parametrize('kwargs', [dict(recurrence=1), dict(recurrence=3),
                                    dict(reduction=4, min_channels=4)],
                         ids=['r1', 'r3', 'reduction'])
def test_contract_variants(kwargs):
    run_contract(lambda: RCCA(32, **kwargs))


def random_rcca(channels=16, scale=0.3, seed=0, **kwargs):
    return perturb_parameters(RCCA(channels, **kwargs), scale=scale, seed=seed).double()


def criss_cross_reference(x, wq, bq, wk, bk, wv, bv, gamma):
    """One pass from the paper, position by position: the query at (i, j) takes a softmax
    over the keys of its column (without (i, j)) and of its row (with (i, j))."""
    n, c, h, w = x.shape

    def conv(weight, bias):
        return torch.einsum('oc,nchw->nohw', weight[:, :, 0, 0], x) + bias[None, :, None, None]

    q, k, v = conv(wq, bq), conv(wk, bk), conv(wv, bv)
    out = torch.zeros_like(x)
    for i in range(h):
        for j in range(w):
            column = [(a, j) for a in range(h) if a != i]
            row = [(i, b) for b in range(w)]
            keys = column + row
            logits = torch.stack([(q[:, :, i, j] * k[:, :, a, b]).sum(1) for a, b in keys], 1)
            weights = torch.softmax(logits, 1)  # (N, H - 1 + W)
            values = torch.stack([v[:, :, a, b] for a, b in keys], 2)  # (N, C, H - 1 + W)
            out[:, :, i, j] = (values * weights[:, None]).sum(2)
    return gamma * out + x


@pytest.mark.parametrize('recurrence,size', [(1, (4, 5)), (2, (4, 5)), (3, (3, 4)),
                                             (2, (1, 4)), (2, (5, 1)), (2, (1, 1))])
def test_equation(recurrence, size):
    rcca = random_rcca(recurrence=recurrence)
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    expected = x
    for _ in range(recurrence):  # the same weights at every pass
        expected = criss_cross_reference(
            expected, rcca.query_conv.weight, rcca.query_conv.bias, rcca.key_conv.weight,
            rcca.key_conv.bias, rcca.value_conv.weight, rcca.value_conv.bias, rcca.gamma)
    with torch.no_grad():
        torch.testing.assert_close(rcca(x), expected)


def mmcv_copy(rcca):
    cca = CrissCrossAttention(rcca.in_channels).to(rcca.gamma.dtype)
    state = {k: v for k, v in rcca.state_dict().items() if k != 'gamma'}
    cca.load_state_dict(dict(state, **{'gamma.scale': rcca.gamma}), strict=True)
    return cca


@pytest.mark.parametrize('recurrence', [1, 2])
def test_equals_mmcv_criss_cross_attention_applied_r_times(recurrence):
    """The spec's check: R = 1 is mmcv's CrissCrossAttention with copied weights (gamma !=
    0), R = 2 applies it twice."""
    rcca = random_rcca(64, recurrence=recurrence)
    assert rcca.gamma.abs().item() > 0.01
    cca = mmcv_copy(rcca)
    x = torch.randn(2, 64, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        expected = x
        for _ in range(recurrence):
            expected = cca(expected)
        torch.testing.assert_close(rcca(x), expected, rtol=1e-12, atol=1e-12)


def test_zero_gamma_is_the_identity():
    x = torch.randn(2, 16, 6, 5)
    for rcca in (RCCA(16), perturb_parameters(RCCA(16, recurrence=3))):
        rcca.init_weights()
        assert rcca.gamma.item() == 0
        with torch.no_grad():
            assert torch.equal(rcca(x), x)


@pytest.mark.parametrize('channels', [8, 12, 64, 256, 2048])
def test_parameter_count(channels):
    d = channels // 8
    expected = 2 * (channels * d + d) + channels * channels + channels + 1
    for recurrence in (1, 2):
        assert sum(p.numel() for p in RCCA(channels, recurrence).parameters()) == expected
    if channels % 8 == 0:
        assert expected == 1.25 * channels**2 + 1.25 * channels + 1
    if channels == 256:
        assert expected == 82241


def test_min_channels_floor():
    rcca = RCCA(4, reduction=8, min_channels=2)
    assert rcca.query_conv.out_channels == rcca.key_conv.out_channels == 2


def test_state_dict_keys_are_the_official_ones():
    assert sorted(RCCA(16).state_dict()) == [
        'gamma', 'key_conv.bias', 'key_conv.weight', 'query_conv.bias', 'query_conv.weight',
        'value_conv.bias', 'value_conv.weight']
    assert RCCA(16).gamma.shape == (1, )


def test_forward_rebuilt_from_the_attention_weights():
    rcca = random_rcca(recurrence=2)
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        y = x
        for _ in range(2):
            attn_h, attn_w = rcca.attention(y)
            v = rcca.value_conv(y)
            out = torch.einsum('ncgw,nhwg->nchw', v, attn_h) + torch.einsum(
                'nchv,nhwv->nchw', v, attn_w)
            y = rcca.gamma * out + y
        torch.testing.assert_close(rcca(x), y)
        # a softmax over H + W logits, zero on the column's centre
        total = attn_h.sum(3) + attn_w.sum(3)
        torch.testing.assert_close(total, torch.ones_like(total))
        assert torch.equal(attn_h.diagonal(dim1=1, dim2=3), torch.zeros(2, 6, 5,
                                                                       dtype=torch.float64))


def test_softmax_in_float32_for_half_inputs():
    rcca = perturb_parameters(RCCA(16)).bfloat16()
    x = torch.randn(2, 16, 5, 6, dtype=torch.bfloat16)
    attn_h, attn_w = rcca.attention(x)
    assert attn_h.dtype == attn_w.dtype == torch.float32
    assert rcca(x).dtype == torch.bfloat16


def dense(attn_h, attn_w):
    """The (N, L, L) matrix of a pass's weights (query, key) on the flattened grid."""
    n, h, w, _ = attn_h.shape
    mat = torch.zeros(n, h, w, h, w, dtype=attn_h.dtype)
    for i in range(h):
        for j in range(w):
            mat[:, i, j, :, j] += attn_h[:, i, j]
            mat[:, i, j, i, :] += attn_w[:, i, j]
    return mat.reshape(n, h * w, h * w)


@pytest.mark.parametrize('recurrence', [1, 2, 3])
def test_maps(recurrence):
    rcca = random_rcca(recurrence=recurrence, scale=0.5)
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        maps = rcca.attention_maps(x)
        mats, y = [], x
        for _ in range(recurrence):
            mats.append(dense(*rcca.attention(y)))
            y = rcca.criss_cross(y)
    names = [f'{what}_pass{t}' for t in range(1, recurrence + 1)
             for what in ('centre_query', 'mean_over_queries')]
    assert list(maps) == names + (['centre_query_all_passes'] if recurrence > 1 else [])
    centre = 2 * 7 + 3
    for t, mat in enumerate(mats, 1):
        torch.testing.assert_close(maps[f'centre_query_pass{t}'].values.flatten(1),
                                   mat[:, centre])
        torch.testing.assert_close(maps[f'mean_over_queries_pass{t}'].values.flatten(1),
                                   mat.mean(1))
    if recurrence > 1:
        composed = mats[-1][:, centre]
        for mat in reversed(mats[:-1]):
            composed = torch.einsum('nl,nlk->nk', composed, mat)
        values = maps['centre_query_all_passes'].values
        torch.testing.assert_close(values.flatten(1), composed)
        assert (values > 0).all()  # with R >= 2 the centre reaches every position
    for m in maps.values():
        assert m.kind == 'weights' and m.values.shape == (2, 5, 7)
        assert m.values.min() >= 0 and m.values.max() <= 1
        torch.testing.assert_close(m.values.sum((1, 2)), torch.ones(2, dtype=torch.float64))


def test_one_pass_reaches_only_the_criss_cross():
    rcca = random_rcca(recurrence=1)
    with torch.no_grad():
        values = rcca.attention_maps(torch.randn(1, 16, 5, 7,
                                                 dtype=torch.float64))['centre_query_pass1'].values
    outside = torch.ones(5, 7, dtype=torch.bool)
    outside[2, :] = False
    outside[:, 3] = False
    assert torch.equal(values[0][outside], torch.zeros(int(outside.sum()), dtype=torch.float64))
    assert (values[0][~outside] > 0).all()


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(recurrence=0), 'recurrence'),
    (dict(recurrence=1.5), 'recurrence'), (dict(reduction=0), 'reduction'),
    (dict(min_channels=0), 'min_channels'), (dict(in_channels=4), 'reduction')])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'RCCA: {argument}'):
        RCCA(**dict(dict(in_channels=16), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyRCCA', (RCCA, ), {'_abbr_': 'my_rcca'})
    with pytest.raises(ValueError, match='MyRCCA: recurrence'):
        sub(16, recurrence=0)
