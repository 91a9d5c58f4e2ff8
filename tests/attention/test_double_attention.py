"""DoubleAttention (A^2-Nets): its equation, batch independence, c_n = 1, identity at init,
parameter count, maps and argument checks."""
import functools

import pytest
import torch

from cvattn_mm.attention.spatial.double_attention import DoubleAttention
from cvattn_mm.visualization import extract_maps

from . import contract

VARIANTS = [dict(num_descriptors=1), dict(reduction=2, num_descriptors=3),
            dict(reduction=32, min_channels=4)]


@pytest.mark.parametrize('kwargs', VARIANTS, ids=str)
def test_contract_variants(kwargs):
    torch.manual_seed(0)
    contract.run_contract(functools.partial(DoubleAttention, 16, **kwargs))


def build(channels=16, scale=0.3, **kwargs):
    torch.manual_seed(0)
    module = DoubleAttention(channels, **kwargs)
    return contract.perturb_parameters(module, scale=scale).double()


def a2_reference(x, weight_a, bias_a, weight_b, bias_b, weight_v, bias_v, weight_r, bias_r):
    """The paper's block, written per sample from its equations: 1x1 convs as sums over the
    input channels, softmaxes as exp / sum (b over the positions of each map, v over the
    c_n maps at each position), G = A b^T, Z = G v, out = x + W_r Z + b_r."""
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        xs = x[i].flatten(1)  # (C, S)
        a = weight_a @ xs + bias_a[:, None]  # (c_m, S)
        bl = weight_b @ xs + bias_b[:, None]  # (c_n, S)
        vl = weight_v @ xs + bias_v[:, None]  # (c_n, S)
        b = torch.exp(bl - bl.max()) / torch.exp(bl - bl.max()).sum(1, keepdim=True)
        v = torch.exp(vl - vl.max()) / torch.exp(vl - vl.max()).sum(0, keepdim=True)
        g = torch.zeros(a.shape[0], b.shape[0], dtype=x.dtype)
        for s in range(xs.shape[1]):  # gather: sum over positions of a_s b_s^T
            g += torch.outer(a[:, s], b[:, s])
        z = g @ v  # distribute: z_s = G v_s
        out[i] = x[i] + (weight_r @ z + bias_r[:, None]).view_as(x[i])
    return out


def split_weights(module):
    c_m, c_n = module.mid_channels, module.num_descriptors
    w, b = module.embed.weight.flatten(1), module.embed.bias
    parts = [c_m, c_n, c_n]
    ws, bs = w.split(parts), b.split(parts)
    return (ws[0], bs[0], ws[1], bs[1], ws[2], bs[2], module.reconstruct.weight.flatten(1),
            module.reconstruct.bias)


@pytest.mark.parametrize('kwargs', [{}] + VARIANTS, ids=str)
@pytest.mark.parametrize('size', [(5, 7), (1, 1), (4, 4)])
def test_equation(kwargs, size):
    module = build(**kwargs)
    x = torch.randn(3, 16, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(module(x), a2_reference(x, *split_weights(module)))


@pytest.mark.parametrize('mode', ['train', 'eval'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_samples_do_not_leak_into_each_other(mode, dtype):
    """Changing sample j leaves every other sample's output unchanged, bit for bit (the
    public copies' softmax over the batch axis fails this)."""
    module = getattr(build().to(dtype), mode)()
    x = torch.randn(4, 16, 6, 5, dtype=dtype)
    with torch.no_grad():
        out = module(x)
        for j in range(4):
            changed = x.clone()
            changed[j] = torch.randn(16, 6, 5, dtype=dtype) * 3
            new = module(changed)
            assert not torch.equal(new[j], out[j])
            for i in range(4):
                if i != j:
                    assert torch.equal(new[i], out[i]), (i, j)


def test_the_leak_check_catches_a_batch_axis_softmax():
    """The check above fails for the copies' normalisation over the batch axis (the same
    block with B and V softmaxed over dim 0)."""
    module = build().eval()
    w_a, b_a, w_b, b_b, w_v, b_v, w_r, b_r = split_weights(module)

    def batch_axis(x):
        flat = x.flatten(2)
        a = w_a @ flat + b_a[:, None]
        b = (w_b @ flat + b_b[:, None]).softmax(0)
        v = (w_v @ flat + b_v[:, None]).softmax(0)
        return (w_r @ ((a @ b.transpose(1, 2)) @ v) + b_r[:, None]).view_as(x) + x

    x = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    changed = x.clone()
    changed[1] += 1
    with torch.no_grad():
        assert not torch.equal(batch_axis(x)[0], batch_axis(changed)[0])
        assert torch.equal(module(x)[0], module(changed)[0])


def test_one_descriptor_distributes_one_vector():
    """c_n = 1: v is 1 everywhere and Z (hence out - x) is the same vector at every
    position."""
    module = build(num_descriptors=1).eval()
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        _, gather, distribute = module.attention(x)
        assert torch.equal(distribute, torch.ones_like(distribute))
        torch.testing.assert_close(gather.sum(2), torch.ones(2, 1, dtype=torch.float64))
        delta = (module(x) - x).flatten(2)
        torch.testing.assert_close(delta, delta[:, :, :1].expand_as(delta))
        assert delta.abs().max() > 0.01


def test_softmax_axes_and_promoted_dtype():
    module = build(channels=32, scale=1.0).float().eval()
    x = torch.randn(2, 32, 6, 7)
    with torch.no_grad():
        _, gather, distribute = module.attention(x)
        torch.testing.assert_close(gather.sum(2), torch.ones(2, 8))  # over positions
        torch.testing.assert_close(distribute.sum(1), torch.ones(2, 42))  # over maps
        with torch.autocast('cpu', dtype=torch.bfloat16):
            a, low_gather, low_distribute = module.attention(x)
            logits = module.embed(x).flatten(2)
    assert a.dtype == low_gather.dtype == low_distribute.dtype == logits.dtype == torch.bfloat16
    # the bf16 logits softmaxed in float32, rounded to bf16 once
    _, gather_logits, distribute_logits = logits.split([8, 8, 8], 1)
    assert torch.equal(low_gather, gather_logits.float().softmax(2).bfloat16())
    assert torch.equal(low_distribute, distribute_logits.float().softmax(1).bfloat16())


def test_gather_bias_gets_no_gradient():
    """B's bias is constant over positions: the softmax over positions removes it."""
    module = build(channels=8)
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    module(x).square().sum().backward()
    c_m, c_n = module.mid_channels, module.num_descriptors
    grad = module.embed.bias.grad
    torch.testing.assert_close(grad[c_m:c_m + c_n], torch.zeros(c_n, dtype=torch.float64))
    assert grad[:c_m].abs().max() > 0 and grad[c_m + c_n:].abs().max() > 0


def test_gradcheck():
    module = build(channels=8, num_descriptors=3)
    x = torch.randn(2, 8, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x, ))


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_identity_at_init(mode):
    module = getattr(DoubleAttention(32), mode)()
    module.init_weights()
    x = torch.randn(2, 32, 7, 5)
    assert torch.equal(module(x), x)
    assert module.reconstruct.weight.eq(0).all() and module.reconstruct.bias.eq(0).all()
    assert module.embed.bias.eq(0).all()


def test_embedding_initialisation():
    torch.manual_seed(0)
    module = DoubleAttention(64)  # embed: 64 -> 16 + 2 * 16 = 48 outputs, fan_out 48
    std = module.embed.weight.std().item()
    assert abs(std - (2 / 48)**0.5) < 0.1 * (2 / 48)**0.5


def test_identity_survives_init_cfg():
    module = DoubleAttention(16, init_cfg=[dict(type='Constant', val=0.5, layer='Conv2d')])
    module.init_weights()
    assert module.embed.weight.eq(0.5).all()
    assert module.reconstruct.weight.eq(0).all() and module.reconstruct.bias.eq(0).all()
    x = torch.randn(2, 16, 6, 6)
    assert torch.equal(module(x), x)


def expected_params(c, c_m, c_n):
    return (c * c_m + c_m) + 2 * (c * c_n + c_n) + (c_m * c + c)


@pytest.mark.parametrize('channels', [16, 64, 256, 1024])
def test_parameter_count(channels):
    count = sum(p.numel() for p in DoubleAttention(channels).parameters())
    c = channels // 4
    assert count == expected_params(channels, c, c) == 3 * (channels * c + c) + c * channels \
        + channels
    module = DoubleAttention(channels, reduction=2, num_descriptors=5)
    assert sum(p.numel() for p in module.parameters()) == expected_params(
        channels, channels // 2, 5)


def test_parameter_count_at_256():
    assert sum(p.numel() for p in DoubleAttention(256).parameters()) == 65_984
    # the public copies' c_m = c_n = 128
    assert sum(p.numel() for p in DoubleAttention(256, reduction=2).parameters()) == 131_712


def test_widths():
    assert (DoubleAttention(64).mid_channels, DoubleAttention(64).num_descriptors) == (16, 16)
    module = DoubleAttention(8, reduction=16, min_channels=3, num_descriptors=2)
    assert (module.mid_channels, module.num_descriptors) == (3, 2)
    assert module.embed.out_channels == 7 and module.reconstruct.in_channels == 3


def test_maps_rebuild_the_forward():
    module = build(channels=32, num_descriptors=6).float().eval()
    x = torch.randn(2, 32, 7, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x)
        features, gather, distribute = module.attention(x)
        z = torch.bmm(torch.bmm(features, gather.transpose(1, 2)), distribute)
        rebuilt = x + module.reconstruct(z.view(2, -1, 7, 10))
        maps = extract_maps(module, x)
    contract.assert_close_rel(rebuilt, expected, 1e-6, 'rebuilt forward')
    assert set(maps) == {'gather_weights', 'distribution_peak'}
    assert torch.equal(maps['gather_weights'].values, gather.mean(1).view(2, 7, 10))
    assert torch.equal(maps['distribution_peak'].values, distribute.amax(1).view(2, 7, 10))
    peak = maps['distribution_peak'].values
    assert peak.min() >= 1 / 6 - 1e-6 and peak.max() <= 1


def test_plain_layers_compute_the_same():
    """A tool that swaps the layer types for plain convolutions gets the same block."""
    module = contract.perturb_parameters(DoubleAttention(16)).eval()
    x = torch.randn(2, 16, 6, 7)
    with torch.no_grad():
        expected = module(x)
        for name in ('embed', 'reconstruct'):
            layer = getattr(module, name)
            plain = torch.nn.Conv2d(layer.in_channels, layer.out_channels, 1)
            plain.load_state_dict(layer.state_dict())
            setattr(module, name, plain)
        contract.assert_close_rel(module(x), expected, 1e-5, 'plain convolutions')


def test_state_dict_keys():
    assert sorted(DoubleAttention(8).state_dict()) == [
        'embed.bias', 'embed.weight', 'reconstruct.bias', 'reconstruct.weight']


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(reduction=0), 'reduction'),
    (dict(reduction=32), 'reduction'), (dict(min_channels=0), 'min_channels'),
    (dict(num_descriptors=0), 'num_descriptors'), (dict(num_descriptors=2.5), 'num_descriptors'),
    (dict(reduction=1.5), 'reduction')])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'DoubleAttention: .*{argument}'):
        DoubleAttention(**dict(dict(in_channels=16), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyA2', (DoubleAttention, ), {'_abbr_': 'my_a2'})
    with pytest.raises(ValueError, match='MyA2: num_descriptors'):
        sub(16, num_descriptors=0)
    with pytest.raises(ValueError, match='MyA2: .*reduction'):
        sub(16, reduction=0)
