"""Pooled gates with a hand-written backward: the same values and gradients as autograd's,
and plain autograd when the fast path is switched off."""
import pytest
import torch

from cvattn_mm.attention import gating
from cvattn_mm.attention.branch.sk import SK
from cvattn_mm.attention.channel.eca import ECA
from cvattn_mm.attention.channel.se import SE
from cvattn_mm.attention.channel_spatial.cbam import CBAM
from cvattn_mm.attention.channel_spatial.coord_attention import CoordAttention
from cvattn_mm.attention.channel_spatial.scsa import SCSA
from cvattn_mm.attention.channel_spatial.triplet_attention import TripletAttention
from cvattn_mm.attention.fast_backward import (
    fast_backward,
    fast_backward_enabled,
    fast_backward_params,
)

from .contract import DEVICE


def reference(module, x):
    """The plain ops autograd differentiates (what runs without a gradient)."""
    if isinstance(module, CoordAttention):
        a_h, a_w = module.gates(x.mean(3, keepdim=True), x.mean(2, keepdim=True))
        return x * a_h * a_w
    if isinstance(module, SCSA):
        a_h, a_w = module.smsa_gates(x.mean(3, keepdim=True), x.mean(2, keepdim=True))
        x = x * a_h * a_w
        return x * module.channel_gate(x)
    if isinstance(module, TripletAttention):
        gates = module.gates(*[pool for d in module.pooled_axes
                               for pool in (x.amax(d, keepdim=True), x.mean(d, keepdim=True))])
        return x * sum(gates) / len(gates)
    if isinstance(module, SK):
        feats = [branch(x) for branch in module.branches]
        weights = module.selection(sum(f.mean((2, 3), keepdim=True) for f in feats))
        return sum(f * weights[:, i] for i, f in enumerate(feats))
    if isinstance(module, CBAM):
        if module.use_channel:
            x = x * module.channel_gate(x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True))
        if module.use_spatial:
            x = x * module.spatial_gate(x.amax(1, keepdim=True), x.mean(1, keepdim=True))
        return x
    return x * module.channel_gate(x.mean((2, 3), keepdim=True))


MODULES = {
    'SE': lambda: SE(16, reduction=4),
    'SE-hsigmoid': lambda: SE(16, reduction=4, act_cfg=dict(type='GELU'),
                              gate_cfg=dict(type='HSigmoid')),
    'ECA': lambda: ECA(16, kernel_size=3),
    'CoordAttention': lambda: CoordAttention(16, reduction=4, min_channels=4),
    'CBAM': lambda: CBAM(16, reduction=4),
    'TripletAttention': lambda: TripletAttention(16, kernel_size=3),
    'TripletAttention-no-spatial': lambda: TripletAttention(kernel_size=5, no_spatial=True),
    'SK': lambda: SK(16, groups=4, min_channels=4),
    'SK-3': lambda: SK(16, num_branches=3, groups=16, min_channels=4,
                       act_cfg=dict(type='ReLU')),
    'CBAM-channel': lambda: CBAM(16, reduction=4, use_spatial=False, act_cfg=dict(type='PReLU')),
    'CBAM-spatial': lambda: CBAM(16, use_channel=False, kernel_size=3),
    'SCSA': lambda: SCSA(16, head_num=2, window_size=2),
    'CoordAttention-gn': lambda: CoordAttention(16, reduction=4, min_channels=4,
                                                norm_cfg=dict(type='GN', num_groups=2)),
}


#: One configuration of each module with a hand-written backward.
ONE_OF_EACH = ['SE', 'ECA', 'CBAM', 'SK', 'TripletAttention', 'CoordAttention', 'SCSA']


def uses_hand_written_backward(out):
    hand_written = {'_PooledGatesBackward', '_AxisPooledGatesBackward', '_SelectiveSumBackward'}
    nodes, seen = [out.grad_fn], set()
    while nodes:
        node = nodes.pop()
        if node is None or node in seen:
            continue
        if node.name() in hand_written:
            return True
        seen.add(node)
        nodes.extend(next_node for next_node, _ in node.next_functions)
    return False


def randomized(name):
    torch.manual_seed(0)
    module = MODULES[name]().double().to(DEVICE)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return module


def grads(module, x, weight):
    x = x.detach().requires_grad_()
    params = [p for p in module.parameters() if p.requires_grad]
    out = module(x)
    return out, torch.autograd.grad((out * weight).sum(), [x] + params)


@pytest.mark.parametrize('name', sorted(MODULES))
@pytest.mark.parametrize('shape', [(2, 16, 5, 7), (1, 16, 1, 1), (3, 16, 1, 6)])
def test_same_values_and_gradients_as_autograd(name, shape):
    module = randomized(name)
    if name.startswith(('SK', 'Triplet')) and shape == (1, 16, 1, 1):
        module.eval()  # their BNs see one value per channel: training would raise
    x = torch.randn(shape, dtype=torch.double, device=DEVICE)
    weight = torch.randn(shape, dtype=torch.double, device=DEVICE)  # a non-constant gradient
    out, got = grads(module, x, weight)
    assert uses_hand_written_backward(out)
    x = x.detach().requires_grad_()
    expected_out = reference(module, x)
    params = [p for p in module.parameters() if p.requires_grad]
    expected = torch.autograd.grad((expected_out * weight).sum(), [x] + params)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('name', sorted(MODULES))
def test_gradcheck(name):
    module = randomized(name)
    if 'Coord' in name or 'SK' in name:
        module.eval()  # BN in train mode mixes the batch: fine, but slow to gradcheck
    x = torch.randn(2, 16, 3, 4, dtype=torch.double, requires_grad=True, device=DEVICE)
    params = tuple(module.parameters())

    def fn(x, *values):
        with torch.nn.utils.stateless._reparametrize_module(
                module, dict(zip([n for n, _ in module.named_parameters()], values))):
            return module(x)

    assert torch.autograd.gradcheck(fn, (x,) + params)


@pytest.mark.parametrize('name', ['SE', 'CBAM', 'TripletAttention', 'CoordAttention'])
def test_frozen_parameters_and_input_without_gradient(name):
    module = randomized(name)
    x = torch.randn(2, 16, 5, 6, dtype=torch.double, device=DEVICE)
    # Only the parameters need a gradient (a first layer): x gets none.
    out = module(x)
    out.sum().backward()
    assert all(p.grad is not None for p in module.parameters())
    # Frozen gate network: only x gets a gradient.
    module.zero_grad(set_to_none=True)
    module.requires_grad_(False)
    x.requires_grad_()
    module(x).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in module.parameters())
    x.grad = None
    reference(module, x).sum().backward()
    expected = x.grad
    x.grad = None
    module(x).sum().backward()
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize('name', ONE_OF_EACH)
def test_backward_twice_with_retain_graph(name):
    module = randomized(name)
    x = torch.randn(2, 16, 4, 5, dtype=torch.double, requires_grad=True, device=DEVICE)
    out = module(x)
    out.sum().backward(retain_graph=True)
    first = x.grad.clone()
    out.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)


@pytest.mark.parametrize('name', ONE_OF_EACH)
def test_channels_last_gradient_keeps_the_memory_format(name):
    module = randomized(name).float()
    x = torch.randn(2, 16, 6, 5, device=DEVICE).to(memory_format=torch.channels_last)
    x.requires_grad_()
    out = module(x)
    out.backward(torch.ones_like(out))
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    y = x.detach().contiguous().requires_grad_()
    reference(module, y).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', ONE_OF_EACH)
def test_bf16_autocast_gradients_match_autograd(name):
    module = randomized(name).float()
    x = torch.randn(2, 16, 6, 5, requires_grad=True, device=DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out = module(x)
    out.float().sum().backward()
    got = [x.grad] + [p.grad for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    x.grad = None
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        expected_out = reference(module, x)
    expected_out.float().sum().backward()
    expected = [x.grad] + [p.grad for p in module.parameters()]
    assert out.dtype == expected_out.dtype
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-2)


def test_plain_ops_without_gradient_and_under_tracing():
    module = SE(16, reduction=4).to(DEVICE)
    x = torch.randn(1, 16, 3, 3, device=DEVICE)
    with torch.no_grad():
        assert module(x).grad_fn is None
    assert fast_backward_params((x.requires_grad_(), ), module)
    traced = torch.jit.trace(module, x)
    assert 'PooledGate' not in str(traced.graph)  # the plain ops were recorded


@pytest.mark.parametrize('name', ONE_OF_EACH)
def test_switch_off_runs_plain_autograd(name):
    """With the switch off the graph holds only autograd's nodes; values and gradients are
    those of the plain ops (and of the hand-written backward)."""
    module = randomized(name)
    x = torch.randn(2, 16, 5, 7, dtype=torch.double, device=DEVICE)
    weight = torch.randn(2, 16, 5, 7, dtype=torch.double, device=DEVICE)
    fast_out, fast = grads(module, x, weight)
    with fast_backward(False):
        out, got = grads(module, x, weight)
    assert fast_backward_enabled()  # restored on exit
    assert uses_hand_written_backward(fast_out) and not uses_hand_written_backward(out)
    x = x.detach().requires_grad_()
    expected_out = reference(module, x)
    params = [p for p in module.parameters() if p.requires_grad]
    expected = torch.autograd.grad((expected_out * weight).sum(), [x] + params)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    for g, e, f in zip(got, expected, fast, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, f, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('helper', ['pooled_gate', 'axis_pooled_gates', 'selective_sum'])
@pytest.mark.parametrize('autocast', [True, False])
def test_backward_runs_under_the_autocast_state_of_the_forward(helper, autocast):
    """The Functions' amp decorators on CPU: the gate network is differentiated under the
    forward's autocast state, also when backward is called after the autocast region.
    CPU autocast on CPU tensors, whatever the test device."""
    layer = torch.nn.Linear(16, 16)
    states = []

    def record(gate):
        gate.register_hook(lambda grad: states.append(torch.is_autocast_enabled('cpu')))
        return gate

    def gate(v):  # (N, C, 1, 1) -> (N, C, 1, 1), a matmul that autocast runs in bf16
        return record(torch.sigmoid(layer(v.flatten(1))))[:, :, None, None]

    x = torch.randn(2, 16, 4, 5, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        if helper == 'pooled_gate':
            out = gating.pooled_gate(x, gate, layer)
        elif helper == 'axis_pooled_gates':
            out = gating.axis_pooled_gates(
                x, lambda rows, columns: (
                    record(torch.sigmoid(rows)),
                    torch.sigmoid(layer(columns.transpose(1, 3)).transpose(1, 3))), layer)
        else:
            out = gating.selective_sum(
                [x, 2 * x], lambda s: torch.stack((gate(s), 1 - gate(s)), 1), layer)
    assert out.grad_fn.name().startswith('_')  # the hand-written backward
    assert (out.dtype == torch.float32) and (layer.weight.dtype == torch.float32)
    out.float().sum().backward()
    assert states and all(state == autocast for state in states)
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    assert layer.weight.grad.dtype == torch.float32


@pytest.mark.parametrize('channels_last', [False, True])
def test_max_gradient_goes_to_one_maximal_element(channels_last):
    """Ties (a dead ReLU channel is all zeros): one element of each tie gets the whole
    gradient of the max, as with max_pool2d; autograd's amax splits it. The totals agree."""
    module = randomized('CBAM-channel').float()
    x = torch.randn(2, 16, 4, 5, device=DEVICE).relu()
    x[:, 3] = 0  # a channel of ties
    x[0, 5, 1, 2] = x[0, 5, 3, 4] = 9.0  # two maximal elements
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    out = module(x)
    out.backward(torch.ones_like(out))
    got = x.grad
    y = x.detach().clone().requires_grad_()
    reference(module, y).sum().backward()
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(got.sum((2, 3)), y.grad.sum((2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[:, 6:], y.grad[:, 6:], rtol=1e-5, atol=1e-6)  # no ties
    # All positions of channel 3 get the mean's share; one also gets the max's gradient.
    common = got[:, 3].flatten(1).median(1).values[:, None, None]
    assert (((got[:, 3] - common).abs() > 1e-6).flatten(1).sum(1) == 1).all()
    assert (y.grad[:, 3] - y.grad[:, 3].amin((1, 2), keepdim=True)).abs().max() < 1e-6
