"""PooledSelfAttention: any H, W, identity at init, formula, params, arguments, maps."""
import functools
import math

import pytest
import torch

from cvattn_mm.attention.spatial.pooled_self_attention import PooledSelfAttention
from cvattn_mm.visualization import extract_maps

from . import contract

VARIANTS = [
    dict(ds=1),
    dict(ds=3),
    dict(ds=2, reduction=4),
    dict(ds=16, reduction=16, min_channels=4),
]


@pytest.mark.parametrize('kwargs', VARIANTS, ids=str)
def test_contract_variants(kwargs):
    torch.manual_seed(0)
    contract.run_contract(functools.partial(PooledSelfAttention, 16, **kwargs))


def reference(module, x):
    """Direct formula in float64 with explicit pooling windows and window-wise upsampling."""
    n, c, h, w = x.shape
    ds, d = module.ds, module.key_channels
    x = x.double()
    rows, cols = math.ceil(h / ds), math.ceil(w / ds)
    pooled = torch.stack([
        torch.stack([x[:, :, i * ds:(i + 1) * ds, j * ds:(j + 1) * ds].mean((2, 3))
                     for j in range(cols)], dim=-1)
        for i in range(rows)], dim=-2)  # (N, C, rows, cols)
    wt = module.qkv.weight[:, :, 0, 0].double()
    b = module.qkv.bias.double()
    f = torch.einsum('oc,ncl->nol', wt, pooled.flatten(2)) + b[None, :, None]
    q, k, v = f[:, :d], f[:, d:2 * d], f[:, 2 * d:]
    energy = torch.einsum('nci,ncj->nij', q, k) / math.sqrt(d)
    attn = energy.exp() / energy.exp().sum(-1, keepdim=True)
    o = torch.einsum('ncj,nij->nci', v, attn).reshape(n, c, rows, cols)
    up = torch.empty(n, c, h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            up[:, :, i, j] = o[:, :, i // ds, j // ds]
    return x + module.gamma.double() * up


@pytest.mark.parametrize('ds', [8, 3])
@pytest.mark.parametrize('size', [(16, 24), (13, 17), (5, 3), (1, 1), (9, 8)])
def test_matches_formula_any_size(size, ds):
    torch.manual_seed(0)
    module = contract.perturb_parameters(PooledSelfAttention(16, ds=ds), scale=0.5).eval()
    assert module.gamma.abs() > 0
    x = torch.randn(2, 16, *size)
    with torch.no_grad():
        y = module(x)
        ref = reference(module, x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-5)


def test_identity_at_init():
    module = PooledSelfAttention(32)
    module.init_weights()
    assert module.gamma.item() == 0
    x = torch.randn(2, 32, 13, 17)
    assert torch.equal(module(x), x)
    module = PooledSelfAttention(32, init_cfg=dict(type='Constant', val=1.0, layer='Conv2d'))
    with torch.no_grad():
        module.gamma.fill_(3.0)
    module.init_weights()
    assert module.gamma.item() == 0 and module.qkv.weight.eq(1).all()


def test_gamma_scales_the_attention_term():
    torch.manual_seed(0)
    module = contract.perturb_parameters(PooledSelfAttention(16, ds=4)).eval()
    x = torch.randn(1, 16, 9, 10)
    with torch.no_grad():
        module.gamma.fill_(1.0)
        one = module(x) - x
        module.gamma.fill_(-2.5)
        other = module(x) - x
    torch.testing.assert_close(other, -2.5 * one, rtol=1e-5, atol=1e-6)
    # Every position of a ds x ds window receives the same attention output (up to the
    # rounding of (x + o) - x); the partial last window (rows 8, cols 8-9) too.
    torch.testing.assert_close(one[:, :, 0:4, 0:4], one[:, :, 0:1, 0:1].expand(-1, -1, 4, 4))
    torch.testing.assert_close(one[:, :, 8:, 8:], one[:, :, 8:9, 8:9].expand(-1, -1, 1, 2))
    assert (one[:, :, 0, 0] - one[:, :, 0, 4]).abs().max() > 1e-3


def expected_params(c, reduction=8):
    d = c // reduction
    return 2 * (c * d + d) + c * c + c + 1


@pytest.mark.parametrize('channels', [64, 512])
def test_param_count(channels):
    module = PooledSelfAttention(channels)
    assert sum(p.numel() for p in module.parameters()) == expected_params(channels)
    module = PooledSelfAttention(channels, reduction=4)
    assert sum(p.numel() for p in module.parameters()) == expected_params(channels, 4)


@pytest.mark.parametrize('kwargs, arg', [
    (dict(ds=0), 'ds'),
    (dict(ds=2.5), 'ds'),
    (dict(reduction=0), 'reduction'),
    (dict(reduction=17), 'reduction'),
    (dict(min_channels=0), 'min_channels'),
    (dict(in_channels=0), 'in_channels'),
])
def test_invalid_arguments(kwargs, arg):
    kwargs = dict(dict(in_channels=16), **kwargs)
    with pytest.raises(ValueError, match=f'PooledSelfAttention.*{arg}'):
        PooledSelfAttention(**kwargs)


@pytest.mark.parametrize('kwargs', [dict(ds=3), dict(ds=1)], ids=str)
def test_compile_and_onnx_variants(kwargs, tmp_path):
    factory = functools.partial(PooledSelfAttention, 16, **kwargs)
    contract.check_torch_compile(factory)
    contract.check_onnx(factory, tmp_path)


def test_checkpoint_is_not_overwritten_by_zero_init(tmp_path):
    trained = PooledSelfAttention(16)
    with torch.no_grad():
        trained.gamma.fill_(0.7)
    path = str(tmp_path / 'psa.pth')
    torch.save(trained.state_dict(), path)
    module = PooledSelfAttention(16, init_cfg=dict(type='Pretrained', checkpoint=path))
    module.init_weights()
    assert module.gamma.item() == pytest.approx(0.7)


@pytest.mark.parametrize('kwargs', [{}, dict(ds=1), dict(ds=3)], ids=str)
def test_maps_rebuild_the_forward(kwargs):
    """The output from the softmax weights that the maps show, and the values."""
    torch.manual_seed(0)
    module = contract.perturb_parameters(PooledSelfAttention(32, **kwargs), scale=0.5).eval()
    x = torch.randn(2, 32, 7, 10, generator=torch.Generator().manual_seed(1))
    n, c, h, w = x.shape
    with torch.no_grad():
        expected = module(x)
        maps = extract_maps(module, x)
        p = module.pool(x)
        ph, pw = p.shape[2:]
        q, k, v = module.queries_keys_values(p)
        attn = torch.bmm(q, k.transpose(1, 2)).mul(module.key_channels**-0.5).softmax(-1)
        assert torch.equal(maps['mean_over_queries'].values.flatten(1), attn.mean(1))
        o = (module.gamma * torch.bmm(attn, v)).transpose(1, 2).reshape(n, c, ph, pw)
        o = o.repeat_interleave(module.ds, 2).repeat_interleave(module.ds, 3)[:, :, :h, :w]
        rebuilt = x + o
    err = (rebuilt - expected).abs().max().item()
    assert err <= 1e-4 * (expected.abs().max().item() + 1e-6), f'{kwargs}: {err:.3g}'
    assert maps


def test_errors_name_the_subclass():
    sub = type('MyPooledSA', (PooledSelfAttention,), {'_abbr_': 'my_pooled_sa'})
    with pytest.raises(ValueError, match='MyPooledSA.*ds'):
        sub(16, ds=0)
    with pytest.raises(ValueError, match='MyPooledSA.*reduction'):
        sub(16, reduction=0)
