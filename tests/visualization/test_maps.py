"""Map extractors: coverage, shapes and ranges, the gates against each module's forward, and
capturing them in a ResNet-18."""
import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import DefaultScope

from cvattn_mm.attention import AttentionModule
from cvattn_mm.attention.catalog import attention_classes
from cvattn_mm.attention.pointwise import pointwise
from cvattn_mm.registry import MODELS
from cvattn_mm.visualization import (
    EXTRACTORS,
    KINDS,
    WITHOUT_MAP,
    AttentionMap,
    capture_attention_maps,
    extract_maps,
    gates,
)
from cvattn_mm.visualization.maps import find_extractor

from ..attention.contract import perturb_parameters

CHANNELS = 32
#: Module arguments for small inputs and for the narrow ResNet-18 (8 to 64 channels).
SMALL = dict(GC=dict(reduction=4), DeformableAttention2D=dict(dim_head=8, heads=4),
             SK=dict(groups=4, min_channels=4))
MAPPED = sorted(cls.__name__ for cls in EXTRACTORS)


def build(name, **kwargs):
    torch.manual_seed(0)
    module = MODELS.build(dict(type=name, in_channels=CHANNELS, **{**SMALL.get(name, {}),
                                                                   **kwargs}))
    return perturb_parameters(module, scale=0.5).eval()


def make_input(n=2, size=(8, 10)):
    return torch.randn(n, CHANNELS, *size, generator=torch.Generator().manual_seed(1))


def test_every_registered_module_is_mapped_or_listed():
    mapped = {cls.__name__ for cls in EXTRACTORS}
    listed = {name for name, _ in WITHOUT_MAP}
    assert not mapped & listed
    assert mapped | listed == set(attention_classes())
    assert all(reason for _, reason in WITHOUT_MAP)


@pytest.mark.parametrize('name', MAPPED)
def test_maps_shapes_and_ranges(name):
    module = build(name)
    x = make_input()
    maps = extract_maps(module, x)
    assert maps, f'{name}: no map'
    n, c, h, w = x.shape
    for key, m in maps.items():
        assert isinstance(m, AttentionMap) and m.kind in KINDS and m.title, key
        assert m.values.dtype == torch.float32 and torch.isfinite(m.values).all(), key
        if m.kind == 'channel':
            assert m.values.shape == (n, c), key
        if m.kind == 'spatial':
            assert m.values.shape == (n, h, w), key
        if m.kind in ('channel', 'spatial'):
            assert m.values.min() >= 0 and m.values.max() <= 1, key
        if m.kind == 'weights':
            assert m.values.shape[0] == n and m.values.min() >= 0, key
            assert torch.allclose(m.values.sum((1, 2)), torch.ones(n), atol=1e-5), key
        if m.kind == 'points':
            assert m.values.shape[0] == n and m.values.shape[2] == 2, key
            assert m.origins.shape == m.values.shape and m.origins.abs().max() < 1, key


def test_extraction_keeps_training_mode_and_statistics():
    module = build('BAM').train()
    module.spatial_norms[0].eval()
    stats = {k: v.clone() for k, v in module.state_dict().items()}
    extract_maps(module, make_input())
    assert module.training and module.channel_norm.training
    assert not module.spatial_norms[0].training
    assert all(torch.equal(v, stats[k]) for k, v in module.state_dict().items())


def test_subclass_uses_the_extractor_of_its_base():
    se = MODELS.get('SE')
    sub = type('MySE', (se, ), {'_abbr_': 'my_se'})
    assert find_extractor(sub(CHANNELS)) is EXTRACTORS[se]
    assert find_extractor(torch.nn.ReLU()) is None


def test_bad_map_is_rejected():
    with pytest.raises(ValueError, match='kind'):
        AttentionMap('histogram', torch.zeros(1, 4), 'x')
    with pytest.raises(ValueError, match='shape'):
        AttentionMap('spatial', torch.zeros(1, 4), 'x')


def _gc(m, x):
    parts = gates.gc_parts(m, x)
    return x * parts.get('mul_gate', 1) + parts.get('add', 0)


def _simplified_non_local(m, x):
    weights = gates.simplified_non_local_weights(m, x)  # (N, 1, HW)
    context = (weights * x.flatten(2)).sum(-1)
    return x + pointwise(m.value_conv, context)[:, :, None, None]


def _cbam(m, x):
    out = x
    for gate in gates.cbam_gates(m, x).values():
        out = out * gate
    return out


def _bam(m, x):
    mc, ms = gates.bam_logits(m, x)
    return x * (1 + torch.sigmoid(mc + ms if m.fusion == 'add' else mc * ms))


def _scse(m, x):
    g_c, g_s = gates.scse_gates(m, x)
    return {'max': torch.maximum(x * g_c, x * g_s), 'add': x * (g_c + g_s),
            'mul': x * g_c * g_s}[m.combination]


def _coord_attention(m, x):
    a_h, a_w = gates.coord_attention_gates(m, x)
    return x * a_h * a_w


def _scsa(m, x):
    a_h, a_w, a_c = gates.scsa_gates(m, x)
    return x * a_h * a_w * a_c


def _triplet(m, x):
    g = gates.triplet_gates(m, x)
    return x * (sum(g.values()) / len(g))


def _non_local(m, x):
    n, c, h, w = x.shape
    d = m.inter_channels
    attn, keys = gates.non_local_attention(m, x)
    assert attn.shape == (n, h * w, keys[0] * keys[1])
    g = m._pool(m.theta_phi_g(x).flatten(2).transpose(1, 2)[..., -d:], h, w)
    z = m.conv_out(torch.bmm(attn, g).transpose(1, 2).reshape(n, d, h, w))
    return x + (z if m.norm is None else m.norm(z))


def _pooled(m, x):
    n, c, h, w = x.shape
    attn, (ph, pw) = gates.pooled_self_attention(m, x)
    p = x if m.ds == 1 else F.avg_pool2d(x, m.ds, m.ds, ceil_mode=True,
                                         count_include_pad=False)
    v = m.qkv(p)[:, 2 * m.key_channels:].flatten(2).transpose(1, 2)
    o = (m.gamma * torch.bmm(attn, v)).transpose(1, 2).reshape(n, c, ph, pw)
    o = o.repeat_interleave(m.ds, 2).repeat_interleave(m.ds, 3)[:, :, :h, :w]
    return x + o


def _external(m, x):
    a = gates.external_attention_softmax(m, x)
    y = m.conv2(m.memory_value(a / (1e-9 + a.sum(1, keepdim=True))).view(x.shape))
    return (x + (y if m.norm is None else m.norm(y))).relu()


def _multi_head_external(m, x):
    n, c, h, w = x.shape
    a = gates.multi_head_external_attention_softmax(m, x).flatten(0, 1)
    a = a / (1e-9 + a.sum(1, keepdim=True))
    y = F.conv1d(a, m.memory_value.weight[:, :, None], m.memory_value.bias)
    y = y.reshape(n, m.coef * c, h, w)
    return F.conv2d(y, m.proj.weight[:, :, None, None], m.proj.bias)


def _sk(m, x):
    weights = gates.sk_weights(m, x)
    assert torch.allclose(weights.sum(1), torch.ones(weights.shape[::2]), atol=1e-5)
    return sum(weights[:, i, :, None, None] * branch(x) for i, branch in enumerate(m.branches))


#: The output of each module rebuilt from the gates and weights of ``gates``.
REBUILT = {
    'SE': lambda m, x: x * gates.se_gate(m, x),
    'ECA': lambda m, x: x * gates.eca_gate(m, x),
    'GC': _gc,
    'SimplifiedNonLocal': _simplified_non_local,
    'CBAM': _cbam,
    'BAM': _bam,
    'SCSE': _scse,
    'CoordAttention': _coord_attention,
    'TripletAttention': _triplet,
    'SimAM': lambda m, x: x * gates.simam_gate(m, x),
    'SCSA': _scsa,
    'NonLocalBlock': _non_local,
    'PooledSelfAttention': _pooled,
    'ExternalAttention': _external,
    'MultiHeadExternalAttention': _multi_head_external,
    'SK': _sk,
}
VARIANTS = [(name, {}) for name in REBUILT] + [
    ('GC', dict(fusions=('add', 'mul'))), ('GC', dict(pooling='avg', fusions='mul')),
    ('CBAM', dict(use_channel=False)), ('CBAM', dict(use_spatial=False)),
    ('BAM', dict(fusion='mul')), ('SCSE', dict(combination='add')),
    ('SCSE', dict(combination='mul')), ('TripletAttention', dict(no_spatial=True)),
    ('SCSA', dict(gate_layer='softmax', head_num=2, qkv_bias=True, window_size=-1)),
    ('SCSA', dict(down_sample_mode='recombination', window_size=3)),
    ('NonLocalBlock', dict(mode='gaussian', sub_sample=True)),
    ('NonLocalBlock', dict(mode='dot_product', norm_cfg=None)),
    ('NonLocalBlock', dict(mode='concatenation', sub_sample=True)),
    ('PooledSelfAttention', dict(ds=1)), ('PooledSelfAttention', dict(ds=3)),
    ('ExternalAttention', dict(norm_cfg=None)), ('SK', dict(num_branches=3)),
]


@pytest.mark.parametrize('name,kwargs', VARIANTS, ids=[f'{n}-{k}' for n, k in VARIANTS])
def test_gates_rebuild_the_forward(name, kwargs):
    module = build(name, **kwargs)
    x = make_input(size=(7, 10))
    with torch.no_grad():
        expected = module(x)
        rebuilt = REBUILT[name](module, x)
        maps = extract_maps(module, x)
    err = (rebuilt - expected).abs().max().item()
    assert err <= 1e-4 * (expected.abs().max().item() + 1e-6), f'{name} {kwargs}: {err:.3g}'
    assert maps


def test_every_gate_module_is_rebuilt():
    assert set(REBUILT) == set(MAPPED) - {'DeformableAttention2D'}


@pytest.mark.parametrize('mode', ['dot_product', 'concatenation'])
def test_non_softmax_non_local_weights(mode):
    maps = extract_maps(build('NonLocalBlock', mode=mode, sub_sample=True), make_input())
    assert maps['centre_query'].values.shape == (2, 4, 5)
    assert 'pairwise weight' in maps['centre_query'].title


def test_deformable_points_are_the_module_sampling_locations():
    module = build('DeformableAttention2D', downsample_factor=2, offset_kernel_size=3)
    x = make_input(size=(8, 10))
    m = extract_maps(module, x)['sampling_points']
    with torch.no_grad():
        locations = module.sampling_locations(module.to_q(x))  # (N * G, 4, 5, 2)
    assert torch.equal(m.values, locations.reshape(2, -1, 2))
    bound = 2 * module.offset_scale / torch.tensor([5., 4.])
    assert ((m.values - m.origins).abs() <= bound + 1e-6).all()
    assert torch.equal(m.origins[0, :20], m.origins[0, 20:40])  # one grid per group


def test_channel_and_spatial_maps_match_the_gates():
    module = build('CBAM')
    x = make_input()
    maps = extract_maps(module, x)
    with torch.no_grad():
        g = gates.cbam_gates(module, x)
    assert torch.equal(maps['channel_gate'].values, g['channel'].flatten(1))
    assert torch.equal(maps['spatial_gate'].values, g['spatial'][:, 0])


def resnet18(name, **kwargs):
    insertion = dict(attention=dict(type=name, **SMALL.get(name, {})), at='paper')
    if name == 'SK':  # no paper position in BasicBlocks: after their second norm
        insertion['at'] = 'layer*.*.bn2'
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(dict(type='InsertAttention', insertions=[insertion], module=dict(
            type='mmpretrain.ResNet', depth=18, base_channels=16, stem_channels=8,
            out_indices=(3, ))))


@pytest.mark.parametrize('name', MAPPED)
def test_capture_in_resnet18(name):
    model = resnet18(name)
    attention = {p: m for p, m in model.named_modules() if isinstance(m, AttentionModule)}
    x = torch.randn(1, 3, 32, 32)
    model.eval()  # mmpretrain's ResNet.train() returns None: no chaining
    with torch.no_grad():
        expected = model(x)[0]
    model.train()
    model.layer1.eval()
    captured = capture_attention_maps(model, x)
    assert [c.path for c in captured] == list(attention)
    assert all(c.type_name == name and c.maps for c in captured)
    for c in captured:
        n, ch, h, w = c.input_shape
        assert n == 1 and ch == attention[c.path].in_channels
        for m in c.maps.values():
            assert m.values.shape[0] == 1
            if m.kind == 'spatial':
                assert m.values.shape == (1, h, w)
    assert model.training and not model.layer1.training and model.layer2.training
    assert not any(m._forward_pre_hooks for m in attention.values())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x)[0], expected)


def test_capture_finds_plugins_and_runs_a_given_callable():
    from mmdet.models.backbones.resnet import Bottleneck

    with DefaultScope.overwrite_default_scope('mmdet'):
        block = Bottleneck(32, 8, plugins=[dict(cfg=dict(type='SimAM'), position='after_conv2')])
    outer = torch.nn.ModuleDict(dict(block=block))
    captured = capture_attention_maps(outer, torch.randn(1, 32, 6, 6), outer['block'])
    assert [(c.path, c.type_name) for c in captured] == [('block.simam', 'SimAM')]
    assert set(captured[0].maps) == {'gate', 'channel_mean'}
