"""MLCA: its equation, cell-boundary and un-pooling traps, parameter count, maps, variants and
argument checks."""
import math

import pytest
import torch

from cvattn_mm.attention.channel_spatial.mlca import MLCA

from .contract import perturb_parameters, run_contract


@pytest.mark.parametrize('kwargs', [dict(local_conv='per_cell'),
                                    dict(local_size=(3, 4), local_weight=0.25),
                                    dict(kernel_size=3, local_size=2)],
                         ids=['per_cell', 'grid3x4', 'k3'])
def test_contract_variants(kwargs):
    run_contract(lambda: MLCA(16, **kwargs))


def adaptive_windows(size, out):
    """PyTorch's adaptive average pooling windows: floor(i size / out) to ceil((i+1) size / out)."""
    return [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]


def adaptive_avg(x, out_h, out_w):
    """Adaptive average pooling (N, C, H, W) -> (N, C, out_h, out_w) with explicit windows."""
    rows = []
    for h0, h1 in adaptive_windows(x.shape[2], out_h):
        rows.append(torch.stack([x[:, :, h0:h1, w0:w1].mean((2, 3))
                                 for w0, w1 in adaptive_windows(x.shape[3], out_w)], -1))
    return torch.stack(rows, -2)


def conv1d_same(seq, weight):
    """A 1-D correlation of the last axis of ``seq`` with ``weight`` (k taps, zero padding)."""
    k = weight.numel()
    pad = (k - 1) // 2
    padded = torch.cat([seq.new_zeros(*seq.shape[:-1], pad), seq,
                        seq.new_zeros(*seq.shape[:-1], pad)], -1)
    length = seq.shape[-1]
    return sum(weight[j] * padded[..., j:j + length] for j in range(k))


def mlca_reference(x, w_global, w_local, grid, local_weight, per_cell):
    """The paper's MLCA written from its equations with plain tensor ops."""
    n, c, h, w = x.shape
    gh, gw = grid
    local = adaptive_avg(x, gh, gw)  # (N, C, gh, gw)
    glob = local.mean((2, 3))  # GAP of the local grid
    a_g = torch.sigmoid(conv1d_same(glob, w_global))[:, :, None, None]
    cells = local.permute(0, 2, 3, 1).reshape(n, gh * gw, c)  # position-major
    if per_cell:
        y = conv1d_same(cells, w_local)
    else:
        y = conv1d_same(cells.reshape(n, gh * gw * c), w_local).reshape(n, gh * gw, c)
    a_l = torch.sigmoid(y).reshape(n, gh, gw, c).permute(0, 3, 1, 2)
    mixed = (1 - local_weight) * a_g + local_weight * a_l
    return x * adaptive_avg(mixed, h, w)


@pytest.mark.parametrize('kwargs', [dict(), dict(local_conv='per_cell'),
                                    dict(local_size=(3, 4), local_weight=0.3)],
                         ids=['default', 'per_cell', 'grid3x4'])
@pytest.mark.parametrize('size', [(5, 5), (7, 9), (3, 2), (1, 1), (16, 10)])
def test_equation(kwargs, size):
    torch.manual_seed(0)
    mlca = perturb_parameters(MLCA(16, **kwargs), scale=0.5).double()
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    expected = mlca_reference(x, mlca.conv.weight.flatten(), mlca.conv_local.weight.flatten(),
                              mlca.local_size, mlca.local_weight,
                              mlca.local_conv == 'per_cell')
    torch.testing.assert_close(mlca(x), expected, rtol=1e-12, atol=1e-12)


def test_local_conv_crosses_cell_boundaries():
    """The official sequence convolution mixes the last channel of one cell into the first of
    the next; 'per_cell' pads each cell with zeros instead."""
    x = torch.zeros(1, 4, 5, 5, dtype=torch.float64)
    x[0, 3, 0, 0] = 1.  # the last channel of cell 0 only
    for mode, expected in (('sequence', 1.), ('per_cell', 0.)):
        mlca = MLCA(4, kernel_size=3, local_conv=mode).double()
        with torch.no_grad():
            mlca.conv_local.weight.copy_(torch.tensor([1., 0., 0.]).view(1, 1, 3))
        _, a_l = mlca.gates(x)
        # output at (cell 1, channel 0) reads the input at (cell 0, channel 3)
        assert a_l[0, 0, 0, 1].item() == pytest.approx(torch.sigmoid(torch.tensor(expected)))


def test_unpooling_is_an_adaptive_average():
    """At H = 7 the rows 1 and 5 of the output average two grid cells (not nearest)."""
    mlca = MLCA(8, local_weight=1.).double()
    x = torch.randn(1, 8, 7, 7, dtype=torch.float64)
    _, a_l = mlca.gates(x)
    gate = mlca.gate(x)
    torch.testing.assert_close(gate[:, :, 1, 0], (a_l[:, :, 0, 0] + a_l[:, :, 1, 0]) / 2)
    torch.testing.assert_close(gate[:, :, 0, 0], a_l[:, :, 0, 0])
    torch.testing.assert_close(gate[:, :, 5, 6], (a_l[:, :, 3, 4] + a_l[:, :, 4, 4]) / 2)


def test_global_branch_pools_the_grid_not_the_map():
    mlca = MLCA(8, local_weight=0.).double()
    x = torch.randn(2, 8, 7, 6, dtype=torch.float64)
    a_g, _ = mlca.gates(x)
    w = mlca.conv.weight.flatten()
    grid_mean = adaptive_avg(x, 5, 5).mean((2, 3))
    torch.testing.assert_close(a_g.flatten(1), torch.sigmoid(conv1d_same(grid_mean, w)))
    assert not torch.allclose(grid_mean, x.mean((2, 3)))


def test_check_zero_weights_give_half_and_5x5_pool_is_identity():
    mlca = MLCA(32)
    with torch.no_grad():
        mlca.conv.weight.zero_()
        mlca.conv_local.weight.zero_()
    for size in ((5, 5), (7, 3), (1, 1), (12, 12)):
        x = torch.randn(2, 32, *size)
        assert torch.equal(mlca(x), x * 0.5), size
    # H = W = 5: the local pool is the identity and GAP(L) = GAP(x)
    mlca = perturb_parameters(MLCA(16), scale=0.5).double()
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    w_g, w_l = mlca.conv.weight.flatten(), mlca.conv_local.weight.flatten()
    a_g, a_l = mlca.gates(x)
    torch.testing.assert_close(a_g.flatten(1), torch.sigmoid(conv1d_same(x.mean((2, 3)), w_g)))
    seq = x.permute(0, 2, 3, 1).reshape(2, -1)
    expected = torch.sigmoid(conv1d_same(seq, w_l)).reshape(2, 5, 5, 16).permute(0, 3, 1, 2)
    torch.testing.assert_close(a_l, expected)
    torch.testing.assert_close(mlca(x), x * (0.5 * a_g + 0.5 * a_l))


def test_initialisation_is_pytorchs_default():
    """The official code keeps nn.Conv1d's default (kaiming-uniform) weights: |w| <= 1 / sqrt(k)."""
    mlca = MLCA(256)
    mlca.init_weights()
    for conv in (mlca.conv, mlca.conv_local):
        assert conv.bias is None and conv.weight.shape == (1, 1, 5)
        assert conv.weight.abs().max() <= 1 / math.sqrt(5)
        assert conv.weight.abs().min() > 0


def official_kernel(c, gamma=2, b=1):
    t = int(abs(math.log2(c) + b) / gamma)
    return t if t % 2 else t + 1


@pytest.mark.parametrize('channels,k', [(16, 3), (64, 3), (128, 5), (256, 5), (512, 5),
                                        (1024, 5), (2048, 7)])
def test_parameter_count(channels, k):
    assert official_kernel(channels) == k
    mlca = MLCA(channels)
    assert mlca.kernel_size == k
    assert sum(p.numel() for p in mlca.parameters()) == 2 * k
    assert sum(p.numel() for p in MLCA(channels, kernel_size=9).parameters()) == 18


def test_parameter_count_at_256_is_the_spec_figure():
    assert sum(p.numel() for p in MLCA(256).parameters()) == 10


def test_state_dict_keys_are_the_official_ones():
    assert sorted(MLCA(8).state_dict()) == ['conv.weight', 'conv_local.weight']


def test_gate_rebuilds_the_forward_and_the_maps():
    mlca = perturb_parameters(MLCA(16), scale=0.5).eval()
    x = torch.randn(2, 16, 7, 10)
    with torch.no_grad():
        a_g, a_l = mlca.gates(x)
        gate = mlca.unpool(mlca.mix(a_g, a_l), (7, 10))
        torch.testing.assert_close(mlca(x), x * gate)
        torch.testing.assert_close(mlca.gate(x), gate)
        maps = mlca.attention_maps(x)
    assert set(maps) == {'gate', 'global_gate', 'local_gate'}
    torch.testing.assert_close(maps['gate'].values, gate.mean(1))
    torch.testing.assert_close(maps['global_gate'].values, a_g.flatten(1))
    torch.testing.assert_close(maps['local_gate'].values,
                               mlca.unpool(a_l, (7, 10)).mean(1))
    torch.testing.assert_close(maps['gate'].values, 0.5 * a_g.mean(1).expand(2, 7, 10)
                               + 0.5 * maps['local_gate'].values)
    for m in maps.values():
        assert m.values.min() >= 0 and m.values.max() <= 1


def test_trace_equals_eager_off_the_grid():
    """Under jit.trace the two adaptive pools are averaging matrices with the same values."""
    mlca = perturb_parameters(MLCA(8), scale=0.5).double().eval()
    x = torch.randn(1, 8, 7, 9, dtype=torch.float64)
    traced = torch.jit.trace(mlca, (x, ), check_trace=False)
    torch.testing.assert_close(traced(x), mlca(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(local_size=0), 'local_size'),
    (dict(local_size=(5, 5, 5)), 'local_size'), (dict(gamma=0), 'gamma'), (dict(b=-1), 'b'),
    (dict(local_weight=-0.1), 'local_weight'), (dict(local_weight=1.5), 'local_weight'),
    (dict(kernel_size=4), 'kernel_size'), (dict(local_conv='cells'), 'local_conv')])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'MLCA: {argument}'):
        MLCA(**dict(dict(in_channels=8), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyMLCA', (MLCA, ), {'_abbr_': 'my_mlca'})
    with pytest.raises(ValueError, match='MyMLCA: local_conv'):
        sub(8, local_conv='cells')
    with pytest.raises(ValueError, match='MyMLCA: local_weight'):
        sub(8, local_weight=2.)


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmdet'])
def test_mobilenet_v2_after_the_depthwise_conv(scope):
    """The existing MobileNetV2 preset's residual_end (after the depthwise ConvModule): the
    nearest to the paper's place (after the depthwise conv's BN in MobileNetV3 blocks)."""
    from mmengine.registry import DefaultScope

    from cvattn_mm.registry import MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(dict(
            type='InsertAttention', module=dict(type='MobileNetV2', widen_factor=0.25),
            insertions=[dict(attention=dict(type='MLCA'), at='paper')]))
    sites = list(model.attention_sites.values())
    assert len(sites) == 17
    assert all('depthwise' in s.path or '.conv.' in s.path for s in sites)
    widths = [s.attentions['mlca'].in_channels for s in sites]
    assert widths[0] == 8 and widths[-1] == 240
    model.eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))  # maps 32x32 down to 2x2 (< the 5x5 grid)
    assert all(torch.isfinite(o).all() for o in outs)
