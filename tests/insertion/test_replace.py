"""Replacing convolutions (``replace=``) with the test doubles of
tests/attention/plain_conv_replacement.py: keys, init from the conv, checkpoints, presets,
frozen stages, plug-ins, the report and the errors."""

import pytest
import torch
import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope
from mmengine.runner.checkpoint import load_state_dict

import cvattn_mm  # noqa: F401
from cvattn_mm.attention.conv_replacement import ConvReplacement
from cvattn_mm.insertion import insert_attention
from cvattn_mm.insertion.report import format_rows, insertion_rows
from cvattn_mm.registry import MODELS

from ..attention.plain_conv_replacement import AbsorbingConvReplacement, PlainConvReplacement
from .logs import logged_messages


class PartialConvReplacement(PlainConvReplacement):
    """Takes the conv's weights but adds a term of its own: never exact (arXiv:1512.03385)."""

    _abbr_ = 'partial_conv'
    conv_init = 'copies the conv; its extra term stays'

    def __init__(self, in_channels, out_channels=None, kernel_size=3, stride=1, padding=None,
                 dilation=1, groups=1, bias=False, init_cfg=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, init_cfg=init_cfg)
        self.extra = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return super().forward(x) + self.extra

    def init_from_conv(self, conv, norm=None):
        super().init_from_conv(conv)
        return False


class BankedConvReplacement(PlainConvReplacement):
    """Two kernels summed, in a parameter named ``weight`` like the conv's but 5-D
    (arXiv:1512.03385)."""

    _abbr_ = 'banked_conv'
    conv_init = 'the first kernel is the conv, the second zero'

    def __init__(self, in_channels, out_channels=None, kernel_size=3, stride=1, padding=None,
                 dilation=1, groups=1, bias=False, init_cfg=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, init_cfg=init_cfg)
        self.weight = nn.Parameter(torch.randn(2, *self.conv.weight.shape))

    def forward(self, x):
        return nn.functional.conv2d(x, self.weight.sum(0), None, self.stride, self.padding,
                                    self.dilation, self.groups) + self.conv(x) * 0

    def init_from_conv(self, conv, norm=None):
        with torch.no_grad():
            self.weight[0] = conv.weight
            self.weight[1] = 0
        return True


DOUBLES = (PlainConvReplacement, AbsorbingConvReplacement, PartialConvReplacement,
           BankedConvReplacement)


@pytest.fixture(autouse=True)
def doubles():
    for cls in DOUBLES:
        MODELS.register_module(module=cls)
    yield
    for cls in DOUBLES:
        MODELS.module_dict.pop(cls.__name__)


def small(depth=50, **kwargs):
    return dict(type='ResNet', depth=depth, stem_channels=16, base_channels=8,
                out_indices=(3, ), **kwargs)


def build(cfg, scope='mmpretrain'):
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(cfg)


def replaced(backbone, *insertions, scope='mmpretrain'):
    return build(dict(type='InsertAttention', module=backbone, insertions=list(insertions)),
                 scope)


def logged(fn, *args, **kwargs):
    """The messages that mmengine's current logger gets while ``fn`` runs."""
    with logged_messages() as messages:
        fn(*args, logger=MMLogger.get_current_instance(), **kwargs)
    return '\n'.join(messages)


def outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


CONV2 = [f'layer{i}.{j}.conv2' for i, n in zip((1, 2, 3, 4), (3, 4, 6, 3)) for j in range(n)]


def test_the_conv_keys_go_and_the_module_keys_come():
    plain = build(small())
    model = replaced(small(), dict(attention='PlainConvReplacement', replace='layer*.*.conv2'))
    assert [type(model.get_submodule(p)).__name__ for p in CONV2] == \
        ['PlainConvReplacement'] * 16
    gone = {f'{p}.weight' for p in CONV2}
    came = {f'{p}.conv.weight' for p in CONV2}
    assert set(plain.state_dict()) - set(model.state_dict()) == gone
    assert set(model.state_dict()) - set(plain.state_dict()) == came
    # the replacement is built from each conv: channels, stride and groups
    for path in CONV2:
        conv, module = plain.get_submodule(path), model.get_submodule(path)
        assert module.conv.weight.shape == conv.weight.shape
        assert module.conv.stride == conv.stride and module.conv.padding == conv.padding
    result = model.load_state_dict(plain.state_dict(), strict=False)
    assert set(result.unexpected_keys) == gone and set(result.missing_keys) == came


def test_loading_a_plain_checkpoint_reports_both_lists():
    plain = build(small())
    model = replaced(small(), dict(attention='PlainConvReplacement', replace='layer1.0.conv2'))
    message = logged(load_state_dict, model, plain.state_dict())
    assert 'unexpected key in source state_dict: layer1.0.conv2.weight' in message
    assert 'missing keys in source state_dict: layer1.0.conv2.conv.weight' in message


@pytest.mark.parametrize('cls', ['PlainConvReplacement', 'AbsorbingConvReplacement'])
@pytest.mark.parametrize('how', [dict(init_from_conv=True), dict(identity_init=True)])
def test_init_from_conv_computes_the_plain_model(cls, how):
    torch.manual_seed(0)
    plain = build(small())
    for m in plain.modules():  # non-trivial statistics for the absorbed norms
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
    model = replaced(small(), dict(attention=cls, replace='paper', **how))
    model.load_state_dict(plain.state_dict(), strict=False)  # before: random conv weights
    model = replaced(small(), dict(attention=cls, replace='paper', **how))
    x = torch.randn(2, 3, 32, 32)
    before = outputs(model, x)[0]
    result = model.load_state_dict(plain.state_dict(), strict=True)  # translated, none left
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(outputs(model, x)[0], outputs(plain, x)[0])
    assert not torch.allclose(before, outputs(plain, x)[0])
    # a checkpoint of the replaced model loads as it is
    state = {k: v.clone() for k, v in model.state_dict().items()}
    again = replaced(small(), dict(attention=cls, replace='paper', **how))
    assert not again.load_state_dict(state, strict=True).missing_keys
    torch.testing.assert_close(outputs(again, x)[0], outputs(plain, x)[0])


def test_a_module_parameter_named_like_the_conv_s_is_told_apart_by_its_shape():
    torch.manual_seed(0)
    plain = build(small())
    model = replaced(small(), dict(attention='BankedConvReplacement', replace='paper',
                                   init_from_conv=True))
    result = model.load_state_dict(plain.state_dict())  # translated: nothing left over
    assert not result.unexpected_keys and not result.missing_keys
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(outputs(model, x)[0], outputs(plain, x)[0])


def test_init_from_conv_at_insertion_takes_the_weights_the_model_has():
    torch.manual_seed(0)
    plain = build(small())
    model = build(small())
    model.load_state_dict(plain.state_dict())
    insert_attention(model, [dict(attention='PlainConvReplacement', replace='paper',
                                  init_from_conv=True)])
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(outputs(model, x)[0], outputs(plain, x)[0])


def test_pretrained_init_cfg_with_init_from_conv_logs_the_translation(tmp_path):
    plain = build(small())
    path = tmp_path / 'plain.pth'
    torch.save(dict(state_dict=plain.state_dict()), path)
    model = replaced(dict(small(), init_cfg=dict(type='Pretrained', checkpoint=str(path))),
                     dict(attention='AbsorbingConvReplacement', replace='layer1.0.conv2',
                          init_from_conv=True))
    text = logged(lambda logger: model.init_weights())
    assert ('layer1.0.conv2: AbsorbingConvReplacement initialised from the checkpoint\'s '
            'layer1.0.bn2.bias, layer1.0.bn2.num_batches_tracked, layer1.0.bn2.running_mean, '
            'layer1.0.bn2.running_var, layer1.0.bn2.weight, layer1.0.conv2.weight (exactly '
            'the conv)') in text
    assert 'unexpected key' not in text and 'missing keys' not in text
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(outputs(model, x)[0], outputs(plain, x)[0])


def test_absorbing_modules_take_the_norm_after_the_conv():
    model = replaced(small(), dict(attention='AbsorbingConvReplacement', replace='paper'))
    for path in CONV2:
        block = model.get_submodule(path.rpartition('.')[0])
        assert isinstance(block.bn2, nn.Identity) and isinstance(block.bn1, nn.BatchNorm2d)
    assert not any(k.startswith('layer1.0.bn2.') for k in model.state_dict())


def test_identity_init_needs_an_exact_module():
    with pytest.raises(ValueError, match=r'identity_init: PartialConvReplacement replacing '
                                         r'layer1.0.conv2 cannot compute exactly .*copies the '
                                         r'conv; its extra term stays\); use init_from_conv'):
        replaced(small(), dict(attention='PartialConvReplacement', replace='paper',
                               identity_init=True))
    model = replaced(small(), dict(attention='PartialConvReplacement', replace='paper',
                                   init_from_conv=True))
    assert model.layer1[0].conv2.extra.item() == 1


def test_a_basic_block_has_no_middle_conv():
    with pytest.raises(ValueError, match="replace='paper': PlainConvReplacement's paper "
                                         "position 'replaces_mid_conv'.*not defined for ResNet"):
        replaced(small(18), dict(attention='PlainConvReplacement', replace='paper'))


def test_block_convs_preset_on_basic_blocks_and_bottlenecks(monkeypatch):
    monkeypatch.setattr(PlainConvReplacement, 'paper_position', 'replaces_block_convs')
    r18 = replaced(small(18), dict(attention='PlainConvReplacement', replace='paper'))
    assert sorted(p for p, m in r18.named_modules() if isinstance(m, ConvReplacement)) == \
        sorted(f'layer{i}.{j}.conv{k}' for i in (1, 2, 3, 4) for j in (0, 1) for k in (1, 2))
    r50 = replaced(small(), dict(attention='PlainConvReplacement', replace='paper'))
    paths = [p for p, m in r50.named_modules() if isinstance(m, ConvReplacement)]
    assert len(paths) == 48 and 'conv1' not in paths
    assert not any('downsample' in p for p in paths)


@pytest.mark.parametrize('backbone,scope', [
    (dict(type='ResNeXt', depth=50, groups=32, width_per_group=4, out_indices=(3, )),
     'mmpretrain'),
    (dict(type='ResNetV1c', depth=50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
          out_indices=(3, )), 'mmseg'),
    (dict(type='ResNetV1d', depth=50, out_indices=(3, )), 'mmdet'),
])
def test_grouped_and_dilated_convs_keep_their_options(backbone, scope):
    plain = build(backbone, scope)
    model = replaced(backbone, dict(attention='PlainConvReplacement', replace='paper',
                                    init_from_conv=True), scope=scope)
    model.load_state_dict(plain.state_dict())
    for path in CONV2:
        conv, module = plain.get_submodule(path), model.get_submodule(path)
        assert (module.groups, module.dilation, module.stride) == (
            conv.groups, conv.dilation[0], conv.stride[0])
    x = torch.randn(1, 3, 48, 40)
    torch.testing.assert_close(outputs(model, x)[-1], outputs(plain, x)[-1])


def test_frozen_stages_norm_eval_and_with_cp_keep_working():
    model = replaced(small(frozen_stages=1, norm_eval=True, with_cp=True),
                     dict(attention='AbsorbingConvReplacement', replace='paper'))
    assert not any(p.requires_grad for p in model.layer1[0].conv2.parameters())
    assert all(p.requires_grad for p in model.layer2[0].conv2.parameters())
    model.train()
    assert not model.layer2[0].conv2.norm.training  # norm_eval reaches the module's norms
    assert not model.layer1[0].conv2.training
    model(torch.randn(2, 3, 32, 32))[0].sum().backward()
    assert model.layer2[0].conv2.conv.weight.grad is not None
    assert model.layer1[0].conv2.conv.weight.grad is None


def test_native_plugins_and_inserted_attention_work_with_replaced_convs():
    backbone = dict(small(), type='ResNet', plugins=[dict(
        cfg=dict(type='ContextBlock', ratio=1 / 4), stages=(False, True, True, True),
        position='after_conv3')])
    model = replaced(backbone,
                     dict(attention='AbsorbingConvReplacement', replace='paper'),
                     dict(attention='SE', at='paper'), scope='mmdet')
    assert isinstance(model.layer2[0].conv2, AbsorbingConvReplacement)
    y = model(torch.randn(2, 3, 32, 32))
    assert y[0].shape == (2, 256, 1, 1)
    rows = insertion_rows(model)
    assert [r['via'].split(' ')[0] for r in rows].count('replaces') == 16
    assert [r['via'].split(' ')[0] for r in rows].count('plugins') == 13


def test_the_report_lists_replaced_convs():
    model = replaced(small(), dict(attention='AbsorbingConvReplacement',
                                   replace='layer2.0.conv2'), dict(attention='SE', at='paper'))
    rows = insertion_rows(model)
    row = next(r for r in rows if r['attention'] == 'AbsorbingConvReplacement')
    assert row['path'] == 'layer2.0.conv2'
    assert row['via'] == 'replaces Conv2d(16, 16, k=3, s=2, p=1, d=1, g=1) and bn2'
    assert row['replaced_params'] == 16 * 16 * 9 + 2 * 16
    assert row['params'] == row['replaced_params']
    text = format_rows(rows, sum(p.numel() for p in model.parameters()))
    lines = text.splitlines()
    assert lines[-2].startswith('17 attention modules (16 inserted, 1 replacing convs, 0 '
                                'plug-ins), ')
    assert any(line.split()[:3] == ['(model)', 'layer2.0.conv2', '16'] for line in lines)


@pytest.mark.parametrize('insertion,match', [
    (dict(attention='PlainConvReplacement', at='paper'),
     'it replaces convs, so the insertion names them with replace='),
    (dict(attention='PlainConvReplacement', replace='layer1.0.bn2'),
     'layer1.0.bn2 is a BatchNorm2d, not a Conv2d'),
    (dict(attention='PlainConvReplacement', replace='layer9.*'), 'matches no module'),
    (dict(attention='PlainConvReplacement', replace=3), "replace= must be 'paper'"),
    (dict(attention='PlainConvReplacement', replace='paper', at='paper'),
     r"\['at'\] are for inserted modules"),
    (dict(attention='SE', replace='layer1.0.conv2'),
     r'replace= takes modules that replace a conv \(.*PlainConvReplacement.*\); SE is '
     'inserted with at='),
    (dict(attention='SE', init_from_conv=True), 'init_from_conv is for modules that replace'),
    (dict(attention=dict(type='PlainConvReplacement', stride=2), replace='layer1.0.conv2'),
     r"\['stride'\] are taken from the replaced conv"),
])
def test_bad_replacements_explain_themselves(insertion, match):
    with pytest.raises(ValueError, match=match):
        replaced(small(18), insertion)


def test_absorbing_needs_a_norm_after_the_conv():
    model = nn.Sequential()
    model.add_module('block', nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False),
                                            nn.ReLU()))
    holder = nn.Module()
    holder.body = model
    with pytest.raises(ValueError, match='AbsorbingConvReplacement ends with its own norm and '
                                         'activation, so it replaces body.block.0 together '
                                         'with the BatchNorm after it, but no BatchNorm '
                                         'follows body.block.0 among the children of '
                                         'body.block'):
        insert_attention(holder, [dict(attention='AbsorbingConvReplacement',
                                       replace='body.block.0')])


def test_absorbing_is_refused_where_the_host_activation_is_not_relu():
    """An absorbing module ends with its ReLU and the host's activation follows: under an mmcv
    ConvModule with SiLU (the YOLO backbones) the block would change; with ReLU it is kept."""
    from mmcv.cnn import ConvModule

    def holder(act):
        model = nn.Module()
        model.body = ConvModule(8, 8, 3, padding=1, norm_cfg=dict(type='BN'),
                                act_cfg=dict(type=act))
        return model

    with pytest.raises(ValueError, match='AbsorbingConvReplacement ends with its own norm and '
                                         'ReLU.*body applies SiLU there'):
        insert_attention(holder('SiLU'), [dict(attention='AbsorbingConvReplacement',
                                               replace='body.conv', identity_init=True)])
    model = holder('ReLU').eval()  # running statistics on both sides
    x = torch.randn(2, 8, 6, 5)
    with torch.no_grad():
        model.body.bn.running_mean.uniform_(-1, 1)
        expected = model.body(x)
    insert_attention(model, [dict(attention='AbsorbingConvReplacement', replace='body.conv',
                                  identity_init=True)])
    assert isinstance(model.body.bn, nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().body(x), expected)


def test_a_conv_is_replaced_once():
    with pytest.raises(ValueError, match=r"\['layer1.0.conv2'\] named by more than one"):
        replaced(small(), dict(attention='PlainConvReplacement', replace='layer1.0.conv2'),
                 dict(attention='AbsorbingConvReplacement', replace='layer1.*.conv2'))
    model = replaced(small(), dict(attention='PlainConvReplacement', replace='layer1.0.conv2'))
    with pytest.raises(ValueError, match='layer1.0.conv2 was already replaced by '
                                         'PlainConvReplacement'):
        insert_attention(model, [dict(attention='PlainConvReplacement',
                                      replace='layer1.0.conv2')])


def test_checkpoints_of_replaced_models_save_and_load(tmp_path):
    model = replaced(small(), dict(attention='AbsorbingConvReplacement', replace='paper'),
                     dict(attention='SE', at='paper'))
    path = tmp_path / 'model.pth'
    torch.save(model.state_dict(), path)
    again = replaced(small(), dict(attention='AbsorbingConvReplacement', replace='paper'),
                     dict(attention='SE', at='paper'))
    result = again.load_state_dict(torch.load(path, weights_only=True))
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(outputs(again, x)[0], outputs(model, x)[0])


def test_init_weights_gives_inserted_modules_their_own_initialisation():
    """mmpretrain's ResLayer is a plain Sequential: mmengine's init_weights would not reach the
    modules in the blocks or in attention_sites, and the ResNet's Kaiming init_cfg would
    overwrite their papers' initialisation."""
    model = replaced(small(), dict(attention='GC', at='paper'),
                     dict(attention='ACmix', replace='layer4.*.conv2'))
    model.init_weights()
    gc = model.attention_sites['layer2-0-bn3'].attentions['gc']
    assert not gc.channel_add_conv[-1].weight.any()  # GC's zero last conv
    acmix = model.layer4[0].conv2
    reference = type(acmix).from_conv(nn.Conv2d(acmix.in_channels, acmix.out_channels, 3,
                                                acmix.stride, 1, bias=False))
    torch.testing.assert_close(acmix.dep_conv.weight, reference.dep_conv.weight)  # shifts
    import pickle
    clone = pickle.loads(pickle.dumps(model))
    clone.init_weights()
    assert clone.__dict__['init_weights'].model is clone
