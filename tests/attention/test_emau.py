"""EMAU: its equations, bases maintenance, gradients, parameter count, maps, variants and
argument checks."""
import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.spatial import emau as emau_module
from cvattn_mm.attention.spatial.emau import EMAU

from . import contract
from .contract import perturb_parameters, run_contract

VARIANTS = [dict(num_bases=1), dict(num_stages=1), dict(num_bases=8, num_stages=5),
            dict(eps=1e-12, eps_mode='clamp', renormalize_bases=True), dict(norm_cfg=None),
            dict(norm_cfg=dict(type='GN', num_groups=4))]


@pytest.mark.parametrize('kwargs', VARIANTS, ids=lambda k: '-'.join(f'{a}={b}' for a, b in
                                                                      k.items()))
def test_contract_variants(kwargs):
    run_contract(lambda: EMAU(16, **kwargs))


def test_contract_without_em_gradients():
    """em_grad='none' (official): every check but the gradient one, which it fails by design
    (conv1 gets no gradient; see test_official_gradients_skip_conv1)."""
    factory = lambda: EMAU(16, em_grad='none')  # noqa: E731
    for check in contract.ALL_CHECKS:
        if check is contract.check_layers_called:
            check(factory, compiled=False)
        elif check is not contract.check_gradients:
            check(factory)
    contract.check_autocast(factory, torch.bfloat16)


def emau_reference(x, w1, b1, w2, bases, gamma, beta, stages, eps, detach_before_last=True):
    """The paper's EM attention with a training-mode batch norm, written from the equations
    with ``eps`` added to the norms (official code); returns the output and the last bases."""
    n, c, h, w = x.shape
    u = torch.einsum('oc,nchw->nohw', w1, x) + b1[:, None, None]
    u = u.reshape(n, c, h * w)
    mu = bases.expand(n, -1, -1)
    for t in range(stages):
        if detach_before_last and t == stages - 1:
            mu = mu.detach()
        logits = torch.einsum('ncs,nck->nsk', u, mu)
        z = torch.exp(logits - logits.amax(2, keepdim=True))
        z = z / z.sum(2, keepdim=True)
        z_bar = z / (eps + z.sum(1, keepdim=True))
        mu = torch.einsum('ncs,nsk->nck', u, z_bar)
        mu = mu / (eps + torch.sqrt((mu ** 2).sum(1, keepdim=True)))
    r = torch.clamp(torch.einsum('nck,nsk->ncs', mu, z), min=0).reshape(n, c, h, w)
    y = torch.einsum('oc,nchw->nohw', w2, r)
    mean = y.mean((0, 2, 3), keepdim=True)
    var = ((y - mean) ** 2).mean((0, 2, 3), keepdim=True)
    y = (y - mean) / torch.sqrt(var + 1e-5) * gamma[:, None, None] + beta[:, None, None]
    return torch.clamp(x + y, min=0), mu


def reference_of(module, x):
    return emau_reference(x, module.conv1.weight.flatten(1), module.conv1.bias,
                          module.conv2.weight.flatten(1), module.bases, module.norm.weight,
                          module.norm.bias, module.num_stages, module.eps)


@pytest.mark.parametrize('kwargs', [dict(), dict(num_bases=5, num_stages=1),
                                    dict(num_bases=3, num_stages=4, eps=1e-3)])
def test_equation_and_gradients(kwargs):
    torch.manual_seed(0)
    module = perturb_parameters(EMAU(12, **kwargs), scale=0.3).double().train()
    x = torch.randn(3, 12, 5, 7, dtype=torch.float64, requires_grad=True)
    bases = module.bases.clone()
    y = module(x)
    expected, mu = emau_reference(x, module.conv1.weight.flatten(1), module.conv1.bias,
                                  module.conv2.weight.flatten(1), bases, module.norm.weight,
                                  module.norm.bias, module.num_stages, module.eps)
    torch.testing.assert_close(y, expected)
    # em_grad='last': the gradient of the reference with mu_{T-1} detached
    g = torch.randn_like(y)
    params = [x, module.conv1.weight, module.conv1.bias, module.conv2.weight]
    ours = torch.autograd.grad(y, params, g, retain_graph=True)
    theirs = torch.autograd.grad(expected, params, g)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b.view_as(a))
    # moving average (official: no renormalisation)
    torch.testing.assert_close(module.bases, 0.9 * bases + 0.1 * mu.detach().mean(0, True))


def test_official_gradients_skip_conv1():
    """em_grad='none': the EM attention is a constant for autograd, so conv1 gets no gradient
    and the input's gradient is the identity path's alone (official code, mmseg)."""
    torch.manual_seed(0)
    module = perturb_parameters(EMAU(8, em_grad='none'), scale=0.3).double().train()
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64, requires_grad=True)
    y = module(x)
    g = torch.randn_like(y)
    y.backward(g)
    assert module.conv1.weight.grad is None and module.conv1.bias.grad is None
    assert module.conv2.weight.grad.abs().sum() > 0
    torch.testing.assert_close(x.grad, g * (y > 0))
    last = EMAU(8).double()
    last.load_state_dict(module.state_dict())
    module.eval()
    last.eval()
    torch.testing.assert_close(last(x), module(x), rtol=0, atol=0)  # same forward values


def test_bases_update_only_in_training():
    torch.manual_seed(0)
    module = perturb_parameters(EMAU(8, num_bases=4), scale=0.3).eval()
    bases = module.bases.clone()
    x = torch.randn(2, 8, 5, 5)
    module(x)
    assert torch.equal(module.bases, bases)
    module.train()
    with torch.no_grad():
        torch.jit.trace(module, x, check_trace=False)
    assert torch.equal(module.bases, bases), 'tracing must not update the bases'
    with torch.no_grad():
        module(x)
    assert not torch.equal(module.bases, bases)


def test_compiled_training_updates_the_bases_as_eager():
    torch.manual_seed(0)
    eager = perturb_parameters(EMAU(8, num_bases=4), scale=0.3).train()
    compiled_module = EMAU(8, num_bases=4).train()
    compiled_module.load_state_dict(eager.state_dict())
    x = torch.randn(2, 8, 5, 5)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_module, fullgraph=True, backend='aot_eager')
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(compiled(x), eager(x))
    torch.testing.assert_close(compiled_module.bases, eager.bases)
    assert not torch.equal(eager.bases, EMAU(8, num_bases=4).bases)


def test_renormalized_update_is_mmseg_and_matches_its_module():
    from mmseg.models.decode_heads.ema_head import EMAModule
    torch.manual_seed(0)
    ours = EMAU(8, num_bases=4, eps=1e-12, eps_mode='clamp', renormalize_bases=True).double()
    peer = EMAModule(8, 4, 3, 0.1).double()
    peer.bases.copy_(ours.bases)
    x = torch.randn(3, 8, 5, 6, dtype=torch.float64)
    ours.train()
    peer.train()
    with torch.no_grad():
        u = ours.embed(x).reshape(x.shape)
        mu, z = ours.em(ours.embed(x))
        torch.testing.assert_close(ours.reconstruct(mu, z, x.shape), peer(u).relu())
        ours(x)
    torch.testing.assert_close(ours.bases, peer.bases)
    assert (ours.bases.norm(dim=1) <= 1 + 1e-12).all()  # a mean of unit vectors


def test_cross_process_mean(monkeypatch):
    """With torch.distributed initialised the batch mean of the bases is all-reduced (mean
    over the processes): two processes holding the same mean give that mean."""
    calls = []

    class FakeDist:
        ReduceOp = torch.distributed.ReduceOp

        @staticmethod
        def is_available():
            return True

        @staticmethod
        def is_initialized():
            return True

        @staticmethod
        def get_world_size():
            return 2

        @staticmethod
        def all_reduce(t, op):
            calls.append(op)
            t.mul_(2)  # the other process holds the same values

    torch.manual_seed(0)
    module = EMAU(8, num_bases=4).double().train()
    local = EMAU(8, num_bases=4).double().train()
    local.load_state_dict(module.state_dict())
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        local(x)
        monkeypatch.setattr(emau_module, 'dist', FakeDist)
        module(x)
    assert calls == [torch.distributed.ReduceOp.SUM]
    torch.testing.assert_close(module.bases, local.bases)


def test_one_basis_reconstructs_the_normalised_mean():
    """K = 1: every position's r (before its ReLU) is mean_S(u) / ||mean_S(u)||."""
    torch.manual_seed(0)
    module = perturb_parameters(EMAU(6, num_bases=1), scale=0.3).double().eval()
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        u = module.embed(x)
        mu, z = module.em(u)
        r = torch.bmm(mu, z.transpose(1, 2))
    mean = u.mean(2, keepdim=True)
    expected = (mean / mean.norm(dim=1, keepdim=True)).expand_as(r)
    torch.testing.assert_close(r, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(z, torch.ones_like(z))


def test_zero_norm_affine_gives_identity_on_non_negative_inputs():
    module = perturb_parameters(EMAU(8)).eval()
    with torch.no_grad():
        module.norm.weight.zero_()
        module.norm.bias.zero_()
    x = torch.rand(2, 8, 6, 7)
    assert torch.equal(module(x), x)


def test_initialisation():
    torch.manual_seed(0)
    module = EMAU(256)
    module.init_weights()
    assert module.bases.shape == (1, 256, 64)
    assert 'bases' not in dict(module.named_parameters())
    torch.testing.assert_close(module.bases.norm(dim=1), torch.ones(1, 64), atol=1e-5,
                               rtol=0)
    for conv in (module.conv1, module.conv2):
        std = conv.weight.std().item()
        assert abs(std - (2 / 256) ** 0.5) < 0.005, std
    assert module.conv2.bias is None
    assert torch.equal(module.norm.weight, torch.ones(256))
    assert torch.equal(module.norm.bias, torch.zeros(256))
    assert sorted(k for k in module.state_dict() if not k.startswith('norm.')) == [
        'bases', 'conv1.bias', 'conv1.weight', 'conv2.weight']


@pytest.mark.parametrize('channels', [16, 64, 256, 2048])
def test_parameter_count(channels):
    count = sum(p.numel() for p in EMAU(channels).parameters())
    assert count == 2 * channels ** 2 + 3 * channels
    no_norm = sum(p.numel() for p in EMAU(channels, norm_cfg=None).parameters())
    assert no_norm == 2 * channels ** 2 + 2 * channels


def test_parameter_count_at_256_is_the_spec_figure():
    assert sum(p.numel() for p in EMAU(256).parameters()) == 131_840
    assert EMAU(256).bases.numel() == 16_384


def test_methods_rebuild_the_forward_and_the_maps():
    torch.manual_seed(0)
    module = perturb_parameters(EMAU(16, num_bases=8), scale=0.3).eval()
    x = torch.randn(2, 16, 7, 9)
    with torch.no_grad():
        mu, z = module.em(module.embed(x))
        y = module.norm(module.conv2(module.reconstruct(mu, z, x.shape)))
        torch.testing.assert_close(module(x), F.relu(x + y))
        maps = module.attention_maps(x)
    assert set(maps) == {'main_basis_weights'}
    values = maps['main_basis_weights'].values
    assert maps['main_basis_weights'].kind == 'weights' and values.shape == (2, 7, 9)
    for i in range(2):
        k = z[i].sum(0).argmax()
        torch.testing.assert_close(values[i].flatten(), z[i, :, k] / z[i, :, k].sum())
    torch.testing.assert_close(values.sum((1, 2)), torch.ones(2))


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(num_bases=0), 'num_bases'),
    (dict(num_stages=0), 'num_stages'), (dict(momentum=0.), 'momentum'),
    (dict(momentum=1.5), 'momentum'), (dict(eps=0.), 'eps'), (dict(eps_mode='max'), 'eps_mode'),
    (dict(renormalize_bases=1), 'renormalize_bases'), (dict(em_grad='all'), 'em_grad')])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'EMAU: {argument}'):
        EMAU(**dict(dict(in_channels=8), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyEMAU', (EMAU, ), {'_abbr_': 'my_emau'})
    with pytest.raises(ValueError, match='MyEMAU: em_grad'):
        sub(8, em_grad='all')
