"""GSoP: its equation, the covariance, initialisation, parameter count, maps, variants,
position in ResNet-50 and argument checks."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from mmpretrain.models import ResNet

from cvattn_mm.attention.channel.gsop import GSoP, RowConv2d
from cvattn_mm.attention.fast_backward import fast_backward
from cvattn_mm.insertion import insert_attention

from .contract import perturb_parameters, run_contract


@pytest.mark.parametrize('kwargs', [
    dict(att_dim=16, reduce_stride=2), dict(att_dim=1),
    dict(att_dim=16, norm_cfg=dict(type='GN', num_groups=4)),
    dict(att_dim=8, mode='position', position_grid=(3, 4)),
    dict(att_dim=8, mode='fusion_avg', position_grid=4, reduce_stride=2),
    dict(att_dim=8, mode='fusion_max', position_grid=4),
    dict(att_dim=8, mode='fusion_concat', position_grid=4)],
    ids=['stride2', 'd1', 'gn', 'position', 'fusion_avg', 'fusion_max', 'fusion_concat'])
def test_contract_variants(kwargs):
    run_contract(lambda: GSoP(64, **kwargs))


def batch_norm(t, weight, bias, mean=None, var=None, eps=1e-5):
    """BN over dim 1 of ``t``: batch statistics (biased variance) over every other dim when
    ``mean`` is None, else the given running statistics."""
    dims = [i for i in range(t.dim()) if i != 1]
    shape = [1, -1] + [1] * (t.dim() - 2)
    if mean is None:
        mean = t.mean(dims)
        var = ((t - mean.view(shape)) ** 2).mean(dims)
    return (t - mean.view(shape)) / torch.sqrt(var.view(shape) + eps) * weight.view(shape) \
        + bias.view(shape)


def channel_gate_reference(x, m, stride, running):
    """The paper's GSoP gate (channel mode) from its equations, with plain tensor ops: the
    covariance as ``z I_bar z^T`` with ``I_bar = (1/M)(I - (1/M) 1 1^T)``, the row BN as a
    norm over the rows, the row conv as 4 filters of length d per row."""
    def stats(bn):
        return (bn.running_mean, bn.running_var) if running else (None, None)

    n, c = x.shape[:2]
    d = m.att_dim
    y = x.clamp(min=0)[:, :, ::stride, ::stride]
    z = torch.einsum('dc,nchw->ndhw', m.conv_for_DR.weight[:, :, 0, 0], y) \
        + m.conv_for_DR.bias[:, None, None]
    z = batch_norm(z, m.bn_for_DR.weight, m.bn_for_DR.bias, *stats(m.bn_for_DR)).clamp(min=0)
    z = z.reshape(n, d, -1)
    count = z.shape[2]
    i_bar = (torch.eye(count, dtype=x.dtype) - torch.ones(count, count, dtype=x.dtype)
             / count) / count
    sigma = z @ i_bar @ z.transpose(1, 2)  # (N, d, d)
    p = batch_norm(sigma, m.row_bn.weight, m.row_bn.bias, *stats(m.row_bn))  # row i = channel i
    filters = m.row_conv_group.weight.view(d, 4, d)  # row i's 4 filters of length d
    r = torch.einsum('ikj,nij->nik', filters, p).reshape(n, 4 * d) + m.row_conv_group.bias
    g = torch.sigmoid(r @ m.fc_adapt_channels.weight[:, :, 0, 0].T + m.fc_adapt_channels.bias)
    return g.view(n, c, 1, 1)


def position_gate_reference(x, m, running, grid):
    """The official position branch (``pos_att``) with plain ops: no ReLU after the BN,
    PyTorch's adaptive average pooling to the grid and back, the official ``cov_feature``
    ``u^T I_hat u`` with the d x d matrix ``I_hat = (1/P) I - (1/P^2) 1 1^T``, P positions."""
    def stats(bn):
        return (bn.running_mean, bn.running_var) if running else (None, None)

    n, _, h, w = x.shape
    d, p = m.att_dim, grid[0] * grid[1]
    u = torch.einsum('dc,nchw->ndhw', m.conv_for_DR_spatial.weight[:, :, 0, 0],
                     x.clamp(min=0)) + m.conv_for_DR_spatial.bias[:, None, None]
    u = batch_norm(u, m.bn_for_DR_spatial.weight, m.bn_for_DR_spatial.bias,
                   *stats(m.bn_for_DR_spatial))
    u = F.adaptive_avg_pool2d(u, grid).reshape(n, d, p)
    i_hat = torch.eye(d, dtype=x.dtype) / p - torch.ones(d, d, dtype=x.dtype) / p ** 2
    sigma = u.transpose(1, 2) @ i_hat @ u  # (N, P, P)
    rows = batch_norm(sigma, m.row_bn_for_spatial.weight, m.row_bn_for_spatial.bias,
                      *stats(m.row_bn_for_spatial))
    filters = m.row_conv_group_for_spatial.weight.view(p, 4, p)
    r = torch.einsum('ikj,nij->nik', filters, rows).reshape(n, 4 * p) \
        + m.row_conv_group_for_spatial.bias
    fc = m.fc_adapt_channels_for_spatial
    a = torch.sigmoid(r.clamp(min=0) @ fc.weight[:, :, 0, 0].T + fc.bias)
    return F.adaptive_avg_pool2d(a.view(n, 1, *grid), (h, w))


def gsop_reference(x, m, stride, running, mode='channel', grid=(8, 8)):
    """The block's output in each mode, as the official ``Bottleneck.forward`` combines the
    branches."""
    if mode == 'channel':
        return x * channel_gate_reference(x, m, stride, running)
    by_position = (x * position_gate_reference(x, m, running, grid)).clamp(min=0)
    if mode == 'position':
        return by_position
    by_channel = x * channel_gate_reference(x, m, stride, running)
    if mode == 'fusion_avg':
        return by_channel + by_position
    if mode == 'fusion_max':
        return torch.max(by_channel, by_position)
    c = x.shape[1]
    k = m.dilate_conv_for_concat1.kernel_size[0]
    fused = sum(F.conv2d(t, conv.weight, conv.bias, padding=((k - 1) // 2, 0), groups=c // 64)
                for t, conv in ((by_channel, m.dilate_conv_for_concat1),
                                (by_position, m.dilate_conv_for_concat2)))
    bn = m.bn_for_concat
    return batch_norm(fused, bn.weight, bn.bias,
                      *((bn.running_mean, bn.running_var) if running else (None, None)))


@pytest.mark.parametrize('mode', ['position', 'fusion_avg', 'fusion_max', 'fusion_concat'])
@pytest.mark.parametrize('size', [(7, 9), (3, 2)], ids=['7x9', 'smaller-than-grid'])
@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
def test_equation_of_the_other_modes(mode, size, train):
    torch.manual_seed(0)
    m = perturb_parameters(GSoP(64, att_dim=6, reduce_stride=2, mode=mode, position_grid=(4, 5)),
                           scale=0.3).double()
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
    m.train(train)
    x = torch.randn(3, 64, *size, dtype=torch.float64)
    expected = gsop_reference(x, m, 2, running=not train, mode=mode, grid=(4, 5))
    torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_equation(stride, mode):
    torch.manual_seed(0)
    m = perturb_parameters(GSoP(24, att_dim=6, reduce_stride=stride), scale=0.3).double()
    with torch.no_grad():
        for bn in (m.bn_for_DR, m.row_bn):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    m.train(mode == 'train')
    x = torch.randn(3, 24, 7, 9, dtype=torch.float64)
    expected = gsop_reference(x, m, stride, running=mode == 'eval')
    torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)


def test_covariance_is_the_biased_covariance():
    z = torch.randn(3, 5, 4, 7, dtype=torch.float64)
    expected = torch.stack([torch.cov(s.flatten(1), correction=0) for s in z])
    torch.testing.assert_close(GSoP.covariance(z), expected, rtol=1e-13, atol=1e-14)


def test_covariance_gradient_is_the_official_one():
    """The official CovpoolLayer's hand-written backward: dL/dz = (G + G^T) z I_bar."""
    z = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 4, 4, dtype=torch.float64)
    GSoP.covariance(z).backward(grad)
    count = 15
    i_bar = (torch.eye(count, dtype=z.dtype) - 1 / count) / count
    expected = (grad + grad.transpose(1, 2)) @ z.detach().flatten(2) @ i_bar
    torch.testing.assert_close(z.grad, expected.view_as(z), rtol=1e-12, atol=1e-13)


def test_covariance_in_float32_under_autocast():
    """Under bf16 autocast the covariance of float32 features is still a float32 product
    (the same values as without autocast), not a bf16 one (whose error is ~1e-2)."""
    z = torch.randn(2, 16, 9, 9).to(torch.bfloat16).float()
    outside = GSoP.covariance(z)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        inside = GSoP.covariance(z)
        flat = z.flatten(2) - z.flatten(2).mean(2, keepdim=True)
        in_bf16 = flat @ flat.transpose(1, 2) / 81
    assert inside.dtype == torch.float32 and in_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(inside, outside, rtol=0, atol=0)
    torch.testing.assert_close(inside.double(), GSoP.covariance(z.double()), rtol=1e-5,
                               atol=1e-5)
    assert (in_bf16.double() - GSoP.covariance(z.double())).abs().max() > 1e-3
    # bf16 features: computed in float32, returned in bf16
    assert GSoP.covariance(z.to(torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize('shape', [(3, 6, 6, 1), (2, 6, 6, 3), (2, 6, 8, 1)],
                         ids=['covariance', 'wide', 'taller-than-kernel'])
def test_row_conv_is_the_grouped_convolution(shape):
    """The layer type computes its base class's grouped conv (the fast route on inputs as
    tall as the kernel, the convolution otherwise), with gradients."""
    layer = RowConv2d(6, 4).double()
    assert (layer.kernel_size, layer.groups, layer.out_channels) == ((6, 1), 6, 24)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    ours = layer(x)
    expected = F.conv2d(x, layer.weight, layer.bias, groups=6)
    torch.testing.assert_close(ours, expected, rtol=1e-13, atol=1e-13)
    grad = torch.randn_like(ours)
    got = torch.autograd.grad(ours, (x, layer.weight, layer.bias), grad)
    want = torch.autograd.grad(expected, (x, layer.weight, layer.bias), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('input_grad', [True, False], ids=['input', 'params-only'])
def test_fast_backward_equals_autograd(stride, input_grad):
    """The hand-written backward gives autograd's gradients, also when only the parameters
    need them; the running statistics move once per forward in both."""
    base = perturb_parameters(GSoP(12, att_dim=5, reduce_stride=stride), scale=0.3).double()
    x = torch.randn(2, 12, 7, 9, dtype=torch.float64)
    grad = torch.randn_like(x)
    results = []
    for enabled in (True, False):
        m = copy.deepcopy(base).train()
        xi = x.clone().requires_grad_(input_grad)
        with fast_backward(enabled):
            y = m(xi)
            y.backward(grad)
        assert type(y.grad_fn).__name__ == ('_SampledGateBackward' if enabled else 'MulBackward0')
        results.append((y.detach(), xi.grad, {n: p.grad for n, p in m.named_parameters()},
                        m.bn_for_DR.running_mean.clone()))
    (y1, gx1, gp1, rm1), (y2, gx2, gp2, rm2) = results
    torch.testing.assert_close(y1, y2, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(rm1, rm2, rtol=0, atol=0)
    assert (gx1 is None) == (not input_grad) and (gx2 is None) == (not input_grad)
    if input_grad:
        torch.testing.assert_close(gx1, gx2, rtol=1e-11, atol=1e-12)
    for name in gp2:
        torch.testing.assert_close(gp1[name], gp2[name], rtol=1e-10, atol=1e-11, msg=name)


def test_check_spatially_constant_inputs_share_the_gate():
    """The spec's check: for a spatially constant input the covariance is 0, so in eval mode
    two different spatially constant inputs get the same gate."""
    m = perturb_parameters(GSoP(16, att_dim=8), scale=0.3).double().eval()
    a = torch.randn(2, 16, 1, 1, dtype=torch.float64).expand(2, 16, 5, 6)
    b = torch.randn(2, 16, 1, 1, dtype=torch.float64).expand(2, 16, 5, 6)
    with torch.no_grad():
        assert GSoP.covariance(m.reduce(a)).abs().max() < 1e-14
        ga, gb = m.channel_gate(a), m.channel_gate(b)
    torch.testing.assert_close(ga, gb, rtol=0, atol=1e-12)
    assert not torch.allclose(m(a), m(b))


def test_batch_one_on_one_position_trains_with_running_statistics():
    m = perturb_parameters(GSoP(8, att_dim=4), scale=0.3).train()
    x = torch.randn(1, 8, 1, 1)
    y = m(x)
    assert torch.isfinite(y).all()
    assert m.bn_for_DR.num_batches_tracked.item() == 0  # bn_for_DR saw one value: eval mode
    assert m.row_bn.num_batches_tracked.item() == 1  # row_bn saw d values per row
    assert m.training and m.bn_for_DR.training


def test_initialisation():
    torch.manual_seed(0)
    c, d = 256, 128
    m = GSoP(c, att_dim=d)
    m.init_weights()
    # kaiming_normal_(mode='fan_out', nonlinearity='relu'): std sqrt(2 / fan_out)
    for conv, fan_out in ((m.conv_for_DR, d), (m.row_conv_group, 4 * d * d),
                          (m.fc_adapt_channels, c)):
        std = conv.weight.std().item()
        assert abs(std / math.sqrt(2 / fan_out) - 1) < 0.03, (conv, std)
        assert abs(conv.weight.mean().item()) < 0.03 * math.sqrt(2 / fan_out)
        # the bias keeps PyTorch's default: uniform in +-1/sqrt(fan_in)
        fan_in = conv.weight[0].numel()
        assert conv.bias.abs().max() <= 1 / math.sqrt(fan_in)
        assert conv.bias.abs().max() > 0.5 / math.sqrt(fan_in)
    for bn in (m.bn_for_DR, m.row_bn):
        assert torch.equal(bn.weight, torch.ones(d)) and torch.equal(bn.bias, torch.zeros(d))


@pytest.mark.parametrize('channels,d', [(64, 128), (256, 128), (512, 16), (2048, 128)])
def test_parameter_count(channels, d):
    expected = 5 * channels * d + 4 * d * d + 9 * d + channels
    assert sum(p.numel() for p in GSoP(channels, att_dim=d).parameters()) == expected
    if (channels, d) == (256, 128):
        assert expected == 230_784
    # the other modes (counted on the official classes: 66,368, 297,152 and 658,624 at
    # C = 256, d = 128, g = 8)
    p = 64
    position = channels * d + 3 * d + 8 * p * p + 7 * p
    groups = channels // 64
    k = 2 * int(math.log2(32 / groups)) + 5
    concat = 2 * (64 * channels * k + channels) + 2 * channels
    for mode, count in (('position', position), ('fusion_avg', expected + position),
                        ('fusion_max', expected + position),
                        ('fusion_concat', expected + position + concat)):
        m = GSoP(channels, att_dim=d, mode=mode)
        assert sum(p.numel() for p in m.parameters()) == count, mode
    if (channels, d) == (256, 128):
        assert (position, expected + position, expected + position + concat) == (
            66_368, 297_152, 658_624)


def test_state_dict_keys_are_the_official_ones():
    m = GSoP(16, att_dim=4)
    prefixes = {k.split('.')[0] for k in m.state_dict()}
    assert prefixes == {'conv_for_DR', 'bn_for_DR', 'row_bn', 'row_conv_group',
                        'fc_adapt_channels'}
    assert m.row_conv_group.weight.shape == (16, 1, 4, 1)
    assert m.conv_for_DR.weight.shape == (4, 16, 1, 1)


@pytest.mark.parametrize('mode', ['position', 'fusion_avg', 'fusion_max'])
def test_gates_rebuild_the_other_modes_and_are_the_maps(mode):
    m = perturb_parameters(GSoP(16, att_dim=8, mode=mode, position_grid=4), scale=0.3).eval()
    x = torch.randn(2, 16, 7, 10)
    with torch.no_grad():
        position = m.position_gate(x)
        by_position = (x * position).relu()
        maps = m.attention_maps(x)
        assert position.shape == (2, 1, 7, 10)
        assert torch.equal(maps['position_gate'].values, position[:, 0])
        assert maps['position_gate'].kind == 'spatial'
        if mode == 'position':
            assert set(maps) == {'position_gate'}
            torch.testing.assert_close(m(x), by_position)
            return
        gate = m.channel_gate(x)
        assert set(maps) == {'channel_gate', 'position_gate'}
        assert torch.equal(maps['channel_gate'].values, gate.flatten(1))
        combine = torch.add if mode == 'fusion_avg' else torch.maximum
        torch.testing.assert_close(m(x), combine(x * gate, by_position))


def test_modes_build_only_their_branches():
    names = {mode: {k.split('.')[0] for k in GSoP(64, att_dim=4, mode=mode).state_dict()}
             for mode in ('channel', 'position', 'fusion_concat')}
    channel = {'conv_for_DR', 'bn_for_DR', 'row_bn', 'row_conv_group', 'fc_adapt_channels'}
    position = {'conv_for_DR_spatial', 'bn_for_DR_spatial', 'row_bn_for_spatial',
                'row_conv_group_for_spatial', 'fc_adapt_channels_for_spatial'}
    assert names['channel'] == channel and names['position'] == position
    assert names['fusion_concat'] == channel | position | {
        'dilate_conv_for_concat1', 'dilate_conv_for_concat2', 'bn_for_concat'}
    concat = GSoP(256, mode='fusion_concat').dilate_conv_for_concat1
    assert (concat.kernel_size, concat.padding, concat.groups) == ((11, 1), (5, 0), 4)


def test_gate_rebuilds_the_forward_and_is_the_map():
    m = perturb_parameters(GSoP(16, att_dim=8), scale=0.3).eval()
    x = torch.randn(2, 16, 7, 10)
    with torch.no_grad():
        gate = m.channel_gate(x)
        torch.testing.assert_close(m(x), x * gate)
        maps = m.attention_maps(x)
    assert gate.shape == (2, 16, 1, 1)
    assert set(maps) == {'channel_gate'}
    assert maps['channel_gate'].kind == 'channel'
    assert torch.equal(maps['channel_gate'].values, gate.flatten(1))


def test_resnet50_at_the_paper_position():
    """The last block of each stage (4 modules); the parameter total is the official
    GSoP-Net1 ResNet-50's (28,285,224 with its 1000-class fc: 25,557,032 + 2,728,192)."""
    backbone = ResNet(50)
    insert_attention(backbone, [dict(attention=dict(type='GSoP'), at='paper')],
                     example_inputs=(torch.zeros(1, 3, 64, 64), ))
    assert sorted(backbone.attention_sites) == ['layer1-2-bn3', 'layer2-3-bn3', 'layer3-5-bn3',
                                                'layer4-2-bn3']
    added = sum(p.numel() for p in backbone.attention_sites.parameters())
    assert added == 2_728_192
    assert added + 25_557_032 == 28_285_224


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(att_dim=0), 'att_dim'),
    (dict(att_dim=2.5), 'att_dim'), (dict(reduce_stride=0), 'reduce_stride'),
    (dict(reduce_stride=True), 'reduce_stride'), (dict(mode='1'), 'mode'),
    (dict(mode='position', position_grid=0), 'position_grid'),
    (dict(position_grid=(2, )), 'position_grid'),
    (dict(in_channels=96, mode='fusion_concat'), "mode='fusion_concat' needs in_channels"),
    (dict(in_channels=32, mode='fusion_concat'), "mode='fusion_concat' needs in_channels")])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'GSoP: {argument}'):
        GSoP(**dict(dict(in_channels=8), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyGSoP', (GSoP, ), {'_abbr_': 'my_gsop'})
    with pytest.raises(ValueError, match='MyGSoP: att_dim'):
        sub(8, att_dim=0)
    with pytest.raises(ValueError, match='MyGSoP was built for in_channels=8'):
        sub(8, att_dim=4)(torch.randn(1, 9, 4, 4))
