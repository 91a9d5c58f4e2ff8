"""DualAttention: its equations (PAM, CAM, their sum), initialisation, parameter count, maps,
variants, precision, mmseg equality and argument checks."""
import pytest
import torch

from cvattn_mm.attention.channel_spatial.dual_attention import DualAttention

from .contract import perturb_parameters, run_contract


@pytest.mark.parametrize('kwargs', [dict(branches='pam'), dict(branches=('cam', )),
                                    dict(reduction=4, min_channels=4)],
                         ids=['pam', 'cam', 'reduction'])
def test_contract_variants(kwargs):
    run_contract(lambda: DualAttention(64, **kwargs))


def dual_attention_reference(x, module, branches):
    """The paper's equations with plain tensor ops, X as (C, S) per sample:
    PAM ``P = V softmax_keys(Q^T K)^T``, CAM ``Ch = softmax(rowmax(E) - E) X`` with
    ``E = X X^T``; ``y = x + gamma_p P + gamma_c Ch``."""
    n, c, h, w = x.shape
    out = x.clone()
    for i in range(n):
        xs = x[i].reshape(c, h * w)
        if 'pam' in branches:
            q, k, v = (layer.weight[:, :, 0, 0] @ xs + layer.bias[:, None]
                       for layer in (module.query_conv, module.key_conv, module.value_conv))
            energy = q.t() @ k  # (S queries, S keys)
            a = torch.exp(energy - energy.max(1, keepdim=True).values)
            a = a / a.sum(1, keepdim=True)
            out[i] += module.pam_gamma * (v @ a.t()).reshape(c, h, w)
        if 'cam' in branches:
            e = xs @ xs.t()
            e = e.max(1, keepdim=True).values - e
            a = torch.exp(e - e.max(1, keepdim=True).values)
            a = a / a.sum(1, keepdim=True)
            out[i] += module.cam_gamma * (a @ xs).reshape(c, h, w)
    return out


@pytest.mark.parametrize('kwargs,size', [
    (dict(), (5, 7)), (dict(branches='pam'), (6, 4)), (dict(branches='cam'), (3, 9)),
    (dict(reduction=4), (1, 1)), (dict(), (1, 5))], ids=['both', 'pam', 'cam', 'r4-1x1', '1x5'])
def test_equation(kwargs, size):
    torch.manual_seed(0)
    module = perturb_parameters(DualAttention(16, **kwargs), scale=0.5).double()
    x = torch.randn(2, 16, *size, dtype=torch.float64) * 0.5
    expected = dual_attention_reference(x, module, module.branches)
    torch.testing.assert_close(module(x), expected)
    assert (expected - x).abs().max() > 1e-2  # the gammas are not 0: the branches count


def test_identity_at_initialisation():
    x = torch.randn(2, 32, 6, 5)
    for branches in ('pam', 'cam', ('pam', 'cam')):
        module = DualAttention(32, branches=branches)
        module.init_weights()
        assert all(p.item() == 0 for n, p in module.named_parameters() if 'gamma' in n)
        for mode in ('train', 'eval'):
            getattr(module, mode)()
            assert torch.equal(module(x), x), (branches, mode)


def test_only_the_gammas_learn_at_step_zero():
    """gamma = 0 (official): the first gradients reach the gammas alone."""
    module = DualAttention(16)
    module(torch.randn(2, 16, 4, 4)).square().sum().backward()
    for name, p in module.named_parameters():
        assert (p.grad.abs().sum() > 0) == ('gamma' in name), name


def formula(c, d):
    return 2 * (c * d + d) + c * c + c + 1 + 1


@pytest.mark.parametrize('channels', [8, 64, 256, 1024])
def test_parameter_count(channels):
    count = sum(p.numel() for p in DualAttention(channels).parameters())
    assert count == formula(channels, channels // 8) == 1.25 * channels**2 + 1.25 * channels + 2
    assert sum(p.numel() for p in DualAttention(channels, branches='cam').parameters()) == 1
    pam = sum(p.numel() for p in DualAttention(channels, branches='pam').parameters())
    assert pam == count - 1


def test_parameter_count_at_256_is_the_spec_figure():
    assert sum(p.numel() for p in DualAttention(256).parameters()) == 82242


def test_width_floor_below_the_reduction():
    with pytest.raises(ValueError, match='DualAttention: reduction=8 is larger'):
        DualAttention(4)  # the official C // 8 = 0: an empty embedding
    module = DualAttention(4, min_channels=2)
    assert module.inter_channels == 2 and module.query_conv.out_channels == 2
    assert DualAttention(64, reduction=4).inter_channels == 16
    assert DualAttention(64, reduction=32, min_channels=8).inter_channels == 8


def test_state_dict_keys_are_the_official_names():
    assert sorted(DualAttention(16).state_dict()) == [
        'cam_gamma', 'key_conv.bias', 'key_conv.weight', 'pam_gamma', 'query_conv.bias',
        'query_conv.weight', 'value_conv.bias', 'value_conv.weight']
    assert list(DualAttention(16, branches='cam').state_dict()) == ['cam_gamma']


def test_channel_attention_is_softmax_of_minus_energy():
    """The spec's check: softmax(rowmax(E) - E) = softmax(-E)."""
    module = DualAttention(8, branches='cam').double()
    x = torch.randn(2, 8, 5, 3, dtype=torch.float64)
    e = torch.einsum('ncs,nds->ncd', x.flatten(2), x.flatten(2))
    official = torch.softmax(e.amax(-1, keepdim=True) - e, -1)
    torch.testing.assert_close(module.channel_weights(x), torch.softmax(-e, -1))
    torch.testing.assert_close(module.channel_weights(x), official)


def test_sum_equals_mmseg_pam_plus_cam_minus_x():
    """The spec's check: with copied weights (gammas not 0), y = PAM(x) + CAM(x) - x for
    mmseg's PAM(C, C // 8) and CAM()."""
    from mmseg.models.decode_heads.da_head import CAM, PAM
    module = perturb_parameters(DualAttention(32), scale=0.5).double().eval()
    pam, cam = PAM(32, 4).double().eval(), CAM().double().eval()
    state = module.state_dict()
    pam.load_state_dict({
        'query_project.weight': state['query_conv.weight'],
        'query_project.bias': state['query_conv.bias'],
        'key_project.weight': state['key_conv.weight'],
        'key_project.bias': state['key_conv.bias'],
        'value_project.weight': state['value_conv.weight'],
        'value_project.bias': state['value_conv.bias'],
        'gamma.scale': state['pam_gamma'].reshape(())})
    cam.load_state_dict({'gamma.scale': state['cam_gamma'].reshape(())})
    x = torch.randn(2, 32, 7, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = pam(x) + cam(x) - x
        torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)
        assert (expected - x).abs().max() > 1e-2


def test_methods_rebuild_the_forward_and_give_the_maps():
    module = perturb_parameters(DualAttention(16), scale=0.5).eval()
    x = torch.randn(2, 16, 5, 7)
    with torch.no_grad():
        v = module.value_conv(x).flatten(2)
        a_p = module.position_weights(x)
        a_c = module.channel_weights(x)
        rebuilt = (x + module.pam_gamma * torch.bmm(v, a_p.transpose(1, 2)).view_as(x)
                   + module.cam_gamma * torch.bmm(a_c, x.flatten(2)).view_as(x))
        torch.testing.assert_close(module(x), rebuilt)
        maps = module.attention_maps(x)
    assert set(maps) == {'position_centre_query', 'position_mean_over_queries',
                         'channel_attention'}
    centre = 2 * 7 + 3
    assert torch.equal(maps['position_centre_query'].values, a_p[:, centre].view(2, 5, 7))
    torch.testing.assert_close(maps['position_mean_over_queries'].values,
                               a_p.mean(1).view(2, 5, 7))
    assert torch.equal(maps['channel_attention'].values, a_c.mean(1))
    values = maps['channel_attention'].values
    assert values.min() >= 0 and values.max() <= 1
    torch.testing.assert_close(a_p.sum(-1), torch.ones(2, 35))
    torch.testing.assert_close(a_c.sum(-1), torch.ones(2, 16))


@pytest.mark.parametrize('branches,keys', [
    ('pam', {'position_centre_query', 'position_mean_over_queries'}),
    ('cam', {'channel_attention'})])
def test_maps_of_one_branch(branches, keys):
    module = DualAttention(16, branches=branches)
    assert set(module.attention_maps(torch.randn(1, 16, 4, 4))) == keys


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_energies_and_softmaxes_in_float32_under_autocast(dtype):
    module = perturb_parameters(DualAttention(16), scale=0.5).eval()
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
        assert module.channel_weights(x).dtype == torch.float32
        assert module.position_weights(x).dtype == torch.float32
        y = module(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, module(x), rtol=0.05, atol=0.05)


def test_half_module_gram_matrix_does_not_overflow():
    """X X^T over 256 positions of values ~20 exceeds fp16's range (65504): computed in
    float32, the fp16 module stays finite and close to the float32 one."""
    module = perturb_parameters(DualAttention(8, branches='cam'), scale=0.5).eval()
    x = torch.randn(1, 8, 16, 16) * 20
    assert (torch.einsum('ncs,nds->ncd', x.flatten(2), x.flatten(2)).abs().max() > 65504)
    with torch.no_grad():
        y = module.half()(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    with torch.no_grad():
        ref = module.float()(x)
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=0.1)


def test_repr_names_the_options():
    text = repr(DualAttention(16, branches=['cam', 'pam'], reduction=4))
    assert "branches=('pam', 'cam')" in text and 'reduction=4' in text


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(reduction=0), 'reduction'),
    (dict(min_channels=0), 'min_channels'), (dict(branches='sam'), 'branches'),
    (dict(branches=()), 'branches'), (dict(branches=('pam', 'pam')), 'branches'),
    (dict(branches=None), 'branches')])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'DualAttention: {argument}'):
        DualAttention(**dict(dict(in_channels=16), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyDualAttention', (DualAttention, ), {'_abbr_': 'my_da'})
    with pytest.raises(ValueError, match='MyDualAttention: branches'):
        sub(16, branches='sam')
