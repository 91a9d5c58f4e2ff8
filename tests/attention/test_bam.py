"""BAM: every spatial size kept, both fusions, its maps, parameters, arguments, batch 1 in
training."""
import functools

import pytest
import torch
import torch.nn.functional as F

from cvattn_mm.attention.channel_spatial.bam import BAM
from cvattn_mm.attention.fast_backward import fast_backward
from cvattn_mm.visualization import extract_maps

from . import contract

RESNET50_PARAMS = 25_557_032  # torchvision / mmpretrain ResNet-50
#: Output channels of ResNet-50's stages 1-3: BAM sits after each (not after the last).
RESNET50_STAGES = [256, 512, 1024]


def bam_params(channels, reduction=16, num_dilated=2):
    h = channels // reduction
    channel = 2 * channels * h + channels + 2 * h
    spatial = channels * h + 2 * h + num_dilated * (9 * h * h + 2 * h) + h + 1
    return channel + spatial


@pytest.mark.parametrize('kwargs', [
    dict(fusion='mul'),
    dict(num_dilated=0),
    dict(dilation=1, num_dilated=3, reduction=4),
    dict(reduction=32, min_channels=2),
    dict(norm_cfg=dict(type='GN', num_groups=1), act_cfg=dict(type='GELU')),
], ids=str)
def test_contract_variants(kwargs):
    contract.run_contract(functools.partial(BAM, 32, **kwargs))


def test_every_spatial_size_is_kept():
    """The dilated 3x3 convs pad by their dilation: no size from 1 to 57 shrinks.

    Convs act on H and W independently, so the squares 1x1..57x57 plus the non-square
    H x (58 - H) cover every height and every width from 1 to 57, alone and mixed.
    """
    module = BAM(16, reduction=8).eval()
    seen = []
    module.spatial_out.register_forward_hook(lambda m, i, o: seen.append(o.shape[2:]))
    sizes = [(h, h) for h in range(1, 58)] + [(h, 58 - h) for h in range(1, 58)]
    with torch.no_grad():
        for h, w in sizes:
            y = module(torch.randn(1, 16, h, w))
            assert y.shape == (1, 16, h, w)
            assert seen[-1] == (h, w), f'spatial map {tuple(seen[-1])} for {h}x{w}'
    assert len(seen) == len(sizes) == 114


def bn_eval(x, norm):
    return ((x - norm.running_mean[None, :, None, None])
            / torch.sqrt(norm.running_var[None, :, None, None] + norm.eps)
            * norm.weight[None, :, None, None] + norm.bias[None, :, None, None])


def direct_bam(module, x, fusion):
    """BAM written out with matrix products and functional convs, in eval mode."""
    pooled = x.mean((2, 3))  # (N, C)
    hid = pooled @ module.channel_fc1.weight.flatten(1).T
    hid = torch.relu(bn_eval(hid[:, :, None, None], module.channel_norm)).flatten(1)
    mc = hid @ module.channel_fc2.weight.flatten(1).T + module.channel_fc2.bias
    s = torch.einsum('nchw,kc->nkhw', x, module.spatial_convs[0].weight.flatten(1))
    s = torch.relu(bn_eval(s, module.spatial_norms[0]))
    d = module.dilation
    for conv, norm in zip(module.spatial_convs[1:], module.spatial_norms[1:], strict=True):
        s = torch.relu(bn_eval(F.conv2d(F.pad(s, [d] * 4), conv.weight, dilation=d), norm))
    ms = torch.einsum('nchw,kc->nkhw', s, module.spatial_out.weight.flatten(1))
    ms = ms + module.spatial_out.bias[None, :, None, None]
    mc = mc[:, :, None, None]
    att = mc + ms if fusion == 'add' else mc * ms
    return x * (1 + torch.sigmoid(att))


@pytest.mark.parametrize('fusion', ['add', 'mul'])
@pytest.mark.parametrize('size', [(9, 9), (6, 11), (1, 1)])
def test_equation_against_direct_computation(fusion, size):
    torch.manual_seed(0)
    module = contract.perturb_parameters(BAM(32, reduction=4, fusion=fusion), 0.3).eval()
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 32, *size)
    with torch.no_grad():
        y = module(x)
        torch.testing.assert_close(y, direct_bam(module, x, fusion), rtol=1e-5, atol=1e-5)
        # out = x * (1 + M) with M in (0, 1): a residual amplification by a factor in (1, 2).
        ratio = y / x
        assert ((ratio > 1) & (ratio < 2)).all()


@pytest.mark.parametrize('kwargs', [{}, dict(fusion='mul')], ids=str)
def test_gates_rebuild_the_forward(kwargs):
    torch.manual_seed(0)
    module = contract.perturb_parameters(BAM(32, **kwargs), scale=0.5).eval()
    x = torch.randn(2, 32, 7, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x)
        mc, ms = module.branch_logits(x)
        rebuilt = x * (1 + torch.sigmoid(mc + ms if module.fusion == 'add' else mc * ms))
        maps = extract_maps(module, x)
    err = (rebuilt - expected).abs().max().item()
    assert err <= 1e-4 * (expected.abs().max().item() + 1e-6), f'BAM {kwargs}: {err:.3g}'
    assert maps


def test_fusions_differ():
    torch.manual_seed(0)
    add = contract.perturb_parameters(BAM(32, reduction=4), 0.3).eval()
    mul = BAM(32, reduction=4, fusion='mul').eval()
    mul.load_state_dict(add.state_dict())
    x = torch.randn(2, 32, 5, 5)
    with torch.no_grad():
        assert not torch.allclose(add(x), mul(x))


def test_layer_structure():
    module = BAM(64, reduction=16, dilation=3, num_dilated=2)
    assert [c.dilation for c in module.spatial_convs] == [(1, 1), (3, 3), (3, 3)]
    assert [c.padding for c in module.spatial_convs] == [(0, 0), (3, 3), (3, 3)]
    assert [c.kernel_size for c in module.spatial_convs] == [(1, 1), (3, 3), (3, 3)]
    assert module.spatial_out.weight.shape == (1, 4, 1, 1)
    assert module.channel_fc1.weight.shape == (4, 64, 1, 1)
    assert module.channel_fc2.weight.shape == (64, 4, 1, 1)
    # A bias directly before a batch norm is cancelled by it: none are created.
    assert module.channel_fc1.bias is None
    assert all(c.bias is None for c in module.spatial_convs)


def test_batch_one_in_training_uses_running_stats():
    """Batch 1: the channel branch's norm sees one value per channel; on a 1x1 map every
    norm does. Those norms use their running statistics and leave them unchanged."""
    module = contract.perturb_parameters(BAM(32, reduction=4))
    norms = [module.channel_norm, *module.spatial_norms]
    for norm in norms:
        norm.running_mean.uniform_(-0.5, 0.5)
    before = [b.clone() for norm in norms for b in norm.buffers()]
    spatial_mean = module.spatial_norms[0].running_mean.clone()
    x = torch.randn(1, 32, 1, 1)
    y = module.train()(x)
    after = [b for norm in norms for b in norm.buffers()]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    y.sum().backward()
    assert module.channel_fc1.weight.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(y, module.eval()(x))
    # On a larger map the spatial norms use batch statistics as usual (and update them).
    module.train()(torch.randn(1, 32, 5, 5))
    assert not torch.equal(module.spatial_norms[0].running_mean, spatial_mean)


def fast_and_plain(module, x, grad_out, inputs=True):
    """Output and gradients (of x if it requires one, and of every trainable parameter) with
    the hand-written backward and with plain autograd; the first output's grad_fn name."""
    state = {k: v.clone() for k, v in module.state_dict().items()}
    results, names = [], []
    for enabled in (True, False):
        module.load_state_dict(state)
        xi = x.detach().clone().requires_grad_(inputs)
        wanted = [xi] * inputs + [p for p in module.parameters() if p.requires_grad]
        with fast_backward(enabled):
            y = module(xi)
            results.append((y, torch.autograd.grad(y, wanted, grad_out)))
        names.append(y.grad_fn.name())
    return results, names[0]


@pytest.mark.parametrize('fusion', ['add', 'mul'])
@pytest.mark.parametrize('shape', [(2, 16, 5, 7), (3, 16, 1, 6), (1, 16, 1, 1)])
@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
def test_hand_written_backward_equals_autograd(fusion, shape, training):
    torch.manual_seed(0)
    module = contract.perturb_parameters(BAM(16, reduction=4, fusion=fusion), 0.5).double()
    module.train(training)
    x = torch.randn(shape, dtype=torch.double)
    grad_out = torch.randn(shape, dtype=torch.double)
    ((y_fast, fast), (y_plain, plain)), name = fast_and_plain(module, x, grad_out)
    assert name == '_BAMFunctionBackward'
    torch.testing.assert_close(y_fast, y_plain, rtol=1e-12, atol=1e-12)
    for f, p in zip(fast, plain, strict=True):
        torch.testing.assert_close(f, p, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('fusion', ['add', 'mul'])
@pytest.mark.parametrize('variant', ['channels_last', 'hooked', 'pre_hooked', 'conv'])
def test_hand_written_backward_layouts_and_first_conv(fusion, variant):
    """channels_last inputs; the first conv's gradients are written by hand only for a
    hook-free PointwiseConv2d (a hook or another conv type takes autograd's path)."""
    torch.manual_seed(0)
    module = contract.perturb_parameters(BAM(16, reduction=4, fusion=fusion), 0.5).double()
    x = torch.randn(2, 16, 5, 7, dtype=torch.double)
    calls = []
    if variant == 'channels_last':
        x = x.to(memory_format=torch.channels_last)
    elif variant == 'hooked':
        module.spatial_convs[0].register_forward_hook(lambda *args: calls.append(1))
    elif variant == 'pre_hooked':
        module.spatial_convs[0].register_forward_pre_hook(lambda *args: calls.append(1))
    else:
        conv = torch.nn.Conv2d(16, 4, 1, bias=False).double()
        conv.load_state_dict(module.spatial_convs[0].state_dict())
        module.spatial_convs[0] = conv
    grad_out = torch.randn(x.shape, dtype=torch.double)
    ((y_fast, fast), (y_plain, plain)), name = fast_and_plain(module, x, grad_out)
    assert name == '_BAMFunctionBackward'
    assert len(calls) == (2 if 'hooked' in variant else 0)
    torch.testing.assert_close(y_fast, y_plain, rtol=1e-12, atol=1e-12)
    for f, p in zip(fast, plain, strict=True):
        torch.testing.assert_close(f, p, rtol=1e-10, atol=1e-12)
    if variant == 'channels_last':
        assert fast[0].is_contiguous(memory_format=torch.channels_last)


def test_hand_written_backward_without_input_gradient_or_with_frozen_branches():
    torch.manual_seed(0)
    module = contract.perturb_parameters(BAM(16, reduction=4, fusion='mul'), 0.5).double()
    x = torch.randn(2, 16, 5, 6, dtype=torch.double)
    grad_out = torch.randn(x.shape, dtype=torch.double)
    for frozen in ('', 'channel', 'spatial'):
        module.requires_grad_(True)
        for name, p in module.named_parameters():
            p.requires_grad_(not name.startswith(frozen) or not frozen)
        for inputs in (False, True):
            ((y_fast, fast), (_, plain)), name = fast_and_plain(module, x, grad_out, inputs)
            assert name == '_BAMFunctionBackward', (frozen, inputs)
            for f, p in zip(fast, plain, strict=True):
                torch.testing.assert_close(f, p, rtol=1e-10, atol=1e-12)


def test_hand_written_backward_twice_and_gradcheck():
    torch.manual_seed(0)
    module = contract.perturb_parameters(BAM(8, reduction=2, fusion='mul'), 0.5).double().eval()
    x = torch.randn(2, 8, 3, 4, dtype=torch.double, requires_grad=True)
    module(x).sum().backward(retain_graph=False)
    first = x.grad.clone()
    out = module(x)
    out.sum().backward(retain_graph=True)
    out.sum().backward()
    torch.testing.assert_close(x.grad, 3 * first)
    assert torch.autograd.gradcheck(module, (x.detach().requires_grad_(), ))


def test_hand_written_backward_under_bf16_autocast():
    torch.manual_seed(0)
    module = contract.perturb_parameters(BAM(32, reduction=4, fusion='mul'), 0.3)
    x = torch.randn(2, 32, 6, 5)
    results = []
    for enabled in (True, False):
        xi = x.clone().requires_grad_()
        with fast_backward(enabled), torch.autocast('cpu', dtype=torch.bfloat16):
            y = module(xi)
        y.float().sum().backward()
        results.append((y, xi.grad, [p.grad for p in module.parameters()]))
        module.zero_grad(set_to_none=True)
    (y_fast, gx_fast, gp_fast), (y_plain, gx_plain, gp_plain) = results
    assert y_fast.dtype == y_plain.dtype and gx_fast.dtype == gx_plain.dtype
    contract.assert_close_rel(y_fast, y_plain, 2e-2, 'output')
    contract.assert_close_rel(gx_fast, gx_plain, 2e-2, 'input gradient')
    for f, p in zip(gp_fast, gp_plain, strict=True):
        contract.assert_close_rel(f, p, 5e-2, 'parameter gradient')


@pytest.mark.parametrize('channels', [256, 2048])
def test_parameter_count(channels):
    module = BAM(channels)
    params = sum(p.numel() for p in module.parameters())
    print(f'BAM C={channels}: {params} params')
    assert params == bam_params(channels)
    assert sum(p.numel() for p in BAM(channels, num_dilated=0).parameters()) == bam_params(
        channels, num_dilated=0)


def test_parameter_count_resnet50_matches_paper():
    """The paper's Table: ResNet-50 + BAM has 25.92M parameters; the official code's
    redundant biases before the norms are (2 + 2) * C/16 per module (448 in total)."""
    added = sum(sum(p.numel() for p in BAM(c).parameters()) for c in RESNET50_STAGES)
    assert added == sum(bam_params(c) for c in RESNET50_STAGES)
    official = added + sum(4 * c // 16 for c in RESNET50_STAGES)
    assert official - added == 448
    assert round((RESNET50_PARAMS + official) / 1e6, 2) == 25.92
    assert abs(RESNET50_PARAMS + added - 25.92e6) < 0.01e6


@pytest.mark.parametrize('kwargs, argument', [
    (dict(in_channels=0), 'in_channels'),
    (dict(in_channels=16, reduction=0), 'reduction'),
    (dict(in_channels=16, reduction=17), 'reduction'),
    (dict(in_channels=16, min_channels=0), 'min_channels'),
    (dict(in_channels=16, dilation=0), 'dilation'),
    (dict(in_channels=16, dilation=1.5), 'dilation'),
    (dict(in_channels=16, num_dilated=-1), 'num_dilated'),
    (dict(in_channels=16, fusion='concat'), 'fusion'),
])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'BAM.*{argument}'):
        BAM(**kwargs)


def test_errors_name_the_subclass():
    sub = type('MyBAM', (BAM, ), {'_abbr_': 'my_bam'})
    with pytest.raises(ValueError, match='MyBAM.*fusion'):
        sub(16, fusion='concat')
    with pytest.raises(ValueError, match='MyBAM.*reduction'):
        sub(16, reduction=17)
