"""FCA: its equation, frequencies, size policy, parameter count, state dict, maps, variants
and argument checks."""
import math

import pytest
import torch
import torch.nn.functional as F
from mmpretrain.models import ResNet

from cvattn_mm.attention.channel.fca import FCA, frequencies
from cvattn_mm.attention.fast_backward import fast_backward
from cvattn_mm.insertion import insert_attention

from .contract import perturb_parameters, run_contract

#: The paper's released selection 'top16' on the 7x7 grid (u along H, v along W).
TOP16_U = [0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2]
TOP16_V = [0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2]


@pytest.mark.parametrize('kwargs', [
    dict(grid_size=(7, 9)),  # the contract's 7x9 inputs are on the grid: no pooling
    dict(freq_sel='low4', grid_size=14, reduction=4),
    dict(freq_sel='bot32', persistent_dct=True),
], ids=['grid-7x9', 'low4-grid14', 'bot32-persistent'])
def test_contract_variants(kwargs):
    run_contract(lambda: FCA(64, **kwargs))


def basis(f, s):
    """The DCT-II basis vector of frequency f on s points, from the paper (float64)."""
    scale = 1 / math.sqrt(s) if f == 0 else math.sqrt(2) / math.sqrt(s)
    return torch.tensor([math.cos(math.pi * f * (i + 0.5) / s) * scale for i in range(s)],
                        dtype=torch.float64)


def paper_filters(channels, us, vs, grid):
    """(C, s_h, s_w): group k of the C / n contiguous channels gets B(u_k) B(v_k)^T, rounded
    to float32 as the stored buffer (the official one is float32 too)."""
    per_group = channels // len(us)
    rows = [torch.outer(basis(u, grid[0]), basis(v, grid[1])) for u, v in zip(us, vs)]
    return torch.stack([r for r in rows for _ in range(per_group)]).float().double()


def fca_reference(x, filters, w1, w2):
    """Adaptive average pooling to the grid if needed, the DCT sums, the bias-free
    excitation; written from the paper with plain ops (float64)."""
    grid = tuple(filters.shape[1:])
    pooled = x if tuple(x.shape[2:]) == grid else F.adaptive_avg_pool2d(x, grid)
    y = (pooled * filters[None]).sum((2, 3))
    gate = torch.sigmoid(torch.relu(y @ w1.t()) @ w2.t())
    return x * gate[:, :, None, None]


@pytest.mark.parametrize('kwargs, us, vs, size', [
    (dict(), TOP16_U, TOP16_V, (7, 7)),
    (dict(), TOP16_U, TOP16_V, (13, 17)),
    (dict(), TOP16_U, TOP16_V, (1, 1)),
    (dict(grid_size=14), [2 * u for u in TOP16_U], [2 * v for v in TOP16_V], (14, 14)),
    (dict(grid_size=(14, 7), freq_sel='low4'), [0, 0, 2, 2], [0, 1, 0, 1], (9, 10)),
    (dict(grid_size=8, freq_sel='top2', reduction=4), [0, 0], [0, 1], (8, 8)),
], ids=['7x7', '13x17-pooled', '1x1-pooled', 'grid14', 'low4-14x7-pooled', 'top2-grid8'])
def test_equation(kwargs, us, vs, size):
    torch.manual_seed(0)
    fca = perturb_parameters(FCA(32, **kwargs), scale=0.3).double()
    grid = fca.grid_size
    filters = paper_filters(32, us, vs, grid)
    x = torch.randn(2, 32, *size, dtype=torch.float64)
    expected = fca_reference(x, filters, fca.fc[0].weight, fca.fc[2].weight)
    torch.testing.assert_close(fca(x), expected, rtol=1e-12, atol=1e-12)


def test_buffer_is_the_dct_basis():
    fca = FCA(32, grid_size=(14, 21))
    us = [2 * u for u in TOP16_U]
    vs = [3 * v for v in TOP16_V]
    assert fca.dct_layer.weight.dtype == torch.float32
    assert torch.equal(fca.dct_layer.weight, paper_filters(32, us, vs, (14, 21)).float())


@pytest.mark.parametrize('grid', [7, 14])
def test_constant_input_check(grid):
    """The spec's check: on a constant input c, the first group's DCT sums are c s and all
    other groups' are 0."""
    fca = FCA(64, grid_size=grid)
    c = 3.0
    y = fca.dct_layer(torch.full((2, 64, grid, grid), c))
    torch.testing.assert_close(y[:, :4], torch.full((2, 4), c * grid), rtol=1e-6, atol=0)
    assert y[:, 4:].abs().max() < 1e-6 * c * grid


def test_frequencies():
    assert frequencies('top16', (7, 7)) == list(zip(TOP16_U, TOP16_V))
    assert frequencies('top16', (56, 56)) == [(8 * u, 8 * v) for u, v in zip(TOP16_U, TOP16_V)]
    # per axis, rounded down as in the official code: 13 // 7 = 1, 28 // 7 = 4
    assert frequencies('top4', (13, 28)) == [(0, 0), (0, 4), (6, 0), (0, 20)]
    assert frequencies('low8', (7, 7)) == [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (2, 0),
                                          (2, 1), (1, 2)]
    assert frequencies('bot2', (7, 7)) == [(6, 6), (1, 4)]
    assert frequencies('top32', (7, 7))[:16] == frequencies('top16', (7, 7))
    assert all(len(set(frequencies(kind + '32', (7, 7)))) == 32 for kind in ('top', 'low', 'bot'))


def test_on_the_grid_nothing_is_pooled():
    """On the grid size the pooling policy computes the strict (unpooled) path bit for bit."""
    pooled = perturb_parameters(FCA(32, grid_size=(8, 10)), scale=0.3).eval()
    strict = FCA(32, grid_size=(8, 10), size_policy='strict').eval()
    strict.load_state_dict(pooled.state_dict())
    x = torch.randn(2, 32, 8, 10)
    with torch.no_grad():
        assert torch.equal(pooled(x), strict(x))
        assert torch.equal(pooled.dct_layer(x), (x * pooled.dct_layer.weight).sum((2, 3)))


@pytest.mark.parametrize('size', [(30, 31), (28, 28), (14, 14), (9, 20), (1, 3), (7, 8)])
def test_other_sizes_are_adaptive_average_pooled(size):
    fca = FCA(32).double()
    x = torch.randn(2, 32, *size, dtype=torch.float64)
    pooled = F.adaptive_avg_pool2d(x, (7, 7))
    expected = (pooled * fca.dct_layer.weight).sum((2, 3))
    torch.testing.assert_close(fca.dct_layer(x), expected, rtol=1e-12, atol=1e-12)


def test_large_windows_pool_and_traces_fold():
    """Windows of more than 16 positions are pooled by adaptive_avg_pool2d, smaller ones
    folded into the filters; a traced module always folds (exportable); the same values."""
    fca = perturb_parameters(FCA(32), scale=0.3).eval()
    for size in ((30, 31), (28, 28)):
        x = torch.randn(2, 32, *size)
        expected = (F.adaptive_avg_pool2d(x, 7) * fca.dct_layer.weight).sum((2, 3))
        with torch.no_grad():
            y = fca.dct_layer(x)
            traced = torch.jit.trace(fca, x, check_trace=False)
            torch.testing.assert_close(traced(x), fca(x), rtol=1e-5, atol=1e-6)
        if size == (30, 31):
            assert torch.equal(y, expected)  # the official op
        else:
            torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_strict_policy_refuses_other_sizes():
    fca = FCA(32, grid_size=14, size_policy='strict')
    fca(torch.randn(1, 32, 14, 14))
    with pytest.raises(ValueError, match=r"FCA with size_policy='strict' was built for 14x14 "
                                         r'maps .* but got 14x15'):
        fca(torch.randn(1, 32, 14, 15))


def test_low_precision_input_sums_in_float32():
    fca = FCA(32).eval()
    x = torch.randn(2, 32, 20, 20)
    with torch.no_grad():
        y16 = fca.dct_layer(x.bfloat16())
        y32 = fca.dct_layer(x.bfloat16().float())
    assert y16.dtype == torch.bfloat16
    assert torch.equal(y16, y32.bfloat16())


@pytest.mark.parametrize('channels', [16, 64, 256, 2048])
def test_parameter_count(channels):
    assert sum(p.numel() for p in FCA(channels).parameters()) == 2 * channels * (channels // 16)
    assert sum(p.numel() for p in FCA(channels, reduction=4).parameters()) == \
        2 * channels * (channels // 4)


def test_parameter_count_at_256_and_min_channels():
    assert sum(p.numel() for p in FCA(256).parameters()) == 8192
    fca = FCA(16, reduction=32, min_channels=4)
    assert fca.fc[0].out_features == 4


def test_initialisation():
    """The official layers: bias-free Linears with PyTorch's default initialisation, a fixed
    filter buffer that no initialisation touches."""
    fca = FCA(64, init_cfg=dict(type='Constant', layer='Linear', val=0.5))
    filters = fca.dct_layer.weight.clone()
    fca.init_weights()
    assert fca.fc[0].bias is None and fca.fc[2].bias is None
    assert torch.equal(fca.dct_layer.weight, filters)
    assert not fca.dct_layer.weight.requires_grad
    assert (fca.fc[0].weight == 0.5).all()
    zero = FCA(64, init_cfg=dict(type='Constant', layer='Linear', val=0.))
    zero.init_weights()
    x = torch.randn(2, 64, 7, 7)
    assert torch.equal(zero(x), x * 0.5)  # zero weights: the gate is sigmoid(0)


def test_resnet50_parameter_count():
    """At the paper position (every block's bn3): 2 C^2 / 16 per block, 2,514,944 in all; with
    mmpretrain's 2,049,000-parameter classifier head, 28,071,976 (FcaNet-50: 28.07M)."""
    model = ResNet(depth=50)
    plain = sum(p.numel() for p in model.parameters())
    insert_attention(model, [dict(attention=dict(type='FCA'), at='paper')],
                     example_inputs=(torch.zeros(1, 3, 32, 32), ))
    assert len(model.attention_sites) == 16
    added = sum(p.numel() for p in model.attention_sites.parameters())
    assert added == 2 * (3 * 256**2 + 4 * 512**2 + 6 * 1024**2 + 3 * 2048**2) // 16 == 2514944
    assert plain + added + 2048 * 1000 + 1000 == 28071976


#: The official per-stage grids, as in configs/classification/resnet50/
#: resnet50-fca-official_8xb32_in1k.py.
OFFICIAL_INSERTIONS = [dict(attention=dict(type='FCA', grid_size=grid), at=f'layer{i}.*.bn3')
                       for i, grid in enumerate((56, 28, 14, 7), 1)]


def test_official_grids_see_unpooled_maps_at_224():
    """With the official per-stage grids, every module of a (narrow) ResNet-50 gets a map of
    exactly its grid from a 224x224 image, so none pools (and 'strict' would accept it)."""
    model = ResNet(depth=50, stem_channels=16, base_channels=16)
    model.eval()  # mmpretrain's ResNet.train returns None, so eval() does too
    insert_attention(model, OFFICIAL_INSERTIONS, example_inputs=(torch.zeros(1, 3, 32, 32), ))
    seen = {}

    def record(name):
        def hook(module, args):
            seen[name] = (tuple(args[0].shape[-2:]), module.grid_size)
        return hook

    for name, module in model.named_modules():
        if isinstance(module, FCA):
            module.register_forward_pre_hook(record(name))
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    assert len(seen) == 16
    assert all(size == grid for size, grid in seen.values()), seen


def test_state_dict():
    assert sorted(FCA(32).state_dict()) == ['fc.0.weight', 'fc.2.weight']
    official = FCA(32, grid_size=56, persistent_dct=True)
    assert sorted(official.state_dict()) == ['dct_layer.weight', 'fc.0.weight', 'fc.2.weight']
    assert official.state_dict()['dct_layer.weight'].shape == (32, 56, 56)
    assert official.fc[0].weight.shape == (2, 32)  # nn.Linear weights, as the official keys
    FCA(32, grid_size=56, persistent_dct=True).load_state_dict(official.state_dict())
    # the buffer still moves with the module when it is not persistent
    assert FCA(32).double().dct_layer.weight.dtype == torch.float64


def test_gate_rebuilds_the_forward_and_is_the_map():
    fca = perturb_parameters(FCA(32), scale=0.3).eval()
    x = torch.randn(2, 32, 9, 12)
    with torch.no_grad():
        gate = fca.channel_gate(x)
        assert gate.shape == (2, 32, 1, 1)
        torch.testing.assert_close(fca(x), x * gate)
        torch.testing.assert_close(gate, fca.excitation(fca.dct_layer(x)))
        maps = fca.attention_maps(x)
    assert set(maps) == {'channel_gate'}
    assert torch.equal(maps['channel_gate'].values, gate.flatten(1))


def test_fast_backward_with_a_hooked_pooling_layer_is_autograd():
    """A hook on the DCT pooling layer (a swapped or observed layer) makes the forward run
    under plain autograd; the gradients are the same."""
    fca = perturb_parameters(FCA(32), scale=0.3).double()
    x = torch.randn(2, 32, 9, 12, dtype=torch.float64)
    grads = []
    for hooked in (False, True):
        handle = fca.dct_layer.register_forward_hook(lambda *args: None) if hooked else None
        xi = x.clone().requires_grad_()
        fca(xi).square().sum().backward()
        grads.append(xi.grad)
        if handle is not None:
            handle.remove()
    with fast_backward(False):
        xi = x.clone().requires_grad_()
        fca(xi).square().sum().backward()
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0], xi.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('kwargs, message', [
    (dict(in_channels=0), 'FCA: in_channels'),
    (dict(reduction=0), 'FCA: reduction'),
    (dict(min_channels=0), 'FCA: min_channels'),
    (dict(freq_sel='top3'), 'FCA: freq_sel'),
    (dict(freq_sel='mid16'), 'FCA: freq_sel'),
    (dict(grid_size=6), r'FCA: grid_size must be >= 7 .* got \(6, 6\)'),
    (dict(grid_size=(14, 3)), r'FCA: grid_size must be >= 7 .* got \(14, 3\)'),
    (dict(grid_size='7'), 'FCA: grid_size must be an int'),
    (dict(grid_size=(7, 7, 7)), 'FCA: grid_size must be an int or an'),
    (dict(size_policy='crop'), 'FCA: size_policy'),
    (dict(persistent_dct=1), 'FCA: persistent_dct must be True or False'),
    (dict(in_channels=24), r"FCA: in_channels=24 must be divisible by the number of "
                           r"frequencies of freq_sel='top16' \(16\)"),
    (dict(in_channels=48, freq_sel='top32'), r'FCA: in_channels=48 .* \(32\)'),
])
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FCA(**dict(dict(in_channels=32), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyFCA', (FCA, ), {'_abbr_': 'my_fca'})
    with pytest.raises(ValueError, match='MyFCA: in_channels=24 must be divisible'):
        sub(24)
    with pytest.raises(ValueError, match="MyFCA with size_policy='strict'"):
        sub(16, size_policy='strict')(torch.randn(1, 16, 8, 8))
