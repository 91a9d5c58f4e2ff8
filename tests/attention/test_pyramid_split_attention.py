"""PyramidSplitAttention: its equation, concatenation orders, the zero-SE check, parameter
count, initialisation, maps, batching and argument checks."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn_mm.attention.branch.pyramid_split_attention import PyramidSplitAttention
from cvattn_mm.registry import MODELS

from .contract import check_replaces_conv, perturb_parameters, run_contract


@pytest.mark.parametrize('kwargs', [dict(concat_order='official'),
                                    dict(conv_kernels=(3, 5), conv_groups=(1, 2)),
                                    dict(reduction=4)],
                         ids=['official', 'two_branches', 'reduction4'])
def test_contract_variants(kwargs):
    run_contract(lambda: PyramidSplitAttention(64, **kwargs))


@pytest.mark.parametrize('kwargs', [dict(concat_order='official'),
                                    dict(conv_kernels=(1, 5), conv_groups=(2, 4))],
                         ids=['official', 'two_branches'])
def test_replaces_conv_variants(kwargs):
    check_replaces_conv(PyramidSplitAttention, **kwargs)


def psa_reference(x, weights, groups, stride, w1, b1, w2, b2, order):
    """The paper's PSA from its equations: F_i = Conv(k_i, G_i)(x); Z_i = SEWeight(F_i) (GAP,
    FC + ReLU, FC + sigmoid; shared); att_i = softmax over i of Z_i; Y_i = F_i * att_i;
    out = Cat(Y) in the paper's order or the official code's reversed one."""
    feats = [F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2, groups=g)
             for w, g in zip(weights, groups)]
    z = []
    for f in feats:
        s = f.sum((2, 3)) / (f.shape[2] * f.shape[3])
        hidden = torch.clamp(s @ w1.T + b1, min=0)
        z.append(1 / (1 + torch.exp(-(hidden @ w2.T + b2))))
    e = torch.exp(torch.stack(z))  # (S, N, C / S)
    att = e / e.sum(0)
    ys = [f * a[:, :, None, None] for f, a in zip(feats, att)]
    return torch.cat(ys if order == 'paper' else ys[::-1], 1)


def reference_of(m, x):
    return psa_reference(x, [b.weight for b in m.branches], m.conv_groups, m.stride,
                         m.se_reduce.weight.flatten(1), m.se_reduce.bias,
                         m.se_expand.weight.flatten(1), m.se_expand.bias, m.concat_order)


@pytest.mark.parametrize('args,kwargs,size', [
    ((64, ), dict(), (9, 11)),
    ((64, ), dict(concat_order='official'), (9, 11)),
    ((32, 128), dict(stride=2), (13, 17)),
    ((64, 64), dict(stride=2, concat_order='official'), (1, 1)),
    ((32, ), dict(conv_kernels=(3, 5), conv_groups=(1, 2), reduction=4), (6, 5)),
], ids=['default', 'official', 'stride2_wider', 'stride2_1x1', 'two_branches'])
def test_equation(args, kwargs, size):
    torch.manual_seed(0)
    m = perturb_parameters(PyramidSplitAttention(*args, **kwargs), scale=0.3).double()
    x = torch.randn(2, args[0], *size, dtype=torch.float64)
    y = m(x)
    assert y.shape == (2, m.out_channels, *m.output_size(*size))
    torch.testing.assert_close(y, reference_of(m, x))


def test_official_order_is_the_paper_order_reversed_blockwise():
    torch.manual_seed(0)
    paper = perturb_parameters(PyramidSplitAttention(64), scale=0.3).double()
    official = PyramidSplitAttention(64, concat_order='official').double()
    official.load_state_dict(paper.state_dict())
    x = torch.randn(2, 64, 7, 6, dtype=torch.float64)
    blocks = paper(x).view(2, 4, 16, 7, 6)
    torch.testing.assert_close(official(x), blocks.flip(1).flatten(1, 2))


@pytest.mark.parametrize('concat_order', ['paper', 'official'])
def test_zero_last_se_conv_gives_equal_weights(concat_order):
    """The spec's check: with the SE's last conv zero every a_i = 0.25 and the output is
    0.25 * Cat(F_i) in the chosen order."""
    m = PyramidSplitAttention(64, concat_order=concat_order).double()
    nn.init.zeros_(m.se_expand.weight)
    nn.init.zeros_(m.se_expand.bias)
    x = torch.randn(2, 64, 8, 7, dtype=torch.float64)
    feats = [b(x) for b in m.branches]
    order = feats if concat_order == 'paper' else feats[::-1]
    torch.testing.assert_close(m(x), 0.25 * torch.cat(order, 1), rtol=0, atol=1e-15)
    (amap, ) = m.attention_maps(x).values()
    assert torch.equal(amap.values, torch.full((2, 64), 0.25, dtype=torch.float64))


def expected_params(c_in, c, kernels=(3, 5, 7, 9), groups=(1, 4, 8, 16), r=16):
    s = len(kernels)
    split, hidden = c // s, c // s // r
    convs = sum(c_in * split * k * k // g for k, g in zip(kernels, groups))
    return convs + 2 * split * hidden + hidden + split


@pytest.mark.parametrize('c_in,c', [(64, 64), (128, 128), (256, 256), (512, 512), (64, 128)])
def test_parameter_count(c_in, c):
    count = sum(p.numel() for p in PyramidSplitAttention(c_in, c).parameters())
    assert count == expected_params(c_in, c)


def test_parameter_count_at_256_is_the_official_one():
    assert sum(p.numel() for p in PyramidSplitAttention(256).parameters()) == 433_732
    m = PyramidSplitAttention(64, conv_kernels=(3, 5), conv_groups=(1, 2), reduction=4)
    assert sum(p.numel() for p in m.parameters()) == expected_params(64, 64, (3, 5), (1, 2), 4)


def test_initialisation_is_the_official_networks():
    """N(0, 2 / (k^2 C_out)) conv weights (EPSANet's loop over its convs); default biases."""
    torch.manual_seed(0)
    m = PyramidSplitAttention(256)
    for branch in m.branches:
        std = math.sqrt(2. / (branch.kernel_size[0] ** 2 * 64))
        w = branch.weight
        assert abs(w.std().item() / std - 1) < 0.03, branch
        assert abs(w.mean().item()) < 0.03 * std, branch
    for fc in (m.se_reduce, m.se_expand):
        std = math.sqrt(2. / fc.out_channels)
        assert abs(fc.weight.std().item() / std - 1) < 0.2, fc
        assert fc.bias.abs().max() <= 1 / math.sqrt(fc.in_channels), fc
    weights = [b.weight.clone() for b in m.branches]
    torch.manual_seed(1)
    m.init_weights()  # the first init_weights() runs init_special again: new draws
    assert not any(torch.equal(w, b.weight) for w, b in zip(weights, m.branches))


@pytest.mark.parametrize('concat_order', ['paper', 'official'])
def test_methods_rebuild_the_forward_and_give_the_maps(concat_order):
    m = perturb_parameters(PyramidSplitAttention(64, concat_order=concat_order),
                           scale=0.3).eval()
    x = torch.randn(2, 64, 7, 10)
    with torch.no_grad():
        feats = m.branch_outputs(x)
        weights = m.branch_weights(feats.mean((3, 4), keepdim=True))
        torch.testing.assert_close(m(x), (feats * weights).flatten(1, 2))
        maps = m.attention_maps(x)
    assert feats.shape == (2, 4, 16, 7, 10) and weights.shape == (2, 4, 16, 1, 1)
    first = 0 if concat_order == 'paper' else 3
    torch.testing.assert_close(feats[:, first], m.branches[0](x))
    assert list(maps) == ['branch_weights']
    amap = maps['branch_weights']
    assert amap.kind == 'channel' and torch.equal(amap.values, weights.flatten(1))
    kernels = '3, 5, 7, 9' if concat_order == 'paper' else '9, 7, 5, 3'
    assert amap.title.endswith(f'kernels {kernels})')
    # per channel the branch weights sum to 1: the 4 blocks of the map add up to ones
    torch.testing.assert_close(amap.values.view(2, 4, 16).sum(1), torch.ones(2, 16))
    # a softmax of sigmoids: every weight within [1 / (1 + 3 e), e / (e + 3)]
    assert amap.values.min() >= 1 / (1 + 3 * math.e)
    assert amap.values.max() <= math.e / (math.e + 3)


def test_one_call_per_branch_conv_and_one_batched_se():
    m = PyramidSplitAttention(64)
    calls = {}
    for name, layer in m.named_children():
        for sub, leaf in ([(name, layer)] if not isinstance(layer, nn.ModuleList)
                          else [(f'{name}.{i}', b) for i, b in enumerate(layer)]):
            leaf.register_forward_hook(
                lambda mod, inp, out, sub=sub: calls.__setitem__(
                    sub, calls.get(sub, []) + [tuple(inp[0].shape)]))
    m(torch.randn(3, 64, 6, 6))
    assert {k: len(v) for k, v in calls.items()} == {
        'branches.0': 1, 'branches.1': 1, 'branches.2': 1, 'branches.3': 1,
        'se_reduce': 1, 'se_act': 1, 'se_expand': 1, 'se_gate': 1}
    assert calls['se_reduce'] == [(12, 16, 1, 1)]  # the 4 branches' vectors as one batch


def test_from_conv_takes_the_stride_and_widths():
    conv = nn.Conv2d(64, 128, 3, stride=2, padding=1, bias=False)
    m = PyramidSplitAttention.from_conv(conv, concat_order='official')
    assert (m.in_channels, m.out_channels, m.stride) == (64, 128, 2)
    assert all(b.stride == (2, 2) and b.out_channels == 32 for b in m.branches)
    x = torch.randn(1, 64, 7, 9)
    assert m(x).shape == conv(x).shape == (1, 128, 4, 5)


def test_init_from_conv_is_refused_with_the_reason():
    m = PyramidSplitAttention(64)
    with pytest.raises(ValueError, match='PyramidSplitAttention cannot take its weights from '
                       'the replaced conv: only branch 1'):
        m.init_from_conv(nn.Conv2d(64, 64, 3, padding=1, bias=False))


@pytest.mark.parametrize('kwargs,message', [
    (dict(out_channels=66), r'out_channels=66 must be divisible by the number of branches 4'),
    (dict(out_channels=32), r'out_channels / 4 = 8 \(the channels of a branch\) must be '
                            r'divisible by conv_groups\[3\]=16'),
    (dict(in_channels=40, out_channels=64), r'in_channels=40 must be divisible by '
                                            r'conv_groups\[3\]=16'),
    (dict(reduction=32), r'out_channels / 4 = 16 \(the channels of a branch\) must be '
                         r'divisible by reduction=32'),
    (dict(out_channels=96, reduction=16), r'out_channels / 4 = 24 .* must be divisible by '
                                          r'conv_groups\[3\]=16'),
    (dict(reduction=0), r'reduction must be >= 1, got 0'),
    (dict(conv_kernels=(3, 4, 7, 9)), r'conv_kernels\[1\] must be odd'),
    (dict(conv_kernels=(3, )), r'conv_kernels must give at least 2 branches, got \(3,\)'),
    (dict(conv_kernels='3579'), r'conv_kernels must be a sequence'),
    (dict(conv_groups=4), r'conv_groups must be a sequence'),
    (dict(conv_groups=(1, 4, 8)), r'conv_groups must have one entry per branch \(4'),
    (dict(conv_groups=(0, 4, 8, 16)), r'conv_groups\[0\] must be >= 1, got 0'),
    (dict(concat_order='reversed'), r'concat_order must be one of'),
    (dict(groups=2), r'cannot replace a conv with groups=2'),
    (dict(dilation=2), r'cannot replace a conv with dilation=2'),
    (dict(bias=True), r'cannot replace a conv with bias=True'),
    (dict(kernel_size=5), r'replaces convs with kernel_size in \(3,\)'),
    (dict(padding=0), r'padding=0'),
])
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=rf'PyramidSplitAttention:? .*{message}'):
        PyramidSplitAttention(**dict(dict(in_channels=64), **kwargs))


def test_errors_name_a_subclass():
    sub = type('MyPSA', (PyramidSplitAttention, ), {'_abbr_': 'my_epsa'})
    with pytest.raises(ValueError, match='MyPSA: concat_order'):
        sub(64, concat_order='reversed')
    with pytest.raises(ValueError, match='MyPSA: out_channels=66'):
        sub(64, 66)


def test_the_short_name_psa_is_ambiguous_and_lists_this_module():
    with pytest.raises(KeyError) as error:
        MODELS.build(dict(type='PSA', in_channels=64))
    message = str(error.value)
    assert "'PSA' is ambiguous" in message
    assert "PyramidSplitAttention (cvattn_mm): EPSANet's pyramid split attention" in message
    assert isinstance(MODELS.build(dict(type='PyramidSplitAttention', in_channels=64)),
                      PyramidSplitAttention)
