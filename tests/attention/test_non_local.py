"""NonLocalBlock: each pairwise function against its formula, identity at init, params,
maps."""
import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.spatial.non_local import MODES, SUB_SAMPLE_AT, NonLocalBlock
from cvattn_mm.visualization import extract_maps

from . import contract

VARIANTS = [
    dict(mode='dot_product'),
    dict(mode='gaussian'),
    dict(mode='concatenation'),
    dict(sub_sample=True),
    dict(mode='dot_product', sub_sample=True),
    dict(mode='gaussian', sub_sample=True),
    dict(mode='concatenation', sub_sample=True),
    dict(sub_sample=True, sub_sample_at='embedding'),
    dict(mode='gaussian', sub_sample=True, sub_sample_at='embedding'),
    dict(use_scale=False),
    dict(reduction=4, norm_cfg=None),
    dict(norm_cfg=dict(type='GN', num_groups=4)),
]


@pytest.mark.parametrize('kwargs', VARIANTS, ids=str)
def test_contract_variants(kwargs):
    torch.manual_seed(0)
    contract.run_contract(functools.partial(NonLocalBlock, 16, **kwargs))


def max_pool_ceil(t):
    """2x2 max pooling that keeps a last odd row/column (pads with -inf)."""
    n, c, h, w = t.shape
    t = F.pad(t, (0, w % 2, 0, h % 2), value=-math.inf)
    return t.view(n, c, (h + 1) // 2, 2, (w + 1) // 2, 2).amax((3, 5))


def reference(module, x):
    """Direct formula of the non-local block, in float64, from the module's parameters."""
    m = copy.deepcopy(module).double()
    x = x.double()
    n, c, h, w = x.shape
    d = m.inter_channels
    wt, bias = m.theta_phi_g.weight[:, :, 0, 0], m.theta_phi_g.bias

    def embed(t):
        return torch.einsum('oc,nchw->nohw', wt, t) + bias[None, :, None, None]

    if m.sub_sample and m.sub_sample_at == 'input':  # phi and g of the pooled x
        x_hat = max_pool_ceil(x)
        emb, emb_hat = embed(x), embed(x_hat)
        if m.mode == 'gaussian':
            theta, phi, g = x, x_hat, emb_hat
        else:
            theta, phi, g = emb[:, :d], emb_hat[:, d:2 * d], emb_hat[:, 2 * d:]
    else:  # pooled phi(x) and g(x)
        emb = embed(x)
        if m.mode == 'gaussian':
            theta, phi, g = x, x, emb
        else:
            theta, phi, g = emb[:, :d], emb[:, d:2 * d], emb[:, 2 * d:]
        if m.sub_sample:
            phi, g = max_pool_ceil(phi), max_pool_ceil(g)
    theta, phi, g = theta.flatten(2), phi.flatten(2), g.flatten(2)
    num_keys = phi.shape[-1]
    if m.mode in ('embedded_gaussian', 'gaussian'):
        logits = torch.einsum('nci,ncj->nij', theta, phi)
        if m.mode == 'embedded_gaussian' and m.use_scale:
            logits = logits / math.sqrt(d)
        f = logits.exp()
        f = f / f.sum(-1, keepdim=True)
    elif m.mode == 'dot_product':
        f = torch.einsum('nci,ncj->nij', theta, phi) / num_keys
    else:
        wf = m.concat_project.weight[0, :, 0, 0]
        pair = torch.cat([theta[:, :, :, None].expand(-1, -1, -1, num_keys),
                          phi[:, :, None, :].expand(-1, -1, h * w, -1)], dim=1)
        f = torch.einsum('c,ncij->nij', wf, pair).clamp(min=0) / num_keys
    y = torch.einsum('nij,ncj->nci', f, g).reshape(n, d, h, w)
    z = torch.einsum('oc,nchw->nohw', m.conv_out.weight[:, :, 0, 0], y)
    if m.conv_out.bias is not None:
        z = z + m.conv_out.bias[None, :, None, None]
    if m.norm is not None:  # BN in eval mode
        z = batch_norm_eval(z, m.norm)
    return x + z


def batch_norm_eval(z, bn):
    z = (z - bn.running_mean[None, :, None, None]) / torch.sqrt(
        bn.running_var[None, :, None, None] + bn.eps)
    return z * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]


#: Keys of every position, or sub-sampled by pooling x or by pooling phi(x) and g(x).
KEYS = [dict(sub_sample=False)] + [dict(sub_sample=True, sub_sample_at=at)
                                   for at in SUB_SAMPLE_AT]


@pytest.mark.parametrize('use_scale', [True, False])
@pytest.mark.parametrize('keys', KEYS, ids=str)
@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('size', [(5, 7), (6, 4)])
def test_each_mode_matches_formula(mode, keys, use_scale, size):
    torch.manual_seed(0)
    module = contract.perturb_parameters(
        NonLocalBlock(8, mode=mode, use_scale=use_scale, **keys), scale=0.3).eval()
    x = torch.randn(2, 8, *size) * 0.5
    with torch.no_grad():
        y = module(x)
        ref = reference(module, x)
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-5)


def test_official_equation():
    """With the official settings (defaults and sub_sample=True) the block computes the
    official non-local block on an even map, written out here from its definition: theta on
    x, phi and g on the 2x2 max pooling of x, a softmax of theta^T phi / sqrt(d) over the
    pooled positions, W_z, the BN, the residual."""
    torch.manual_seed(0)
    c, d = 16, 8
    module = contract.perturb_parameters(NonLocalBlock(c, sub_sample=True), scale=0.3)
    module = module.double().eval()
    with torch.no_grad():
        module.norm.running_mean.uniform_(-0.5, 0.5)
        module.norm.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, c, 6, 8, dtype=torch.double)
    with torch.no_grad():
        y = module(x)
        x_hat = F.max_pool2d(x, 2, 2)  # the official pooling (floor) on an even map
        w, b = module.theta_phi_g.weight[:, :, 0, 0], module.theta_phi_g.bias
        theta = torch.einsum('oc,ncl->nol', w[:d], x.flatten(2)) + b[:d, None]
        phi = torch.einsum('oc,ncl->nol', w[d:2 * d], x_hat.flatten(2)) + b[d:2 * d, None]
        g = torch.einsum('oc,ncl->nol', w[2 * d:], x_hat.flatten(2)) + b[2 * d:, None]
        p = torch.softmax(torch.einsum('nci,ncj->nij', theta, phi) * d**-0.5, dim=2)
        t = torch.einsum('ncj,nij->nci', g, p).reshape(2, d, 6, 8)
        z = torch.einsum('oc,nchw->nohw', module.conv_out.weight[:, :, 0, 0], t)
        expected = batch_norm_eval(z, module.norm) + x
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)
    # The choices are the official ones by default; the other ones change the output.
    for other in (dict(use_scale=False), dict(sub_sample_at='embedding')):
        variant = NonLocalBlock(c, sub_sample=True, **other).double().eval()
        variant.load_state_dict(module.state_dict())
        with torch.no_grad():
            assert (variant(x) - y).abs().max() > 1e-3, other


def test_official_defaults_and_initialisation():
    torch.manual_seed(0)
    module = NonLocalBlock(256)
    assert module.use_scale and module.sub_sample_at == 'input' and not module.sub_sample
    assert module.inter_channels == 128 and module.scale == 128**-0.5
    for conv in (module.theta_phi_g, module.conv_out):
        assert abs(conv.weight.std().item() - 0.01) < 0.001
    assert module.theta_phi_g.bias.eq(0).all() and module.conv_out.bias is None
    assert module.norm.weight.eq(0).all() and module.norm.bias.eq(0).all()
    assert NonLocalBlock(16, mode='gaussian').scale == 1.0  # only the embedded Gaussian


def test_dot_product_orders_agree():
    """Both association orders (chosen by size) give the same result."""
    torch.manual_seed(0)
    module = contract.perturb_parameters(NonLocalBlock(8, mode='dot_product')).eval()
    for size in [(2, 2), (12, 12)]:  # d = 4: small maps use L x L, large ones d x d
        x = torch.randn(2, 8, *size)
        with torch.no_grad():
            torch.testing.assert_close(module(x).double(), reference(module, x),
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('norm_cfg', [dict(type='BN'), None])
@pytest.mark.parametrize('mode', MODES)
def test_identity_at_init(mode, norm_cfg):
    module = NonLocalBlock(16, mode=mode, norm_cfg=norm_cfg)
    module.init_weights()
    x = torch.randn(2, 16, 7, 5)
    assert torch.equal(module(x), x)


def test_identity_survives_init_cfg():
    cfg = [dict(type='Constant', val=0.5, layer=['Conv2d', '_BatchNorm'])]
    module = NonLocalBlock(16, init_cfg=cfg)
    module.init_weights()
    assert module.theta_phi_g.weight.eq(0.5).all()
    assert module.norm.weight.eq(0).all() and module.norm.bias.eq(0).all()
    x = torch.randn(2, 16, 6, 6)
    assert torch.equal(module(x), x)


def expected_params(c, mode, reduction=2, norm=True):
    d = c // reduction
    n = (c * d + d) * (1 if mode == 'gaussian' else 3) + d * c
    n += 2 * c if norm else c
    return n + (2 * d if mode == 'concatenation' else 0)


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('channels', [64, 256])
def test_param_count(mode, channels):
    for norm_cfg in (dict(type='BN'), None):
        module = NonLocalBlock(channels, mode=mode, norm_cfg=norm_cfg)
        count = sum(p.numel() for p in module.parameters())
        assert count == expected_params(channels, mode, norm=norm_cfg is not None)


def test_reduction_and_floor():
    assert NonLocalBlock(64, reduction=4).inter_channels == 16
    assert NonLocalBlock(4, reduction=4, min_channels=2).inter_channels == 2


@pytest.mark.parametrize('kwargs, arg', [
    (dict(mode='softmax'), 'mode'),
    (dict(sub_sample_at='output'), 'sub_sample_at'),
    (dict(reduction=0), 'reduction'),
    (dict(reduction=32), 'reduction'),
    (dict(reduction=1.5), 'reduction'),
    (dict(min_channels=0), 'min_channels'),
    (dict(in_channels=0), 'in_channels'),
])
def test_invalid_arguments(kwargs, arg):
    kwargs = dict(dict(in_channels=16), **kwargs)
    with pytest.raises(ValueError, match=f'NonLocalBlock.*{arg}'):
        NonLocalBlock(**kwargs)


def test_sub_sample_on_one_by_one_and_odd_maps():
    module = contract.perturb_parameters(NonLocalBlock(8, sub_sample=True)).eval()
    for size in [(1, 1), (1, 5), (3, 3)]:
        x = torch.randn(1, 8, *size)
        with torch.no_grad():
            torch.testing.assert_close(module(x).double(), reference(module, x),
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('kwargs', [
    dict(mode='dot_product'),
    dict(mode='gaussian', sub_sample=True),
    dict(mode='concatenation'),
    dict(sub_sample=True, norm_cfg=None),
    dict(sub_sample=True, sub_sample_at='embedding', use_scale=False),
], ids=str)
def test_compile_and_onnx_variants(kwargs, tmp_path):
    factory = functools.partial(NonLocalBlock, 16, **kwargs)
    contract.check_torch_compile(factory)
    contract.check_onnx(factory, tmp_path)


def test_checkpoint_is_not_overwritten_by_zero_init(tmp_path):
    trained = contract.perturb_parameters(NonLocalBlock(16))
    path = str(tmp_path / 'nl.pth')
    torch.save(trained.state_dict(), path)
    module = NonLocalBlock(16, init_cfg=dict(type='Pretrained', checkpoint=path))
    module.init_weights()
    assert torch.equal(module.norm.weight, trained.norm.weight)
    assert module.norm.weight.abs().min() > 0
    # A second init_weights call (mmengine skips it) does not zero a trained block either.
    module = NonLocalBlock(16)
    module.init_weights()
    contract.perturb_parameters(module)
    module.init_weights()
    assert module.norm.weight.abs().min() > 0


MAP_VARIANTS = [{}, dict(mode='gaussian', sub_sample=True),
                dict(mode='dot_product', norm_cfg=None),
                dict(mode='concatenation', sub_sample=True)]


def build_for_maps(**kwargs):
    torch.manual_seed(0)
    return contract.perturb_parameters(NonLocalBlock(32, **kwargs), scale=0.5).eval()


def maps_input(size=(7, 10)):
    return torch.randn(2, 32, *size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize('kwargs', MAP_VARIANTS, ids=str)
def test_maps_rebuild_the_forward(kwargs):
    """The output from the pairwise weights that the maps show, and g."""
    module = build_for_maps(**kwargs)
    x = maps_input()
    n, _, h, w = x.shape
    d = module.inter_channels
    with torch.no_grad():
        expected = module(x)
        maps = extract_maps(module, x)
        theta, phi, g = module.embed(x)
        attn = module.pairwise_weights(theta, phi)
        keys = maps['centre_query'].values.shape[1:]
        assert attn.shape == (n, h * w, keys[0] * keys[1])
        centre = (h // 2) * w + w // 2
        assert torch.equal(maps['centre_query'].values.flatten(1), attn[:, centre])
        z = module.conv_out(torch.bmm(attn, g).transpose(1, 2).reshape(n, d, h, w))
        rebuilt = x + (z if module.norm is None else module.norm(z))
    err = (rebuilt - expected).abs().max().item()
    assert err <= 1e-4 * (expected.abs().max().item() + 1e-6), f'{kwargs}: {err:.3g}'
    assert maps


@pytest.mark.parametrize('mode', ['dot_product', 'concatenation'])
def test_non_softmax_non_local_weights(mode):
    maps = extract_maps(build_for_maps(mode=mode, sub_sample=True), maps_input((8, 10)))
    assert maps['centre_query'].values.shape == (2, 4, 5)
    assert 'pairwise weight' in maps['centre_query'].title


@pytest.mark.parametrize('mode', MODES)
def test_plain_layers_compute_the_same(mode):
    """A tool that swaps the layer types for plain convolutions gets the same block."""
    module = contract.perturb_parameters(NonLocalBlock(16, mode=mode, sub_sample=True)).eval()
    x = torch.randn(2, 16, 6, 7)
    with torch.no_grad():
        expected = module(x)
        for name, layer in list(module.named_children()):
            if isinstance(layer, torch.nn.Conv2d):
                plain = torch.nn.Conv2d(layer.in_channels, layer.out_channels, 1,
                                        bias=layer.bias is not None)
                plain.load_state_dict(layer.state_dict())
                setattr(module, name, plain)
        assert all(type(m) is torch.nn.Conv2d for m in module.children()
                   if isinstance(m, torch.nn.Conv2d))
        contract.assert_close_rel(module(x), expected, 1e-5, 'plain convolutions')


def test_errors_name_the_subclass():
    sub = type('MyNonLocal', (NonLocalBlock,), {'_abbr_': 'my_non_local'})
    with pytest.raises(ValueError, match='MyNonLocal.*mode'):
        sub(16, mode='softmax')
    with pytest.raises(ValueError, match='MyNonLocal.*reduction'):
        sub(16, reduction=0)
    with pytest.raises(ValueError, match='MyNonLocal.*sub_sample_at'):
        sub(16, sub_sample_at='phi')
