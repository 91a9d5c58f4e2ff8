"""Paper positions on the CSP backbones and PAFPN necks of mmyolo and mmdet
(``presets.csp_places``, ``presets.yolo_neck_places``): places, identity at initialisation,
state-dict keys, replacements, refusals, and a YOLOv8 detector."""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.hub import get_config
from mmengine.registry import DefaultScope

import cvattn_mm  # noqa: F401
from cvattn_mm.attention.base import PAPER_POSITIONS
from cvattn_mm.insertion import insert_attention
from cvattn_mm.insertion.insert import default_example_inputs
from cvattn_mm.insertion.presets import csp_places, yolo_neck_places
from cvattn_mm.registry import MODELS

from ..attention.plain_conv_replacement import AbsorbingConvReplacement, PlainConvReplacement

SMALL = dict(deepen_factor=0.33, widen_factor=0.25)
IMAGE = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))

#: backbone config, scope, bottlenecks per stage at deepen_factor 0.33, convs outside the
#: bottlenecks (stem, 4 downsampling, the CSP layers' 2 or 3, SPP(F)'s 2), convs per block
BACKBONES = {
    'YOLOv5CSPDarknet': (dict(type='YOLOv5CSPDarknet', **SMALL), 'mmyolo', (1, 2, 3, 1),
                         1 + 4 + 4 * 3 + 2, 2),
    'YOLOv8CSPDarknet': (dict(type='YOLOv8CSPDarknet', **SMALL), 'mmyolo', (1, 2, 2, 1),
                         1 + 4 + 4 * 2 + 2, 2),
    'YOLOXCSPDarknet': (dict(type='YOLOXCSPDarknet', **SMALL), 'mmyolo', (1, 3, 3, 1),
                        1 + 4 + 4 * 3 + 2, 2),
    'CSPNeXt': (dict(type='CSPNeXt', **SMALL), 'mmyolo', (1, 2, 2, 1), 3 + 4 + 4 * 3 + 2, 3),
    'mmdet CSPDarknet': (dict(type='CSPDarknet', **SMALL), 'mmdet', (1, 3, 3, 1),
                         1 + 4 + 4 * 3 + 2, 2),
}

#: Rounds of insertions, each one insert_attention call: the module and the position its
#: paper_position is set to (None: its own; SE, CBAM and CoordAttention: residual_end, SimAM:
#: before_mid_norm, ResidualAttentionMask: around_stage)
ROUNDS = [
    dict(SE=None, CBAM=None, CoordAttention=None, SimAM=None, ResidualAttentionMask=None),
    dict(SE='after_mid_norm', CBAM='residual_end_c3_c5',
         CoordAttention='stage_last_residual_end', SimAM='backbone_input'),  # the image
    dict(SE='late_stages', CBAM='between_stages', CoordAttention='after_mid_conv',
         SimAM='before_every_conv'),  # the image too: 3 channels, SimAM has no reduction
    dict(CoordAttention='after_every_stage'),
]

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def build(cfg, scope):
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(cfg)


def evaluated(model):
    """``model.eval()``; the backbones' train() returns None."""
    model.eval()
    return model


def plain_and_copy(cfg, scope):
    torch.manual_seed(0)
    plain = evaluated(build(cfg, scope))
    return plain, copy.deepcopy(plain)


def assert_same_outputs(model, plain, *inputs):
    model.eval()
    with torch.no_grad():
        outs, refs = model(*inputs), plain(*inputs)
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        assert torch.equal(out, ref)


def assert_host_keys_kept(model, plain):
    """The plain model's keys are all there, the new ones are the attention's, and a plain
    checkpoint loads with only those reported missing."""
    keys, plain_keys = set(model.state_dict()), set(plain.state_dict())
    assert plain_keys <= keys
    assert keys - plain_keys and all(k.startswith('attention_sites.')
                                     for k in keys - plain_keys)
    result = model.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert {k for k in result.missing_keys if not k.endswith('num_batches_tracked')} == {
        k for k in keys - plain_keys if not k.endswith('num_batches_tracked')}


def attentions_at(model, path):
    site = model.attention_sites[path.replace('.', '-')]
    return [type(a.attention).__name__ for a in site.attentions.values()]


def test_yolov5_places_exactly():
    model = build(BACKBONES['YOLOv5CSPDarknet'][0], 'mmyolo')
    blocks = [f'stage{s}.1.blocks.{i}' for s, n in zip((1, 2, 3, 4), (1, 2, 3, 1))
              for i in range(n)]
    expected = {
        'residual_end': [f'{b}.conv2' for b in blocks],
        'residual_end_c3_c5': [f'{b}.conv2' for b in blocks[1:]],
        'stage_last_residual_end': ['stage1.1.blocks.0.conv2', 'stage2.1.blocks.1.conv2',
                                    'stage3.1.blocks.2.conv2', 'stage4.1.blocks.0.conv2'],
        'before_mid_norm': [f'{b}.conv2.conv' for b in blocks],
        'after_mid_norm': [f'{b}.conv2.bn' for b in blocks],
        'after_mid_conv': [f'{b}.conv2' for b in blocks],
        'replaces_mid_conv': None,  # SUBSTITUTES: an explicit pattern
        'replaces_block_convs': [f'{b}.conv{k}.conv' for b in blocks for k in (1, 2)],
        'between_stages': ['stage1.1', 'stage2.1', 'stage3.1'],
        'late_stages': ['stage3.1', 'stage4.1'],  # the CSP layer, before the SPPF
        'after_every_stage': ['stage1.1', 'stage2.1', 'stage3.1', 'stage4.1'],
        'around_stage': ['stage1.1~stage1.1', 'stage2.1~stage2.1', 'stage3.1~stage3.1'],
        'backbone_input': ['stem:input'],
    }
    for position, places in expected.items():
        assert csp_places(model, position) == places, position
    every_conv = csp_places(model, 'before_every_conv')
    convs = [p for p, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert every_conv == [f'{p}:input' for p in convs] and len(convs) == 33
    assert every_conv[:3] == ['stem.conv:input', 'stage1.0.conv:input',
                              'stage1.1.main_conv.conv:input']
    assert every_conv[-2:] == ['stage4.2.conv1.conv:input', 'stage4.2.conv2.conv:input']


def test_yolox_and_cspnext_stage_places_follow_the_spp():
    """YOLOX and CSPNeXt put the SPP before the last CSP layer; CSPNeXt's mid conv is the 5x5
    depthwise conv, and its channel attention's fc is not a feature-map conv."""
    yolox = build(BACKBONES['YOLOXCSPDarknet'][0], 'mmyolo')
    assert csp_places(yolox, 'late_stages') == ['stage3.1', 'stage4.2']
    assert csp_places(yolox, 'stage_last_residual_end')[-1] == 'stage4.2.blocks.0.conv2'
    assert csp_places(yolox, 'backbone_input') == ['stem:input']  # Focus slices the image
    cspnext = build(BACKBONES['CSPNeXt'][0], 'mmyolo')
    assert csp_places(cspnext, 'after_every_stage') == ['stage1.1', 'stage2.1', 'stage3.1',
                                                        'stage4.2']
    assert csp_places(cspnext, 'before_mid_norm')[0] == \
        'stage1.1.blocks.0.conv2.depthwise_conv.conv'
    assert cspnext.get_submodule('stage1.1.blocks.0.conv2.depthwise_conv.conv').kernel_size \
        == (5, 5)
    assert csp_places(cspnext, 'after_mid_conv')[0] == 'stage1.1.blocks.0.conv2.depthwise_conv'
    assert csp_places(cspnext, 'replaces_block_convs')[:3] == [
        'stage1.1.blocks.0.conv1.conv', 'stage1.1.blocks.0.conv2.depthwise_conv.conv',
        'stage1.1.blocks.0.conv2.pointwise_conv.conv']
    convs = [p for p, m in cspnext.named_modules() if isinstance(m, nn.Conv2d)]
    assert [p for p in convs if p.endswith('attention.fc')] == [
        f'stage{s}.{1 if s < 4 else 2}.attention.fc' for s in (1, 2, 3, 4)]
    assert csp_places(cspnext, 'before_every_conv') == [
        f'{p}:input' for p in convs if not p.endswith('attention.fc')]


@pytest.mark.parametrize('name', list(BACKBONES))
def test_every_position_keeps_the_plain_output(name, monkeypatch):
    """SE, CBAM, CoordAttention and SimAM at their paper positions, then at every other
    position by a monkeypatched paper_position, RAN around the stages: all with identity_init
    into one model, which computes what the plain backbone computes."""
    cfg, scope, depths, other_convs, block_convs = BACKBONES[name]
    plain, model = plain_and_copy(cfg, scope)
    blocks = sum(depths)
    counts = dict(residual_end=blocks, residual_end_c3_c5=blocks - depths[0],
                  stage_last_residual_end=4, before_mid_norm=blocks, after_mid_conv=blocks,
                  after_mid_norm=blocks, between_stages=3, late_stages=2,
                  after_every_stage=4, backbone_input=1,
                  before_every_conv=other_convs + blocks * block_convs, around_stage=3)
    with DefaultScope.overwrite_default_scope(scope):
        for modules in ROUNDS:
            insertions, places = [], {}
            for attention, position in modules.items():
                cls = MODELS.get(attention)
                if position is not None:
                    monkeypatch.setattr(cls, 'paper_position', position)
                places[attention] = csp_places(model, cls.paper_position)
                assert len(places[attention]) == counts[cls.paper_position], attention
                options = dict(levels=1) if attention == 'ResidualAttentionMask' else {}
                insertions.append(dict(attention=dict(type=attention, **options),
                                       at='paper', identity_init=True))
            insert_attention(model, insertions, example_inputs=(IMAGE, ))
            for attention, paths in places.items():
                assert all(attention in attentions_at(model, p) for p in paths), attention
    assert_same_outputs(model, plain, IMAGE)
    assert_host_keys_kept(model, plain)
    # the attention is live: with the gains set, the output changes
    for site in model.attention_sites.values():
        for blend in site.attentions.values():
            nn.init.constant_(blend.gain, 1.0)
    with torch.no_grad():
        assert not torch.allclose(model(IMAGE)[-1], plain(IMAGE)[-1])


@pytest.fixture
def conv_doubles():
    for cls in (PlainConvReplacement, AbsorbingConvReplacement):
        MODELS.register_module(module=cls)
    yield
    for cls in (PlainConvReplacement, AbsorbingConvReplacement):
        MODELS.module_dict.pop(cls.__name__)


@pytest.mark.parametrize('name,mid', [('YOLOv8CSPDarknet', 'conv2'), ('CSPNeXt', 'conv1'),
                                      ('mmdet CSPDarknet', 'conv2')])
def test_replacing_positions(name, mid, conv_doubles, monkeypatch):
    """replaces_mid_conv is left to an explicit replace= pattern, which the error names (the
    conv sits in a ConvModule whose SiLU would follow an absorbing module's ReLU; CSPNeXt's
    mid conv is a depthwise 5x5); with that pattern a module that keeps the host's norm
    computes the plain model at identity init. replaces_block_convs takes the conv of every
    ConvModule of the bottlenecks, CSPNeXt's depthwise one included."""
    cfg, scope, depths, _, block_convs = BACKBONES[name]
    plain = evaluated(build(cfg, scope))
    pattern = f'stage*.*.blocks.*.{mid}.conv'
    why = '5x5 depthwise conv.*' if name == 'CSPNeXt' else ''
    with pytest.raises(ValueError, match=rf"position 'replaces_mid_conv'.*not defined for "
                       rf"{cfg['type']}.*'{pattern.replace('*', '[*]')}'.*{why}SKConv and CoT "
                       "absorb the norm.*SiLU"):
        build(dict(type='InsertAttention', module=cfg, insertions=[dict(
            attention='AbsorbingConvReplacement', replace='paper')]), scope)
    model = build(dict(type='InsertAttention', module=cfg, insertions=[dict(
        attention='PlainConvReplacement', replace=pattern, identity_init=True)]), scope)
    model.load_state_dict(plain.state_dict(), strict=False)
    replaced = [p for p, m in model.named_modules() if isinstance(m, PlainConvReplacement)]
    assert len(replaced) == sum(depths) and all(p.endswith(f'.{mid}.conv') for p in replaced)
    assert_same_outputs(model, plain, IMAGE)

    monkeypatch.setattr(PlainConvReplacement, 'paper_position', 'replaces_block_convs')
    model = build(dict(type='InsertAttention', module=cfg, insertions=[dict(
        attention='PlainConvReplacement', replace='paper', init_from_conv=True)]), scope)
    model.load_state_dict(plain.state_dict(), strict=False)
    replaced = {p: m for p, m in model.named_modules() if isinstance(m, PlainConvReplacement)}
    assert list(replaced) == csp_places(plain, 'replaces_block_convs')
    assert len(replaced) == sum(depths) * block_convs
    assert {m.groups > 1 for m in replaced.values()} == ({True, False} if name == 'CSPNeXt'
                                                         else {False})
    assert_same_outputs(model, plain, IMAGE)


def test_undefined_positions_explain_themselves():
    """mmdet's CSPDarknet with use_depthwise=True (YOLOX-nano) has a depthwise mid conv; a
    neck has no stages to wrap and no residual branch to replace convs in."""
    nano = build(dict(type='CSPDarknet', use_depthwise=True, **SMALL), 'mmdet')
    assert csp_places(nano, 'before_mid_norm')[0] == \
        'stage1.1.blocks.0.conv2.depthwise_conv.conv'
    assert csp_places(nano, 'after_mid_conv')[0] == 'stage1.1.blocks.0.conv2.depthwise_conv'
    assert csp_places(nano, 'residual_end')[0] == 'stage1.1.blocks.0.conv2'
    assert csp_places(nano, 'replaces_mid_conv') is None
    assert len(csp_places(nano, 'before_every_conv')) == len(
        [m for m in nano.modules() if isinstance(m, nn.Conv2d)])
    neck = build(NECKS['YOLOv8PAFPN'][0], 'mmyolo')
    for position in ('around_stage', 'replaces_mid_conv', 'replaces_block_convs'):
        assert yolo_neck_places(neck, position) is None
    with pytest.raises(ValueError, match="ResidualAttentionMask's paper position "
                                         "'around_stage'.*is not defined for YOLOv8PAFPN"):
        insert_attention(neck, [dict(attention='ResidualAttentionMask')],
                         example_inputs=(neck_inputs(NECKS['YOLOv8PAFPN'][2]), ))


#: neck config, scope, channels of the inputs at widen_factor 0.25, output module list
NECKS = {
    'YOLOv5PAFPN': (dict(type='YOLOv5PAFPN', in_channels=[256, 512, 1024],
                         out_channels=[256, 512, 1024], **SMALL), 'mmyolo', (64, 128, 256),
                    'out_layers'),
    'YOLOv8PAFPN': (dict(type='YOLOv8PAFPN', in_channels=[256, 512, 1024],
                         out_channels=[256, 512, 1024], **SMALL), 'mmyolo', (64, 128, 256),
                    'out_layers'),
    'YOLOXPAFPN': (dict(type='YOLOXPAFPN', in_channels=[256, 512, 1024], out_channels=64,
                        **SMALL), 'mmyolo', (64, 128, 256), 'out_layers'),
    'CSPNeXtPAFPN': (dict(type='CSPNeXtPAFPN', in_channels=[256, 512, 1024], out_channels=64,
                          **SMALL), 'mmyolo', (64, 128, 256), 'out_layers'),
    'mmdet CSPNeXtPAFPN': (dict(type='CSPNeXtPAFPN', in_channels=[64, 128, 256],
                                out_channels=64, num_csp_blocks=1), 'mmdet', (64, 128, 256),
                           'out_convs'),
}


def neck_inputs(channels):
    """The backbone's maps of a 64x64 image at strides 8, 16, 32."""
    torch.manual_seed(1)
    return tuple(torch.randn(1, c, 8 >> i, 8 >> i) for i, c in enumerate(channels))


@pytest.mark.parametrize('name', list(NECKS))
def test_necks_take_attention_on_every_output_level(name, monkeypatch):
    """As FPN: every module's position maps to the output levels, residual_end included (not
    the bottlenecks of the neck's CSP layers)."""
    cfg, scope, channels, outputs = NECKS[name]
    plain, model = plain_and_copy(cfg, scope)
    inputs = neck_inputs(channels)
    levels = [f'{outputs}.{i}' for i in range(3)]
    for position in PAPER_POSITIONS:
        assert yolo_neck_places(model, position) == (
            None if position in ('around_stage', 'replaces_mid_conv', 'replaces_block_convs')
            else levels), position
    monkeypatch.setattr(MODELS.get('CBAM'), 'paper_position', 'late_stages')
    with DefaultScope.overwrite_default_scope(scope):
        insert_attention(model, [dict(attention=a, identity_init=True)
                                 for a in ('SE', 'CBAM', 'SimAM', 'CoordAttention')],
                         example_inputs=(inputs, ))
    assert [s.path for s in model.attention_sites.values()] == levels
    assert all(attentions_at(model, p) == ['SE', 'CBAM', 'SimAM', 'CoordAttention']
               for p in levels)
    assert_same_outputs(model, plain, inputs)
    assert_host_keys_kept(model, plain)


@pytest.mark.parametrize('name', list(NECKS))
def test_necks_infer_their_input_channels_without_example_inputs(name):
    """mmyolo's YOLOv5PAFPN and YOLOv8PAFPN keep the unwidened in_channels: the default probe
    widens them as their layers do, so no example_inputs are needed."""
    cfg, scope, channels, outputs = NECKS[name]
    neck = build(cfg, scope)
    assert [x.shape[1] for x in default_example_inputs(neck)[0]] == list(channels)
    with torch.no_grad():
        levels = [y.shape[1] for y in evaluated(neck)(neck_inputs(channels))]
    with DefaultScope.overwrite_default_scope(scope):
        insert_attention(neck, [dict(attention='SE')])
    assert [s.channels for s in neck.attention_sites.values()] == levels


def test_yolov8_detector_with_attention_in_its_backbone():
    """mmyolo's YOLOv8-n config with its backbone wrapped in InsertAttention: builds, runs,
    and computes the plain detector's outputs at identity init."""
    from mmengine.registry import init_default_scope

    cfg = get_config('mmyolo::yolov8/yolov8_n_syncbn_fast_8xb16-500e_coco.py')
    init_default_scope('mmyolo')
    torch.manual_seed(0)
    plain = evaluated(MODELS.build(cfg.model))
    cfg.model.backbone = dict(type='InsertAttention', module=cfg.model.backbone,
                              insertions=[dict(attention='CBAM', at='paper', identity_init=True),
                                          dict(attention='SimAM', identity_init=True)])
    detector = MODELS.build(cfg.model)
    sites = detector.backbone.attention_sites
    assert len(sites) == 2 * 6 and 'stage2-1-blocks-1-conv2' in sites
    assert 'stage2-1-blocks-1-conv2-conv' in sites
    result = detector.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith('backbone.attention_sites.') for k in result.missing_keys)
    detector.eval()
    images = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        scores, boxes = detector(images, mode='tensor')
        ref_scores, ref_boxes = plain(images, mode='tensor')
    assert [s.shape for s in scores] == [(1, 80, 8, 8), (1, 80, 4, 4), (1, 80, 2, 2)]
    assert [b.shape[1] for b in boxes] == [4, 4, 4]
    for out, ref in zip(scores + boxes, ref_scores + ref_boxes):
        assert torch.equal(out, ref)
