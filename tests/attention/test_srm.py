"""SRM: its equation, initialisation, parameter count, maps, variants and argument checks."""
import pytest
import torch
from mmengine.optim import DefaultOptimWrapperConstructor

from cvattn_mm.attention.channel.srm import SRM
from cvattn_mm.insertion import insert_attention

from .contract import perturb_parameters, run_contract


@pytest.mark.parametrize('kwargs', [dict(variance='biased'), dict(eps=0.1),
                                    dict(norm_cfg=dict(type='GN', num_groups=4))],
                         ids=['biased', 'eps', 'gn'])
def test_contract_variants(kwargs):
    run_contract(lambda: SRM(64, **kwargs))


def srm_reference(x, cfc, bn_weight, bn_bias, eps, unbiased):
    """The paper's style pooling and integration with a batch norm in training mode (batch
    statistics, biased variance over the batch), written from the equations."""
    n, c, h, w = x.shape
    s = h * w
    mu = x.sum((2, 3)) / s
    var = ((x - mu[:, :, None, None]) ** 2).sum((2, 3)) / ((s - 1) if unbiased else s)
    sigma = torch.sqrt(var + eps)
    z = cfc[:, 0] * mu + cfc[:, 1] * sigma  # (N, C)
    z_hat = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)
    return x * torch.sigmoid(bn_weight * z_hat + bn_bias)[:, :, None, None]


@pytest.mark.parametrize('variance', ['unbiased', 'biased'])
def test_equation(variance):
    torch.manual_seed(0)
    srm = perturb_parameters(SRM(16, variance=variance), scale=0.5).double().train()
    x = torch.randn(3, 16, 5, 7, dtype=torch.float64)
    expected = srm_reference(x, srm.cfc, srm.bn.weight, srm.bn.bias, 1e-5,
                             variance == 'unbiased')
    torch.testing.assert_close(srm(x), expected)


def test_eval_uses_running_statistics():
    srm = perturb_parameters(SRM(8), scale=0.5).double().eval()
    with torch.no_grad():
        srm.bn.running_mean.uniform_(-1, 1)
        srm.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 8, 4, 6, dtype=torch.float64)
    mu, sigma = x.mean((2, 3)), (x.var((2, 3)) + 1e-5).sqrt()
    z = srm.cfc[:, 0] * mu + srm.cfc[:, 1] * sigma
    bn = srm.bn
    z_hat = (z - bn.running_mean) / (bn.running_var + bn.eps).sqrt() * bn.weight + bn.bias
    torch.testing.assert_close(srm(x), x * torch.sigmoid(z_hat)[:, :, None, None])


def test_one_position_map_has_zero_variance():
    srm = perturb_parameters(SRM(8), scale=0.5).eval()
    x = torch.randn(2, 8, 1, 1)
    style = srm.style(x)
    torch.testing.assert_close(style[..., 0], x.flatten(1))
    torch.testing.assert_close(style[..., 1], torch.full((2, 8), 1e-5).sqrt())


def test_initialisation_halves_the_input():
    x = torch.randn(4, 32, 6, 5)
    for mode in ('train', 'eval'):
        srm = SRM(32)
        srm.init_weights()
        getattr(srm, mode)()
        assert torch.equal(srm(x), x * 0.5), mode


@pytest.mark.parametrize('channels', [64, 256, 2048])
def test_parameter_count(channels):
    assert sum(p.numel() for p in SRM(channels).parameters()) == 4 * channels


def test_state_dict_keys_are_the_official_ones():
    assert sorted(SRM(8).state_dict()) == ['bn.bias', 'bn.num_batches_tracked',
                                           'bn.running_mean', 'bn.running_var', 'bn.weight',
                                           'cfc']
    assert SRM(8).cfc.shape == (8, 2)


def test_gate_rebuilds_the_forward_and_is_the_map():
    srm = perturb_parameters(SRM(16), scale=0.5).eval()
    x = torch.randn(2, 16, 7, 10)
    with torch.no_grad():
        gate = srm.channel_gate(x)
        torch.testing.assert_close(srm(x), x * gate)
        maps = srm.attention_maps(x)
    assert set(maps) == {'channel_gate'}
    assert torch.equal(maps['channel_gate'].values, gate.flatten(1))


def test_zero_weight_decay_group_from_a_config_key():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
    holder = torch.nn.Module()
    holder.body = model
    holder.forward = lambda x: model(x)
    insert_attention(holder, [dict(attention=dict(type='SRM'), at='body.0')],
                     example_inputs=(torch.zeros(1, 3, 8, 8), ))
    constructor = DefaultOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4)),
        dict(custom_keys={'.srm.': dict(decay_mult=0.)}))
    groups = constructor(holder).optimizer.param_groups
    decay = {id(p): g['weight_decay'] for g in groups for p in g['params']}
    srm = holder.attention_sites['body-0'].attentions['srm']
    assert [decay[id(p)] for p in srm.parameters()] == [0., 0., 0.]
    assert all(decay[id(p)] == 1e-4 for p in model.parameters())


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(eps=-1.), 'eps'),
    (dict(variance='sample'), 'variance')])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'SRM: {argument}'):
        SRM(**dict(dict(in_channels=8), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MySRM', (SRM, ), {'_abbr_': 'my_srm'})
    with pytest.raises(ValueError, match='MySRM: variance'):
        sub(8, variance='sample')
