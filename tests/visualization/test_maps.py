"""Attention maps: every module computes them, their shapes and ranges, capturing them in a
ResNet-18. (Each module's own tests rebuild its forward from the methods its maps use.)"""
import pytest
import torch
from mmengine.registry import DefaultScope

from cvattn_mm.attention import AttentionModule, ConvReplacement
from cvattn_mm.attention.catalog import attention_classes
from cvattn_mm.registry import MODELS
from cvattn_mm.visualization import KINDS, AttentionMap, capture_attention_maps, extract_maps

from ..attention.contract import perturb_parameters

CHANNELS = 32
#: Module arguments for small inputs and for the narrow ResNet-18 (8 to 64 channels).
SMALL = dict(GC=dict(reduction=4), DeformableAttention2D=dict(dim_head=8, heads=4),
             SK=dict(groups=4, min_channels=4),
             EfficientMultiScaleAttention=dict(factor=4),
             PyramidSplitAttention=dict(conv_groups=(1, 2, 2, 4), reduction=4))
MAPPED = sorted(attention_classes())


def build(name, **kwargs):
    torch.manual_seed(0)
    module = MODELS.build(dict(type=name, in_channels=CHANNELS, **{**SMALL.get(name, {}),
                                                                   **kwargs}))
    return perturb_parameters(module, scale=0.5).eval()


def make_input(n=2, size=(8, 10)):
    return torch.randn(n, CHANNELS, *size, generator=torch.Generator().manual_seed(1))


def test_every_registered_module_computes_its_maps():
    base = AttentionModule.attention_maps
    missing = [name for name, cls in attention_classes().items() if cls.attention_maps is base]
    assert not missing, f'modules without attention_maps: {missing}'


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


def test_subclass_inherits_the_maps_of_its_base():
    se = MODELS.get('SE')
    sub = type('MySE', (se, ), {'_abbr_': 'my_se'})(CHANNELS)
    assert set(extract_maps(sub, make_input())) == {'channel_gate'}
    assert extract_maps(torch.nn.ReLU(), make_input()) == {}


def test_bad_map_is_rejected():
    with pytest.raises(ValueError, match='kind'):
        AttentionMap('histogram', torch.zeros(1, 4), 'x')
    with pytest.raises(ValueError, match='shape'):
        AttentionMap('spatial', torch.zeros(1, 4), 'x')


def resnet18_insertion(name):
    """The insertion of ``name`` in a ResNet-18: at its paper position; SK after the second
    norm and the conv replacements in place of every ``conv2`` (BasicBlocks have neither a
    Bottleneck's 3x3 conv nor a paper preset for replacements)."""
    insertion = dict(attention=dict(type=name, **SMALL.get(name, {})), at='paper')
    if name == 'SK':  # no paper position in BasicBlocks: after their second norm
        insertion['at'] = 'layer*.*.bn2'
    if issubclass(attention_classes()[name], ConvReplacement):
        del insertion['at']
        insertion['replace'] = 'layer*.*.conv2'
    return insertion


def resnet18(name, **kwargs):
    insertion = resnet18_insertion(name)
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
