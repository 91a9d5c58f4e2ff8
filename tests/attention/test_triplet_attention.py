"""TripletAttention: variants, the rotate-and-gate definition, its maps, parameter count,
arguments."""
import functools

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from cvattn_mm.attention.channel_spatial import TripletAttention
from cvattn_mm.registry import MODELS
from cvattn_mm.visualization import extract_maps

from . import contract


def param_count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('kwargs', [
    dict(in_channels=32, kernel_size=3),
    dict(in_channels=32, no_spatial=True),
    dict(in_channels=None, kernel_size=5),
    dict(in_channels=16, norm_cfg=dict(type='GN', num_groups=1)),
], ids=['k3', 'no_spatial', 'any_channels', 'gn'])
def test_contract_variants(kwargs):
    contract.run_contract(functools.partial(TripletAttention, **kwargs))


def _bn(t, bn, training):
    """BatchNorm of a one-channel map, written out."""
    if training:
        mean = t.mean()
        var = t.var(unbiased=False)
    else:
        mean, var = bn.running_mean.double(), bn.running_var.double()
    return (t - mean) / torch.sqrt(var + bn.eps) * bn.weight.double() + bn.bias.double()


def _gate(x_rotated, conv, bn, training):
    """The paper's branch on a rotated tensor: Z-pool over dim 1, conv, BN, sigmoid, product."""
    z = torch.cat((x_rotated.max(dim=1, keepdim=True)[0],
                   x_rotated.mean(dim=1, keepdim=True)), dim=1)
    s = F.conv2d(z, conv.weight.double(), padding=conv.kernel_size[0] // 2)
    return x_rotated * torch.sigmoid(_bn(s, bn, training))


def _naive(module, x, training):
    """Triplet attention with explicit rotations, as in the paper's figure (float64)."""
    x = x.double()
    # Branch 1: rotate so that H is the pooled axis: (N, H, C, W); gate the (C, W) plane.
    b1 = _gate(x.permute(0, 2, 1, 3), module.conv_cw, module.bn_cw, training)
    b1 = b1.permute(0, 2, 1, 3)
    # Branch 2: rotate so that W is the pooled axis: (N, W, H, C); gate the (H, C) plane.
    b2 = _gate(x.permute(0, 3, 2, 1), module.conv_hc, module.bn_hc, training)
    b2 = b2.permute(0, 3, 2, 1)
    if module.no_spatial:
        return (b1 + b2) / 2
    b3 = _gate(x, module.conv_hw, module.bn_hw, training)
    return (b1 + b2 + b3) / 3


def _randomise(module, gen):
    contract.perturb_parameters(module, scale=0.3)
    for bn in (m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        with torch.no_grad():
            bn.running_mean.copy_(torch.randn(1, generator=gen) * 0.1)
            bn.running_var.copy_(torch.rand(1, generator=gen) + 0.5)
    return module


@pytest.mark.parametrize('no_spatial', [False, True], ids=['three', 'no_spatial'])
@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
def test_equation_against_explicit_rotations(no_spatial, training):
    gen = torch.Generator().manual_seed(3)
    module = _randomise(TripletAttention(6, no_spatial=no_spatial), gen).train(training)
    # C, H, W all different, so a wrong axis or orientation cannot go unnoticed.
    x = torch.randn(2, 6, 9, 11, generator=gen)
    expected = _naive(module, x, training)
    with torch.no_grad():
        y = module(x)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('kwargs', [{}, dict(no_spatial=True)], ids=str)
def test_gates_rebuild_the_forward(kwargs):
    torch.manual_seed(0)
    module = contract.perturb_parameters(TripletAttention(32, **kwargs), scale=0.5).eval()
    x = torch.randn(2, 32, 7, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x)
        gates = module.gates(*[pool for d in module.pooled_axes
                               for pool in (x.amax(d, keepdim=True), x.mean(d, keepdim=True))])
        rebuilt = x * (sum(gates) / len(gates))
        maps = extract_maps(module, x)
    err = (rebuilt - expected).abs().max().item()
    assert err <= 1e-4 * (expected.abs().max().item() + 1e-6), f'Triplet {kwargs}: {err:.3g}'
    assert maps


def test_kernels_are_not_symmetric_in_the_check():
    """The equation test would miss a transposed kernel if the kernels were symmetric."""
    module = contract.perturb_parameters(TripletAttention(6))
    w = module.conv_hc.weight
    assert not torch.allclose(w, w.transpose(2, 3))


class _FullSizeCounter(TorchDispatchMode):
    """Counts operator outputs as large as the input (materialised full-size tensors)."""

    def __init__(self, numel):
        super().__init__()
        self.numel = numel
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.numel() >= self.numel:
            self.ops.append(str(func))
        return out


def test_no_permuted_copies_of_the_input():
    """Only the gate sum (2 adds) and the product touch full-size tensors."""
    module = TripletAttention(32).eval()
    x = torch.randn(2, 32, 12, 10)
    with torch.no_grad(), _FullSizeCounter(x.numel()) as counter:
        module(x)
    assert len(counter.ops) == 3, counter.ops
    assert not any('permute' in op or 'clone' in op or 'copy' in op for op in counter.ops)


@pytest.mark.parametrize('channels', [256, 2048])
def test_param_count(channels):
    module = TripletAttention(channels)
    print(f'TripletAttention C={channels}: {param_count(module)} parameters')
    assert param_count(module) == 3 * (2 * 7 * 7 + 2) == 300
    assert param_count(TripletAttention(channels, no_spatial=True)) == 2 * (2 * 49 + 2)
    assert param_count(TripletAttention(channels, kernel_size=3)) == 3 * (2 * 9 + 2)


def test_default_norm_follows_the_official_momentum():
    module = TripletAttention(8)
    assert module.bn_cw.momentum == 0.01 and module.bn_cw.eps == 1e-5
    assert module.conv_cw.bias is None


@pytest.mark.parametrize('kwargs, argument', [
    (dict(in_channels=0), 'in_channels'),
    (dict(in_channels=8, kernel_size=4), 'kernel_size'),
    (dict(in_channels=8, kernel_size=0), 'kernel_size'),
    (dict(in_channels=8, kernel_size=7.0), 'kernel_size'),
    (dict(in_channels=8, no_spatial='yes'), 'no_spatial'),
])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'TripletAttention.*{argument}'):
        TripletAttention(**kwargs)


def test_errors_name_the_subclass():
    sub = type('MyTripletAttention', (TripletAttention, ), {'_abbr_': 'my_triplet_attention'})
    with pytest.raises(ValueError, match='MyTripletAttention.*kernel_size'):
        sub(8, kernel_size=4)


def test_registry_metadata():
    cls = MODELS.get('TripletAttention')
    assert cls is TripletAttention
    assert cls.family == 'channel_spatial' and cls.paper_position == 'residual_end'
    assert 'arXiv:2010.03045' in cls.paper


def test_training_path_matches_inference_path():
    """With gradients on, the pooled maps are convolved as NHWC: same values, same grads."""
    module = contract.perturb_parameters(TripletAttention(8)).eval()
    x = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        expected = module(x)
    xg = x.clone().requires_grad_()
    y = module(xg)
    torch.testing.assert_close(y.detach(), expected, rtol=1e-5, atol=1e-6)
    y.sum().backward()
    x64 = x.double().requires_grad_()
    _naive(module, x64, training=False).sum().backward()
    torch.testing.assert_close(xg.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)
