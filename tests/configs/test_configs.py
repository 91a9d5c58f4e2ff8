"""Every config under configs/ loads and builds its model (docs/architecture.md, "Configs and
tools").

Each config is loaded with ``Config.fromfile`` and its model built with the registry of its
default scope, in this one process, and never initialised (no ``init_weights``: the upstream
``init_cfg`` would download checkpoints). Two things that no check here looks at would make
building 70+ models take minutes, so they are cut short:

* mmengine parses every metafile of an installed package, and reloads ``pkg_resources``, to
  resolve one ``mmdet::...`` base config; both answers are kept for the session;
* PyTorch fills every new weight with random numbers; weights are zero-filled instead.

Backbones wrapped by ``InsertAttention`` that are ResNets infer their channels from a 64x64
image instead of the default 224x224 (channel counts do not depend on the image size; Swin's
windows need 224).

A few representative configs are then checked for where their attention really is.
"""
import functools
import glob
import os.path as osp
from contextlib import contextmanager
from unittest import mock

import pytest
import torch
from mmengine.config import Config
from mmengine.config import config as config_module
from mmengine.config import utils as config_utils
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope

import cvattn_mm  # noqa: F401
from cvattn_mm.attention.base import AttentionModule
from cvattn_mm.heads.csra_head import CSRAHead
from cvattn_mm.registry import MODELS

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = sorted(osp.relpath(p, ROOT)
                 for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True))
SCOPES = ('mmpretrain', 'mmdet', 'mmseg', 'mmyolo')
SMALL_PROBE = 64


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Build on one thread: the builds are small ops, whose threads only wait for each other
    (minutes instead of seconds when other processes share the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module', autouse=True)
def resolve_packages_once():
    """Keep mmengine's parsed metafiles (model-index.yml and the files it lists) and its
    "is the package installed" answers for this module: each ``mmdet::`` base otherwise
    parses all metafiles again and reloads ``pkg_resources``."""
    with mock.patch.object(config_utils, 'load', functools.cache(config_utils.load)), \
            mock.patch.object(config_module, 'is_installed',
                              functools.cache(config_module.is_installed)):
        yield


def _zero_fill(tensor, *args, **kwargs):
    return tensor.zero_()


@contextmanager
def no_random_weights():
    """Zero-fill the weights that PyTorch and mmcv would fill with random numbers."""
    with mock.patch.object(torch.Tensor, 'uniform_', _zero_fill), \
            mock.patch.object(torch.Tensor, 'normal_', _zero_fill):
        yield


def load(path: str) -> Config:
    return Config.fromfile(osp.join(ROOT, path))


def build(cfg: Config) -> BaseModel:
    """The config's model, built by its default scope's registry, un-initialised."""
    model_cfg = cfg.model.copy()
    backbone = model_cfg.get('backbone', {})
    if backbone.get('type') == 'InsertAttention' and 'ResNet' in backbone.module.type:
        model_cfg.backbone = dict(backbone,
                                  example_inputs=(torch.zeros(1, 3, SMALL_PROBE, SMALL_PROBE), ))
    with DefaultScope.overwrite_default_scope(cfg.default_scope), no_random_weights():
        return MODELS.build(model_cfg)


def named_classes(node) -> set:
    """The cvattn_mm attention and head classes that a config (sub)tree names by type."""
    found = set()
    if isinstance(node, dict):
        kind = node.get('type')
        if isinstance(kind, str) and kind in MODELS.module_dict:
            cls = MODELS.module_dict[kind]
            if isinstance(cls, type) and issubclass(cls, (AttentionModule, CSRAHead)):
                found.add(cls)
        for value in node.values():
            found |= named_classes(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            found |= named_classes(value)
    return found


def built_classes(model) -> set:
    return {type(m) for m in model.modules() if isinstance(m, (AttentionModule, CSRAHead))}


def test_there_are_configs_of_every_task():
    tasks = {path.split(osp.sep)[1] for path in CONFIGS}
    assert {'classification', 'detection', 'segmentation'} <= tasks
    assert len(CONFIGS) >= 60


@pytest.mark.parametrize('path', CONFIGS)
def test_config_builds_its_model(path):
    cfg = load(path)
    if '_base_' in path.split(osp.sep):  # a fragment that full configs inherit
        assert cfg.to_dict(), f'{path} is empty'
        return
    assert cfg.default_scope in SCOPES, f'{path}: default_scope {cfg.default_scope!r}'
    assert 'cvattn_mm' in cfg.get('custom_imports', {}).get('imports', ()), \
        f'{path}: custom_imports must import cvattn_mm for upstream tools and mim'
    # the Runner passes every key of a collate_fn dict but 'type' to the function, and
    # mmengine adds _scope_ to those of a 'mmyolo::' base (open-mmlab/mmyolo#886)
    collate_fn = cfg.get('train_dataloader', {}).get('collate_fn', {})
    assert '_scope_' not in collate_fn, f'{path}: train_dataloader.collate_fn has _scope_'
    model = build(cfg)
    assert isinstance(model, BaseModel)
    named = named_classes(cfg.model)
    built = built_classes(model)
    # every module the config names is in the model, and no attention if it names none
    assert named <= built, f'{path}: {named - built} named but not built'
    assert bool(built) == bool(named), f'{path}: built {built}, named {named}'


def sites(model):
    """{host path: [attention class names]} of an InsertAttention backbone."""
    return {site.path: [type(a).__name__ for a in site.attentions.values()]
            for site in model.backbone.attention_sites.values()}


def resnet_blocks(depths, stages=(1, 2, 3, 4)):
    return [f'layer{s}.{b}' for s in stages for b in range(depths[s - 1])]


R50_BLOCKS = (3, 4, 6, 3)
R18_BLOCKS = (2, 2, 2, 2)
SWIN_T_BLOCKS = (2, 2, 6, 2)
YOLOV8_S_BLOCKS = (1, 2, 2, 1)  # the C2f layers' bottlenecks at deepen_factor 0.33


def expect(paths, name):
    return {p: [name] for p in paths}


REPRESENTATIVE = {
    'classification/resnet50/resnet50_base.py': {},
    'classification/resnet50/resnet50-se_8xb32_in1k.py':
    expect([f'{b}.bn3' for b in resnet_blocks(R50_BLOCKS)], 'SE'),
    'classification/resnet50/resnet50-scsa_8xb32_in1k.py':
    expect([f'{b}.conv3:input' for b in resnet_blocks(R50_BLOCKS)], 'SCSA'),
    'classification/resnet50/resnet50-bam_8xb32_in1k.py':
    expect(['layer1', 'layer2', 'layer3'], 'BAM'),
    'classification/resnet50/resnet50-nonlocal_8xb32_in1k.py':
    expect(['layer3', 'layer4'], 'NonLocalBlock'),
    'classification/resnet18/resnet18-sk_8xb32_in1k.py':
    expect([f'{b}.bn1' for b in resnet_blocks(R18_BLOCKS)], 'SK'),
    'classification/resnet18/resnet18-cbam_8xb32_in1k.py':
    expect([f'{b}.bn2' for b in resnet_blocks(R18_BLOCKS)], 'CBAM'),
    'classification/swin/swin-tiny-cbam_16xb64_in1k.py':
    expect([f'stages.{s}.blocks.{b}.ffn.layers'
            for s, n in enumerate(SWIN_T_BLOCKS) for b in range(n)], 'CBAM'),
    'classification/resnet50/resnet50-gsop_8xb32_in1k.py':
    expect(['layer1.2.bn3', 'layer2.3.bn3', 'layer3.5.bn3', 'layer4.2.bn3'], 'GSoP'),
    'classification/resnet50/resnet50-gct_8xb32_in1k.py':
    expect(['conv1:input'] + [f'{b}.{conv}:input' for b in resnet_blocks(R50_BLOCKS)
                              for conv in ('conv1', 'conv2', 'conv3', 'downsample.0')
                              if conv != 'downsample.0' or b.endswith('.0')], 'GCT'),
    'detection/faster_rcnn/faster-rcnn_r50-gc-c3-c5_fpn_1x_coco.py':
    expect([f'{b}.bn3' for b in resnet_blocks(R50_BLOCKS, (2, 3, 4))], 'GC'),
    'detection/mask_rcnn/mask-rcnn_r50-scsa-c3-c5_fpn_1x_coco.py':
    expect([f'{b}.conv3:input' for b in resnet_blocks(R50_BLOCKS, (2, 3, 4))], 'SCSA'),
    'detection/yolov8/yolov8_s-se_syncbn_fast_8xb16-500e_coco.py':
    expect([f'stage{s}.1.blocks.{b}.conv2' for s, n in enumerate(YOLOV8_S_BLOCKS, 1)
            for b in range(n)], 'SE'),
    'detection/yolov8/yolov8_s-simam_syncbn_fast_8xb16-500e_coco.py':
    expect([f'stage{s}.1.blocks.{b}.conv2.conv' for s, n in enumerate(YOLOV8_S_BLOCKS, 1)
            for b in range(n)], 'SimAM'),
    'detection/rtmdet/rtmdet_tiny-cbam_syncbn_fast_8xb32-300e_coco.py':
    expect(['stage1.1.blocks.0.conv2', 'stage2.1.blocks.0.conv2', 'stage3.1.blocks.0.conv2',
            'stage4.2.blocks.0.conv2'], 'CBAM'),
    'segmentation/pspnet/pspnet_r50-d8-external-attention_4xb2-40k_cityscapes-512x1024.py':
    expect(['layer3', 'layer4'], 'ExternalAttention'),
    'segmentation/swin/upernet_swin-tiny-external-attention_8xb2-160k_ade20k-512x512.py':
    expect(['stages.2.blocks.5', 'stages.3.blocks.1'], 'ExternalAttention'),
}


@pytest.mark.parametrize('path', sorted(REPRESENTATIVE))
def test_attention_is_where_the_config_says(path):
    model = build(load(osp.join('configs', path)))
    assert sites(model) == REPRESENTATIVE[path]


def test_swin_sites_adapt_the_token_layout():
    model = build(load('configs/classification/swin/swin-tiny-se_16xb64_in1k.py'))
    layouts = {site.layout for site in model.backbone.attention_sites.values()}
    assert layouts == {'tokens'}


@pytest.mark.parametrize('model_name', ['faster-rcnn', 'retinanet', 'mask-rcnn'])
def test_native_plugin_configs_put_gc_in_c3_to_c5(model_name):
    folder = model_name.replace('-', '_')
    model = build(
        load(f'configs/detection/{folder}/{model_name}_r50-gc-plugin-c3-c5_fpn_1x_coco.py'))
    backbone = model.backbone
    assert not hasattr(backbone, 'attention_sites')
    per_stage = [sum(type(m).__name__ == 'GC' for m in getattr(backbone, f'layer{s}').modules())
                 for s in (1, 2, 3, 4)]
    assert per_stage == [0, 4, 6, 3]
    # after conv3 (and its norm): the plug-in sees the block's output channels
    assert backbone.layer2[0].gc.in_channels == 512


def test_se_resnet50_has_the_papers_parameter_count():
    counts = {}
    for name in ('resnet50_base.py', 'resnet50-se_8xb32_in1k.py'):
        model = build(load(f'configs/classification/resnet50/{name}'))
        counts[name] = sum(p.numel() for p in model.parameters())
    # He et al. / Hu et al.: ResNet-50 25.56M, SE-ResNet-50 28.09M (mmpretrain counts)
    assert round(counts['resnet50_base.py'] / 1e6, 2) == 25.56
    assert round(counts['resnet50-se_8xb32_in1k.py'] / 1e6, 2) == 28.09


def test_csra_config_replaces_pooling_and_head():
    model = build(load('configs/classification/resnet50/resnet50-csra_8xb32_in1k.py'))
    assert isinstance(model.head, CSRAHead)
    assert not model.with_neck


def test_every_registered_module_has_a_resnet50_config_at_its_paper_position():
    """The README promises a classification config for every module: ResNet-50, or the
    paper's base (ResNeXt-50 for SKConv), at its paper position (or replacing its paper's
    convs)."""
    from cvattn_mm.attention.catalog import attention_classes
    at_paper = set()
    for path in glob.glob(osp.join(ROOT, 'configs/classification/resne*50/*.py')):
        insertions = load(osp.relpath(path, ROOT)).model.backbone.get('insertions', [])
        at_paper |= {i['attention']['type'] for i in insertions
                     if i.get('at') == 'paper' or i.get('replace') == 'paper'}
    missing = set(attention_classes()) - at_paper
    # FCA/GatherExcite/GSoP's official configs set per-stage options with explicit places;
    # their default configs are at='paper'
    assert not missing, f'no configs/classification/resnet50 config at the paper position: ' \
        f'{sorted(missing)}'


def test_readme_position_table_names_every_module_in_its_row():
    """The README's paper-position table lists each registered module in the row of its
    paper position (the first cell: 'position (Module, Module, ...)')."""
    import re

    from cvattn_mm.attention.catalog import attention_classes
    with open(osp.join(ROOT, 'README.md'), encoding='utf-8') as f:
        text = f.read()
    table = text.split('### Paper positions per backbone family', 1)[1].split('\n\n', 2)[1]
    listed = {}
    for row in table.splitlines()[2:]:
        first = row.split('|')[1].strip()
        position, _, names = first.partition(' (')
        listed[position] = set(re.findall(r'[A-Z][A-Za-z0-9]+', names))
    missing = {name: cls.paper_position for name, cls in attention_classes().items()
               if name not in listed.get(cls.paper_position, set())}
    assert not missing, f'README position table: add {missing}'
