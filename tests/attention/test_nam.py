"""NAM: its equation (channel and spatial forms), the detached weight factors, the spec's
check, parameter counts, maps, the size policy of the spatial form, argument checks, and the
paper's L1 sparsity penalty (``SparsityPenaltyHook``) on plain optimisers, mmengine optimiser
wrappers and a Runner."""
import copy
import logging
import os.path as osp

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper, OptimWrapperDict
from mmengine.registry import HOOKS
from mmengine.runner import Runner

from cvattn_mm.attention.channel.nam import NAM
from cvattn_mm.engine import SparsityPenaltyHook, add_sparsity_penalty, sparsity_parameters

from .contract import perturb_parameters, run_contract

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
EPS = 1e-5


@pytest.mark.parametrize('kwargs', [
    dict(spatial=True, grid_size=4), dict(spatial=True, grid_size=(7, 9)),
    dict(norm_cfg=dict(type='GN', num_groups=4))], ids=['spatial-pool', 'spatial-7x9', 'gn'])
def test_contract_variants(kwargs):
    run_contract(lambda: NAM(64, **kwargs))


def batch_norm(x, weight, bias, dims, mean=None, var=None):
    """A batch norm written out: the batch statistics over ``dims`` (biased variance) unless
    running statistics are given, broadcast along the kept dimension ``1``."""
    shape = [1] * x.dim()
    shape[1] = -1
    if mean is None:
        mean = x.mean(dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dims, keepdim=True)
    else:
        mean, var = mean.view(shape), var.view(shape)
    return (x - mean) / torch.sqrt(var + EPS) * weight.view(shape) + bias.view(shape)


def nam_channel_reference(x, gamma, beta, mean=None, var=None):
    """The paper's channel attention: ``x * sigmoid(w_c BN(x)_c)``, w = |gamma| / sum |gamma|
    taken as constants."""
    w = (gamma.abs() / gamma.abs().sum()).detach()
    return x * torch.sigmoid(w.view(1, -1, 1, 1) * batch_norm(x, gamma, beta, (0, 2, 3), mean,
                                                               var))


def nam_spatial_gate_reference(x1, gamma, beta, mean=None, var=None):
    """The first commit's spatial gate at its construction size: each position p is a
    feature of a BatchNorm1d normalised over the batch and the channels;
    ``sigmoid(lambda_p BN(x1)_p)``, lambda = |gamma| / sum |gamma| taken as constants."""
    n, c, h, w = x1.shape
    t = x1.reshape(n, c, h * w).permute(0, 2, 1)  # (N, S, C): S features
    lam = (gamma.abs() / gamma.abs().sum()).detach()
    b = batch_norm(t, gamma, beta, (0, 2), mean, var).permute(0, 2, 1)  # (N, C, S)
    return torch.sigmoid(lam * b).reshape(n, c, h, w)


def randomized(nam):
    """``nam`` in float64 with random affine weights (some negative) and running statistics."""
    nam = perturb_parameters(nam, scale=0.7).double()
    with torch.no_grad():
        for m in nam.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return nam


@pytest.mark.parametrize('mode', ['train', 'eval'])
@pytest.mark.parametrize('size', [(5, 7), (1, 1)])
def test_channel_equation(mode, size):
    nam = getattr(randomized(NAM(16)), mode)()
    bn = nam.bn
    x = torch.randn(3, 16, *size, dtype=torch.float64)
    stats = (bn.running_mean, bn.running_var) if mode == 'eval' else (None, None)
    expected = nam_channel_reference(x, bn.weight, bn.bias, *stats)
    torch.testing.assert_close(nam(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_spatial_equation_on_the_grid(mode):
    nam = getattr(randomized(NAM(8, spatial=True, grid_size=(4, 6))), mode)()
    x = torch.randn(3, 8, 4, 6, dtype=torch.float64)
    c_stats = (nam.bn.running_mean, nam.bn.running_var) if mode == 'eval' else (None, None)
    s_stats = ((nam.spatial_bn.running_mean, nam.spatial_bn.running_var) if mode == 'eval'
               else (None, None))
    x1 = nam_channel_reference(x, nam.bn.weight, nam.bn.bias, *c_stats)
    expected = x1 * nam_spatial_gate_reference(x1, nam.spatial_bn.weight,
                                               nam.spatial_bn.bias, *s_stats)
    torch.testing.assert_close(nam(x), expected, rtol=1e-12, atol=1e-12)


def test_spatial_gate_off_the_grid_is_pooled_and_resized():
    nam = randomized(NAM(8, spatial=True, grid_size=3)).eval()
    x = torch.randn(2, 8, 7, 10, dtype=torch.float64)
    x1 = nam_channel_reference(x, nam.bn.weight, nam.bn.bias, nam.bn.running_mean,
                               nam.bn.running_var)
    pooled = F.adaptive_avg_pool2d(x1, 3)
    small_gate = nam_spatial_gate_reference(pooled, nam.spatial_bn.weight,
                                            nam.spatial_bn.bias, nam.spatial_bn.running_mean,
                                            nam.spatial_bn.running_var)
    gate = F.interpolate(small_gate, size=(7, 10), mode='bilinear', align_corners=False)
    torch.testing.assert_close(nam(x), x1 * gate, rtol=1e-12, atol=1e-12)


def test_pool_and_strict_agree_on_the_grid_and_strict_refuses_other_sizes():
    pool = randomized(NAM(8, spatial=True, grid_size=(5, 4)))
    strict = NAM(8, spatial=True, grid_size=(5, 4), size_policy='strict').double()
    strict.load_state_dict(pool.state_dict())
    x = torch.randn(2, 8, 5, 4, dtype=torch.float64)
    for mode in ('train', 'eval'):
        getattr(pool, mode)()
        getattr(strict, mode)()
        assert torch.equal(pool(x), strict(x)), mode
    with pytest.raises(ValueError, match=r"NAM with size_policy='strict' was built for 5x4 "
                                         r'.* got 6x4'):
        strict(torch.randn(2, 8, 6, 4, dtype=torch.float64))


def test_weight_factors_pass_no_gradient():
    """gamma learns through BN(x) only: its gradient is the one with w held constant, and
    differs from the gradient of a differentiable w."""
    nam = randomized(NAM(8)).train()
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64)
    grad_out = torch.randn_like(x)
    (g_ours, ) = torch.autograd.grad((nam(x) * grad_out).sum(), nam.bn.weight)
    gamma = nam.bn.weight.detach().clone().requires_grad_()
    expected = nam_channel_reference(x, gamma, nam.bn.bias.detach())
    (g_const, ) = torch.autograd.grad((expected * grad_out).sum(), gamma)
    torch.testing.assert_close(g_ours, g_const, rtol=1e-12, atol=1e-12)
    w = gamma.abs() / gamma.abs().sum()  # differentiable: a different module
    b = batch_norm(x, gamma, nam.bn.bias.detach(), (0, 2, 3))
    (g_diff, ) = torch.autograd.grad(((x * torch.sigmoid(w.view(1, -1, 1, 1) * b)) *
                                      grad_out).sum(), gamma)
    assert (g_diff - g_const).abs().max() > 1e-3


@pytest.mark.parametrize('channels', [8, 64])
def test_fresh_module_in_eval_mode_closed_form(channels):
    """The spec's check: running mean 0, var 1, gamma 1, beta 0:
    ``x * sigmoid(x / (C sqrt(1 + 1e-5)))``."""
    nam = NAM(channels)
    nam.init_weights()
    nam.eval()
    x = torch.randn(2, channels, 6, 5, dtype=torch.float64)
    expected = x * torch.sigmoid(x / (channels * (1 + 1e-5) ** 0.5))
    torch.testing.assert_close(nam.double()(x), expected, rtol=1e-13, atol=1e-13)


def test_initialisation_is_the_official_one():
    nam = NAM(16, spatial=True, grid_size=3)
    nam.init_weights()
    for bn in (nam.bn, nam.spatial_bn):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    assert isinstance(nam.spatial_bn, nn.BatchNorm1d) and nam.spatial_bn.num_features == 9


@pytest.mark.parametrize('channels', [1, 64, 256, 2048])
def test_parameter_count(channels):
    assert sum(p.numel() for p in NAM(channels).parameters()) == 2 * channels
    spatial = NAM(channels, spatial=True, grid_size=(7, 5))
    assert sum(p.numel() for p in spatial.parameters()) == 2 * channels + 2 * 35


@pytest.mark.parametrize('kwargs', [{}, dict(spatial=True, grid_size=4)],
                         ids=['channel', 'spatial'])
def test_gates_rebuild_the_forward_and_are_the_maps(kwargs):
    nam = randomized(NAM(16, **kwargs)).eval()
    x = torch.randn(2, 16, 7, 10, dtype=torch.float64)
    with torch.no_grad():
        gate = nam.channel_gate(x)
        x1 = x * gate
        expected = x1 * nam.spatial_gate(x1) if nam.spatial else x1
        torch.testing.assert_close(nam(x), expected, rtol=0, atol=0)
        maps = nam.attention_maps(x)
    names = {'channel_gate', 'channel_gate_positions'} | ({'spatial_gate'} if nam.spatial
                                                          else set())
    assert set(maps) == names
    torch.testing.assert_close(maps['channel_gate'].values, gate.mean((2, 3)))
    torch.testing.assert_close(maps['channel_gate_positions'].values, gate.mean(1))
    if nam.spatial:
        torch.testing.assert_close(maps['spatial_gate'].values, nam.spatial_gate(x1).mean(1))


def test_sparsity_parameters_are_the_bn_weights():
    nam = NAM(8)
    assert [id(p) for p in nam.sparsity_parameters()] == [id(nam.bn.weight)]
    nam = NAM(8, spatial=True, grid_size=2)
    assert ([id(p) for p in nam.sparsity_parameters()] ==
            [id(nam.bn.weight), id(nam.spatial_bn.weight)])


@pytest.mark.parametrize('kwargs,message', [
    (dict(in_channels=0), 'in_channels'),
    (dict(spatial='yes'), 'spatial'),
    (dict(spatial=True), 'spatial=True needs grid_size'),
    (dict(grid_size=7), 'grid_size=7 is only used with spatial=True'),
    (dict(spatial=True, grid_size=0), 'grid_size'),
    (dict(spatial=True, grid_size=(3, 4, 5)), 'grid_size'),
    (dict(size_policy='crop'), 'size_policy'),
    (dict(norm_cfg=dict(type='BN', affine=False)), 'without an affine weight')])
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=rf'NAM: .*{message}'):
        NAM(**dict(dict(in_channels=8), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyNAM', (NAM, ), {'_abbr_': 'my_nam'})
    with pytest.raises(ValueError, match='MyNAM: spatial=True needs grid_size'):
        sub(8, spatial=True)
    with pytest.raises(ValueError, match="MyNAM with size_policy='strict'"):
        sub(8, spatial=True, grid_size=2, size_policy='strict')(torch.randn(1, 8, 3, 3))


# --- the sparsity penalty --------------------------------------------------------------


class Net(BaseModel):
    """A conv and two NAMs (one spatial) whose mean output is the loss."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.nam = NAM(8)
        self.nam_spatial = NAM(8, spatial=True, grid_size=4)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.nam_spatial(self.nam(self.conv(inputs)))
        return dict(loss=(out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum())


def net_with_signed_weights(seed=0):
    """A Net whose NAM weights are positive, negative and zero (sign 0)."""
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        for p in sparsity_parameters(net):
            p.copy_(torch.randn(p.shape))
            p[0] = 0.
    return net


def autograd_grads(net, x):
    net.zero_grad()
    net(x)['loss'].backward()
    return {n: p.grad.clone() for n, p in net.named_parameters()}


PENALISED = ('nam.bn.weight', 'nam_spatial.bn.weight', 'nam_spatial.spatial_bn.weight')


def test_sparsity_parameters_of_a_model():
    net = Net()
    params = dict(net.named_parameters())
    assert [id(p) for p in sparsity_parameters(net)] == [id(params[n]) for n in PENALISED]


def test_penalty_is_added_to_the_gradient_at_the_step():
    """After ``optimizer.step()`` each NAM BN weight's gradient is autograd's plus
    s sign(gamma) (0 where gamma = 0); every other gradient is autograd's."""
    net, s = net_with_signed_weights(), 0.25
    x = torch.randn(2, 3, 6, 6)
    expected = autograd_grads(copy.deepcopy(net), x)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.)
    handle = add_sparsity_penalty(optimizer, sparsity_parameters(net), s)
    net(x)['loss'].backward()
    before = {n: p.grad.clone() for n, p in net.named_parameters()}
    optimizer.step()
    for name, p in net.named_parameters():
        torch.testing.assert_close(before[name], expected[name], rtol=0, atol=0)
        added = s * torch.sign(p.detach()) if name in PENALISED else torch.zeros_like(p)
        torch.testing.assert_close(p.grad, expected[name] + added, rtol=0, atol=0)
        if name in PENALISED:
            assert (added[0] == 0).all() and (added != 0).any()
    handle.remove()
    optimizer.zero_grad()
    net(x)['loss'].backward()
    optimizer.step()
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=0, atol=0)


def test_penalty_skips_parameters_outside_the_optimiser_and_without_gradients():
    net, s = net_with_signed_weights(), 0.25
    optimizer = torch.optim.SGD([net.nam.bn.weight], lr=0.)
    add_sparsity_penalty(optimizer, sparsity_parameters(net), s)
    net(torch.randn(2, 3, 6, 6))['loss'].backward()
    before = net.nam_spatial.bn.weight.grad.clone()
    net.nam.bn.weight.grad = None
    optimizer.step()  # no gradient: left without one, as the optimiser leaves it unchanged
    assert net.nam.bn.weight.grad is None
    assert torch.equal(net.nam_spatial.bn.weight.grad, before)


@pytest.mark.parametrize('accumulative_counts', [1, 2])
def test_penalty_with_mmengine_optim_wrapper(accumulative_counts):
    """``update_params`` with SGD (lr 1, no momentum, no decay): the update is autograd's
    gradient (the mean over accumulated steps) plus s sign(gamma), once per update."""
    net, s = net_with_signed_weights(), 0.125
    inputs = [torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(i))
              for i in range(accumulative_counts)]
    reference = copy.deepcopy(net)
    reference.zero_grad()
    for x in inputs:
        (reference(x)['loss'] / accumulative_counts).backward()
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    wrapper = OptimWrapper(torch.optim.SGD(net.parameters(), lr=1.),
                           accumulative_counts=accumulative_counts)
    wrapper.initialize_count_status(net, 0, accumulative_counts)
    add_sparsity_penalty(wrapper.optimizer, sparsity_parameters(net), s)
    for x in inputs:
        wrapper.update_params(net(x)['loss'])
    grads = dict(reference.named_parameters())
    for name, p in net.named_parameters():
        step = grads[name].grad + (s * torch.sign(start[name]) if name in PENALISED else 0)
        torch.testing.assert_close(p.detach(), start[name] - step, rtol=1e-6, atol=1e-7)


def test_hook_in_a_runner(tmp_path):
    """One training iteration of an mmengine Runner with the hook from ``custom_hooks``:
    the NAM weights move by lr (grad + s sign(gamma)), the rest by lr grad; the hook leaves
    the optimiser without its step pre-hook after training."""
    net, s, lr = net_with_signed_weights(), 0.5, 0.1
    x = torch.randn(2, 3, 6, 6)
    expected = autograd_grads(copy.deepcopy(net), x)
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    runner = Runner(
        model=net, work_dir=str(tmp_path), experiment_name='nam_sparsity_hook',
        train_dataloader=dict(dataset=[dict(inputs=x[0]), dict(inputs=x[1])],
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              batch_size=2, collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=1),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=lr)),
        custom_hooks=[dict(type='SparsityPenaltyHook', penalty=s)],
        default_hooks=dict(checkpoint=None, logger=None),
        log_level='WARNING')
    runner.train()
    for name, p in net.named_parameters():
        step = expected[name] + (s * torch.sign(start[name]) if name in PENALISED else 0)
        torch.testing.assert_close(p.detach(), start[name] - lr * step, rtol=1e-5, atol=1e-6)
    assert not runner.optim_wrapper.optimizer._optimizer_step_pre_hooks


def test_hook_without_nam_warns_and_does_nothing():
    class Holder:
        model = nn.Conv2d(3, 3, 1)
        optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))

    hook = SparsityPenaltyHook()
    logger = MMLogger.get_current_instance()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        hook.before_train(Holder)
    finally:
        logger.removeHandler(handler)
    assert any('no module of the model marks parameters' in r.getMessage() for r in records)
    assert not Holder.optim_wrapper.optimizer._optimizer_step_pre_hooks


def test_hook_with_several_optimisers():
    """An ``OptimWrapperDict`` (one optimiser per part of the model): each optimiser
    penalises the NAM weights it updates, at its own step."""
    net, s = net_with_signed_weights(), 0.25
    x = torch.randn(2, 3, 6, 6)
    expected = autograd_grads(copy.deepcopy(net), x)

    class Holder:
        model = net
        optim_wrapper = OptimWrapperDict(
            conv=OptimWrapper(torch.optim.SGD(net.conv.parameters(), lr=0.)),
            nam=OptimWrapper(torch.optim.SGD(net.nam.parameters(), lr=0.)),
            nam_spatial=OptimWrapper(torch.optim.SGD(net.nam_spatial.parameters(), lr=0.)))

    hook = SparsityPenaltyHook(s)
    hook.before_train(Holder)
    net(x)['loss'].backward()
    Holder.optim_wrapper['nam'].step()
    for name, p in net.named_parameters():
        penalised = name == 'nam.bn.weight'  # the others' optimisers have not stepped yet
        added = s * torch.sign(p.detach()) if penalised else 0
        torch.testing.assert_close(p.grad, expected[name] + added, rtol=0, atol=0)
    hook.after_train(Holder)
    assert not any(w.optimizer._optimizer_step_pre_hooks
                   for w in Holder.optim_wrapper.optim_wrappers.values())


@pytest.mark.parametrize('penalty', [0., -1e-4, 'high'])
def test_hook_rejects_bad_penalties(penalty):
    with pytest.raises(ValueError, match='SparsityPenaltyHook: penalty'):
        SparsityPenaltyHook(penalty)


def test_config_trains_with_the_penalty():
    cfg = Config.fromfile(osp.join(ROOT, 'configs/classification/resnet50/'
                                         'resnet50-nam_8xb32_in1k.py'))
    (hook, ) = [h for h in cfg.custom_hooks if h['type'] == 'SparsityPenaltyHook']
    built = HOOKS.build(hook)
    assert isinstance(built, SparsityPenaltyHook) and built.penalty == 1e-4
    assert cfg.model.backbone.insertions == [dict(attention=dict(type='NAM'), at='paper')]
