"""GC: identity at initialisation, attention pooling (and its hand-written backward), the
defining equation, parameters, maps."""
import copy
import functools

import pytest
import torch
import torch.nn as nn

from cvattn_mm.attention.channel.context_pooling import attention_pool, attention_weights
from cvattn_mm.attention.channel.gc import GC
from cvattn_mm.attention.channel.simplified_non_local import SimplifiedNonLocal
from cvattn_mm.attention.fast_backward import fast_backward
from cvattn_mm.registry import MODELS
from cvattn_mm.visualization import extract_maps

from . import contract


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def expected_params(c, r=16, pooling='att', n_fusions=1):
    """Paper formula: W_k (C, att only) + per fusion 2 C (C/r) + 3 C/r (bias, LN) + C (bias)."""
    p = c // r
    return (c if pooling == 'att' else 0) + n_fusions * (2 * c * p + 3 * p + c)


@pytest.mark.parametrize('channels', [256, 2048])
def test_parameter_count(channels):
    module = GC(channels)
    params = n_params(module)
    print(f'GC C={channels}: {params} params')
    assert params == expected_params(channels)
    assert n_params(GC(channels, pooling='avg', fusions=('add', 'mul'))) == expected_params(
        channels, pooling='avg', n_fusions=2)
    assert n_params(GC(channels, reduction=4, fusions='mul')) == expected_params(channels, r=4)


def test_parameter_count_values():
    assert n_params(GC(256)) == 8752  # 256 + 2*256*16 + 3*16 + 256
    assert n_params(GC(2048)) == 528768  # 2048 + 2*2048*128 + 3*128 + 2048


def test_fresh_add_block_is_identity():
    x = torch.randn(2, 64, 7, 9)
    module = GC(64)
    assert torch.equal(module(x), x)
    module.init_weights()
    assert torch.equal(module(x), x)


def test_identity_survives_a_parent_init_cfg():
    """A Kaiming init_cfg (like a backbone's, applied to its subtree) must not undo zero-init."""
    x = torch.randn(2, 64, 5, 5)
    module = GC(64, fusions=('add', 'mul'), init_cfg=dict(type='Kaiming', layer='Conv2d'))
    module.init_weights()
    for transform in (module.channel_add_conv, module.channel_mul_conv):
        assert not transform[-1].weight.any() and not transform[-1].bias.any()
    # mul gate sigmoid(0) = 0.5, add term 0.
    assert torch.equal(module(x), x * 0.5)


def test_pretrained_init_cfg_is_not_overwritten(tmp_path):
    source = contract.perturb_parameters(GC(32, fusions=('add', 'mul')))
    path = str(tmp_path / 'gc.pth')
    torch.save(source.state_dict(), path)
    module = GC(32, fusions=('add', 'mul'), init_cfg=dict(type='Pretrained', checkpoint=path))
    module.init_weights()
    for key, value in source.state_dict().items():
        assert torch.equal(module.state_dict()[key], value), key


def test_attention_weights_sum_to_one():
    module = contract.perturb_parameters(GC(16, reduction=4), scale=1.0)
    x = torch.randn(3, 16, 5, 7)
    w = attention_weights(x, module.conv_mask)
    assert w.shape == (3, 1, 35)
    assert (w >= 0).all()
    assert torch.allclose(w.sum(-1), torch.ones(3, 1), atol=1e-6)
    assert w.std() > 0  # not uniform: the attention depends on the input


def _layer_norm(h, weight, bias, eps=1e-5):
    mean = h.mean(1, keepdim=True)
    var = ((h - mean)**2).mean(1, keepdim=True)
    return (h - mean) / torch.sqrt(var + eps) * weight.flatten() + bias.flatten()


def _transform(seq, context):
    conv1, norm, _, conv2 = seq
    h = context @ conv1.weight[:, :, 0, 0].T + conv1.bias
    h = torch.relu(_layer_norm(h, norm.weight, norm.bias))
    return h @ conv2.weight[:, :, 0, 0].T + conv2.bias


@pytest.mark.parametrize('pooling', ['att', 'avg'])
def test_equation_against_direct_computation(pooling):
    torch.manual_seed(0)
    module = contract.perturb_parameters(
        GC(32, reduction=4, pooling=pooling, fusions=('mul', 'add')), scale=0.5).double()
    x = torch.randn(2, 32, 5, 6, dtype=torch.float64)
    flat = x.reshape(2, 32, 30)
    if pooling == 'att':
        logits = torch.einsum('c,ncp->np', module.conv_mask.weight.flatten(), flat)
        weights = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
        context = (flat * weights[:, None, :]).sum(-1)
    else:
        context = flat.mean(-1)
    t_mul = _transform(module.channel_mul_conv, context)
    t_add = _transform(module.channel_add_conv, context)
    expected = x * torch.sigmoid(t_mul)[:, :, None, None] + t_add[:, :, None, None]
    with torch.no_grad():
        assert torch.allclose(module(x), expected, atol=1e-10)


def test_matches_mmcv_context_block():
    """mmcv's ContextBlock (a port of the official code) loads into GC and agrees."""
    from mmcv.cnn import ContextBlock

    torch.manual_seed(0)
    ref = contract.perturb_parameters(
        ContextBlock(64, 1 / 16, fusion_types=('channel_add', 'channel_mul'))).eval()
    module = GC(64, fusions=('add', 'mul')).eval()
    state = {k: v for k, v in ref.state_dict().items() if k != 'conv_mask.bias'}
    module.load_state_dict(state, strict=True)
    x = torch.randn(2, 64, 7, 9)
    with torch.no_grad():
        contract.assert_close_rel(module(x), ref(x), 1e-5, 'GC vs mmcv ContextBlock')


def test_fusions_order_and_string():
    assert GC(64, fusions=('mul', 'add')).fusions == ('add', 'mul')
    assert GC(64, fusions='mul').fusions == ('mul', )
    assert GC(64, fusions=['add']).channel_mul_conv is None


def test_other_norms():
    gn = GC(64, norm_cfg=dict(type='GN', num_groups=1))
    assert isinstance(gn.channel_add_conv[1], nn.GroupNorm)
    ln = GC(64)
    assert isinstance(ln.channel_add_conv[1], nn.LayerNorm)
    assert ln.channel_add_conv[1].normalized_shape == (4, 1, 1)
    # GroupNorm with one group is the paper's LayerNorm over (C/r, 1, 1).
    contract.perturb_parameters(ln)
    gn.load_state_dict({k: v.flatten() if k == 'channel_add_conv.1.weight'
                        or k == 'channel_add_conv.1.bias' else v
                        for k, v in ln.state_dict().items()})
    x = torch.randn(2, 64, 5, 5)
    with torch.no_grad():
        assert torch.allclose(gn(x), ln(x), atol=1e-6)


def test_registry_builds_gc():
    module = MODELS.build(dict(type='GC', in_channels=32, pooling='avg'))
    assert isinstance(module, GC) and module.pooling == 'avg'


@pytest.mark.parametrize('kwargs', [
    dict(pooling='avg'),
    dict(fusions=('mul', )),
    dict(fusions=('add', 'mul')),
    dict(pooling='avg', fusions=('add', 'mul')),
    dict(reduction=4, norm_cfg=dict(type='GN', num_groups=2)),
    dict(reduction=64, min_channels=8),
], ids=str)
def test_contract_variants(kwargs):
    contract.run_contract(functools.partial(GC, 64, **kwargs))


@pytest.mark.parametrize('kwargs, arg', [
    (dict(in_channels=0), 'in_channels'),
    (dict(in_channels=64, reduction=0), 'reduction'),
    (dict(in_channels=64, reduction=128), 'reduction'),
    (dict(in_channels=64, min_channels=0), 'min_channels'),
    (dict(in_channels=64, pooling='max'), 'pooling'),
    (dict(in_channels=64, fusions=()), 'fusions'),
    (dict(in_channels=64, fusions=('add', 'add')), 'fusions'),
    (dict(in_channels=64, fusions=('channel_add', )), 'fusions'),
    (dict(in_channels=64, fusions=None), 'fusions'),
    (dict(in_channels=64, norm_cfg='LN'), 'norm_cfg'),
    (dict(in_channels=64, norm_cfg=dict(eps=1e-5)), 'norm_cfg'),
], ids=str)
def test_invalid_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=rf'GC: {arg}'):
        GC(**kwargs)


def test_constant_layer_norm_is_rejected():
    with pytest.raises(ValueError, match='GC: reduction=16 leaves a hidden width of 1'):
        GC(16)
    assert GC(16, min_channels=2).channel_add_conv[1].normalized_shape == (2, 1, 1)


def check_identity_as_mmdet_plugin(attention_type, abbr):
    """In an mmdet ResNet-50 (plugins after conv3, stages c3-c5), after the backbone's own
    init_weights (Kaiming on every conv of the subtree), the block is still the identity: the
    backbone with it computes exactly what the plain backbone computes with the same weights.
    """
    from mmdet.models.backbones import ResNet

    torch.manual_seed(0)
    kwargs = dict(depth=50, zero_init_residual=False, out_indices=(1, 3))
    plain = ResNet(**kwargs)  # (its train() returns None: no chained .eval())
    plain.init_weights()
    plain.eval()
    plugins = [dict(cfg=dict(type=attention_type), position='after_conv3',
                    stages=(False, True, True, True))]
    model = ResNet(plugins=plugins, **kwargs)
    model.init_weights()
    model.eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing
    assert all(f'.{abbr}.' in key for key in missing), missing
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), plain(x), strict=True):
            assert torch.equal(a, b)


def test_identity_as_mmdet_plugin():
    check_identity_as_mmdet_plugin('GC', 'gc')


def test_mask_conv_official_init():
    """W_k: Kaiming normal, fan-in, ReLU gain (std sqrt(2 / C)), redone by init_weights."""
    module = GC(2048, init_cfg=dict(type='Constant', layer='Conv2d', val=1.0))
    module.init_weights()
    std = module.conv_mask.weight.std().item()
    assert abs(std / (2 / 2048)**0.5 - 1) < 0.1, std
    assert module.conv_mask.bias is None


@pytest.mark.parametrize('kwargs', [{}, dict(fusions=('add', 'mul')),
                                    dict(pooling='avg', fusions='mul')], ids=str)
def test_maps_rebuild_the_forward(kwargs):
    """The output from the maps (the context weights, the mul gate) and the add transform."""
    torch.manual_seed(0)
    module = contract.perturb_parameters(GC(32, reduction=4, **kwargs), scale=0.5).eval()
    x = torch.randn(2, 32, 7, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x)
        maps = extract_maps(module, x)
        if module.pooling == 'att':
            weights = maps['context_weights'].values.flatten(1)[:, None]  # (N, 1, HW)
            assert torch.equal(weights, attention_weights(x, module.conv_mask))
            context = (weights * x.flatten(2)).sum(-1)[:, :, None, None]
        else:
            assert 'context_weights' not in maps
            context = x.mean((2, 3), keepdim=True)
        rebuilt = x
        if 'mul' in module.fusions:
            gate = maps['mul_gate'].values[:, :, None, None]
            assert torch.equal(gate, module.mul_gate(module.context(x)))
            rebuilt = rebuilt * gate
        if 'add' in module.fusions:
            rebuilt = rebuilt + module.channel_add_conv(context)
    contract.assert_close_rel(rebuilt, expected, 1e-4, f'GC {kwargs}')
    assert maps


def _uses_attention_pool(out):
    nodes, seen = [out.grad_fn], set()
    while nodes:
        node = nodes.pop()
        if node is None or node in seen:
            continue
        if node.name() == '_AttentionPoolBackward':
            return True
        seen.add(node)
        nodes.extend(next_node for next_node, _ in node.next_functions)
    return False


def _output_and_grads(module, x, grad_out):
    x = x.detach().requires_grad_()
    y = module(x)
    grads = torch.autograd.grad(y, [x, *module.parameters()], grad_out)
    return y, grads


def test_attention_pool_hand_written_backward_only_for_its_plain_layer():
    """The hand-written backward runs for mask_conv's layer; with a forward hook on it (here one
    that doubles the scores) or a layer of another type, autograd runs, and the gradients are
    those of what the layer computed."""
    torch.manual_seed(0)
    module = contract.perturb_parameters(GC(16, reduction=4), scale=0.5).double()
    x = torch.randn(2, 16, 5, 6, dtype=torch.double)
    grad_out = torch.randn_like(x)
    assert _uses_attention_pool(module(x.clone().requires_grad_()))

    doubled = copy.deepcopy(module)
    with torch.no_grad():
        doubled.conv_mask.weight.mul_(2)
    y_ref, grads_ref = _output_and_grads(doubled, x, grad_out)
    handle = module.conv_mask.register_forward_hook(lambda m, args, out: out * 2)
    y, grads = _output_and_grads(module, x, grad_out)
    handle.remove()
    assert not _uses_attention_pool(y)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(grads[0], grads_ref[0])
    torch.testing.assert_close(grads[1], 2 * grads_ref[1])  # d(2 W x) / dW
    torch.testing.assert_close(grads[2:], grads_ref[2:])

    swapped = nn.Conv2d(16, 1, 1, bias=False).double()  # e.g. a tool's own conv
    swapped.load_state_dict(module.conv_mask.state_dict())
    y_ref, grads_ref = _output_and_grads(module, x, grad_out)
    module.conv_mask = swapped
    y, grads = _output_and_grads(module, x, grad_out)
    assert not _uses_attention_pool(y)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(grads, grads_ref)


def test_attention_pool_channels_last_gradient():
    """The hand-written gradient of a channels_last input is channels_last, and equals
    autograd's."""
    conv = contract.perturb_parameters(GC(16, reduction=4), scale=0.5).conv_mask
    x = torch.randn(2, 16, 6, 5).to(memory_format=torch.channels_last)
    grad_out = torch.randn(2, 16, 1, 1)
    results = []
    for enabled, xi in ((True, x), (False, x.contiguous())):
        xi = xi.detach().requires_grad_()
        with fast_backward(enabled):
            out = attention_pool(xi, conv)
        assert _uses_attention_pool(out) == enabled
        results.append(torch.autograd.grad(out, [xi, conv.weight], grad_out))
    (grad_x, grad_w), (expected_x, expected_w) = results
    assert grad_x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(grad_x, expected_x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_w, expected_w, rtol=1e-5, atol=1e-5)


#: A GC and a SimplifiedNonLocal for 16 channels: the two users of the attention pooling.
POOLING_MODULES = {'GC': functools.partial(GC, 16, reduction=4),
                   'SimplifiedNonLocal': functools.partial(SimplifiedNonLocal, 16)}


@pytest.mark.parametrize('name', sorted(POOLING_MODULES))
def test_attention_pool_bf16_autocast_gradients_match_autograd(name):
    torch.manual_seed(0)
    module = contract.perturb_parameters(POOLING_MODULES[name](), scale=0.5)
    x = torch.randn(2, 16, 6, 5)
    grad_out = torch.randn(x.shape)
    results = []
    for enabled in (True, False):
        with fast_backward(enabled), torch.autocast('cpu', dtype=torch.bfloat16):
            results.append(_output_and_grads(module, x, grad_out))
    (y, grads), (y_plain, plain) = results
    assert _uses_attention_pool(y) and not _uses_attention_pool(y_plain)
    assert y.dtype == y_plain.dtype
    for g, e in zip(grads, plain, strict=True):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('kwargs, message', [
    (dict(in_channels=64, pooling='max'), 'pooling'),
    (dict(in_channels=64, fusions=()), 'fusions'),
    (dict(in_channels=64, norm_cfg='LN'), 'norm_cfg'),
    (dict(in_channels=16), 'reduction=16 leaves a hidden width of 1'),
], ids=str)
def test_errors_name_the_subclass(kwargs, message):
    class MyGC(GC):
        _abbr_ = 'my_gc'

    with pytest.raises(ValueError, match=f'^MyGC: {message}'):
        MyGC(**kwargs)
