"""SK: variants through the contract, the selection against a direct computation, params,
maps."""
import functools

import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.branch.sk import SK
from cvattn_mm.registry import MODELS
from cvattn_mm.visualization import extract_maps

from . import contract

VARIANTS = {
    'three_branches': dict(num_branches=3),
    'groups1_r4_l8': dict(groups=1, reduction=4, min_channels=8),
    'gn_silu': dict(norm_cfg=dict(type='GN', num_groups=8), act_cfg=dict(type='SiLU')),
}


def build(in_channels=64, **kwargs):
    return SK(in_channels, **kwargs)


def randomise_bn_stats(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return module


@pytest.mark.parametrize('variant', VARIANTS)
def test_contract_variants(variant):
    torch.manual_seed(0)
    contract.run_contract(functools.partial(build, **VARIANTS[variant]))


def test_registered():
    assert MODELS.get('SK') is SK
    module = MODELS.build(dict(type='SK', in_channels=64))
    assert (module.num_branches, module.groups, module.hidden) == (2, 32, 32)
    dilations = [b[0].dilation for b in module.branches]
    paddings = [b[0].padding for b in module.branches]
    assert dilations == paddings == [(1, 1), (2, 2)]
    assert all(b[0].groups == 32 and b[0].kernel_size == (3, 3) for b in module.branches)


def reference(m: SK, x: torch.Tensor):
    """The SK unit in eval mode from the paper's equations (BN with running statistics)."""

    def bn(t, norm):
        return F.batch_norm(t, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                            False, 0., norm.eps)

    feats = []
    for i, branch in enumerate(m.branches):
        conv, norm = branch[0], branch[1]
        d = i + 1
        feats.append(F.relu(bn(F.conv2d(x, conv.weight, None, 1, d, d, m.groups), norm)))
    u = sum(feats)
    s = u.mean((2, 3))  # global average pooling, (N, C)
    z = F.relu(bn(s @ m.fc_reduce.weight.flatten(1).t(), m.fc_norm))  # (N, d)
    c = x.shape[1]
    logits = [z @ m.fc_select.weight.flatten(1)[i * c:(i + 1) * c].t()
              for i in range(m.num_branches)]  # W_i z, (N, C) each
    top = torch.stack(logits).amax(0)  # subtracted for a stable exp; cancels in the ratio
    exp = [(lg - top).exp() for lg in logits]
    total = sum(exp)
    weights = [e / total for e in exp]
    out = sum(a[:, :, None, None] * f for a, f in zip(weights, feats, strict=True))
    return out, torch.stack(weights, 1)


@pytest.mark.parametrize('kwargs,size', [(dict(), (13, 17)), (dict(num_branches=3), (6, 5)),
                                         (dict(groups=8, reduction=2, min_channels=4), (1, 1))])
def test_matches_direct_computation(kwargs, size):
    torch.manual_seed(0)
    m = randomise_bn_stats(contract.perturb_parameters(build(**kwargs))).eval()
    x = torch.randn(2, 64, *size)
    with torch.no_grad():
        expected, _ = reference(m, x)
        contract.assert_close_rel(m(x), expected, 1e-5, f'{kwargs} {size}')


def test_selection_is_a_softmax_over_branches():
    torch.manual_seed(0)
    m = randomise_bn_stats(contract.perturb_parameters(build(num_branches=3), 0.5)).eval()
    x = torch.randn(2, 64, 7, 9)
    with torch.no_grad():
        a = m.selection(sum(branch(x).mean((2, 3), keepdim=True) for branch in m.branches))
        _, weights = reference(m, x)  # (N, M, C)
    assert a.shape == (2, 3, 64, 1, 1)
    torch.testing.assert_close(a.flatten(2), weights)
    torch.testing.assert_close(weights.sum(1), torch.ones(2, 64))
    assert (weights.std(1) > 1e-3).any(), 'the branches are not weighted differently'


def test_identical_branches_pass_through():
    """On a 1x1 map only the centre tap of every dilated 3x3 conv sees the input, so branches
    with equal weights agree; since the weights sum to 1 per channel, the output is that branch."""
    torch.manual_seed(0)
    m = randomise_bn_stats(contract.perturb_parameters(build(num_branches=3), 0.5)).eval()
    m.branches[1].load_state_dict(m.branches[0].state_dict())
    m.branches[2].load_state_dict(m.branches[0].state_dict())
    x = torch.randn(3, 64, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.branches[0](x))


def test_training_with_batch_one_uses_running_stats_of_z():
    torch.manual_seed(0)
    m = randomise_bn_stats(contract.perturb_parameters(build())).train()
    z_stats = m.fc_norm.running_mean.clone()
    branch_stats = m.branches[0][1].running_mean.clone()
    x = torch.randn(1, 64, 7, 5)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert torch.equal(m.fc_norm.running_mean, z_stats), 'z statistics must not be updated'
    assert not torch.equal(m.branches[0][1].running_mean, branch_stats), 'branch BN is training'
    # With a batch of two, z is normalised with batch statistics, as in the paper.
    m(torch.randn(2, 64, 7, 5))
    assert not torch.equal(m.fc_norm.running_mean, z_stats)


def test_param_count_formula():
    def formula(c, m=2, g=32, r=16, min_channels=32):
        d = max(c // r, min_channels)
        return m * (9 * c * c // g + 2 * c) + c * d + 2 * d + m * c * d

    for c in (256, 2048):
        assert sum(p.numel() for p in build(c).parameters()) == formula(c)
    for c in (64, 512):
        m = build(c, num_branches=3, groups=16, reduction=8, min_channels=16)
        assert sum(p.numel() for p in m.parameters()) == formula(c, 3, 16, 8, 16)


BAD_ARGS = [
    (dict(in_channels=48), 'groups'),
    (dict(groups=0), 'groups'),
    (dict(num_branches=1), 'num_branches'),
    (dict(stride=2), 'stride'),
    (dict(reduction=128, min_channels=1), 'reduction'),
    (dict(reduction=0), 'reduction'),
    (dict(min_channels=0), 'min_channels'),
]


@pytest.mark.parametrize('kwargs,arg', BAD_ARGS, ids=[f'{a}-{i}' for i, (_, a) in
                                                      enumerate(BAD_ARGS)])
def test_invalid_arguments(kwargs, arg):
    kwargs = dict(dict(in_channels=64), **kwargs)
    with pytest.raises(ValueError) as info:
        SK(**kwargs)
    assert 'SK' in str(info.value) and arg in str(info.value), str(info.value)


@pytest.mark.parametrize('kwargs', [{}, dict(num_branches=3)], ids=str)
def test_maps_rebuild_the_forward(kwargs):
    """The output from the branch weights that the maps show, and the branches."""
    torch.manual_seed(0)
    m = contract.perturb_parameters(SK(32, groups=4, min_channels=4, **kwargs), 0.5).eval()
    x = torch.randn(2, 32, 7, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = m(x)
        maps = extract_maps(m, x)
        feats = m.branch_outputs(x)
        weights = m.selection(sum(f.mean((2, 3), keepdim=True) for f in feats)).flatten(2)
        assert torch.allclose(weights.sum(1), torch.ones(weights.shape[::2]), atol=1e-5)
        for i in range(m.num_branches):
            assert torch.equal(maps[f'branch_{i + 1}'].values, weights[:, i])
        rebuilt = sum(weights[:, i, :, None, None] * f for i, f in enumerate(feats))
    err = (rebuilt - expected).abs().max().item()
    assert err <= 1e-4 * (expected.abs().max().item() + 1e-6), f'{kwargs}: {err:.3g}'
    assert maps


def test_errors_name_the_subclass():
    sub = type('MySK', (SK,), {'_abbr_': 'my_sk'})
    with pytest.raises(ValueError, match='MySK.*num_branches'):
        sub(64, num_branches=1)
    with pytest.raises(ValueError, match='MySK: stride.*MySK keeps'):
        sub(64, stride=2)
