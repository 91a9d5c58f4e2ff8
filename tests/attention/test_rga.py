"""RGA: its equations, size policy, parameter count, initialisation, maps and argument checks."""
import pytest
import torch
import torch.nn.functional as F

import cvattn_mm.attention.size_policy as size_policy
from cvattn_mm.attention.channel_spatial.rga import RGA
from cvattn_mm.registry import MODELS

from .contract import perturb_parameters, run_contract

DOUBLE = torch.float64


@pytest.mark.parametrize('kwargs', [
    dict(use_channel=False, grid_size=(5, 3)),
    dict(use_spatial=False, grid_size=4, reduction=4, spatial_reduction=4, down_reduction=2)],
    ids=['spatial', 'channel'])
def test_contract_variants(kwargs):
    run_contract(lambda: RGA(64, **kwargs))


# --- the equations, written from the paper with plain tensor ops -------------------------


def conv1x1(weight, x):
    """A bias-free 1x1 convolution: (N, A, H, W) -> (N, B, H, W)."""
    return torch.einsum('ba,nahw->nbhw', weight[:, :, 0, 0], x)


def batch_norm(bn, x):
    """A batch norm: in training, batch statistics (biased variance) over N, H, W; in eval,
    the running statistics."""
    if bn.training:
        mean = x.mean((0, 2, 3), keepdim=True)
        var = x.var((0, 2, 3), unbiased=False, keepdim=True)
    else:
        mean, var = bn.running_mean[None, :, None, None], bn.running_var[None, :, None, None]
    return ((x - mean) / torch.sqrt(var + 1e-5) * bn.weight[None, :, None, None]
            + bn.bias[None, :, None, None])


def emb(seq, x):
    """1x1 conv, BN, ReLU."""
    return torch.relu(batch_norm(seq[1], conv1x1(seq[0].weight, x)))


def weight_net(seq, x):
    """1x1 conv, BN, ReLU, 1x1 conv, BN."""
    hidden = torch.relu(batch_norm(seq[1], conv1x1(seq[0].weight, x)))
    return batch_norm(seq[4], conv1x1(seq[3].weight, hidden))


def spatial_reference(m, x):
    """RGA-S on an (N, C, h, w) map of the grid size: the gate (N, 1, h, w)."""
    n, c, h, w = x.shape
    s = h * w
    theta = emb(m.theta_spatial, x).reshape(n, -1, s)
    phi = emb(m.phi_spatial, x).reshape(n, -1, s)
    g = torch.einsum('nkp,nkq->npq', theta, phi)  # g[p, q] = theta_p . phi_q
    # at position p: channel i of the first half is g[p, i], of the second half g[i, p]
    relation = torch.cat((g.permute(0, 2, 1), g), 1).reshape(n, 2 * s, h, w)
    own = emb(m.gx_spatial, x).mean(1, keepdim=True)
    y = torch.cat((own, emb(m.gg_spatial, relation)), 1)
    return torch.sigmoid(weight_net(m.W_spatial, y))


def channel_reference(m, x):
    """RGA-C on an (N, C, h, w) map of the grid size: the gate (N, C, 1, 1)."""
    n, c, h, w = x.shape
    positions = x.reshape(n, c, h * w).permute(0, 2, 1)[..., None]  # (N, S, C, 1)
    theta = emb(m.theta_channel, positions)[..., 0]
    phi = emb(m.phi_channel, positions)[..., 0]
    g = torch.einsum('nki,nkj->nij', theta, phi)  # (N, C, C)
    relation = torch.cat((g.permute(0, 2, 1), g), 1)[..., None]
    own = emb(m.gx_channel, positions).mean(1, keepdim=True)
    y = torch.cat((own, emb(m.gg_channel, relation)), 1)  # (N, 1 + c', C, 1)
    return torch.sigmoid(weight_net(m.W_channel, y)).reshape(n, c, 1, 1)


def adaptive_pool(x, grid):
    """PyTorch's adaptive average pooling, window by window."""
    n, c, h, w = x.shape
    out = torch.zeros(n, c, *grid, dtype=x.dtype)
    for i in range(grid[0]):
        for j in range(grid[1]):
            rows = slice(i * h // grid[0], -(-(i + 1) * h // grid[0]))
            cols = slice(j * w // grid[1], -(-(j + 1) * w // grid[1]))
            out[:, :, i, j] = x[:, :, rows, cols].mean((2, 3))
    return out


def rga_reference(m, x):
    """The whole module: pool to the grid, spatial gate resized back, then the channel
    gate of the pooled spatially gated x."""
    grid = m.grid_size
    if m.use_spatial:
        pooled = x if x.shape[2:] == grid else adaptive_pool(x, grid)
        gate = spatial_reference(m, pooled)
        if x.shape[2:] != grid:
            gate = F.interpolate(gate, size=x.shape[2:], mode='bilinear', align_corners=False)
        x = x * gate
    if m.use_channel:
        pooled = x if x.shape[2:] == grid else adaptive_pool(x, grid)
        x = x * channel_reference(m, pooled)
    return x


@pytest.mark.parametrize('kwargs,size', [
    (dict(grid_size=(8, 7)), (8, 7)),  # the official computation: on the grid
    (dict(grid_size=(6, 5)), (11, 9)),  # pooled to the grid
    (dict(grid_size=(6, 5)), (3, 2)),  # a grid larger than the map
    (dict(use_channel=False, grid_size=8), (8, 8)),
    (dict(use_spatial=False, grid_size=(7, 8)), (9, 13)),
    (dict(grid_size=4, reduction=4, spatial_reduction=2, down_reduction=3), (4, 4))])
def test_equation(kwargs, size):
    torch.manual_seed(0)
    rga = perturb_parameters(RGA(64, **kwargs), scale=0.3).to(DOUBLE).train()
    x = torch.randn(3, 64, *size, dtype=DOUBLE)
    torch.testing.assert_close(rga(x), rga_reference(rga, x))


def test_eval_uses_running_statistics():
    rga = perturb_parameters(RGA(32, grid_size=(4, 6)), scale=0.3).to(DOUBLE)
    with torch.no_grad():
        for module in rga.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.)
    rga.eval()
    x = torch.randn(2, 32, 9, 7, dtype=DOUBLE)
    with torch.no_grad():
        torch.testing.assert_close(rga(x), rga_reference(rga, x))


# --- the paper's check, the size policy ----------------------------------------------------


def zero_last_norms(rga):
    with torch.no_grad():
        for name in ('W_spatial', 'W_channel'):
            if hasattr(rga, name):
                getattr(rga, name)[4].weight.zero_()
                getattr(rga, name)[4].bias.zero_()
    return rga


@pytest.mark.parametrize('kwargs,factor', [(dict(use_channel=False), 0.5),
                                           (dict(use_spatial=False), 0.5), (dict(), 0.25)])
@pytest.mark.parametrize('size', [(6, 6), (9, 5)])
def test_zero_last_norms_give_a_fixed_fraction(kwargs, factor, size):
    """The spec's check: with the last BN of each W-net at gamma = beta = 0, RGA-S gives
    x / 2 and RGA-SC x / 4, exactly."""
    rga = zero_last_norms(perturb_parameters(RGA(16, grid_size=6, **kwargs), scale=0.3))
    x = torch.randn(2, 16, *size)
    for mode in (True, False):
        assert torch.equal(rga.train(mode)(x), x * factor)


def test_grid_size_is_computed_without_pooling_or_resizing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('pooled or resized on the grid size')

    rga = perturb_parameters(RGA(16, grid_size=(5, 7))).eval()
    strict = RGA(16, grid_size=(5, 7), size_policy='strict').eval()
    strict.load_state_dict(rga.state_dict())
    x = torch.randn(2, 16, 5, 7)
    monkeypatch.setattr(size_policy, 'adaptive_pool_matrix', refuse)
    monkeypatch.setattr(F, 'interpolate', refuse)
    with torch.no_grad():
        assert torch.equal(rga(x), strict(x))


def test_pool_policy_pools_both_branches():
    rga = perturb_parameters(RGA(16, grid_size=(4, 3)), scale=0.3).eval()
    x = torch.randn(2, 16, 9, 10)
    pooled = F.adaptive_avg_pool2d(x, (4, 3))
    with torch.no_grad():
        gate = rga.spatial_gate(x)
        assert gate.shape == (2, 1, 9, 10)
        torch.testing.assert_close(gate, F.interpolate(rga.spatial_gate(pooled), size=(9, 10),
                                                       mode='bilinear', align_corners=False))
        torch.testing.assert_close(rga.channel_gate(x), rga.channel_gate(pooled))


def test_strict_refuses_other_sizes():
    rga = RGA(16, grid_size=(5, 7), size_policy='strict')
    rga(torch.randn(2, 16, 5, 7))
    with pytest.raises(ValueError, match=r"RGA with size_policy='strict' was built for 5x7"):
        rga(torch.randn(2, 16, 7, 5))
    with pytest.raises(ValueError, match=r'5x7 maps .* but got 6x6'):
        RGA(16, use_spatial=False, grid_size=(5, 7), size_policy='strict')(
            torch.randn(2, 16, 6, 6))


def test_channel_branch_sees_positions_as_channels():
    """The channel branch's convolutions have one input channel per grid cell: swapping two
    cells of the input equals swapping the matching input channels of its first convs."""
    rga = perturb_parameters(RGA(16, use_spatial=False, grid_size=(2, 3)), scale=0.3).eval()
    x = torch.randn(2, 16, 2, 3)
    order = [1, 0, 2, 3, 4, 5]
    swapped = x.flatten(2)[:, :, order].reshape(2, 16, 2, 3)
    other = RGA(16, use_spatial=False, grid_size=(2, 3)).eval()
    other.load_state_dict(rga.state_dict())
    with torch.no_grad():
        for name in ('theta_channel', 'phi_channel', 'gx_channel'):
            getattr(other, name)[0].weight.copy_(getattr(rga, name)[0].weight[:, order])
        torch.testing.assert_close(other.channel_gate(swapped), rga.channel_gate(x))
        assert not torch.allclose(rga.channel_gate(swapped), rga.channel_gate(x))


# --- parameters, initialisation, state dict ------------------------------------------------


def expected_params(c, s, spatial=True, channel=True, r=8, rs=8, rd=8):
    """The spec's formula, with the widths c' = C / r, s' = S / rs, W(n) = (n + 3) n' + 2."""
    c_, s_ = c // r, s // rs

    def w(n):
        return (n + 3) * (n // rd) + 2

    total = 0
    if spatial:
        total += 3 * (c * c_ + 2 * c_) + 2 * s * s_ + 2 * s_ + w(1 + s_)
    if channel:
        total += 3 * (s * s_ + 2 * s_) + 2 * c * c_ + 2 * c_ + w(1 + c_)
    return total


@pytest.mark.parametrize('channels', [64, 256, 1024])
@pytest.mark.parametrize('grid', [(14, 14), (8, 8), (16, 8), (7, 12)])
@pytest.mark.parametrize('branches', [(True, True), (True, False), (False, True)])
def test_parameter_count(channels, grid, branches):
    rga = RGA(channels, use_spatial=branches[0], use_channel=branches[1], grid_size=grid)
    assert (sum(p.numel() for p in rga.parameters())
            == expected_params(channels, grid[0] * grid[1], *branches))


def test_parameter_count_spec_figures():
    count = [sum(p.numel() for p in RGA(256, grid_size=g, use_spatial=sp, use_channel=ch)
                 .parameters()) for g, sp, ch in [(14, True, True), ((64, 32), True, True),
                                                  ((64, 32), True, False),
                                                  ((64, 32), False, True)]]
    assert count == [65_160, 2_673_172, 1_082_178, 1_590_994]


def test_min_channels_floor():
    """Where the official widths would be 0 (C < 8, S < 8, 1 + c' < 8) they are floored."""
    rga = RGA(4, grid_size=2)
    assert rga.theta_spatial[0].out_channels == 1 and rga.theta_channel[0].out_channels == 1
    assert rga.W_spatial[0].out_channels == 1 and rga.W_channel[0].out_channels == 1
    wide = RGA(64, grid_size=16)  # the official widths: c' = 8, s' = 32, W: 9 -> 1, 33 -> 4
    assert (wide.inter_channel, wide.inter_spatial) == (8, 32)
    assert wide.W_spatial[0].out_channels == 4 and wide.W_channel[0].out_channels == 1
    assert RGA(64, grid_size=2, min_channels=3).W_channel[0].out_channels == 3
    assert rga(torch.randn(2, 4, 3, 3)).shape == (2, 4, 3, 3)


def test_initialisation_is_pytorch_default():
    rga = RGA(32, grid_size=4)
    rga.init_weights()
    for module in rga.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
        elif isinstance(module, torch.nn.Conv2d):
            assert module.bias is None
            bound = module.in_channels ** -0.5  # kaiming_uniform(a=sqrt(5)) on a 1x1 kernel
            assert module.weight.abs().max() <= bound


def test_state_dict_keys_are_the_official_ones():
    keys = [k for k in RGA(64, grid_size=8).state_dict() if k.endswith('weight')]
    assert keys == [
        'gx_spatial.0.weight', 'gx_spatial.1.weight', 'gx_channel.0.weight',
        'gx_channel.1.weight', 'gg_spatial.0.weight', 'gg_spatial.1.weight',
        'gg_channel.0.weight', 'gg_channel.1.weight', 'W_spatial.0.weight',
        'W_spatial.1.weight', 'W_spatial.3.weight', 'W_spatial.4.weight',
        'W_channel.0.weight', 'W_channel.1.weight', 'W_channel.3.weight',
        'W_channel.4.weight', 'theta_spatial.0.weight', 'theta_spatial.1.weight',
        'phi_spatial.0.weight', 'phi_spatial.1.weight', 'theta_channel.0.weight',
        'theta_channel.1.weight', 'phi_channel.0.weight', 'phi_channel.1.weight']
    assert RGA(64, grid_size=8).gg_spatial[0].weight.shape == (8, 128, 1, 1)
    assert not any('channel' in k for k in RGA(64, use_channel=False).state_dict())


def test_registered_with_metadata():
    rga = MODELS.build(dict(type='RGA', in_channels=32))
    assert isinstance(rga, RGA) and rga.grid_size == (14, 14) and rga.size_policy == 'pool'
    assert RGA.paper_position == 'after_every_stage' and RGA._abbr_ == 'rga'
    assert 'grid_size=(14, 14)' in repr(rga)


# --- the methods behind the forward and the maps --------------------------------------------


@pytest.mark.parametrize('kwargs', [dict(), dict(use_channel=False), dict(use_spatial=False)])
def test_gates_rebuild_the_forward_and_are_the_maps(kwargs):
    rga = perturb_parameters(RGA(16, grid_size=(4, 5), **kwargs), scale=0.3).eval()
    x = torch.randn(2, 16, 7, 9)
    with torch.no_grad():
        y = x
        maps = rga.attention_maps(x)
        assert set(maps) == ({'spatial_gate'} if rga.use_spatial else set()) | (
            {'channel_gate'} if rga.use_channel else set())
        if rga.use_spatial:
            gate = rga.spatial_gate(y)
            assert torch.equal(maps['spatial_gate'].values, gate[:, 0])
            y = y * gate
        if rga.use_channel:
            gate = rga.channel_gate(y)
            assert torch.equal(maps['channel_gate'].values, gate.flatten(1))
            y = y * gate
        torch.testing.assert_close(rga(x), y)
        for attention_map in maps.values():
            assert attention_map.values.min() >= 0 and attention_map.values.max() <= 1


# --- argument checks ---------------------------------------------------------------------


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(use_spatial=1), 'use_spatial'),
    (dict(use_channel='no'), 'use_channel'),
    (dict(use_spatial=False, use_channel=False), 'use_spatial and use_channel'),
    (dict(grid_size=0), 'grid_size'), (dict(grid_size=(4, 4, 4)), 'grid_size'),
    (dict(size_policy='crop'), 'size_policy'), (dict(reduction=0), 'reduction'),
    (dict(spatial_reduction=0), 'spatial_reduction'),
    (dict(down_reduction=0), 'down_reduction'), (dict(min_channels=0), 'min_channels')])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'RGA: {argument}'):
        RGA(**dict(dict(in_channels=8), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyRGA', (RGA, ), {'_abbr_': 'my_rga'})
    with pytest.raises(ValueError, match='MyRGA: size_policy'):
        sub(8, size_policy='crop')
    with pytest.raises(ValueError, match="MyRGA with size_policy='strict'"):
        sub(8, grid_size=3, size_policy='strict')(torch.randn(1, 8, 4, 4))


def test_trace_on_the_grid_size_is_specialised_to_it():
    """Known limit (as GatherExcite): traced on its grid size the module has no pooling in
    its graph and runs that size only; traced on another size, it pools any size."""
    rga = perturb_parameters(RGA(16, grid_size=(4, 5)), scale=0.3).eval()
    with torch.no_grad():
        on_grid = torch.jit.trace(rga, torch.randn(1, 16, 4, 5), check_trace=False)
        with pytest.raises(RuntimeError):
            on_grid(torch.randn(1, 16, 6, 7))
        off_grid = torch.jit.trace(rga, torch.randn(1, 16, 8, 9), check_trace=False)
        x = torch.randn(2, 16, 6, 7)
        torch.testing.assert_close(off_grid(x), rga(x))
