"""GAM: its equation, the spec's check, parameter count, initialisation, maps, variants and
argument checks."""
import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.channel_spatial.gam import GAM

from .contract import perturb_parameters, run_contract

EPS = 1e-5


@pytest.mark.parametrize('factory', [
    lambda: GAM(64, reduction=16, kernel_size=3),
    lambda: GAM(8, reduction=16, min_channels=4),
    lambda: GAM(64, norm_cfg=dict(type='GN', num_groups=4), act_cfg=dict(type='GELU'))],
    ids=['r16-k3', 'min-channels', 'gn-gelu'])
def test_contract_variants(factory):
    run_contract(factory)


def batch_norm(x, weight, bias, mean=None, var=None):
    """BatchNorm2d written out: batch statistics (biased variance) unless running ones are
    given."""
    if mean is None:
        mean = x.mean((0, 2, 3))
        var = ((x - mean[:, None, None]) ** 2).mean((0, 2, 3))
    return ((x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + EPS) *
            weight[:, None, None] + bias[:, None, None])


def gam_reference(x, gam, running):
    """The paper's channel submodule (3-D permutation to (N, H, W, C), a two-layer MLP on
    every pixel's channel vector, sigmoid) and spatial submodule (two k x k convs with BN,
    ReLU between, sigmoid), with plain ops on the module's weights."""
    xp = x.permute(0, 2, 3, 1)  # (N, H, W, C)
    w1, b1 = gam.channel_fc1.weight.flatten(1), gam.channel_fc1.bias
    w2, b2 = gam.channel_fc2.weight.flatten(1), gam.channel_fc2.bias
    hidden = torch.relu(xp @ w1.T + b1)
    m_c = torch.sigmoid(hidden @ w2.T + b2).permute(0, 3, 1, 2)
    x1 = x * m_c

    def bn(t, norm):
        stats = (norm.running_mean, norm.running_var) if running else (None, None)
        return batch_norm(t, norm.weight, norm.bias, *stats)

    pad = gam.kernel_size // 2
    h = F.conv2d(x1, gam.spatial_conv1.weight, gam.spatial_conv1.bias, padding=pad)
    h = torch.relu(bn(h, gam.spatial_norm1))
    s = F.conv2d(h, gam.spatial_conv2.weight, gam.spatial_conv2.bias, padding=pad)
    return x1 * torch.sigmoid(bn(s, gam.spatial_norm2))


def randomized(gam):
    gam = perturb_parameters(gam, scale=0.3).double()
    with torch.no_grad():
        for norm in (gam.spatial_norm1, gam.spatial_norm2):
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
    return gam


@pytest.mark.parametrize('mode', ['train', 'eval'])
@pytest.mark.parametrize('kwargs,size', [({}, (9, 6)), (dict(reduction=2, kernel_size=3),
                                                        (5, 7)), ({}, (1, 1))],
                         ids=['r4-k7', 'r2-k3', '1x1'])
def test_equation(mode, kwargs, size):
    gam = getattr(randomized(GAM(16, **kwargs)), mode)()
    x = torch.randn(3, 16, *size, dtype=torch.float64)
    expected = gam_reference(x, gam, running=mode == 'eval')
    torch.testing.assert_close(gam(x), expected, rtol=1e-12, atol=1e-12)


def test_gradients_match_the_equation():
    gam = randomized(GAM(8, reduction=2)).train()
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    params = list(gam.parameters())
    ours = torch.autograd.grad((gam(x) * grad_out).sum(), [x] + params)
    reference = torch.autograd.grad((gam_reference(x, gam, False) * grad_out).sum(),
                                    [x] + params)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_zero_mlp_output_and_last_bn_give_a_quarter(mode):
    """The spec's check: FC2 weight and bias 0, the last BN's gamma = beta = 0: both gates
    are sigmoid(0) = 1/2 everywhere, so y = x / 4 exactly."""
    gam = perturb_parameters(GAM(32), scale=0.5)
    with torch.no_grad():
        for t in (gam.channel_fc2.weight, gam.channel_fc2.bias, gam.spatial_norm2.weight,
                  gam.spatial_norm2.bias):
            t.zero_()
    getattr(gam, mode)()
    x = torch.randn(2, 32, 7, 9)
    assert torch.equal(gam(x), x * 0.25)


def test_initialisation_is_pytorch_default_as_the_public_copy():
    """No special initialisation: init_weights keeps PyTorch's default layer init (the copy's);
    the BNs start at weight 1, bias 0."""
    torch.manual_seed(0)
    gam = GAM(32)
    before = {k: v.clone() for k, v in gam.state_dict().items()}
    gam.init_weights()
    assert all(torch.equal(before[k], v) for k, v in gam.state_dict().items())
    for norm in (gam.spatial_norm1, gam.spatial_norm2):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
    bound = 1 / 32 ** 0.5  # kaiming_uniform(a=sqrt(5)) on fan_in 32
    assert gam.channel_fc1.weight.abs().max() <= bound


def gam_params(c, r, k=7, min_channels=1):
    h = max(c // r, min_channels)
    return (2 * c * h + h + c) + (2 * k * k * c * h + h + c) + (2 * h + 2 * c)


@pytest.mark.parametrize('channels,reduction', [(256, 4), (64, 4), (2048, 16), (12, 4)])
def test_parameter_count(channels, reduction):
    count = sum(p.numel() for p in GAM(channels, reduction=reduction).parameters())
    assert count == gam_params(channels, reduction)
    if channels % reduction == 0:
        c = channels
        assert count == 100 * c * c // reduction + 4 * c // reduction + 4 * c
    if (channels, reduction) == (256, 4):
        assert count == 1_639_680


def test_parameter_count_of_other_kernels_and_floors():
    assert sum(p.numel() for p in GAM(8, reduction=16, min_channels=4,
                                      kernel_size=3).parameters()) == gam_params(8, 16, 3, 4)


def test_gates_rebuild_the_forward_and_are_the_maps():
    gam = randomized(GAM(16)).eval()
    x = torch.randn(2, 16, 7, 10, dtype=torch.float64)
    with torch.no_grad():
        m_c = gam.channel_gate(x)
        m_s = gam.spatial_gate(x * m_c)
        assert m_c.shape == m_s.shape == x.shape
        torch.testing.assert_close(gam(x), x * m_c * m_s, rtol=0, atol=0)
        maps = gam.attention_maps(x)
    assert set(maps) == {'channel_gate', 'channel_gate_positions', 'spatial_gate'}
    torch.testing.assert_close(maps['channel_gate'].values, m_c.mean((2, 3)))
    torch.testing.assert_close(maps['channel_gate_positions'].values, m_c.mean(1))
    torch.testing.assert_close(maps['spatial_gate'].values, m_s.mean(1))


def test_batch_one_on_a_one_by_one_map_trains():
    """A BN seeing one value per channel (batch 1, 1x1 map) uses its running statistics."""
    gam = perturb_parameters(GAM(16)).train()
    state = {k: v.clone() for k, v in gam.state_dict().items()}
    x = torch.randn(1, 16, 1, 1)
    y = gam(x)
    assert all(torch.equal(state[k], v) for k, v in gam.state_dict().items())
    assert gam.spatial_norm1.training and gam.spatial_norm2.training
    torch.testing.assert_close(y, gam.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(reduction=0), 'reduction'),
    (dict(reduction=16), 'reduction=16 is larger than in_channels=8'),
    (dict(kernel_size=4), 'kernel_size must be odd'), (dict(min_channels=0), 'min_channels')])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'GAM: {argument}'):
        GAM(**dict(dict(in_channels=8), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyGAM', (GAM, ), {'_abbr_': 'my_gam'})
    with pytest.raises(ValueError, match='MyGAM: kernel_size'):
        sub(8, kernel_size=2)
