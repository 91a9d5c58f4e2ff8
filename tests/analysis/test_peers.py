"""Our modules compute the same function as their public peers, with our weights copied."""
import pytest
import torch

import cvattn_mm  # noqa: F401
from cvattn_mm.analysis.complexity import count_flops
from cvattn_mm.analysis.peers import PEERS, build_pair, copy_weights, randomize
from cvattn_mm.analysis.references import peers_of
from cvattn_mm.attention.catalog import attention_classes

C = 64
SIZE = (8, 12)  # non-square; multiples of 4 (DeformableAttention2D's default stride)

#: Non-default variants of the pairs: (peer name, our hyper-parameters, input size).
VARIANTS = [
    ('timm SEModule', dict(reduction=4), (5, 7)),
    ('timm EcaModule', dict(kernel_size=7), (5, 7)),
    ('timm CbamModule', dict(reduction=8, kernel_size=3), (5, 7)),
    ('timm GlobalContext', dict(fusions=('add', 'mul'), reduction=8), (5, 7)),
    ('timm GlobalContext', dict(pooling='avg', fusions='mul'), (5, 7)),
    ('mmcv ContextBlock', dict(fusions=('add', 'mul'), reduction=8), (5, 7)),
    ('mmcv ContextBlock', dict(pooling='avg', fusions='mul'), (5, 7)),
    ('timm SelectiveKernel', dict(num_branches=3, groups=16, min_channels=8), (5, 7)),
    ('timm SelectiveKernel (conv)', dict(stride=2, out_channels=128), (7, 9)),
    ('timm SelectiveKernel (conv)', dict(dilation=2, num_branches=3, groups=16, min_channels=8),
     (5, 7)),
    ('timm NonLocalAttn', dict(reduction=4), (5, 7)),
    ('mmcv NonLocal2d', dict(mode='dot_product'), (5, 7)),
    ('mmcv NonLocal2d', dict(mode='gaussian'), (5, 7)),
    ('mmcv NonLocal2d', dict(mode='concatenation'), (5, 7)),
    ('mmcv NonLocal2d', dict(sub_sample=True), (6, 10)),
    ('mmcv NonLocal2d', dict(mode='gaussian', sub_sample=True, norm_cfg=None), (6, 10)),
    ('timm CoordAttn', dict(reduction=8, min_channels=4), (5, 7)),
    ('mmseg PAM', dict(reduction=4), (5, 7)),
    ('mmseg PAM', dict(), (1, 1)),
    ('mmseg CAM', dict(), (1, 9)),
    ('mmcv CrissCrossAttention', dict(), (1, 1)),
    ('mmcv CrissCrossAttention', dict(), (1, 9)),
    ('mmcv CrissCrossAttention', dict(), (9, 1)),
    ('mmseg EMAModule', dict(num_bases=8, num_stages=1), (5, 7)),
    ('mmseg EMAModule', dict(norm_cfg=None), (1, 1)),
    ('timm GatherExcite', dict(extent=8), (13, 17)),
    ('timm GatherExcite', dict(extent=2), (5, 7)),
    ('timm EfficientLocalAttn', dict(variant='T'), (5, 7)),
    ('timm EfficientLocalAttn', dict(kernel_size=3, act_cfg=dict(type='SiLU'),
                                     norm_cfg=dict(type='GN', num_groups=1, eps=1e-3)), (9, 4)),
    ('timm EfficientLocalAttn', dict(gate_cfg=dict(type='HSigmoid')), (1, 1)),
    ('deformable-attention DeformableAttention2D',
     dict(heads=4, dim_head=16, offset_groups=2, downsample_factor=2, offset_kernel_size=4,
          group_queries=True, group_key_values=True), (6, 10)),
    # Sizes that r does not divide: the same floor(H/r) key grid and offset windows.
    ('deformable-attention DeformableAttention2D', dict(), (14, 14)),
    ('deformable-attention DeformableAttention2D', dict(), (7, 9)),
    ('deformable-attention DeformableAttention2D', dict(downsample_factor=3, offset_kernel_size=5),
     (7, 5)),
]


def peer_named(name):
    return next(p for p in PEERS if p.name == name)


def outputs(peer, size, **cfg):
    ours, theirs = build_pair(peer, C, **cfg)
    randomize(ours)
    copy_weights(peer, ours, theirs)
    ours.eval()
    theirs.eval()
    x = torch.randn(2, C, *size, generator=torch.Generator().manual_seed(1))
    assert peer.incomparable(ours, x.shape) is None
    with torch.no_grad(), peer.equivalence():
        return ours(x), theirs(x)


def assert_same(a, b):
    assert a.shape == b.shape
    scale = b.abs().max().item()
    assert scale > 0.1  # random weights: not a trivially zero output
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize('peer', PEERS, ids=lambda p: p.name)
def test_same_output_with_copied_weights(peer):
    assert peer.available, f'{peer.package} is in requirements/tests.txt'
    assert_same(*outputs(peer, SIZE))


@pytest.mark.parametrize('name, cfg, size', VARIANTS,
                         ids=[f'{n}-{"-".join(map(str, c.values()))}' for n, c, _ in VARIANTS])
def test_same_output_variants(name, cfg, size):
    assert_same(*outputs(peer_named(name), size, **cfg))


def test_peers_cover_the_modules_with_public_implementations():
    assert {p.module for p in PEERS} == {'SE', 'ECA', 'CBAM', 'GC', 'SK', 'NonLocalBlock',
                                         'CoordAttention', 'DeformableAttention2D',
                                         'GatherExcite', 'RCCA', 'DualAttention',
                                         'EMAU', 'ELA', 'LKA', 'SKConv'}
    assert set(p.module for p in PEERS) <= set(attention_classes())
    assert [p.name for p in peers_of('GC')] == ['timm GlobalContext', 'mmcv ContextBlock']
    assert all(p.differences for p in PEERS)


def test_weights_are_copied_not_shared_by_chance():
    """A peer built but not loaded computes something else: the copy is what matters."""
    peer = peer_named('timm CbamModule')
    ours, theirs = build_pair(peer, C)
    randomize(ours)
    ours.eval()
    theirs.eval()
    x = torch.randn(2, C, *SIZE)
    with torch.no_grad():
        assert not torch.allclose(ours(x), theirs(x), atol=1e-3)
        copy_weights(peer, ours, theirs)
        assert_same(ours(x), theirs(x))


def test_deformable_attention_geometry_is_the_documented_difference():
    """Unmodified, lucidrains' reference grid (corner-aligned, axes swapped on non-square
    maps) gives other outputs; with cell centres they are equal (test above)."""
    peer = peer_named('deformable-attention DeformableAttention2D')
    ours, theirs = build_pair(peer, C)
    randomize(ours)
    copy_weights(peer, ours, theirs)
    ours.eval()
    theirs.eval()
    x = torch.randn(2, C, 8, 8)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert (a - b).abs().max() > 1e-2 * b.abs().max()


def test_incomparable_shapes_are_named():
    nl = peer_named('mmcv NonLocal2d')
    ours, _ = build_pair(nl, C, sub_sample=True)
    assert 'floors' in nl.incomparable(ours, (1, C, 7, 8))


@pytest.mark.parametrize('name', ['mmcv NonLocal2d', 'timm NonLocalAttn'])
def test_same_flops_as_the_peer(name):
    """The same math counts the same FLOPs, although ours uses baddbmm and
    scaled_dot_product_attention where the peers use convolutions and matmul."""
    ours, theirs = build_pair(peer_named(name), C)
    x = torch.randn(2, C, *SIZE)
    flops = count_flops(ours, x)
    assert flops == count_flops(theirs, x)
    d, hw = C // 2, SIZE[0] * SIZE[1]
    # theta, phi, g; the two products of the attention; W_z; the affine BN (2 per value)
    assert flops == 2 * (3 * C * d * hw + 2 * hw * hw * d + d * C * hw + 2 * C * hw)


@pytest.mark.parametrize('cfg', [dict(variant='theta', extent=8), dict(extent=3)])
def test_timm_gather_excite_rejects_what_timm_cannot_build(cfg):
    with pytest.raises(ValueError, match='GE-theta-minus, global or with an even extent'):
        build_pair(peer_named('timm GatherExcite'), C, **cfg)


def test_timm_non_local_rejects_other_modes():
    with pytest.raises(ValueError, match='embedded-Gaussian'):
        build_pair(peer_named('timm NonLocalAttn'), C, mode='dot_product')


def test_mmcv_criss_cross_attention_is_one_pass():
    with pytest.raises(ValueError, match='recurrence=1'):
        build_pair(peer_named('mmcv CrissCrossAttention'), C, recurrence=2)
    with pytest.raises(ValueError, match='C // 8'):
        build_pair(peer_named('mmcv CrissCrossAttention'), C, reduction=4)


@pytest.mark.parametrize('cfg', [dict(variant='S'), dict(norm_cfg=dict(type='BN'))])
def test_timm_efficient_local_attn_is_depthwise_with_a_group_norm(cfg):
    with pytest.raises(ValueError, match='group_width=1 and a GN norm_cfg'):
        build_pair(peer_named('timm EfficientLocalAttn'), C, **cfg)
