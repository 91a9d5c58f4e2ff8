"""ExternalAttention: double normalisation, tied memories, formula, params, maps, the
hand-written backward, float64 gradients."""
import copy
import functools

import pytest
import torch
import torch.nn as nn

from cvattn_mm.attention.spatial.external_attention import ExternalAttention
from cvattn_mm.visualization import extract_maps

from . import contract

VARIANTS = [
    dict(memory_size=8),
    dict(norm_cfg=None),
    dict(memory_size=1, norm_cfg=dict(type='GN', num_groups=4)),
]


@pytest.mark.parametrize('kwargs', VARIANTS, ids=str)
def test_contract_variants(kwargs):
    torch.manual_seed(0)
    contract.run_contract(functools.partial(ExternalAttention, 16, **kwargs))


def capture_attention(module, x):
    """The attention map fed to the value memory, (N, S, HW)."""
    seen = []
    handle = module.memory_value.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        module(x)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize('size', [(1, 1), (5, 7)])
def test_double_normalisation(size):
    module = contract.perturb_parameters(ExternalAttention(16, memory_size=8)).eval()
    x = torch.randn(2, 16, *size)
    with torch.no_grad():
        attn = capture_attention(module, x)
        logits = module.memory_key(module.conv1(x).flatten(2))
    assert attn.shape == (2, 8, size[0] * size[1])
    # Each position's weights over the S memory slots sum to 1.
    torch.testing.assert_close(attn.sum(1), torch.ones(2, size[0] * size[1]))
    # Before the slot normalisation each slot was a softmax over positions: the ratio
    # between positions of one slot is the ratio of exp(logits) (scaled per position).
    soft = logits.softmax(-1)
    torch.testing.assert_close(attn, soft / soft.sum(1, keepdim=True))


def test_tied_initialisation():
    module = ExternalAttention(32, memory_size=8)
    assert module.memory_value.weight.shape == (32, 8, 1)
    assert torch.equal(module.memory_value.weight, module.memory_key.weight.transpose(0, 1))
    # Independent parameters: they are tied at initialisation only.
    assert module.memory_value.weight.data_ptr() != module.memory_key.weight.data_ptr()
    # The tie survives an init_cfg that re-initialises the memories.
    module = ExternalAttention(32, init_cfg=dict(type='Normal', std=0.1, layer='Conv1d'))
    module.init_weights()
    assert torch.equal(module.memory_value.weight, module.memory_key.weight.transpose(0, 1))
    assert module.memory_key.weight.std() > 0.05


def test_official_initialisation():
    torch.manual_seed(0)
    module = ExternalAttention(256, memory_size=64)
    assert abs(module.conv1.weight.std().item() - (2 / 256) ** 0.5) < 0.01
    assert abs(module.memory_key.weight.std().item() - (2 / 64) ** 0.5) < 0.01
    assert module.conv1.bias.eq(0).all()
    assert module.norm.weight.eq(1).all() and module.norm.bias.eq(0).all()


def test_matches_formula():
    torch.manual_seed(0)
    module = contract.perturb_parameters(ExternalAttention(8, memory_size=4)).eval()
    x = torch.randn(2, 8, 3, 5)
    with torch.no_grad():
        y = module(x)
    m, xd = module.double(), x.double()
    n, c, h, w = x.shape
    u = torch.einsum('oc,nchw->nohw', m.conv1.weight[:, :, 0, 0], xd)
    u = (u + m.conv1.bias[None, :, None, None]).reshape(n, c, h * w)
    logits = torch.einsum('sc,ncl->nsl', m.memory_key.weight[:, :, 0], u)
    a = logits.exp() / logits.exp().sum(-1, keepdim=True)
    a = a / (1e-9 + a.sum(1, keepdim=True))
    v = torch.einsum('cs,nsl->ncl', m.memory_value.weight[:, :, 0], a).reshape(n, c, h, w)
    z = torch.einsum('oc,nchw->nohw', m.conv2.weight[:, :, 0, 0], v)
    bn = m.norm
    z = (z - bn.running_mean[None, :, None, None]) / torch.sqrt(
        bn.running_var[None, :, None, None] + bn.eps)
    z = z * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    ref = (xd + z).clamp(min=0)
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-5)
    assert (y == 0).any() and (y > 0).any()  # the final ReLU is there


def expected_params(c, s=64, norm=True):
    return 2 * c * c + c + 2 * s * c + (2 * c if norm else c)


@pytest.mark.parametrize('channels', [64, 512])
def test_param_count(channels):
    for norm_cfg in (dict(type='BN'), None):
        module = ExternalAttention(channels, norm_cfg=norm_cfg)
        count = sum(p.numel() for p in module.parameters())
        assert count == expected_params(channels, norm=norm_cfg is not None)


@pytest.mark.parametrize('kwargs, arg', [
    (dict(memory_size=0), 'memory_size'),
    (dict(memory_size=2.0), 'memory_size'),
    (dict(in_channels=0), 'in_channels'),
])
def test_invalid_arguments(kwargs, arg):
    kwargs = dict(dict(in_channels=16), **kwargs)
    with pytest.raises(ValueError, match=f'ExternalAttention.*{arg}'):
        ExternalAttention(**kwargs)


@pytest.mark.parametrize('kwargs', [dict(memory_size=8, norm_cfg=None)], ids=str)
def test_compile_and_onnx_variants(kwargs, tmp_path):
    factory = functools.partial(ExternalAttention, 16, **kwargs)
    contract.check_torch_compile(factory)
    contract.check_onnx(factory, tmp_path)


@pytest.mark.parametrize('kwargs', [{}, dict(norm_cfg=None)], ids=str)
def test_maps_rebuild_the_forward(kwargs):
    """The output from the softmax over positions that the map averages."""
    torch.manual_seed(0)
    module = contract.perturb_parameters(ExternalAttention(32, **kwargs), scale=0.5).eval()
    x = torch.randn(2, 32, 7, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x)
        maps = extract_maps(module, x)
        a = module.position_softmax(x)  # (N, S, HW)
        assert torch.equal(maps['memory_attention'].values.flatten(1), a.mean(1))
        y = module.conv2(module.memory_value(a / (1e-9 + a.sum(1, keepdim=True))).view(x.shape))
        rebuilt = (x + (y if module.norm is None else module.norm(y))).relu()
    err = (rebuilt - expected).abs().max().item()
    assert err <= 1e-4 * (expected.abs().max().item() + 1e-6), f'{kwargs}: {err:.3g}'
    assert maps


def test_errors_name_the_subclass():
    sub = type('MyEA', (ExternalAttention,), {'_abbr_': 'my_ea'})
    with pytest.raises(ValueError, match='MyEA.*memory_size'):
        sub(16, memory_size=0)


@pytest.mark.parametrize('train', [False, True])
def test_gradcheck_float64(train):
    """Computed in float64 for a float64 input (no fp32 step): the gradients of the input and
    of every parameter pass torch.autograd.gradcheck."""
    torch.manual_seed(0)
    module = contract.perturb_parameters(ExternalAttention(6, memory_size=4), scale=0.3)
    module = module.double().train(train)
    params = {name: p.detach().clone().requires_grad_() for name, p in module.named_parameters()}
    x = torch.randn(2, 6, 3, 4, dtype=torch.double, requires_grad=True)

    def run(x, *values):
        return torch.func.functional_call(module, dict(zip(params, values)), (x,))

    assert run(x, *params.values()).dtype == torch.double
    assert torch.autograd.gradcheck(run, (x, *params.values()))


def _backward_names(out):
    nodes, seen = [out.grad_fn], set()
    while nodes:
        node = nodes.pop()
        if node is not None and node not in seen:
            seen.add(node)
            nodes.extend(next_node for next_node, _ in node.next_functions)
    return {node.name() for node in seen}


def _output_and_grads(module, x, grad_out):
    x = x.detach().requires_grad_()
    y = module(x)
    return y, torch.autograd.grad(y, [x, *module.parameters()], grad_out)


@pytest.mark.parametrize('norm_cfg', [dict(type='BN'), None], ids=['bn', 'no_norm'])
def test_low_rank_backward_only_for_its_plain_layers(norm_cfg):
    """The hand-written backward runs for the module's own layer types without hooks; with a
    forward hook on a layer (here one that doubles conv1's output) or a layer of another type
    autograd runs, and the gradients are those of what the layers computed."""
    torch.manual_seed(0)
    module = contract.perturb_parameters(ExternalAttention(16, memory_size=4,
                                                           norm_cfg=norm_cfg), 0.3).double()
    x = torch.randn(2, 16, 5, 6, dtype=torch.double)
    grad_out = torch.randn_like(x)
    assert '_LowRankPairBackward' in _backward_names(module(x.requires_grad_()))

    doubled = copy.deepcopy(module)
    with torch.no_grad():
        doubled.conv1.weight.mul_(2)
        doubled.conv1.bias.mul_(2)
    y_ref, grads_ref = _output_and_grads(doubled, x, grad_out)
    handle = module.conv1.register_forward_hook(lambda m, args, out: out * 2)
    y, grads = _output_and_grads(module, x, grad_out)
    handle.remove()
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(grads[0], grads_ref[0])
    torch.testing.assert_close(grads[1:3], tuple(2 * g for g in grads_ref[1:3]))  # d(2 W x)/dW
    torch.testing.assert_close(grads[3:], grads_ref[3:])

    y_ref, grads_ref = _output_and_grads(module, x, grad_out)
    for name in ('conv1', 'conv2'):  # e.g. a tool's own convolutions
        layer = getattr(module, name)
        swapped = nn.Conv2d(16, 16, 1, bias=layer.bias is not None).double()
        swapped.load_state_dict(layer.state_dict())
        setattr(module, name, swapped)
    y = module(x.requires_grad_())
    assert '_LowRankPairBackward' not in _backward_names(y)
    y, grads = _output_and_grads(module, x, grad_out)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(grads, grads_ref)
