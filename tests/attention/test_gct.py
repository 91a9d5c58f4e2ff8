"""GCT: its equation, identity at initialisation, parameter count, maps, variants, argument
checks, its paper position in ResNet-50 (stem included) and the weight decay of beta."""
import math
import os.path as osp

import pytest
import torch
from mmengine.optim import DefaultOptimWrapperConstructor
from mmpretrain.models import ResNet

from cvattn_mm.attention.channel.gct import GCT
from cvattn_mm.attention.fast_backward import fast_backward
from cvattn_mm.insertion import insert_attention

from .contract import perturb_parameters, run_contract

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
VARIANTS = [dict(mode='l1'), dict(mode='l1', after_relu=True), dict(eps=0.1)]
VARIANT_IDS = ['l1', 'l1-after-relu', 'eps']


@pytest.mark.parametrize('kwargs', VARIANTS, ids=VARIANT_IDS)
def test_contract_variants(kwargs):
    run_contract(lambda: GCT(64, **kwargs))


def gct_reference(x, alpha, gamma, beta, eps, mode, after_relu):
    """Eqs. 1-3 of the paper with the official code's epsilons, written with plain ops on
    (N, C) statistics; alpha, gamma, beta are (C,) vectors."""
    n, c, h, w = x.shape
    if mode == 'l2':
        s = alpha * torch.sqrt((x * x).sum((2, 3)) + eps)  # (N, C)
        n_c = gamma * math.sqrt(c) / torch.sqrt((s * s).sum(1, keepdim=True) + c * eps)
    else:
        total = x.sum((2, 3)) if after_relu else x.abs().sum((2, 3))
        s = alpha * total
        n_c = gamma * c / (s.abs().sum(1, keepdim=True) + c * eps)
    gate = 1 + torch.tanh(s * n_c + beta)
    return x * gate[:, :, None, None]


@pytest.mark.parametrize('kwargs', [{}] + VARIANTS, ids=['l2'] + VARIANT_IDS)
@pytest.mark.parametrize('channels', [3, 16])
def test_equation(kwargs, channels):
    gct = perturb_parameters(GCT(channels, **kwargs), scale=0.7).double()
    x = torch.randn(3, channels, 5, 7, dtype=torch.float64)
    if kwargs.get('after_relu'):
        x = x.relu()
    expected = gct_reference(x, gct.alpha.flatten(), gct.gamma.flatten(), gct.beta.flatten(),
                             gct.eps, gct.mode, gct.after_relu)
    torch.testing.assert_close(gct(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('kwargs', [{}] + VARIANTS, ids=['l2'] + VARIANT_IDS)
def test_identity_at_initialisation(kwargs):
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, 8, 6, 5, generator=gen) * scale for scale in (1e-6, 1., 1e6)]
    inputs += [torch.zeros(2, 8, 4, 4), torch.randn(1, 8, 1, 1, generator=gen),
               torch.randn(2, 8, 3, 9, generator=gen).double(),
               torch.randn(2, 8, 7, 7, generator=gen).to(memory_format=torch.channels_last)]
    gct = GCT(8, **kwargs)
    gct.init_weights()
    for x in inputs:
        for mode in ('train', 'eval'):
            getattr(gct, mode)()
            y = gct.to(x.dtype)(x)
            assert torch.equal(y, x), (tuple(x.shape), x.dtype, mode)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        x = torch.randn(2, 8, 5, 5, generator=gen).bfloat16()
        assert torch.equal(gct.float()(x), x)


def test_gate_of_equal_energies_is_one_plus_tanh_one():
    """The spec's check: alpha = gamma = 1, beta = 0, every channel of the same energy."""
    gct = GCT(16)
    with torch.no_grad():
        gct.gamma.fill_(1.)
    signs = torch.randint(0, 2, (2, 16, 8, 8), generator=torch.Generator().manual_seed(0))
    x = signs.float() * 2 - 1  # +-1: sum of squares 64 in every channel
    gate = gct.channel_gate(x)
    torch.testing.assert_close(gate, torch.full_like(gate, 1 + math.tanh(1.)), rtol=0,
                               atol=1e-6)


def test_stem_input_of_three_channels():
    """At the stem GCT sees the image: C = 3, normalised over those 3 channels."""
    gct = perturb_parameters(GCT(3), scale=0.5).double()
    image = torch.rand(2, 3, 32, 32, dtype=torch.float64) * 255
    s = gct.alpha.flatten() * ((image ** 2).sum((2, 3)) + 1e-5).sqrt()
    z = s * gct.gamma.flatten() / ((s ** 2).mean(1, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(gct.channel_gate(image).flatten(1),
                               1 + torch.tanh(z + gct.beta.flatten()))


def test_gate_is_invariant_to_a_common_scale_up_to_eps():
    gct = perturb_parameters(GCT(8, eps=1e-12), scale=0.5).double()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    big = torch.nn.functional.interpolate(x, scale_factor=2, mode='nearest')
    for other in (x * 1e3, big):  # every channel sum times 1e6 (l2), or times 4
        torch.testing.assert_close(gct.channel_gate(other), gct.channel_gate(x))


def test_half_input_sums_in_float32():
    gct = perturb_parameters(GCT(8), scale=0.5)
    x = torch.randn(2, 8, 16, 16) * 100  # sums of squares ~2.6e6, beyond fp16's 65504
    y = gct.half()(x.half())
    assert y.dtype == torch.half and torch.isfinite(y).all()
    expected = gct.double()(x.half().double())
    torch.testing.assert_close(y.double(), expected, rtol=2e-3, atol=1e-2)


@pytest.mark.parametrize('kwargs', [{}] + VARIANTS, ids=['l2'] + VARIANT_IDS)
def test_the_three_paths_give_the_same_output(kwargs):
    """No-grad (output written into the terms' buffer), autograd and the hand-written
    backward's forward, on contiguous, channels_last and strided inputs."""
    gct = perturb_parameters(GCT(8, **kwargs), scale=0.5)
    x = torch.randn(2, 8, 6, 10)
    for inp in (x, x.to(memory_format=torch.channels_last), x[:, :, :, ::2]):
        with torch.no_grad():
            y = gct(inp)
        assert y.stride() == (inp * 1).stride()
        with fast_backward(False):
            plain = gct(inp)
        fast = gct(inp)
        assert torch.equal(y, plain) and torch.equal(fast, plain)


@pytest.mark.parametrize('kwargs', [{}] + VARIANTS, ids=['l2'] + VARIANT_IDS)
def test_fast_backward_in_half_precision(kwargs):
    """fp16 inputs: sums and gate gradients in float32 (autograd in fp16 would overflow the
    sums of squares); the gradients against float64 autograd."""
    gct = perturb_parameters(GCT(8, **kwargs), scale=0.5)
    x = (torch.randn(2, 8, 16, 16) * 30).half()
    if kwargs.get('after_relu'):
        x = x.relu()
    g = torch.randn(2, 8, 16, 16).half()
    x16 = x.clone().requires_grad_()
    gct(x16).backward(g)
    grads16 = [x16.grad] + [p.grad for p in gct.parameters()]
    gct.zero_grad()
    x64 = x.double().requires_grad_()
    with fast_backward(False):
        gct.double()(x64).backward(g.double())
    grads64 = [x64.grad] + [p.grad for p in gct.parameters()]
    for name, a, b in zip(['x', 'alpha', 'gamma', 'beta'], grads16, grads64):
        assert torch.isfinite(a).all(), name
        assert (a.double() - b).abs().max() <= 5e-3 * b.abs().max(), name


@pytest.mark.parametrize('channels', [3, 64, 256, 2048])
def test_parameter_count(channels):
    assert sum(p.numel() for p in GCT(channels).parameters()) == 3 * channels


def test_state_dict_is_the_official_one():
    state = GCT(8).state_dict()
    assert sorted(state) == ['alpha', 'beta', 'gamma']
    assert all(v.shape == (1, 8, 1, 1) for v in state.values())


def test_gate_rebuilds_the_forward_and_is_the_map():
    for kwargs in [{}] + VARIANTS:
        gct = perturb_parameters(GCT(16, **kwargs), scale=0.5).eval()
        x = torch.randn(2, 16, 7, 10)
        with torch.no_grad():
            gate = gct.channel_gate(x)
            torch.testing.assert_close(gct(x), x * gate)
            maps = gct.attention_maps(x)
        assert set(maps) == {'channel_gate'}
        assert torch.equal(maps['channel_gate'].values * 2, gate.flatten(1))
        assert 0 <= maps['channel_gate'].values.min() <= maps['channel_gate'].values.max() <= 1


@pytest.fixture(scope='module')
def resnet50_with_gct():
    torch.manual_seed(0)
    model = ResNet(depth=50)
    model.eval()  # mmpretrain's ResNet.train returns None, so eval() does too
    insert_attention(model, [dict(attention=dict(type='GCT'), at='paper')],
                     example_inputs=(torch.zeros(1, 3, 32, 32), ))
    return model


def test_paper_position_in_resnet50(resnet50_with_gct):
    """Before every conv: 1 stem conv + 16 blocks x 3 convs + 4 downsample convs = 53 GCTs,
    the official GCT-ResNet-50's count; the first sees the 3-channel image."""
    model = resnet50_with_gct
    sites = model.attention_sites
    assert len(sites) == 53
    assert list(sites)[:5] == ['conv1:input', 'layer1-0-conv1:input', 'layer1-0-conv2:input',
                               'layer1-0-conv3:input', 'layer1-0-downsample-0:input']
    stem = sites['conv1:input'].attentions['gct']
    assert stem.in_channels == 3
    assert sum(p.numel() for p in sites.parameters()) == 67593  # as the official model
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        baseline = model(image)[-1]
        stem.gamma.fill_(1.)
        changed = model(image)[-1]
        stem.init_special()
        assert torch.equal(model(image)[-1], baseline)
    assert not torch.equal(changed, baseline)


def read_config(path):
    """The plain assignments of a config file (its ``_base_`` is not loaded)."""
    namespace = {}
    with open(osp.join(ROOT, path)) as f:
        exec(f.read(), namespace)  # noqa: S102 (our own config files)
    return namespace


@pytest.mark.parametrize('path', [
    'configs/classification/resnet50/resnet50-gct_8xb32_in1k.py',
    'configs/detection/faster_rcnn/faster-rcnn_r50-gct_fpn_1x_coco.py'])
def test_config_removes_weight_decay_from_beta_only(path, resnet50_with_gct):
    paramwise_cfg = read_config(path)['optim_wrapper']['paramwise_cfg']
    model = resnet50_with_gct
    constructor = DefaultOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4)),
        paramwise_cfg)
    groups = constructor(model).optimizer.param_groups
    decay = {id(p): g['weight_decay'] for g in groups for p in g['params']}
    names = {id(p): name for name, p in model.named_parameters()}
    no_decay = sorted(names[i] for i, d in decay.items() if d == 0)
    assert len(no_decay) == 53 and all(n.endswith('.attentions.gct.beta') for n in no_decay)
    assert all(d == 1e-4 for i, d in decay.items() if not names[i].endswith('.gct.beta'))
    assert len(decay) == len(names)


@pytest.mark.parametrize('kwargs,argument', [
    (dict(in_channels=0), 'in_channels'), (dict(eps=0.), 'eps'), (dict(eps=-1.), 'eps'),
    (dict(mode='l3'), 'mode'), (dict(after_relu=1), 'after_relu'),
    (dict(after_relu=True), 'after_relu')])
def test_invalid_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf'GCT: {argument}'):
        GCT(**dict(dict(in_channels=8), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyGCT', (GCT, ), {'_abbr_': 'my_gct'})
    with pytest.raises(ValueError, match='MyGCT: mode'):
        sub(8, mode='l3')
    with pytest.raises(ValueError, match='MyGCT was built for in_channels=8'):
        sub(8)(torch.zeros(1, 4, 2, 2))
