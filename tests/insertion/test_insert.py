"""Inserting attention into backbones and necks (docs/architecture.md, "Insertion")."""
import copy
import logging
import pickle

import pytest
import torch
import torch.nn as nn
from mmengine.registry import DefaultScope

import cvattn_mm  # noqa: F401
from cvattn_mm.insertion import insert_attention
from cvattn_mm.registry import MODELS


def build(cfg, scope):
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(cfg)


def with_attention(backbone, scope, *insertions):
    return build(dict(type='InsertAttention', module=backbone, insertions=list(insertions)),
                 scope)


def evaluated(model):
    """``model.eval()``; mmpretrain's and mmdet's ResNet.train() return None."""
    model.eval()
    return model


def count(model):
    return sum(p.numel() for p in model.parameters())


def attention_keys(model):
    """The attention entries of the state dict that a plain checkpoint lacks (BatchNorm's
    num_batches_tracked is never reported missing by PyTorch)."""
    return {k for k in model.state_dict()
            if k.startswith('attention_sites.') and not k.endswith('num_batches_tracked')}


R50 = dict(type='ResNet', depth=50, out_indices=(0, 1, 2, 3))
R18 = dict(type='ResNet', depth=18, out_indices=(0, 1, 2, 3))
SWIN_T = dict(type='SwinTransformer', arch='tiny', out_indices=(0, 1, 2, 3), pad_small_map=True)


def classifier(backbone, insertions=None):
    if insertions:
        backbone = dict(type='InsertAttention', module=backbone, insertions=insertions)
    channels = 2048 if backbone.get('depth', backbone.get('module', {}).get('depth')) == 50 \
        else 512
    return build(dict(type='ImageClassifier', backbone=backbone,
                      neck=dict(type='GlobalAveragePooling'),
                      head=dict(type='LinearClsHead', num_classes=1000, in_channels=channels)),
                 'mmpretrain')


def test_se_resnet50_matches_the_paper_count():
    plain = classifier(R50)
    se = classifier(R50, [dict(attention=dict(type='SE'), at='paper')])
    assert round(count(plain) / 1e6, 2) == 25.56
    assert round(count(se) / 1e6, 2) == 28.09
    assert len(se.backbone.attention_sites) == 16


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmdet', 'mmseg'])
def test_state_dict_keys_unchanged_and_outputs(scope):
    plain = evaluated(build(R50, scope))
    model = evaluated(with_attention(R50, scope, dict(attention=dict(type='CBAM'), at='paper')))
    plain_keys, keys = set(plain.state_dict()), set(model.state_dict())
    assert plain_keys <= keys
    assert all(k.startswith('attention_sites.layer') for k in keys - plain_keys)
    result = model.load_state_dict(plain.state_dict(), strict=False)
    assert set(result.missing_keys) == attention_keys(model) and not result.unexpected_keys
    x = torch.randn(1, 3, 64, 96)
    outs, ref = model(x), plain(x)
    assert [o.shape for o in outs] == [r.shape for r in ref]
    assert not torch.allclose(outs[-1], ref[-1])


@pytest.mark.parametrize('backbone,attentions,scope', [
    (R50, ['SE', 'CBAM', 'GC', 'ECA'], 'mmpretrain'),
    (SWIN_T, ['SE', 'CBAM'], 'mmpretrain'),
    (R18, ['SE', 'SCSE'], 'mmdet'),
])
def test_identity_init_computes_the_plain_model(backbone, attentions, scope):
    torch.manual_seed(0)
    plain = evaluated(build(backbone, scope))
    model = with_attention(backbone, scope, *[dict(attention=dict(type=a), identity_init=True)
                                              for a in attentions])
    model.load_state_dict(plain.state_dict(), strict=False)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for out, ref in zip(model(x), plain(x)):
            assert torch.equal(out, ref)
    # the gains learn, and after one step the attention parameters learn too
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        sum(o.square().mean() for o in model(torch.randn(2, 3, 64, 64))).backward()
        optimizer.step()
    site = next(iter(model.attention_sites.values()))
    blend = next(iter(site.attentions.values()))
    assert blend.gain.item() != 0
    grads = [p.grad for p in blend.attention.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_places_per_family():
    r50 = with_attention(R50, 'mmpretrain', dict(attention=dict(type='SE')),
                         dict(attention=dict(type='BAM')), dict(attention=dict(type='SimAM')))
    paths = [s.path for s in r50.attention_sites.values()]
    assert paths[:4] == ['layer1', 'layer1.0.conv2', 'layer1.0.bn3', 'layer1.1.conv2']
    assert sum(p.endswith('bn3') for p in paths) == 16 and 'layer4' not in paths
    gc = with_attention(R50, 'mmdet', dict(attention=dict(type='GC')))
    assert len(gc.attention_sites) == 4 + 6 + 3 and 'layer2-0-bn3' in gc.attention_sites
    r18 = with_attention(R18, 'mmdet', dict(attention=dict(type='CBAM')))
    assert {s.path.split('.')[-1] for s in r18.attention_sites.values()} == {'bn2'}
    assert [s.channels for s in r18.attention_sites.values()][::2] == [64, 128, 256, 512]


def test_input_side_places():
    """SCSA's paper position is after the 3x3 conv's activation: the input of the next conv."""
    r50 = with_attention(R50, 'mmseg', dict(attention=dict(type='SCSA')))
    sites = list(r50.attention_sites.values())
    assert sites[0].path == 'layer1.0.conv3:input' and len(sites) == 16
    assert [s.channels for s in sites][::4] == [64, 128, 256, 256]
    r18 = with_attention(R18, 'mmpretrain', dict(attention=dict(type='SCSA')),
                         dict(attention=dict(type='SE'), at='layer1.0.conv1:input'))
    assert [s.path for s in r18.attention_sites.values()][:3] == [
        'layer1.0.conv1:input', 'layer1.0.conv2:input', 'layer1.1.conv2:input']
    calls = []
    handle = r18.attention_sites['layer1-0-conv2:input'].register_forward_hook(
        lambda *a: calls.append(1))
    assert evaluated(r18)(torch.randn(1, 3, 32, 32))[-1].shape == (1, 512, 1, 1)
    assert calls == [1]
    handle.remove()


def test_swin_tokens_and_convnext_channels_last():
    swin = with_attention(SWIN_T, 'mmpretrain', dict(attention=dict(type='SE')))
    sites = list(swin.attention_sites.values())
    assert len(sites) == 12 and {s.layout for s in sites} == {'tokens'}
    assert [s.channels for s in sites] == [96] * 2 + [192] * 2 + [384] * 6 + [768] * 2
    outs = swin(torch.randn(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == [96, 192, 384, 768]
    convnext = with_attention(dict(type='ConvNeXt', arch='tiny'), 'mmpretrain',
                              dict(attention=dict(type='CBAM')))
    sites = list(convnext.attention_sites.values())
    assert len(sites) == 18 and {s.layout for s in sites} == {'nhwc'}
    assert convnext(torch.randn(1, 3, 64, 64))[-1].shape == (1, 768)


def test_mobilenet_v2_and_fpn():
    mbv2 = with_attention(dict(type='MobileNetV2', widen_factor=1.0), 'mmpretrain',
                          dict(attention=dict(type='CoordAttention')))
    paths = [s.path for s in mbv2.attention_sites.values()]
    assert paths[0] == 'layer1.0.conv.0' and paths[1] == 'layer2.0.conv.1'
    mbv2(torch.randn(1, 3, 64, 64))
    fpn = with_attention(dict(type='FPN', in_channels=[256, 512, 1024, 2048], out_channels=256,
                              num_outs=5), 'mmdet', dict(attention=dict(type='SE')))
    assert [s.path for s in fpn.attention_sites.values()] == [f'fpn_convs.{i}' for i in range(4)]
    feats = [torch.randn(1, c, 32 >> i, 32 >> i) for i, c in enumerate([256, 512, 1024, 2048])]
    assert len(fpn(feats)) == 5


def test_patterns_and_composition():
    model = with_attention(R50, 'mmpretrain',
                           dict(attention=dict(type='SE'), at='layer4.*.bn3'),
                           dict(attention=dict(type='CBAM'), at=['layer4.2.bn3']),
                           dict(attention=dict(type='SE', reduction=8), at='layer4.2.bn3'))
    last = model.attention_sites['layer4-2-bn3']
    assert list(last.attentions) == ['se', 'cbam', 'se_2']
    calls = []
    for m in last.attentions.values():
        m.register_forward_hook(lambda mod, i, o: calls.append(type(mod).__name__))
    model(torch.randn(1, 3, 64, 64))
    assert calls == ['SE', 'CBAM', 'SE']


@pytest.mark.parametrize('insertion,match', [
    (dict(attention=dict(type='SE'), at='layer9.*'), r"matches no module.*closest"),
    (dict(attention=dict(type='SE'), at=5), r"at= must be 'paper'.*closest module paths"),
    (dict(attention=dict(type='SE'), at='layer1.0.downsample'), 'matches no module'),
    (dict(attention=dict(type='SE', in_channels=64)), 'channels are inferred'),
    (dict(attention=dict(type='SE'), where='paper'), 'takes the keys'),
    (dict(attention=dict(type='SK')), r"paper position 'after_mid_norm'.*not defined"),
])
def test_bad_insertions_explain_themselves(insertion, match):
    with pytest.raises(ValueError, match=match):
        with_attention(R18, 'mmpretrain', insertion)


def test_unknown_attention_lists_names():
    with pytest.raises(KeyError, match='closest: CBAM'):
        with_attention(R18, 'mmpretrain', dict(attention=dict(type='CBMA')))


def test_frozen_stages_norm_eval_and_checkpoint_loading(tmp_path):
    from mmengine.runner import load_checkpoint

    backbone = dict(R50, frozen_stages=1, norm_eval=True)
    plain = build(backbone, 'mmdet')
    path = tmp_path / 'plain.pth'
    torch.save(dict(state_dict=plain.state_dict()), path)
    model = with_attention(backbone, 'mmdet', dict(attention=dict(type='SE')))
    model.train()
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.attention_sites.parameters())
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    messages = []
    logger = logging.getLogger('cvattn_mm.test.load')
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger.addHandler(handler)
    load_checkpoint(model, str(path), strict=False, logger=logger)
    text = '\n'.join(messages)
    assert 'missing keys in source state_dict: ' in text
    missing = set(text.split('missing keys in source state_dict: ')[1].split('\n')[0]
                  .split(', '))
    assert missing == attention_keys(model)


def test_pretrained_init_cfg_loads_the_backbone(tmp_path):
    plain = build(R18, 'mmpretrain')
    path = tmp_path / 'r18.pth'
    torch.save(dict(state_dict=plain.state_dict()), path)
    model = with_attention(dict(R18, init_cfg=dict(type='Pretrained', checkpoint=str(path))),
                           'mmpretrain', dict(attention=dict(type='GC')))
    model.init_weights()
    for key, value in plain.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    gc = model.attention_sites['layer2-0-bn2'].attentions['gc']  # GC: stages c3-c5
    x = torch.randn(1, 128, 8, 8)
    assert torch.equal(gc(x), x)  # GC's zero-initialised last conv survives 'Pretrained'


def test_copies_pickles_sync_bn_and_trace():
    model = evaluated(with_attention(dict(R18, norm_cfg=dict(type='SyncBN')), 'mmpretrain',
                                     dict(attention=dict(type='SE'))))
    from mmengine.model import revert_sync_batchnorm

    model = revert_sync_batchnorm(model)  # replaces every host norm layer
    x = torch.randn(1, 3, 64, 64)
    calls = []
    site = model.attention_sites['layer1-0-bn2']
    handle = site.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = model(x)
    assert len(calls) == 1
    handle.remove()
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        with torch.no_grad():
            assert torch.equal(clone(x)[-1], out[-1])
        assert clone.attention_sites['layer1-0-bn2'] is not site
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False, strict=False)
        assert torch.equal(traced(x)[-1], out[-1])


class TinyNet(nn.Module):

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, padding=1))
        self.unused = nn.Conv2d(32, 32, 1)

    def forward(self, x):
        return self.body(x)


def test_plain_pytorch_model():
    net = insert_attention(TinyNet(), [dict(attention=dict(type='ECA'), at=['body.1', 'body.3'])])
    assert [s.channels for s in net.attention_sites.values()] == [16, 32]
    assert net(torch.randn(2, 3, 9, 11)).shape == (2, 32, 9, 11)
    with pytest.raises(ValueError, match='not called by the forward pass.*closest module paths'):
        insert_attention(TinyNet(), [dict(attention=dict(type='SE'), at='unused')])
    with pytest.raises(ValueError, match='bare Sequential'):
        insert_attention(net.body, [dict(attention=dict(type='ECA'), at='1')])


@pytest.mark.parametrize('backbone,scope,sites', [
    (dict(type='SwinTransformer', depths=(2, 2, 2, 2), embed_dims=32, num_heads=(1, 2, 4, 8)),
     'mmdet', 8),
    (dict(type='SwinTransformer', depths=(2, 2, 2, 2), embed_dims=32, num_heads=(1, 2, 4, 8)),
     'mmseg', 8),
    (dict(type='MobileNetV2', out_indices=(7, )), 'mmdet', 17),
    (dict(type='ResNetV1c', depth=50, out_indices=(3, )), 'mmseg', 16),
    (dict(type='ResNeXt', depth=50, groups=32, base_width=4), 'mmdet', 16),
])
def test_presets_of_every_package(backbone, scope, sites):
    model = with_attention(backbone, scope, dict(attention=dict(type='SE'), identity_init=True))
    assert len(model.attention_sites) == sites
    plain = build(backbone, scope)
    model.load_state_dict(plain.state_dict(), strict=False)
    evaluated(model), evaluated(plain)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for out, ref in zip(model(x), plain(x)):
            assert torch.equal(out, ref)


def test_options_set_by_the_parent_reach_the_backbone():
    """mmseg's segmentors put ``pretrained`` into their backbone config."""
    from mmengine.config import ConfigDict

    segmentor = build(ConfigDict(
        type='EncoderDecoder', pretrained='local/resnet18.pth',
        backbone=dict(type='InsertAttention', module=dict(type='ResNetV1c', depth=18),
                      insertions=[dict(attention=dict(type='SE'))]),
        decode_head=dict(type='FCNHead', in_channels=512, channels=16, num_classes=3)), 'mmseg')
    assert segmentor.backbone.init_cfg == dict(type='Pretrained',
                                               checkpoint='local/resnet18.pth')
    assert len(segmentor.backbone.attention_sites) == 8


@pytest.mark.parametrize('backbone,scope,stem', [
    (R50, 'mmpretrain', ['conv1']),
    (dict(type='ResNetV1d', depth=50), 'mmpretrain', ['stem.0.conv', 'stem.1.conv', 'stem.2.conv']),
    (dict(type='ResNetV1c', depth=50), 'mmseg', ['stem.0', 'stem.3', 'stem.6']),
    (R18, 'mmdet', ['conv1']),
])
def test_before_every_conv_and_stage_last_residual_end(backbone, scope, stem):
    """GCT's and GSoP's paper positions: the input of every conv (stem, blocks, shortcut
    projections), and the residual end of each stage's last block only."""
    from cvattn_mm.insertion.presets import resnet_places
    plain = build(backbone, scope)
    every_conv = resnet_places(plain, 'before_every_conv')
    convs = [p for p, m in plain.named_modules() if isinstance(m, nn.Conv2d)]
    assert every_conv == [f'{p}:input' for p in convs]  # all of them, in forward order
    assert every_conv[:len(stem)] == [f'{p}:input' for p in stem]
    bottleneck = backbone.get('depth') == 50
    blocks = [3, 4, 6, 3] if bottleneck else [2, 2, 2, 2]
    assert len(convs) == len(stem) + sum(blocks) * (3 if bottleneck else 2) + (
        4 if bottleneck else 3)
    last = resnet_places(plain, 'stage_last_residual_end')
    norm = 'bn3' if bottleneck else 'bn2'
    assert last == [f'layer{i + 1}.{n - 1}.{norm}' for i, n in enumerate(blocks)]

    model = with_attention(backbone, scope,
                           dict(attention=dict(type='SE', reduction=1), at=every_conv,
                                identity_init=True),
                           dict(attention='SE', at=last, identity_init=True))
    sites = list(model.attention_sites.values())
    assert len(sites) == len(convs) + 4
    assert sites[0].channels == 3  # the image itself, before the stem
    assert all(s.channels == plain.get_submodule(s.path.removesuffix(':input')).in_channels
               for s in sites if s.path.endswith(':input'))
    model.load_state_dict(plain.state_dict(), strict=False)
    evaluated(model), evaluated(plain)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for out, ref in zip(model(x), plain(x)):
            assert torch.equal(out, ref)


def test_new_positions_are_refused_where_undefined():
    from cvattn_mm.insertion.presets import swin_places
    swin = build(dict(type='SwinTransformer', depths=(2, 2, 2, 2), embed_dims=32,
                      num_heads=(1, 2, 4, 8)), 'mmdet')
    assert swin_places(swin, 'before_every_conv') is None
    assert swin_places(swin, 'stage_last_residual_end') is None


def test_after_every_stage_is_between_stages_plus_the_last():
    from cvattn_mm.insertion.presets import (
        convnext_places,
        mobilenet_v2_places,
        resnet_places,
        swin_places,
    )
    cases = [(resnet_places, build(R18, 'mmpretrain')),
             (swin_places, build(dict(type='SwinTransformer', depths=(2, 2, 2, 2), embed_dims=32,
                                      num_heads=(1, 2, 4, 8)), 'mmdet')),
             (convnext_places, build(dict(type='ConvNeXt', arch='atto'), 'mmpretrain')),
             (mobilenet_v2_places, build(dict(type='MobileNetV2'), 'mmdet'))]
    for places, model in cases:
        between = places(model, 'between_stages')
        every = places(model, 'after_every_stage')
        assert every[:-1] == between and every[-1] not in between, type(model).__name__
    assert resnet_places(cases[0][1], 'after_every_stage') == ['layer1', 'layer2', 'layer3',
                                                               'layer4']


def test_backbone_input_and_geometry_warping_modules(monkeypatch):
    """STN's position is the image input, in classifiers only: a detector's or segmentor's
    boxes and masks would need the same warp."""
    from cvattn_mm.attention.channel.se import SE
    from cvattn_mm.insertion.presets import resnet_places
    assert resnet_places(build(R18, 'mmpretrain'), 'backbone_input') == ['conv1:input']
    assert resnet_places(build(dict(type='ResNetV1d', depth=50), 'mmpretrain'),
                         'backbone_input') == ['stem.0.conv:input']
    monkeypatch.setattr(SE, 'warps_geometry', True)
    se = dict(type='SE', reduction=1)
    model = with_attention(R18, 'mmpretrain', dict(attention=se, at=['conv1:input']))
    assert model.attention_sites['conv1:input'].channels == 3
    for scope in ('mmdet', 'mmseg'):
        with pytest.raises(ValueError, match=f'SE warps the features spatially, which a {scope} '
                           'model cannot take.*DeformableAttention2D'):
            with_attention(R18, scope, dict(attention=se, at=['conv1:input']))


def test_attention_types_resolve_to_ours_under_any_default_scope():
    """Another toolbox's registry may hold a class of the same name (mmyolo's CBAM): under its
    default scope a build by name would pick it; insertions always take cvattn_mm's."""
    from mmengine.registry import MODELS as ROOT
    from mmengine.registry import Registry

    from cvattn_mm.attention.channel_spatial.cbam import CBAM
    foreign = Registry('model', parent=ROOT, scope='cvattn_test_foreign')

    class ForeignCBAM(nn.Module):
        def __init__(self, in_channels=None):
            super().__init__()

    foreign.register_module(name='CBAM', module=ForeignCBAM)
    with DefaultScope.overwrite_default_scope('cvattn_test_foreign'):
        assert type(MODELS.build(dict(type='CBAM', in_channels=8))) is ForeignCBAM
        model = insert_attention(TinyNet(), [dict(attention='CBAM', at=['body.3'])],
                                 example_inputs=(torch.randn(1, 3, 8, 8), ))
    assert [type(a) for s in model.attention_sites.values()
            for a in s.attentions.values()] == [CBAM]


def test_own_block_modules_go_to_their_fallback_position_with_a_warning(monkeypatch):
    """A module whose paper uses it only inside its own architecture (VAN, LSKNet, ...):
    at='paper' inserts it at its fallback position and says that it is not the paper's."""
    from mmengine.logging import MMLogger

    from cvattn_mm.attention.channel.se import SE
    monkeypatch.setattr(SE, 'paper_position', 'own_block')
    monkeypatch.setattr(SE, 'fallback_position', 'late_stages')
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        model = with_attention(R18, 'mmpretrain', dict(attention='SE'))
    finally:
        logger.removeHandler(handler)
    assert [s.path for s in model.attention_sites.values()] == ['layer3', 'layer4']
    assert any("SE's paper uses it only inside its own architecture; inserted at its "
               "fallback position 'late_stages'" in r.getMessage() for r in records)
