"""CPCA: its equation, shared-projection trap, channel-prior check, parameter count, maps,
variants and argument checks."""
import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.channel_spatial.cpca import CPCA

from .contract import perturb_parameters, run_contract


@pytest.mark.parametrize('kwargs', [dict(projection='separate'),
                                    dict(reduction=2, square_kernel=3, strip_kernels=(3, 5)),
                                    dict(reduction=8, min_channels=4)],
                         ids=['separate', 'small_kernels', 'floor'])
def test_contract_variants(kwargs):
    run_contract(lambda: CPCA(16, **kwargs))


def depthwise(x, weight, bias):
    """A depthwise correlation with zero 'same' padding, written with shifted slices."""
    n, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    padded = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2))
    out = bias.view(1, c, 1, 1).expand(n, c, h, w).clone()
    for i in range(kh):
        for j in range(kw):
            out = out + weight[:, 0, i, j].view(1, c, 1, 1) * padded[:, :, i:i + h, j:j + w]
    return out


def pointwise(x, weight, bias):
    """A biased 1x1 conv as an einsum."""
    return torch.einsum('oc,nchw->nohw', weight.flatten(1), x) + bias.view(1, -1, 1, 1)


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / 2 ** 0.5))


def cpca_reference(x, params, square, strips, separate):
    """The paper's CPCA (with the official block's shared 1x1 conv unless ``separate``)."""
    p_in = (params['conv.weight'], params['conv.bias'])
    p_sp = (params['conv_spatial.weight'], params['conv_spatial.bias']) if separate else p_in
    p_out = (params['conv_out.weight'], params['conv_out.bias']) if separate else p_in
    u = gelu(pointwise(x, *p_in))

    def mlp(z):  # z: (N, C)
        hid = torch.clamp(z @ params['ca.fc1.weight'].flatten(1).T + params['ca.fc1.bias'], min=0)
        return torch.sigmoid(hid @ params['ca.fc2.weight'].flatten(1).T + params['ca.fc2.bias'])

    prior = mlp(u.mean((2, 3))) + mlp(u.flatten(2).max(-1).values)
    v = prior[:, :, None, None] * u
    d0 = depthwise(v, params[f'dconv{square}_{square}.weight'],
                   params[f'dconv{square}_{square}.bias'])
    d = d0
    for k in strips:
        row = depthwise(d0, params[f'dconv1_{k}.weight'], params[f'dconv1_{k}.bias'])
        d = d + depthwise(row, params[f'dconv{k}_1.weight'], params[f'dconv{k}_1.bias'])
    s = pointwise(d, *p_sp)
    return pointwise(s * v, *p_out)


@pytest.mark.parametrize('kwargs', [dict(), dict(projection='separate'),
                                    dict(reduction=2, square_kernel=3, strip_kernels=(3, 9))],
                         ids=['default', 'separate', 'kernels'])
@pytest.mark.parametrize('size', [(1, 1), (5, 7), (12, 9)])
def test_equation(kwargs, size):
    torch.manual_seed(0)
    cpca = perturb_parameters(CPCA(8, **kwargs), scale=0.3).double()
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    expected = cpca_reference(x, dict(cpca.named_parameters()), cpca.square_kernel,
                              cpca.strip_kernels, cpca.projection == 'separate')
    torch.testing.assert_close(cpca(x), expected, rtol=1e-12, atol=1e-12)


def test_shared_projection_is_one_conv_used_three_times():
    """The official trap: one 1x1 conv for P_in, P_sp and P_out; 'separate' has three."""
    shared = CPCA(8)
    assert shared.projections()[0] is shared.projections()[1] is shared.projections()[2]
    assert not hasattr(shared, 'conv_spatial') and not hasattr(shared, 'conv_out')
    calls = []
    shared.conv.register_forward_hook(lambda *a: calls.append(1))
    shared(torch.randn(1, 8, 6, 6))
    assert len(calls) == 3
    separate = CPCA(8, projection='separate')
    assert len({id(p) for p in separate.projections()}) == 3
    # 'separate' with the three convs set equal computes the shared block
    with torch.no_grad():
        for conv in (separate.conv_spatial, separate.conv_out):
            conv.load_state_dict(separate.conv.state_dict())
    shared.load_state_dict({k: v for k, v in separate.state_dict().items()
                            if not k.startswith(('conv_spatial', 'conv_out'))})
    x = torch.randn(2, 8, 5, 6)
    torch.testing.assert_close(separate(x), shared(x))


def test_state_dict_keys_are_the_official_ones():
    keys = set(CPCA(8).state_dict())
    expected = {'ca.fc1.weight', 'ca.fc1.bias', 'ca.fc2.weight', 'ca.fc2.bias',
                'dconv5_5.weight', 'dconv5_5.bias', 'conv.weight', 'conv.bias'}
    for k in (7, 11, 21):
        expected |= {f'dconv1_{k}.weight', f'dconv1_{k}.bias',
                     f'dconv{k}_1.weight', f'dconv{k}_1.bias'}
    assert keys == expected
    assert CPCA(8).dconv1_21.kernel_size == (1, 21) and CPCA(8).dconv21_1.padding == (10, 0)


def test_check_zero_fc2_gives_a_prior_of_one():
    """The spec's check: fc2 weight and bias zero -> c = sigmoid(0) + sigmoid(0) = 1."""
    cpca = perturb_parameters(CPCA(16), scale=0.3).double()
    with torch.no_grad():
        cpca.ca.fc2.weight.zero_()
        cpca.ca.fc2.bias.zero_()
    x = torch.randn(2, 16, 7, 5, dtype=torch.float64)
    u, c = cpca.prior(x)
    assert torch.equal(c, torch.ones_like(c))
    torch.testing.assert_close(cpca(x), cpca.conv(cpca.spatial(u) * u))


def test_prior_lies_in_zero_two_and_spatial_is_unbounded():
    cpca = perturb_parameters(CPCA(16), scale=0.5).double()
    x = 2 * torch.randn(2, 16, 8, 8, dtype=torch.float64)
    u, c = cpca.prior(x)
    assert (c > 0).all() and (c < 2).all() and (c > 1).any()
    s = cpca.spatial(c * u)
    assert (s < 0).any() and (s.abs() > 1).any()


def test_forward_rebuilt_from_the_map_methods():
    cpca = perturb_parameters(CPCA(16, projection='separate'), scale=0.3).double()
    x = torch.randn(2, 16, 6, 9, dtype=torch.float64)
    u, c = cpca.prior(x)
    v = c * u
    torch.testing.assert_close(cpca(x), cpca.conv_out(cpca.spatial(v) * v))
    maps = cpca.attention_maps(x)
    assert set(maps) == {'channel_prior', 'spatial_attention'}
    torch.testing.assert_close(maps['channel_prior'].values, c.flatten(1) / 2)
    s = cpca.spatial(v).mean(1)
    low = s.amin((1, 2), keepdim=True)
    expected = (s - low) / (s.amax((1, 2), keepdim=True) - low)
    torch.testing.assert_close(maps['spatial_attention'].values, expected)
    assert maps['spatial_attention'].values.amin((1, 2)).eq(0).all()
    assert maps['spatial_attention'].values.amax((1, 2)).eq(1).all()
    one = cpca.attention_maps(x[:, :, :1, :1])['spatial_attention'].values
    assert torch.equal(one, torch.zeros_like(one))  # a constant map: 0, not NaN
    assert maps['channel_prior'].values.min() >= 0 and maps['channel_prior'].values.max() <= 1


def test_initialisation_is_pytorchs_default():
    """The official block keeps PyTorch's default conv initialisation (kaiming-uniform,
    |w| <= 1 / sqrt(fan_in)), every conv with a bias."""
    cpca = CPCA(64)
    cpca.init_weights()
    for name, module in cpca.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            fan_in = module.weight[0].numel()
            assert module.bias is not None, name
            assert module.weight.abs().max() <= fan_in ** -0.5, name
            assert module.bias.abs().max() <= fan_in ** -0.5, name
            assert module.weight.abs().max() > 0.5 * fan_in ** -0.5, name


@pytest.mark.parametrize('channels', [4, 16, 64, 256, 512])
def test_parameter_count(channels):
    hidden = channels // 4
    convs = 2 * channels * hidden + hidden + channels  # fc1, fc2 with biases
    dw = channels * (25 + 1) + 3 * 2 * channels + 2 * channels * (7 + 11 + 21)
    one_by_one = channels * channels + channels
    assert sum(p.numel() for p in CPCA(channels).parameters()) == convs + dw + one_by_one
    # the spec's closed form: 1.5 C^2 + 112.25 C
    assert convs + dw + one_by_one == 1.5 * channels ** 2 + 112.25 * channels
    separate = sum(p.numel() for p in CPCA(channels, projection='separate').parameters())
    assert separate == convs + dw + 3 * one_by_one
    if channels == 256:
        assert (convs + dw + one_by_one, separate) == (127_040, 258_624)


def test_hidden_width_floor():
    assert CPCA(8, reduction=8, min_channels=4).ca.fc1.out_channels == 4
    assert CPCA(3, reduction=3).ca.fc1.out_channels == 1


@pytest.mark.parametrize('kwargs,argument', [
    (dict(reduction=0), 'reduction'), (dict(reduction=16), 'reduction'),
    (dict(min_channels=0), 'min_channels'), (dict(projection='three'), 'projection'),
    (dict(square_kernel=4), 'square_kernel'), (dict(square_kernel=0), 'square_kernel'),
    (dict(strip_kernels=7), 'strip_kernels'), (dict(strip_kernels=(7, 8)), 'strip_kernels'),
    (dict(strip_kernels=(7, 7)), 'strip_kernels')])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'CPCA: {argument}'):
        CPCA(**dict(dict(in_channels=8), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyCPCA', (CPCA, ), {'_abbr_': 'my_cpca'})
    with pytest.raises(ValueError, match='MyCPCA: projection'):
        sub(8, projection='three')
    with pytest.raises(ValueError, match='MyCPCA: strip_kernels'):
        sub(8, strip_kernels=(4, ))


def test_position_is_own_block_with_residual_end_fallback():
    assert CPCA.paper_position == 'own_block'
    assert CPCA.fallback_position == 'residual_end'
