"""ODConv: its equation (float64, from the paper), the batched conv against a per-sample loop,
the exact initialisation from a conv, parameter counts, maps, state-dict keys, argument
checks, and the temperature annealing hook (``ODConvTemperatureHook``)."""
import logging
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import MMLogger
from mmengine.registry import HOOKS
from mmengine.runner import Runner

from cvattn_mm.attention.branch.odconv import ODConv
from cvattn_mm.engine import ODConvTemperatureHook, odconv_temperature

from .contract import perturb_parameters, run_contract

VARIANTS = {
    'n1': dict(kernel_num=1),
    'k1': dict(kernel_size=1),
    'k1_n1': dict(kernel_size=1, kernel_num=1),
    'depthwise': dict(groups=16),
    'depthwise_k1_n1': dict(groups=16, kernel_size=1, kernel_num=1),
    'groups_dilation': dict(groups=4, dilation=2, kernel_num=3),
    'k5_temperature': dict(kernel_size=5, temperature=30.),
    'gn': dict(norm_cfg=dict(type='GN', num_groups=4)),
}


@pytest.mark.parametrize('kwargs', VARIANTS.values(), ids=VARIANTS.keys())
def test_contract_variants(kwargs):
    run_contract(lambda: ODConv(16, **kwargs))


def bn_train(v, weight, bias, eps=1e-5):
    """A batch norm in training mode on (N, a) vectors (biased batch variance)."""
    mean = v.mean(0)
    var = ((v - mean) ** 2).mean(0)
    return (v - mean) / torch.sqrt(var + eps) * weight + bias


def conv_unfolded(x, weight, stride, padding, dilation, groups):
    """A conv of one sample x (C_in, H, W) with weight (C_out, C_in / g, k, k) written as
    sums over kernel positions: y[o, p, q] = sum_{c, u, v} W[o, c, u, v] x_pad[g(o) c,
    p s + u d, q s + v d]."""
    c_in, h, w = x.shape
    c_out, c_g, k, _ = weight.shape
    xp = torch.zeros(c_in, h + 2 * padding, w + 2 * padding, dtype=x.dtype)
    xp[:, padding:padding + h, padding:padding + w] = x
    h_out = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    w_out = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    y = torch.zeros(c_out, h_out, w_out, dtype=x.dtype)
    per_group = c_out // groups
    for o in range(c_out):
        xs = xp[(o // per_group) * c_g:(o // per_group + 1) * c_g]
        for u in range(k):
            for v in range(k):
                rows = xs[:, u * dilation:u * dilation + (h_out - 1) * stride + 1:stride,
                          v * dilation:v * dilation + (w_out - 1) * stride + 1:stride]
                y[o] += (weight[o, :, u, v, None, None] * rows).sum(0)
    return y


def odconv_reference(m, x):
    """The paper's ODConv written from its equations with plain tensor ops (BN in training
    mode): gates from the pooled input, the per-sample kernel, the gated conv."""
    n, c, h, w = x.shape
    att, t, k = m.attention, float(m.temperature), m.kernel_size
    pooled = x.sum((2, 3)) / (h * w)  # (N, C)
    z = pooled @ att.fc.weight.flatten(1).T
    hid = torch.clamp(bn_train(z, att.bn.weight, att.bn.bias), min=0)

    def head(layer):
        return (hid @ layer.weight.flatten(1).T + layer.bias) / t

    a_in = 1 / (1 + torch.exp(-head(att.channel_fc)))
    depthwise = c == m.groups == m.out_channels
    a_out = torch.ones(n, m.out_channels, dtype=x.dtype) if depthwise else \
        1 / (1 + torch.exp(-head(att.filter_fc)))
    a_s = torch.ones(n, k * k, dtype=x.dtype) if k == 1 else \
        1 / (1 + torch.exp(-head(att.spatial_fc)))
    if m.kernel_num == 1:
        a_w = torch.ones(n, 1, dtype=x.dtype)
    else:
        e = torch.exp(head(att.kernel_fc))
        a_w = e / e.sum(1, keepdim=True)
    bank = m.weight_bank.reshape(m.kernel_num, m.out_channels, c // m.groups, k, k)
    out = []
    for i in range(n):
        kernel = sum(a_w[i, j] * a_s[i].view(k, k) * bank[j] for j in range(m.kernel_num))
        y = conv_unfolded(x[i] * a_in[i, :, None, None], kernel, m.stride, m.padding,
                          m.dilation, m.groups)
        out.append(y * a_out[i, :, None, None])
    return torch.stack(out)


EQUATION_CASES = {
    'default': dict(),
    'n1': dict(kernel_num=1),
    'k1': dict(kernel_size=1, out_channels=24),
    'k1_n1_stride2': dict(kernel_size=1, kernel_num=1, stride=2),
    'depthwise': dict(groups=8, kernel_num=2),
    'depthwise_k1_n1': dict(groups=8, kernel_size=1, kernel_num=1),
    'strided_grouped_dilated': dict(out_channels=12, stride=2, padding=0, dilation=2,
                                    groups=2, kernel_num=3),
    'temperature': dict(temperature=7.5),
}


@pytest.mark.parametrize('kwargs', EQUATION_CASES.values(), ids=EQUATION_CASES.keys())
def test_equation(kwargs):
    torch.manual_seed(0)
    m = perturb_parameters(ODConv(8, **kwargs), scale=0.5).double().train()
    x = torch.randn(3, 8, 7, 6, dtype=torch.float64)
    torch.testing.assert_close(m(x), odconv_reference(m, x))


@pytest.mark.parametrize('kwargs', [dict(), dict(kernel_size=1, out_channels=32),
                                    dict(groups=4, stride=2, kernel_num=2),
                                    dict(groups=16, dilation=2)],
                         ids=['default', 'k1', 'grouped_strided', 'depthwise_dilated'])
def test_batched_conv_equals_a_per_sample_loop(kwargs):
    """The one grouped conv over the batch equals one conv per sample with that sample's
    kernel; and a sample alone gives its row of the batch (eval mode)."""
    torch.manual_seed(1)
    m = perturb_parameters(ODConv(16, **kwargs), scale=0.5).double().eval()
    x = torch.randn(4, 16, 9, 7, dtype=torch.float64)
    gates = m.gates(x)
    alpha_in, alpha_out, _, _ = gates
    kernels = m.sample_kernels(gates)
    loop = []
    for i in range(4):
        y = F.conv2d(x[i:i + 1] * alpha_in[i:i + 1], kernels[i], None, m.stride, m.padding,
                     m.dilation, m.groups)
        loop.append(y if alpha_out is None else y * alpha_out[i:i + 1])
    batched = m(x)
    torch.testing.assert_close(batched, torch.cat(loop), rtol=1e-13, atol=1e-13)
    for i in range(4):
        torch.testing.assert_close(m(x[i:i + 1]), batched[i:i + 1], rtol=1e-13, atol=1e-13)


def test_check_zero_heads_one_kernel_is_an_eighth_of_the_conv():
    """The spec's check: with zero heads and n = 1, y = conv(x, W) / 8."""
    m = ODConv(16, 32, kernel_num=1, stride=2).double().train()
    with torch.no_grad():
        for head in ('channel_fc', 'filter_fc', 'spatial_fc'):
            getattr(m.attention, head).weight.zero_()
            getattr(m.attention, head).bias.zero_()
    x = torch.randn(2, 16, 9, 8, dtype=torch.float64)
    expected = F.conv2d(x, m.weight_bank, stride=2, padding=1) / 8
    torch.testing.assert_close(m(x), expected, rtol=1e-14, atol=1e-14)


INIT_CASES = {
    'dense_3x3': (dict(), 8),
    'dense_3x3_n1': (dict(kernel_num=1), 8),
    'dense_1x1': (dict(kernel_size=1, out_channels=64), 4),
    'dense_1x1_n1': (dict(kernel_size=1, kernel_num=1, out_channels=64), 4),
    'grouped_strided_dilated': (dict(groups=4, stride=2, dilation=2, padding=1), 8),
    'depthwise_3x3': (dict(groups=16, kernel_num=3), 4),
    'depthwise_1x1': (dict(groups=16, kernel_size=1, kernel_num=2), 2),
    'depthwise_1x1_n1': (dict(groups=16, kernel_size=1, kernel_num=1), 2),
    'channel_multiplier': (dict(groups=16, out_channels=32), 8),  # not depthwise
}


@pytest.mark.parametrize('kwargs,scale', INIT_CASES.values(), ids=INIT_CASES.keys())
@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_init_from_conv_is_exact(kwargs, scale, mode):
    torch.manual_seed(2)
    m = perturb_parameters(ODConv(16, **kwargs), scale=0.5).double()
    m.update_temperature(30.)  # zero logits: the gates do not depend on the temperature
    conv = nn.Conv2d(16, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                     m.groups, bias=False).double()
    assert m.init_from_conv(conv) is True
    bank = m.weight_bank.reshape(m.kernel_num, *conv.weight.shape)
    for kernel in bank:
        assert torch.equal(kernel, conv.weight * scale)
    getattr(m, mode)()
    x = torch.randn(2, 16, 6, 7, dtype=torch.float64)
    torch.testing.assert_close(m(x), conv(x), rtol=1e-14, atol=1e-14)
    alpha_in, alpha_out, alpha_s, alpha_w = m.gates(x)
    for gate in (alpha_in, alpha_out, alpha_s):
        assert gate is None or torch.equal(gate, torch.full_like(gate, .5))
    assert alpha_w is None or torch.allclose(alpha_w, torch.full_like(alpha_w, 1 / m.kernel_num))


def test_init_from_conv_from_a_float32_conv_and_from_conv():
    conv = nn.Conv2d(16, 32, 3, 2, 1, bias=False)
    m = ODConv.from_conv(conv)
    assert (m.out_channels, m.stride, m.padding) == (32, 2, 1)
    assert m.init_from_conv(conv, nn.BatchNorm2d(32))
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(m(x), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('conv,what', [
    (nn.Conv2d(16, 16, 3, padding=1, bias=True), 'with a bias'),
    (nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False), r'\(16, 16, \(3, 3\), \(2, 2\)'),
    (nn.Conv2d(16, 16, 1, bias=False), r'\(16, 16, \(1, 1\)'),
    (nn.Conv2d(16, 32, 3, padding=1, bias=False), r'\(16, 32')])
def test_init_from_conv_rejects_another_geometry(conv, what):
    with pytest.raises(ValueError, match=rf'ODConv.init_from_conv needs .*got .*{what}'):
        ODConv(16).init_from_conv(conv)


def test_official_initialisation():
    torch.manual_seed(3)
    m = ODConv(64, 128, kernel_num=4)
    att = m.attention
    for head in ('channel_fc', 'filter_fc', 'spatial_fc', 'kernel_fc'):
        assert torch.equal(getattr(att, head).bias, torch.zeros_like(getattr(att, head).bias))
    assert torch.equal(att.bn.weight, torch.ones(16)) and torch.equal(att.bn.bias,
                                                                      torch.zeros(16))
    assert float(m.temperature) == 1.0 and 'temperature' not in m.state_dict()
    # Kaiming normal, fan-out (C_out k^2) and ReLU gain, per kernel
    bank = m.weight_bank.reshape(4, 128, 64, 3, 3)
    for kernel in bank:
        assert abs(kernel.std().item() / math.sqrt(2 / (128 * 9)) - 1) < 0.05
    assert abs(att.fc.weight.std().item() / math.sqrt(2 / 16) - 1) < 0.1


def expected_params(c_in, c_out, k, n, g, a):
    depthwise = c_in == g == c_out
    return (n * c_out * c_in * k * k // g + c_in * a + 2 * a + (a * c_in + c_in)
            + (0 if depthwise else a * c_out + c_out) + (0 if k == 1 else a * k * k + k * k)
            + (0 if n == 1 else a * n + n))


@pytest.mark.parametrize('c_in,c_out,k,n,g', [
    (256, 256, 3, 4, 1), (256, 256, 3, 1, 1), (64, 256, 1, 4, 1), (512, 128, 1, 1, 1),
    (32, 32, 3, 4, 32), (48, 96, 5, 2, 4), (1024, 1024, 3, 4, 1), (8, 8, 1, 1, 8)])
def test_parameter_count(c_in, c_out, k, n, g):
    m = ODConv(c_in, c_out, kernel_size=k, kernel_num=n, groups=g)
    a = max(int(c_in * 0.0625), 16)
    assert m.hidden == a
    assert sum(p.numel() for p in m.parameters()) == expected_params(c_in, c_out, k, n, g, a)


def test_parameter_count_of_the_spec():
    assert sum(p.numel() for p in ODConv(256).parameters()) == 2_372_349
    assert sum(p.numel() for p in ODConv(256, kernel_num=1).parameters()) == 602_809


def test_state_dict_keys_are_the_official_ones():
    m = ODConv(16, 32)
    assert sorted(m.state_dict()) == sorted([
        'weight_bank', 'attention.fc.weight', 'attention.bn.weight', 'attention.bn.bias',
        'attention.bn.running_mean', 'attention.bn.running_var',
        'attention.bn.num_batches_tracked', 'attention.channel_fc.weight',
        'attention.channel_fc.bias', 'attention.filter_fc.weight', 'attention.filter_fc.bias',
        'attention.spatial_fc.weight', 'attention.spatial_fc.bias',
        'attention.kernel_fc.weight', 'attention.kernel_fc.bias'])
    assert sorted(k for k in ODConv(16, kernel_size=1, kernel_num=1, groups=16).state_dict()
                  if 'fc' in k) == ['attention.channel_fc.bias', 'attention.channel_fc.weight',
                                    'attention.fc.weight']


def test_an_official_checkpoint_loads_and_a_plain_conv_weight_does_not():
    """The official keys load (the 5-D ``weight`` bank flattened into ``weight_bank``); a
    plain conv's ``weight`` of the same shape as a one-kernel bank is not taken by name."""
    m = ODConv(16, 32, kernel_num=3)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    bank = torch.randn(3, 32, 16, 3, 3)  # the official ODConv2d.weight layout
    del state['weight_bank']
    state['weight'] = bank
    holder = nn.Sequential(ODConv(16, 32, kernel_num=3))
    holder.load_state_dict({'0.' + k: v for k, v in state.items()})
    assert torch.equal(holder[0].weight_bank, bank.flatten(0, 1))
    for i in range(3):
        assert torch.equal(holder[0].weight_bank[32 * i:32 * (i + 1)], bank[i])
    one = ODConv(16, 32, kernel_num=1)
    before = one.weight_bank.clone()
    result = one.load_state_dict(nn.Conv2d(16, 32, 3, bias=False).state_dict(), strict=False)
    assert result.unexpected_keys == ['weight'] and 'weight_bank' in result.missing_keys
    assert torch.equal(one.weight_bank, before)


def test_channels_last_module():
    m = perturb_parameters(ODConv(16)).eval()
    x = torch.randn(2, 16, 7, 9)
    with torch.no_grad():
        ref = m(x)
        m.to(memory_format=torch.channels_last)
        torch.testing.assert_close(m(x.to(memory_format=torch.channels_last)), ref)


def test_temperature_divides_every_logit():
    """Temperature t equals heads whose weights and biases are divided by t."""
    torch.manual_seed(4)
    m = perturb_parameters(ODConv(16, kernel_num=3), scale=0.5).double().eval()
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
    scaled = perturb_parameters(ODConv(16, kernel_num=3), scale=0.5).double().eval()
    scaled.load_state_dict(m.state_dict())
    m.update_temperature(4.)
    with torch.no_grad():
        for head in ('channel_fc', 'filter_fc', 'spatial_fc', 'kernel_fc'):
            getattr(scaled.attention, head).weight.div_(4)
            getattr(scaled.attention, head).bias.div_(4)
    torch.testing.assert_close(m(x), scaled(x))
    assert 'temperature=4' in repr(m)


@pytest.mark.parametrize('kwargs', [dict(), dict(groups=16), dict(kernel_num=1, kernel_size=1)],
                         ids=['default', 'depthwise', 'k1_n1'])
def test_forward_rebuilt_from_the_gates_and_the_maps(kwargs):
    m = perturb_parameters(ODConv(16, **kwargs), scale=0.5).eval()
    x = torch.randn(2, 16, 7, 10)
    with torch.no_grad():
        gates = m.gates(x)
        torch.testing.assert_close(m(x), m.dynamic_conv(x, gates))
        maps = m.attention_maps(x)
    alpha_in, alpha_out, alpha_s, alpha_w = gates
    expected = {'input_channel'} | ({'output_channel'} if alpha_out is not None else set()) \
        | ({'kernel_weights'} if alpha_w is not None else set())
    assert set(maps) == expected
    assert torch.equal(maps['input_channel'].values, alpha_in.flatten(1))
    if alpha_out is not None:
        assert torch.equal(maps['output_channel'].values, alpha_out.flatten(1))
    if alpha_w is not None:
        assert maps['kernel_weights'].values.shape == (2, 1, 4)
        assert torch.equal(maps['kernel_weights'].values.flatten(1), alpha_w)
    assert (alpha_s is None) == (m.kernel_size == 1)
    assert (alpha_out is None) == (kwargs.get('groups') == 16)


def test_batch_one_in_training_uses_running_statistics():
    m = perturb_parameters(ODConv(16), scale=0.5).double()
    with torch.no_grad():
        m.attention.bn.running_mean.uniform_(-1, 1)
    x = torch.randn(1, 16, 5, 5, dtype=torch.float64)
    before = m.attention.bn.running_mean.clone()
    y_train = m.train()(x)
    torch.testing.assert_close(y_train, m.eval()(x))
    assert torch.equal(m.attention.bn.running_mean, before)


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(kernel_num=0), 'kernel_num'),
    (dict(reduction=0), 'reduction'), (dict(min_channels=0), 'min_channels'),
    (dict(temperature=0.), 'temperature'), (dict(temperature=-1.), 'temperature'),
    (dict(temperature='hot'), 'temperature'), (dict(kernel_size=0), 'kernel_size'),
    (dict(stride=0), 'stride'), (dict(groups=3), 'in_channels=16 must be divisible'),
    (dict(out_channels=20, groups=8), 'out_channels=20 must be divisible'),
    (dict(padding=-1), 'padding')])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'ODConv: {argument}'):
        ODConv(**dict(dict(in_channels=16), **kwargs))


def test_bias_is_refused_and_errors_name_a_subclass():
    with pytest.raises(ValueError, match='ODConv cannot replace a conv with bias=True'):
        ODConv(16, bias=True)
    sub = type('MyODConv', (ODConv, ), {'_abbr_': 'my_odconv'})
    with pytest.raises(ValueError, match='MyODConv: kernel_num'):
        sub(16, kernel_num=0)
    with pytest.raises(ValueError, match='MyODConv: temperature'):
        sub(16).update_temperature(0)
    with pytest.raises(ValueError, match='MyODConv.init_from_conv'):
        sub(16).init_from_conv(nn.Conv2d(16, 16, 1))


def test_empty_output_is_refused():
    with pytest.raises(ValueError, match='ODConv: an input of \\(2, 2\\) gives an empty'):
        ODConv(16, padding=0)(torch.randn(1, 16, 2, 2))


# the temperature annealing hook


def test_temperature_schedule():
    total = 40
    assert odconv_temperature(0, total) == 30.
    assert odconv_temperature(total, total) == 1.
    assert odconv_temperature(10, total) == 1 + 29 * 30 / 40
    assert odconv_temperature(10 * total, total) == 1.
    assert odconv_temperature(5, 10, temp_init=11.) == 6.


class FakeRunner:

    def __init__(self, model, iters_per_epoch, iteration=0):
        self.model = model
        self.train_dataloader = [None] * iters_per_epoch
        self.iter = iteration


def test_hook_sets_every_odconv_before_each_iteration():
    """The official ``get_temperature(batch_idx + 1, epoch, iter_per_epoch)`` before
    iteration ``epoch * iter_per_epoch + batch_idx``, and ``get_temperature(0,
    start_epoch, ...)`` before training; through a model wrapper too."""
    net = nn.Sequential(ODConv(16), nn.ReLU(), nn.Sequential(ODConv(16, kernel_size=1)))
    wrapper = nn.Module()  # as a DDP wrapper holds the model
    wrapper.module = net
    runner = FakeRunner(wrapper, iters_per_epoch=5)
    hook = ODConvTemperatureHook(temp_epoch=2, temp_init=11.)
    hook.before_train(runner)
    assert [float(m.temperature) for m in (net[0], net[2][0])] == [11., 11.]
    seen = []
    for epoch in range(3):
        for batch_idx in range(5):
            runner.iter = epoch * 5 + batch_idx
            hook.before_train_iter(runner, batch_idx)
            seen.append(float(net[0].temperature))
            assert float(net[2][0].temperature) == seen[-1]
    official = [1 + max(0, 10 * (10 - (b + 1 + e * 5)) / 10) for e in range(3)
                for b in range(5)]
    assert seen == pytest.approx(official, abs=1e-6)
    assert seen[9:] == [1.] * 6 and seen[0] == 10.
    runner.iter = 7  # resuming after 7 iterations
    hook.before_train(runner)
    assert float(net[0].temperature) == pytest.approx(1 + 10 * 3 / 10)


def test_hook_with_an_annealing_in_iterations():
    net = ODConv(16)
    hook = ODConvTemperatureHook(temp_iters=4, temp_init=5.)
    runner = FakeRunner(net, iters_per_epoch=100, iteration=2)
    hook.before_train(runner)
    assert float(net.temperature) == 3.
    hook.before_train_iter(runner, 2)
    assert float(net.temperature) == 2.


def test_hook_without_odconv_warns():
    logger = MMLogger.get_current_instance()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        hook = ODConvTemperatureHook()
        runner = FakeRunner(nn.Conv2d(3, 3, 1), 4)
        hook.before_train(runner)
        hook.before_train_iter(runner, 0)
    finally:
        logger.removeHandler(handler)
    assert any('the model has no ODConv' in r.getMessage() for r in records)


@pytest.mark.parametrize('kwargs,argument', [
    (dict(temp_epoch=0), 'temp_epoch'), (dict(temp_init=0.), 'temp_init'),
    (dict(temp_iters=0), 'temp_iters'), (dict(temp_epoch=1.5), 'temp_epoch')])
def test_hook_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f'ODConvTemperatureHook: {argument}'):
        ODConvTemperatureHook(**kwargs)


class TinyODConvNet(nn.Module):
    """A model for mmengine's Runner that records the temperature of each training
    forward."""

    def __init__(self):
        super().__init__()
        self.odconv = ODConv(4, kernel_num=2, min_channels=2)
        self.seen = []

    def forward(self, inputs, mode='loss'):
        if self.training:
            self.seen.append(float(self.odconv.temperature))
        return dict(loss=self.odconv(inputs).square().mean())

    def train_step(self, data, optim_wrapper):
        loss = self(data['inputs'])['loss']
        optim_wrapper.update_params(loss)
        return dict(loss=loss)


def test_hook_in_a_runner(tmp_path):
    """Three epochs of two iterations with a one-epoch annealing from 30: the temperatures
    of the official script, 15.5 then 1."""
    net = TinyODConvNet()
    x = torch.randn(4, 4, 5, 5)
    runner = Runner(
        model=net, work_dir=str(tmp_path), experiment_name='odconv_temperature_hook',
        train_dataloader=dict(dataset=[dict(inputs=x[i]) for i in range(4)],
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              batch_size=2, collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=True, max_epochs=3),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        custom_hooks=[dict(type='ODConvTemperatureHook', temp_epoch=1)],
        default_hooks=dict(checkpoint=None, logger=None),
        log_level='WARNING')
    runner.train()
    assert net.seen == [15.5, 1., 1., 1., 1., 1.]


def test_hook_builds_from_the_registry():
    built = HOOKS.build(dict(type='ODConvTemperatureHook'))
    assert isinstance(built, ODConvTemperatureHook)
    assert (built.temp_epoch, built.temp_init, built.temp_iters) == (10, 30., None)
