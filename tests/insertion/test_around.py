"""'around' sites (``at='<first>~<last>'``, paper position ``around_stage``): places, hook
order, identity_init, state-dict keys, checkpoints and errors."""
import copy

import pytest
import torch

import cvattn_mm  # noqa: F401
from cvattn_mm.insertion import insert_attention
from cvattn_mm.insertion.presets import convnext_places, fpn_places, resnet_places, swin_places
from cvattn_mm.insertion.report import insertion_rows

from .test_insert import R18, R50, attention_keys, build, evaluated, with_attention

RAN = dict(type='ResidualAttentionMask', levels=1)


@pytest.mark.parametrize('backbone,scope,places', [
    (R50, 'mmpretrain', ['layer1.1~layer1.2', 'layer2.1~layer2.3', 'layer3.1~layer3.5']),
    (R18, 'mmdet', ['layer1.1~layer1.1', 'layer2.1~layer2.1', 'layer3.1~layer3.1']),
    (dict(type='ResNetV1d', depth=101), 'mmseg',
     ['layer1.1~layer1.2', 'layer2.1~layer2.3', 'layer3.1~layer3.22']),
    (dict(type='ResNeXt', depth=50, groups=32, base_width=4), 'mmdet',
     ['layer1.1~layer1.2', 'layer2.1~layer2.3', 'layer3.1~layer3.5']),
])
def test_around_stage_places(backbone, scope, places):
    """Stages 1 to 3: from the input of block 1 (the output of block 0, the mask input) to
    the output of the last block (T)."""
    assert resnet_places(build(backbone, scope), 'around_stage') == places


def test_around_stage_is_refused_elsewhere():
    swin = build(dict(type='SwinTransformer', depths=(2, 2, 2, 2), embed_dims=32,
                      num_heads=(1, 2, 4, 8)), 'mmdet')
    assert swin_places(swin, 'around_stage') is None
    assert convnext_places(build(dict(type='ConvNeXt', arch='atto'), 'mmpretrain'),
                           'around_stage') is None
    fpn = build(dict(type='FPN', in_channels=[8, 16], out_channels=8, num_outs=2), 'mmdet')
    assert fpn_places(fpn, 'around_stage') is None
    with pytest.raises(ValueError, match="ResidualAttentionMask's paper position "
                                         "'around_stage'.*is not defined for SwinTransformer"):
        insert_attention(swin, [dict(attention='ResidualAttentionMask')])
    with pytest.raises(ValueError, match="paper position 'around_stage'.*not defined for FPN"):
        insert_attention(fpn, [dict(attention='ResidualAttentionMask')],
                         example_inputs=([torch.zeros(1, 8, 16, 16),
                                          torch.zeros(1, 16, 8, 8)], ))


def plain_layer1(model, x):
    """Stem and blocks of layer1 run by their own forwards (no hooks): (block 0 output,
    last block output)."""
    stem = model.maxpool(model.relu(model.norm1(model.conv1(x))))
    first = model.layer1[0].forward(stem)
    return first, model.layer1[1].forward(first)


def test_site_reads_the_first_block_and_replaces_the_last():
    torch.manual_seed(0)
    model = evaluated(with_attention(R18, 'mmpretrain',
                                     dict(attention=RAN, at='layer1.1~layer1.1')))
    ran = model.attention_sites['layer1-1~layer1-1'].attentions['ran']
    torch.nn.init.normal_(ran.conv2.weight)
    x = torch.randn(1, 3, 32, 32)
    out = {}
    model.layer1.register_forward_hook(lambda m, a, o: out.update(layer1=o))
    with torch.no_grad():
        model(x)
        first, last = plain_layer1(model, x)
        assert torch.equal(out['layer1'], ran(last, first))
        assert not torch.equal(out['layer1'], ran(last))


def test_hook_order_with_plain_sites():
    """A plain site on block 0's output changes the mask input; on the last block's output the
    plain site runs first and the around site, which wraps the span, last (sites of one host
    run in path order)."""
    torch.manual_seed(0)
    se = dict(type='SE', reduction=4)
    model = evaluated(with_attention(R18, 'mmpretrain', dict(attention=RAN, at='layer1.1~layer1.1'),
                                     dict(attention=se, at=['layer1.0', 'layer1.1'])))
    assert list(model.attention_sites) == ['layer1-0', 'layer1-1', 'layer1-1~layer1-1']
    sites = model.attention_sites
    ran = sites['layer1-1~layer1-1'].attentions['ran']
    torch.nn.init.normal_(ran.conv2.weight)
    x = torch.randn(1, 3, 32, 32)
    out = {}
    model.layer1.register_forward_hook(lambda m, a, o: out.update(layer1=o))
    with torch.no_grad():
        model(x)
        stem = model.maxpool(model.relu(model.norm1(model.conv1(x))))
        first = sites['layer1-0'](model.layer1[0].forward(stem))
        last = model.layer1[1].forward(first)
        assert torch.equal(out['layer1'], ran(sites['layer1-1'](last), first))


def test_last_block_without_the_first_raises():
    model = with_attention(R50, 'mmpretrain', dict(attention=RAN, at='layer1.1~layer1.2'))
    with pytest.raises(RuntimeError, match="'layer1.1' did not run before 'layer1.2'"):
        model.layer1[2](torch.randn(1, 256, 8, 8))


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmdet'])
def test_identity_init_gives_the_plain_model_exactly(scope):
    torch.manual_seed(0)
    plain = evaluated(build(R18, scope))
    model = evaluated(with_attention(R18, scope, dict(attention=RAN, identity_init=True)))
    assert len(model.attention_sites) == 3
    model.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for out, ref in zip(model(x), plain(x)):
            assert torch.equal(out, ref)
        for site in model.attention_sites.values():
            site.attentions['ran'].gain.fill_(0.5)
        assert not torch.equal(model(x)[0], plain(x)[0])


def test_state_dict_keys_report_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    plain = build(R18, 'mmpretrain')
    model = evaluated(with_attention(R18, 'mmpretrain', dict(attention=RAN)))
    keys = set(model.state_dict())
    assert set(plain.state_dict()) <= keys
    assert {k.split('.')[1] for k in attention_keys(model)} == {
        'layer1-1~layer1-1', 'layer2-1~layer2-1', 'layer3-1~layer3-1'}
    assert [(r['path'], r['channels'], r['attention']) for r in insertion_rows(model)] == [
        ('layer1.1~layer1.1', 64, 'ResidualAttentionMask'),
        ('layer2.1~layer2.1', 128, 'ResidualAttentionMask'),
        ('layer3.1~layer3.1', 256, 'ResidualAttentionMask')]
    with torch.no_grad():
        for p in model.attention_sites.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / 'ran.pth'
    torch.save(model.state_dict(), path)
    restored = evaluated(with_attention(R18, 'mmpretrain', dict(attention=RAN)))
    restored.load_state_dict(torch.load(path))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        for out, ref in zip(restored(x), expected):
            assert torch.equal(out, ref)
        for out, ref in zip(copy.deepcopy(model)(x), expected):
            assert torch.equal(out, ref)


@pytest.mark.parametrize('at,attention,match', [
    ('layer1.1~', RAN, "an around place is '<first>~<last>' with two module paths"),
    ('layer1.1~layer1.2~layer1.3', RAN, 'an around place is'),
    ('layer1.1:input~layer1.1', RAN, 'an around place is'),
    ('layer1.1~layer9.1', RAN, "'layer9.1' is not a module path of ResNet"),
    ('layer2.1~layer1.1', RAN, "'layer2.1' comes after 'layer1.1'"),
    ('layer1.0~layer2.1', RAN, "the input of 'layer1.0' has shape .*, the output of "
                               "'layer2.1' has 128 channels"),
    ('layer1.1~layer1.1', dict(type='SE'), r'SE.forward takes only x, but an around site'),
])
def test_bad_around_places(at, attention, match):
    with pytest.raises(ValueError, match=match):
        with_attention(R18, 'mmpretrain', dict(attention=attention, at=at))


def test_around_layout_must_be_nchw():
    with pytest.raises(ValueError, match="around sites take .* got layout 'nhwc'"):
        with_attention(R18, 'mmpretrain', dict(attention=RAN, at='layer1.1~layer1.1',
                                               layout='nhwc'))
