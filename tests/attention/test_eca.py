"""ECA: adaptive kernel size, the defining equation, parameters, maps, argument checks."""
import functools
import math

import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.channel.eca import ECA, eca_kernel_size
from cvattn_mm.visualization import extract_maps

from . import contract

# k for the channel counts of ResNet-50-like stages, worked out by hand from
# t = int(|(log2 C + 1) / 2|), k = t if t is odd else t + 1.
EXPECTED_K = {64: 3, 128: 5, 256: 5, 512: 5, 1024: 5, 2048: 7}


@pytest.mark.parametrize('channels', sorted(EXPECTED_K))
def test_adaptive_kernel_size(channels):
    t = int(abs((math.log(channels, 2) + 1) / 2))
    k = t if t % 2 == 1 else t + 1
    assert k == EXPECTED_K[channels]
    assert eca_kernel_size(channels) == k
    module = ECA(channels)
    assert module.kernel_size == k
    assert module.conv.weight.shape == (1, 1, k)
    assert module.conv.padding == ((k - 1) // 2, )
    assert module.conv.bias is None


def test_adaptive_kernel_size_gamma_b():
    # gamma=1, b=0 at C=256: t = 8 -> k = 9; gamma=3, b=2 at C=64: t = int(8 / 3) = 2 -> 3.
    assert ECA(256, gamma=1, b=0).kernel_size == 9
    assert ECA(64, gamma=3, b=2).kernel_size == 3
    # Small C: t = int(|(0 + 1) / 2|) = 0 -> k = 1.
    assert ECA(1).kernel_size == 1


@pytest.mark.parametrize('k', [1, 3, 9])
def test_explicit_kernel_overrides(k):
    module = ECA(2048, kernel_size=k)
    assert module.kernel_size == k and module.conv.weight.shape == (1, 1, k)


def test_equation_against_direct_computation():
    torch.manual_seed(0)
    module = ECA(10, kernel_size=5)
    x = torch.randn(2, 10, 5, 3)
    weight = module.conv.weight.detach().flatten()  # k taps
    pooled = x.mean((2, 3))
    gate = torch.empty(2, 10)
    for n in range(2):
        for c in range(10):
            acc = 0.0
            for j in range(5):
                src = c + j - 2  # zero padding outside [0, C)
                if 0 <= src < 10:
                    acc += weight[j] * pooled[n, src]
            gate[n, c] = 1 / (1 + math.exp(-float(acc)))
    expected = x * gate[:, :, None, None]
    with torch.no_grad():
        assert torch.allclose(module(x), expected, atol=1e-6)


def test_channels_are_mixed_locally_only():
    """Changing channel 0 changes gates only within (k - 1) / 2 channels of it."""
    module = contract.perturb_parameters(ECA(16, kernel_size=3))
    x = torch.randn(1, 16, 4, 4)
    x2 = x.clone()
    x2[:, 0] += 1
    with torch.no_grad():
        diff = (module(x2) - module(x)).abs().amax((0, 2, 3))
    assert (diff[:2] > 0).all() and (diff[2:] == 0).all()


@pytest.mark.parametrize('channels', [256, 2048])
def test_parameter_count(channels):
    module = ECA(channels)
    params = sum(p.numel() for p in module.parameters())
    print(f'ECA C={channels}: {params} params (k={module.kernel_size})')
    assert params == EXPECTED_K[channels]


@pytest.mark.parametrize('kwargs', [
    dict(kernel_size=3), dict(kernel_size=1), dict(kernel_size=9), dict(gamma=1, b=0)
], ids=str)
def test_contract_variants(kwargs):
    contract.run_contract(functools.partial(ECA, 64, **kwargs))


@pytest.mark.parametrize('kwargs, arg', [
    (dict(in_channels=0), 'in_channels'),
    (dict(in_channels=64, kernel_size=4), 'kernel_size'),
    (dict(in_channels=64, kernel_size=0), 'kernel_size'),
    (dict(in_channels=64, kernel_size=3.0), 'kernel_size'),
    (dict(in_channels=64, gamma=0), 'gamma'),
    (dict(in_channels=64, gamma=None), 'gamma'),
    (dict(in_channels=64, b=-1), 'b'),
    (dict(in_channels=64, b=float('nan')), 'b'),
], ids=str)
def test_invalid_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=rf'ECA: {arg} '):
        ECA(**kwargs)


def test_even_kernel_message():
    with pytest.raises(ValueError, match='ECA: kernel_size must be odd.*got 4'):
        ECA(64, kernel_size=4)


def test_matches_functional_form():
    """The same gate through F.conv1d on the transposed pooled vector (official layout)."""
    module = contract.perturb_parameters(ECA(32))
    x = torch.randn(3, 32, 7, 5).to(memory_format=torch.channels_last)
    pooled = F.adaptive_avg_pool2d(x, 1)  # (N, C, 1, 1)
    y = F.conv1d(pooled.squeeze(-1).transpose(-1, -2), module.conv.weight,
                 padding=module.kernel_size // 2)
    expected = x * torch.sigmoid(y.transpose(-1, -2).unsqueeze(-1))
    with torch.no_grad():
        contract.assert_close_rel(module(x), expected, 1e-6, 'official layout')


@pytest.mark.parametrize('kwargs', [{}, dict(kernel_size=5)], ids=str)
def test_maps_rebuild_the_forward(kwargs):
    torch.manual_seed(0)
    module = contract.perturb_parameters(ECA(32, **kwargs), scale=0.5).eval()
    x = torch.randn(2, 32, 7, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x)
        gate = module.channel_gate(x.mean((2, 3), keepdim=True))
        maps = extract_maps(module, x)
    contract.assert_close_rel(x * gate, expected, 1e-4, 'x * channel_gate')
    assert set(maps) == {'channel_gate'}
    assert torch.equal(maps['channel_gate'].values, gate.flatten(1))


def test_errors_name_the_subclass():
    class MyECA(ECA):
        _abbr_ = 'my_eca'

    with pytest.raises(ValueError, match='^MyECA: kernel_size must be odd'):
        MyECA(64, kernel_size=4)
    with pytest.raises(ValueError, match='^MyECA: gamma'):
        MyECA(64, gamma=0)
