"""Each reference computes the same function as our module, with our weights copied."""
import pytest
import torch

import cvattn_mm  # noqa: F401
from cvattn_mm.analysis.benchmark import Timing, benchmark_peer
from cvattn_mm.analysis.peers import PEERS, build_pair, copy_weights, randomize
from cvattn_mm.analysis.references import REFERENCES, all_peers, peers_of
from cvattn_mm.attention.catalog import attention_classes

C = 32

#: (module, our hyper-parameters on top of the pair's, input size): the defaults at a
#: non-square and an odd size, then variants.
CASES = [(r.module, {}, size) for r in REFERENCES for size in ((8, 12), (7, 9))] + [
    ('BAM', dict(reduction=4, num_dilated=1, dilation=2), (5, 6)),
    ('SCSE', dict(reduction=4), (5, 7)),
    ('SimAM', dict(e_lambda=0.1), (5, 7)),
    ('TripletAttention', dict(kernel_size=3, no_spatial=True), (5, 7)),
    ('TripletAttention', dict(kernel_size=5), (1, 6)),
    ('SCSA', dict(head_num=2, window_size=3, down_sample_mode='max_pool', qkv_bias=True,
                  gate_layer='softmax'), (5, 7)),
    ('SCSA', dict(window_size=-1, group_kernel_sizes=(1, 3, 3, 5)), (5, 7)),
    ('ExternalAttention', dict(memory_size=16), (5, 7)),
    ('MultiHeadExternalAttention', dict(num_heads=2, coef=2, memory_size=8), (5, 7)),
    ('PooledSelfAttention', dict(ds=1), (5, 7)),
    ('ShuffleAttention', dict(groups=4), (5, 7)),
    ('ShuffleAttention', dict(groups=2), (1, 1)),
    ('PooledSelfAttention', dict(ds=3, reduction=4), (9, 14)),
    ('PooledSelfAttention', dict(), (16, 24)),  # the sizes the official code runs
    ('SRM', dict(), (1, 5)),
    ('MLCA', dict(), (5, 5)),  # the grid itself: both pools the identity
    ('MLCA', dict(local_size=3, local_weight=0.3, kernel_size=5), (1, 2)),
    ('GAM', dict(reduction=2, kernel_size=3), (5, 7)),
    ('GSoP', dict(att_dim=8, reduce_stride=2), (7, 9)),
    ('GSoP', dict(att_dim=8), (1, 1)),
    ('FCA', dict(grid_size=8), (8, 8)),  # on the grid: no pooling
    ('FCA', dict(freq_sel='low4', grid_size=(14, 7), reduction=4), (5, 9)),
    ('DoubleAttention', dict(reduction=2, num_descriptors=3), (5, 7)),
    ('RGA', dict(grid_size=(8, 7)), (8, 7)),  # on the grid: the official computation
    ('RGA', dict(use_channel=False, grid_size=4), (6, 9)),
    ('RGA', dict(use_spatial=False, grid_size=(4, 5), reduction=4), (4, 5)),
    ('EfficientMultiScaleAttention', dict(factor=8), (5, 7)),
    ('EfficientMultiScaleAttention', dict(factor=4), (1, 1)),
    ('PolarizedSelfAttention', dict(mode='parallel'), (5, 7)),
    ('PolarizedSelfAttention', dict(bottleneck_ratio=2), (1, 1)),
    ('SpatialTransformer', dict(padding_mode='border', loc_channels=(8, 4), fc_channels=6),
     (5, 7)),
    ('SpatialTransformer', dict(), (1, 1)),
    ('ResidualAttentionMask', dict(levels=3), (16, 15)),  # 7x7, 3x3, 1x1: every level pooled
    ('SCConv', dict(ceil_mode=False), (9, 13)),  # the official floor pool
    ('SCConv', dict(dilation=2, groups=4), (7, 10)),
    ('SCConv', dict(pooling_r=2), (1, 1)),
    ('ACmix', dict(head=8, kernel_att=5), (5, 7)),
    ('ACmix', dict(head=2, kernel_att=3), (4, 5)),
    ('CoT', dict(kernel_size=5), (1, 1)),
    ('AgentAttention', dict(bias_size=8), (8, 8)),  # the official size: nothing resized
    ('AgentAttention', dict(num_heads=2, agent_num=9, sr_ratio=2, qkv_bias=True, bias_size=8),
     (9, 6)),
    ('AgentAttention', dict(num_heads=4, agent_num=4, sr_ratio=2), (1, 3)),
    ('PyramidSplitAttention', dict(conv_kernels=(3, 3, 5, 5), reduction=2), (5, 7)),
    ('PyramidSplitAttention', dict(conv_kernels=(1, 3, 5, 7)), (1, 1)),
    ('BiLevelRoutingAttention', dict(num_heads=4, n_win=2, topk=3, soft_routing=True,
                                     diff_routing=True, param_routing=True, side_dwconv=5),
     (6, 5)),
    ('BiLevelRoutingAttention', dict(num_heads=2, n_win=3, topk=9, qk_dim=16, qk_scale=0.3,
                                     side_dwconv=0, param_attention='qkv',
                                     size_policy='strict'), (6, 9)),
    ('BiLevelRoutingAttention', dict(), (1, 1)),
    ('ODConv', dict(kernel_num=1), (5, 7)),
    ('ODConv', dict(kernel_size=1, kernel_num=1), (5, 7)),  # the official plain-conv path
    ('ODConv', dict(kernel_size=1, groups=32, kernel_num=2), (5, 7)),  # depthwise 1x1
    ('ODConv', dict(groups=4, dilation=2, kernel_num=3, temperature=7.), (7, 6)),
    ('ODConv', dict(kernel_size=5, temperature=30.), (1, 1)),
    ('SASA', dict(boundary='zeros', scale=True, heads=4), (5, 7)),
    ('SASA', dict(spatial_extent=3), (1, 1)),
    ('SAN', dict(relation='patchwise'), (5, 7)),
    ('SAN', dict(relation='patchwise', spatial_extent=3, share_planes=4), (4, 5)),
    ('SAN', dict(dilation=2, padding=2), (9, 8)),
    ('SAN', dict(spatial_extent=3, rel_reduction=8), (2, 3)),
]


def reference_of(name):
    (peer, ) = [r for r in REFERENCES if r.module == name]
    return peer


def pair(name, cfg):
    peer = reference_of(name)
    ours, theirs = (m.double() for m in build_pair(peer, C, **cfg))
    randomize(ours)
    copy_weights(peer, ours, theirs)
    return peer, ours, theirs


#: Modules whose forward runs its normalisation in float32 also on a float64 input (``.float()``
#: before the softmax): equal to float32 precision only.
FLOAT32_INSIDE = {'ExternalAttention', 'MultiHeadExternalAttention'}


def assert_same(a, b, name):
    assert a.shape == b.shape
    scale = b.abs().max().item()
    assert scale > 1e-3  # random weights: not a trivially zero output
    rtol = 1e-5 if name in FLOAT32_INSIDE else 1e-9
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * 0.1 * scale)


@pytest.mark.parametrize('name, cfg, size', CASES,
                         ids=[f'{n}-{"-".join(map(str, c.values()))}-{h}x{w}'
                              for n, c, (h, w) in CASES])
def test_same_function_with_copied_weights(name, cfg, size):
    """Eval mode: equal outputs. Train mode (batch statistics): equal outputs and input
    gradients, in float64."""
    peer, ours, theirs = pair(name, cfg)
    x = torch.randn(3, C, *size, dtype=torch.double, generator=torch.Generator().manual_seed(1))
    assert peer.incomparable(ours, x.shape) is None
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        assert_same(ours(x), theirs(x), name)
    ours.train()
    theirs.train()
    outputs, grads = [], []
    for module in (ours, theirs):
        xi = x.clone().requires_grad_()
        out = module(xi)
        # a gradient that is not constant, of the output's shape (conv replacements change it)
        weight = torch.randn(out.shape, dtype=torch.double,
                             generator=torch.Generator().manual_seed(2))
        outputs.append(out)
        grads.append(torch.autograd.grad((out * weight).sum(), xi)[0])
    assert_same(*outputs, name)
    assert_same(*grads, name)


def test_every_module_has_a_peer_or_a_reference():
    """A reference only where no package implements the module: every module has a ratio."""
    assert {p.module for p in all_peers()} == set(attention_classes())
    assert not {r.module for r in REFERENCES} & {p.module for p in PEERS}
    assert len({r.module for r in REFERENCES}) == len(REFERENCES)
    assert all(r.package == 'torch' and r.available and r.name.startswith('reference ')
               for r in REFERENCES)
    assert peers_of('SimAM') == [reference_of('SimAM')]
    assert [p.name for p in peers_of('GC')] == ['timm GlobalContext', 'mmcv ContextBlock']


@pytest.mark.parametrize('name, cfg, match', [
    ('BAM', dict(fusion='add'), "fusion='mul'"),
    ('SCSE', dict(combination='add'), "combination='max'"),
    ('SCSA', dict(down_sample_mode='recombination'), 'undefined method'),
    ('SRM', dict(variance='biased'), "variance='unbiased'"),
    ('GSoP', dict(mode='position'), "mode='channel'"),
    ('SpatialTransformer', dict(transform='attention'), "transform='affine'"),
    ('PyramidSplitAttention', dict(concat_order='paper'), "concat_order='official'"),
    ('BiLevelRoutingAttention', dict(size_policy='mask'), "size_policy='zero_pad'"),
    ('SASA', dict(projection='grouped'), "projection='full'"),
    ('SAN', dict(relation='patchwise', stride=2), 'stride 1 and dilation 1'),
])
def test_configurations_the_official_code_lacks_are_refused(name, cfg, match):
    with pytest.raises(ValueError, match=match):
        build_pair(reference_of(name), C, **cfg)


@pytest.mark.parametrize('name, shape, reason', [
    ('SimAM', (2, C, 1, 1), 'NaN'),
    ('SRM', (2, C, 1, 1), 'NaN'),
    ('SCSA', (2, C, 5, 9), 'smaller than the 7x7 window'),
    ('ResidualAttentionMask', (2, C, 2, 9), 'ours does not pool every level there'),
    ('ACmix', (2, C, 3, 9), 'kernel_att // 2'),
    ('SAN', (2, C, 3, 9), 'reflect once and read outside the map'),
])
def test_incomparable_shapes_say_why(name, shape, reason):
    peer = reference_of(name)
    ours, _ = build_pair(peer, C)
    assert reason in peer.incomparable(ours, shape)


@pytest.mark.parametrize('peer', REFERENCES, ids=lambda p: p.module)
def test_benchmark_gives_each_reference_a_ratio(peer):
    record = benchmark_peer(peer, (2, C, 8, 8), Timing(repeats=1, warmup=0))
    assert record['status'] == 'ok', record['reason']
    assert record['max_rel_diff'] < 1e-5
    assert record['ratio_forward'] > 0 and record['ratio_forward_backward'] > 0
