"""CBAM: the defining equation, the shared MLP, the spatial gate, its maps, parameters,
arguments."""
import functools

import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.channel_spatial.cbam import CBAM
from cvattn_mm.visualization import extract_maps

from . import contract

# Bottleneck output channels of ResNet-50 (3, 4, 6, 3 blocks); CBAM sits in every block.
RESNET50_BLOCKS = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
RESNET50_PARAMS = 25_557_032  # torchvision / mmpretrain ResNet-50


def cbam_params(channels, reduction=16, kernel_size=7):
    hidden = channels // reduction
    return 2 * channels * hidden + hidden + channels + 2 * kernel_size**2 + 2


@pytest.mark.parametrize('kwargs', [
    dict(use_spatial=False),
    dict(use_channel=False),
    dict(kernel_size=3, reduction=4),
    dict(reduction=16, min_channels=4),
    dict(norm_cfg=dict(type='GN', num_groups=1), act_cfg=dict(type='GELU')),
], ids=str)
def test_contract_variants(kwargs):
    contract.run_contract(functools.partial(CBAM, 32, **kwargs))


def bn_eval(x, norm):
    return ((x - norm.running_mean[None, :, None, None])
            / torch.sqrt(norm.running_var[None, :, None, None] + norm.eps)
            * norm.weight[None, :, None, None] + norm.bias[None, :, None, None])


def direct_cbam(module, x):
    """CBAM written out with matrix products, independent of the module's layers."""
    w1 = module.fc1.weight.flatten(1)
    b1 = module.fc1.bias
    w2 = module.fc2.weight.flatten(1)
    b2 = module.fc2.bias

    def mlp(v):  # (N, C) -> (N, C), the ONE shared MLP
        return torch.relu(v @ w1.T + b1) @ w2.T + b2

    flat = x.flatten(2)
    mc = torch.sigmoid(mlp(flat.mean(2)) + mlp(flat.max(2).values))
    xc = x * mc[:, :, None, None]
    pooled = torch.stack([xc.max(1).values, xc.mean(1)], 1)
    k = module.kernel_size
    ms = F.conv2d(F.pad(pooled, [k // 2] * 4), module.spatial_conv.weight)
    ms = torch.sigmoid(bn_eval(ms, module.spatial_norm))
    return xc * ms


@pytest.mark.parametrize('size', [(5, 5), (6, 9), (1, 1)])
def test_equation_against_direct_computation(size):
    torch.manual_seed(0)
    module = contract.perturb_parameters(CBAM(16, reduction=4), scale=0.5).eval()
    module.spatial_norm.running_mean.fill_(0.1)
    module.spatial_norm.running_var.fill_(2.0)
    x = torch.randn(2, 16, *size)
    with torch.no_grad():
        torch.testing.assert_close(module(x), direct_cbam(module, x), rtol=1e-5, atol=1e-6)


def test_one_mlp_shared_by_both_pools():
    module = CBAM(32, reduction=8)
    convs = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == ['fc1', 'fc2', 'spatial_conv']
    assert module.fc1.weight.shape == (4, 32, 1, 1) and module.fc1.bias is not None
    assert module.fc2.weight.shape == (32, 4, 1, 1) and module.fc2.bias is not None
    # Channel gate alone = sigmoid(MLP(avg) + MLP(max)) with the same weights for both.
    only_channel = CBAM(32, reduction=8, use_spatial=False)
    only_channel.load_state_dict({k: v for k, v in module.state_dict().items()
                                  if k.startswith('fc')})
    x = torch.randn(3, 32, 4, 7)
    with torch.no_grad():
        mlp = lambda v: module.fc2(torch.relu(module.fc1(v)))  # noqa: E731
        gate = torch.sigmoid(mlp(x.mean((2, 3), keepdim=True))
                             + mlp(x.amax((2, 3), keepdim=True)))
        torch.testing.assert_close(only_channel(x), x * gate)


@pytest.mark.parametrize('kernel_size', [3, 7, 9])
@pytest.mark.parametrize('size', [(1, 1), (2, 3), (7, 7), (13, 17), (30, 4)])
def test_spatial_gate_keeps_size(kernel_size, size):
    module = CBAM(16, kernel_size=kernel_size).eval()
    seen = []
    module.spatial_conv.register_forward_hook(lambda m, i, o: seen.append((i[0].shape,
                                                                           o.shape)))
    with torch.no_grad():
        y = module(torch.randn(2, 16, *size))
    assert y.shape == (2, 16, *size)
    assert seen == [((2, 2, *size), (2, 1, *size))]
    assert module.spatial_conv.bias is None
    assert module.spatial_conv.padding == ((kernel_size - 1) // 2, ) * 2


def gates(module, x):
    """The gates of the forward, from the module's gate methods: ``y = x * channel *
    spatial``, the spatial gate computed on ``x * channel`` (each present when used)."""
    result = {}
    if module.use_channel:
        result['channel'] = module.channel_gate(x.mean((2, 3), keepdim=True),
                                                x.amax((2, 3), keepdim=True))
        x = x * result['channel']
    if module.use_spatial:
        result['spatial'] = module.spatial_gate(x.amax(1, keepdim=True), x.mean(1, keepdim=True))
    return result


def build_for_maps(**kwargs):
    torch.manual_seed(0)
    return contract.perturb_parameters(CBAM(32, **kwargs), scale=0.5).eval()


def map_input(size=(8, 10)):
    return torch.randn(2, 32, *size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize('kwargs', [{}, dict(use_channel=False), dict(use_spatial=False)],
                         ids=str)
def test_gates_rebuild_the_forward(kwargs):
    module = build_for_maps(**kwargs)
    x = map_input(size=(7, 10))
    with torch.no_grad():
        expected = module(x)
        rebuilt = x
        for gate in gates(module, x).values():
            rebuilt = rebuilt * gate
        maps = extract_maps(module, x)
    err = (rebuilt - expected).abs().max().item()
    assert err <= 1e-4 * (expected.abs().max().item() + 1e-6), f'CBAM {kwargs}: {err:.3g}'
    assert maps


def test_channel_and_spatial_maps_match_the_gates():
    module = build_for_maps()
    x = map_input()
    maps = extract_maps(module, x)
    with torch.no_grad():
        g = gates(module, x)
    assert torch.equal(maps['channel_gate'].values, g['channel'].flatten(1))
    assert torch.equal(maps['spatial_gate'].values, g['spatial'][:, 0])


def test_no_residual():
    """Both gates are in (0, 1): every output is strictly smaller than its input."""
    module = contract.perturb_parameters(CBAM(16, reduction=4), scale=1.0).eval()
    x = torch.randn(2, 16, 6, 5)
    with torch.no_grad():
        y = module(x)
    assert (y.abs() < x.abs()).all()
    assert (torch.sign(y) == torch.sign(x)).all()


def test_spatial_norm_zero_init_survives_init_cfg():
    module = CBAM(16, init_cfg=dict(type='Constant', layer='BatchNorm2d', val=1.0))
    assert (module.spatial_norm.weight == 0).all()
    module.init_weights()
    assert (module.spatial_norm.weight == 0).all()
    # Hence the spatial gate is 0.5 everywhere at step 0 (eval, fresh running stats).
    only_channel = CBAM(16, use_spatial=False)
    only_channel.load_state_dict({k: v for k, v in module.state_dict().items()
                                  if k.startswith('fc')})
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(module.eval()(x), 0.5 * only_channel.eval()(x))


def test_batch_one_of_1x1_map_in_training_uses_running_stats():
    module = contract.perturb_parameters(CBAM(16, reduction=4))
    module.spatial_norm.running_mean.fill_(0.3)
    stats = [b.clone() for b in module.spatial_norm.buffers()]
    x = torch.randn(1, 16, 1, 1)
    y = module.train()(x)
    assert all(torch.equal(a, b) for a, b in zip(stats, module.spatial_norm.buffers(), strict=True))
    y.sum().backward()
    assert module.spatial_conv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(y, module.eval()(x))


@pytest.mark.parametrize('channels', [256, 2048])
def test_parameter_count(channels):
    module = CBAM(channels)
    params = sum(p.numel() for p in module.parameters())
    print(f'CBAM C={channels}: {params} params')
    assert params == cbam_params(channels)
    assert sum(p.numel() for p in CBAM(channels, use_spatial=False).parameters()) == (
        cbam_params(channels) - 2 * 7 * 7 - 2)


def test_parameter_count_resnet50_matches_paper():
    """The paper's Table 2: ResNet-50 + CBAM has 28.09M parameters."""
    added = sum(sum(p.numel() for p in CBAM(c).parameters()) for c in RESNET50_BLOCKS)
    assert added == sum(cbam_params(c) for c in RESNET50_BLOCKS)
    assert round((RESNET50_PARAMS + added) / 1e6, 2) == 28.09


@pytest.mark.parametrize('kwargs, argument', [
    (dict(in_channels=0), 'in_channels'),
    (dict(in_channels=16, reduction=0), 'reduction'),
    (dict(in_channels=16, reduction=32), 'reduction'),
    (dict(in_channels=16, reduction=2.0), 'reduction'),
    (dict(in_channels=16, min_channels=0), 'min_channels'),
    (dict(in_channels=16, kernel_size=4), 'kernel_size'),
    (dict(in_channels=16, kernel_size=0), 'kernel_size'),
    (dict(in_channels=16, use_channel='yes'), 'use_channel'),
    (dict(in_channels=16, use_spatial=None), 'use_spatial'),
    (dict(in_channels=16, use_channel=False, use_spatial=False), 'use_spatial'),
])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'CBAM.*{argument}'):
        CBAM(**kwargs)


def test_errors_name_the_subclass():
    sub = type('MyCBAM', (CBAM, ), {'_abbr_': 'my_cbam'})
    with pytest.raises(ValueError, match='MyCBAM.*kernel_size'):
        sub(16, kernel_size=4)
    with pytest.raises(ValueError, match='MyCBAM.*use_spatial'):
        sub(16, use_channel=False, use_spatial=False)
