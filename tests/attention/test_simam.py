"""SimAM: variants, the energy in float64, the one-position map, its maps, arguments, the
hand-written backward."""
import functools
import math

import pytest
import torch

from cvattn_mm.attention.channel_spatial import SimAM
from cvattn_mm.attention.fast_backward import fast_backward
from cvattn_mm.registry import MODELS
from cvattn_mm.visualization import extract_maps

from . import contract


@pytest.mark.parametrize('kwargs', [
    dict(in_channels=None),
    dict(in_channels=24, e_lambda=0.1),
    dict(in_channels=8, e_lambda=10.0),
], ids=['any_channels', 'released_lambda', 'large_lambda'])
def test_contract_variants(kwargs):
    contract.run_contract(functools.partial(SimAM, **kwargs))


def _inverse_energy(x, e_lambda):
    """1 / e_t* of the paper, neuron by neuron, in float64 with plain Python sums."""
    n_, c_, h_, w_ = x.shape
    out = torch.empty_like(x)
    for n in range(n_):
        for c in range(c_):
            values = x[n, c].flatten().tolist()
            m = len(values)
            mu = sum(values) / m
            var = sum((v - mu) ** 2 for v in values) / (m - 1)
            for i in range(h_):
                for j in range(w_):
                    t = x[n, c, i, j].item()
                    energy = 4 * (var + e_lambda) / ((t - mu) ** 2 + 2 * var + 2 * e_lambda)
                    out[n, c, i, j] = 1 / energy
    return out


@pytest.mark.parametrize('e_lambda', [1e-4, 0.1])
def test_energy_against_direct_formula_float64(e_lambda):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64) * 2 + 0.5
    expected = x * torch.sigmoid(_inverse_energy(x, e_lambda))
    y = SimAM(e_lambda=e_lambda)(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


def test_one_position_map_gives_sigmoid_half():
    """H * W = 1: n = 0, the variance is defined as 0, the gate is sigmoid(0.5), no NaN."""
    x = torch.randn(3, 5, 1, 1).requires_grad_()
    y = SimAM(5)(x)
    torch.testing.assert_close(y, x * (1 / (1 + math.exp(-0.5))))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_gate_rebuilds_the_forward():
    module = SimAM(32)
    x = torch.randn(2, 32, 7, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x)
        rebuilt = x * module.gate(x)
        maps = extract_maps(module, x)
    err = (rebuilt - expected).abs().max().item()
    assert err <= 1e-4 * (expected.abs().max().item() + 1e-6), f'SimAM: {err:.3g}'
    assert set(maps) == {'gate', 'channel_mean'}


def test_one_row_map_is_ordinary():
    """A 1 x W map is not special: n = W - 1."""
    x = torch.randn(2, 4, 1, 6, dtype=torch.float64)
    torch.testing.assert_close(SimAM()(x), x * torch.sigmoid(_inverse_energy(x, 1e-4)))


def test_constant_channel_is_finite():
    x = torch.full((1, 2, 4, 4), 3.0)
    y = SimAM()(x)
    torch.testing.assert_close(y, x * torch.sigmoid(torch.tensor(0.5)))


def test_half_precision_input():
    x = torch.randn(2, 8, 7, 9) * 3
    ref = SimAM()(x)
    for dtype in (torch.bfloat16, torch.float16):
        y = SimAM()(x.to(dtype))
        assert y.dtype == dtype and torch.isfinite(y).all()
        contract.assert_close_rel(y, ref, 0.05, f'{dtype} input')


@pytest.mark.parametrize('channels', [256, 2048])
def test_param_count(channels):
    module = SimAM(channels)
    count = sum(p.numel() for p in module.parameters())
    print(f'SimAM C={channels}: {count} parameters')
    assert count == 0 and not list(module.buffers())


def test_in_channels_optional_and_checked():
    SimAM()(torch.randn(1, 3, 4, 4))
    SimAM()(torch.randn(1, 17, 4, 4))
    with pytest.raises(ValueError, match=r'SimAM.*in_channels=8.*9 channels'):
        SimAM(8)(torch.randn(1, 9, 4, 4))


@pytest.mark.parametrize('kwargs, argument', [
    (dict(in_channels=0), 'in_channels'),
    (dict(in_channels=True), 'in_channels'),
    (dict(e_lambda=0), 'e_lambda'),
    (dict(e_lambda=-1e-4), 'e_lambda'),
    (dict(e_lambda=float('inf')), 'e_lambda'),
    (dict(e_lambda='small'), 'e_lambda'),
])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'SimAM.*{argument}'):
        SimAM(**kwargs)


def test_errors_name_the_subclass():
    sub = type('MySimAM', (SimAM, ), {'_abbr_': 'my_simam'})
    with pytest.raises(ValueError, match='MySimAM.*e_lambda'):
        sub(e_lambda=0)


def test_registry_metadata():
    cls = MODELS.get('SimAM')
    assert cls is SimAM
    assert cls.family == 'channel_spatial' and cls.paper_position == 'before_mid_norm'
    assert 'PMLR 139' in cls.paper


def test_trace_generalises_to_other_sizes():
    """n = H W - 1 is computed in the graph, not baked in at the traced size."""
    module = SimAM(4)
    traced = torch.jit.trace(module, torch.randn(1, 4, 8, 8), check_trace=False)
    for size in [(5, 7), (1, 1), (16, 3)]:
        x = torch.randn(2, 4, *size)
        torch.testing.assert_close(traced(x), module(x))


def _autograd_simam(x, e_lambda):
    """The plain ops, differentiated by autograd."""
    hw = x.shape[2] * x.shape[3]
    d = (x - x.mean((2, 3), keepdim=True)).square()
    inv = 1 / (d.sum((2, 3), keepdim=True) / max(hw - 1, 1) * 4 + 4 * e_lambda)
    return x * torch.sigmoid(d * inv + 0.5)


@pytest.mark.parametrize('shape', [(2, 3, 5, 7), (1, 4, 1, 1), (2, 2, 1, 6), (1, 2, 9, 1)])
@pytest.mark.parametrize('e_lambda', [1e-4, 0.1])
def test_hand_written_backward_equals_autograd(shape, e_lambda):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.3).requires_grad_()
    weight = torch.randn(shape, generator=gen, dtype=torch.float64)
    y = SimAM(e_lambda=e_lambda)(x)
    assert y.grad_fn.name() == '_SimAMBackward'
    (got,) = torch.autograd.grad((y * weight).sum(), x)
    expected_y = _autograd_simam(x, e_lambda)
    (expected,) = torch.autograd.grad((expected_y * weight).sum(), x)
    torch.testing.assert_close(y, expected_y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)
    assert torch.autograd.gradcheck(SimAM(e_lambda=e_lambda), (x,))


def test_switch_off_runs_plain_autograd():
    x = (torch.randn(2, 3, 5, 7, dtype=torch.float64) * 2 + 0.3).requires_grad_()
    with fast_backward(False):
        y = SimAM()(x)
    assert y.grad_fn.name() != '_SimAMBackward'
    (got,) = torch.autograd.grad(y.sum(), x)
    (expected,) = torch.autograd.grad(_autograd_simam(x, 1e-4).sum(), x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert SimAM()(x).grad_fn.name() == '_SimAMBackward'  # the switch is restored


def test_hand_written_backward_under_bf16_autocast():
    """The Function's amp decorators: the same output and gradient as the plain ops under
    CPU autocast (whose backward runs after the autocast region)."""
    x = torch.randn(2, 8, 6, 5, requires_grad=True)
    results = []
    for enabled in (True, False):
        with fast_backward(enabled), torch.autocast('cpu', dtype=torch.bfloat16):
            y = SimAM()(x)
        y.float().sum().backward()
        results.append((y, x.grad))
        x.grad = None
    (y_fast, g_fast), (y_plain, g_plain) = results
    assert y_fast.dtype == y_plain.dtype and g_fast.dtype == g_plain.dtype
    torch.testing.assert_close(y_fast, y_plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_fast, g_plain, rtol=1e-4, atol=1e-5)


def test_hand_written_backward_channels_last_and_bf16():
    x = torch.randn(2, 8, 6, 5).to(memory_format=torch.channels_last).requires_grad_()
    out = SimAM()(x)
    out.backward(torch.ones_like(out))
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    y = x.detach().contiguous().requires_grad_()
    _autograd_simam(y, 1e-4).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-4, atol=1e-5)
    xb = x.detach().bfloat16().requires_grad_()
    SimAM()(xb).float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(xb.grad.float(), y.grad, rtol=0.1, atol=0.1)
