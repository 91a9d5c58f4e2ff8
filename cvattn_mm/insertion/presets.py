"""Paper positions per backbone family.

A preset maps a module's ``paper_position`` (see ``attention.base.PAPER_POSITIONS``) to the
module paths of one backbone family. Presets are registered by backbone class name and found
through the class's MRO, so they cover mmpretrain's, mmdet's and mmseg's classes of that name
and their subclasses (ResNetV1c/V1d, ResNeXt, ...). A preset returns ``None`` for a position
that its family does not define; :data:`SUBSTITUTES` then names the places to use instead, if
there are natural ones.
"""
from typing import Callable, Dict, List, Optional, Tuple

import torch.nn as nn
from mmcv.cnn import ConvModule

PAPER_PRESETS: Dict[str, Callable[[nn.Module, str], Optional[List[str]]]] = {}

#: Why the CSP presets leave replaces_mid_conv to explicit patterns.
_CONV_MODULE_CAVEAT = (
    "for the modules that keep the host's norm (PyramidSplitAttention, SASA, SAN, SCConv, "
    'ACmix); SKConv and CoT absorb the norm and end with their own ReLU, which the '
    "ConvModule's SiLU would follow: not their paper's block, and identity_init would not be "
    'exact')

#: ``(backbone class name, paper position) -> (pattern, why)`` where a preset returns None.
SUBSTITUTES: Dict[Tuple[str, str], Tuple[str, str]] = {
    ('ResNet', 'after_mid_norm'): (
        'layer*.*.bn1', "a BasicBlock has no bottleneck 3x3 conv; its first 3x3 conv's norm "
        'takes that role (as in configs/classification/resnet18/resnet18-sk_8xb32_in1k.py)'),
    **{(name, 'replaces_mid_conv'): (
        'stage*.*.blocks.*.conv2.conv', 'the 3x3 conv sits in an mmcv ConvModule, whose '
        f'activation runs after it; give the pattern with replace= {_CONV_MODULE_CAVEAT}')
       for name in ('YOLOv5CSPDarknet', 'YOLOv8CSPDarknet', 'YOLOXCSPDarknet', 'CSPDarknet')},
    ('CSPNeXt', 'replaces_mid_conv'): (
        'stage*.*.blocks.*.conv1.conv', "a CSPNeXtBlock's mid conv is a 5x5 depthwise conv, "
        'which the replacing modules (dense 3x3 convs in their papers) do not take; its dense '
        f'3x3 conv1 can be: give the pattern with replace= {_CONV_MODULE_CAVEAT}'),
}

#: Positions that a neck's output levels cannot take: they need stages of blocks (around) or
#: a residual branch's convs (replacing).
NOT_ON_OUTPUTS = ('around_stage', 'replaces_mid_conv', 'replaces_block_convs')


def register_preset(*class_names: str):
    """Register a preset function for backbones whose class (or a base class) has a name."""

    def _register(fn):
        for name in class_names:
            PAPER_PRESETS[name] = fn
        return fn

    return _register


def find_preset(model: nn.Module):
    """The preset of ``model``'s family, or ``None``."""
    for klass in type(model).__mro__:
        if klass.__name__ in PAPER_PRESETS:
            return PAPER_PRESETS[klass.__name__]
    return None


def find_substitute(model: nn.Module, position: str) -> Optional[Tuple[str, str]]:
    """``(pattern, why)`` of :data:`SUBSTITUTES` for ``model``'s family and ``position``, or
    ``None``."""
    for klass in type(model).__mro__:
        if (klass.__name__, position) in SUBSTITUTES:
            return SUBSTITUTES[klass.__name__, position]
    return None


def _late_blocks(position: str, blocks: list, first_stage: str):
    """``'residual_end_c3_c5'`` is ``'residual_end'`` without the blocks of the first stage."""
    if position != 'residual_end_c3_c5':
        return position, blocks
    keep = [b for b in blocks if not (b[0] if isinstance(b, tuple) else b).startswith(
        first_stage + '.')]
    return 'residual_end', keep


def _stage_ends(stage_paths: List[str], position: str) -> Optional[List[str]]:
    """Places defined by stages alone: after every stage but the last, after every stage,
    or after the last two."""
    if position == 'between_stages':
        return stage_paths[:-1]
    if position == 'late_stages':
        return stage_paths[-2:]
    if position == 'after_every_stage':
        return list(stage_paths)
    return None


def _resnet_convs(model: nn.Module, blocks: list, bottleneck: bool) -> List[str]:
    """The stem conv(s), then per block conv1, conv2 (, conv3) and the downsample conv."""
    def convs_in(prefix: str) -> List[str]:
        module = model.get_submodule(prefix)
        return [f'{prefix}.{name}' for name, m in module.named_modules()
                if isinstance(m, nn.Conv2d)]

    stem = convs_in('stem') if getattr(model, 'deep_stem', False) else ['conv1']
    paths = list(stem)
    for path, block in blocks:
        paths += [f'{path}.conv{i}' for i in ((1, 2, 3) if bottleneck else (1, 2))]
        if block.downsample is not None:
            paths += convs_in(f'{path}.downsample')
    return paths


@register_preset('ResNet')
def resnet_places(model: nn.Module, position: str) -> Optional[List[str]]:
    """ResNet, ResNetV1c/V1d, ResNeXt (mmpretrain, mmdet, mmseg), Bottleneck and BasicBlock."""
    stages = list(model.res_layers)
    blocks = [(f'{stage}.{i}', block) for stage in stages
              for i, block in enumerate(getattr(model, stage))]
    bottleneck = hasattr(blocks[0][1], 'conv3')
    if position == 'before_every_conv':
        return [f'{p}:input' for p in _resnet_convs(model, blocks, bottleneck)]
    if position == 'backbone_input':
        return [f'{_resnet_convs(model, [], bottleneck)[0]}:input']
    if position == 'around_stage':  # stages 1 to 3: from block 1's input to the last block
        around = [f'{stage}.1~{stage}.{len(getattr(model, stage)) - 1}' for stage in stages[:3]
                  if len(getattr(model, stage)) > 1]
        return around if len(around) == len(stages[:3]) else None
    if position == 'stage_last_residual_end':
        position = 'residual_end'
        blocks = [(f'{stage}.{len(getattr(model, stage)) - 1}', getattr(model, stage)[-1])
                  for stage in stages]
    position, blocks = _late_blocks(position, blocks, stages[0])
    if position == 'residual_end':
        return [f'{p}.{b.norm3_name if bottleneck else b.norm2_name}' for p, b in blocks]
    if position == 'before_mid_norm':
        return [f'{p}.conv2' for p, _ in blocks]
    if position == 'after_mid_conv':  # the input of the conv after the 3x3 conv's activation
        return [f'{p}.conv3:input' if bottleneck else f'{p}.conv2:input' for p, _ in blocks]
    if position == 'after_mid_norm':
        return [f'{p}.{b.norm2_name}' for p, b in blocks] if bottleneck else None
    if position == 'replaces_mid_conv':  # a BasicBlock has no single middle conv
        return [f'{p}.conv2' for p, _ in blocks] if bottleneck else None
    if position == 'replaces_block_convs':
        return [f'{p}.conv{i}' for p, _ in blocks for i in ((1, 2, 3) if bottleneck else (1, 2))]
    return _stage_ends(stages, position)


@register_preset('SwinTransformer')
def swin_places(model: nn.Module, position: str) -> Optional[List[str]]:
    """Swin Transformer (mmpretrain, mmdet, mmseg): tokens with the blocks' hw_shape."""
    last_blocks = [f'stages.{i}.blocks.{len(stage.blocks) - 1}'
                   for i, stage in enumerate(model.stages)]
    blocks = [f'stages.{i}.blocks.{j}'
              for i, stage in enumerate(model.stages) for j in range(len(stage.blocks))]
    position, blocks = _late_blocks(position, blocks, 'stages.0')
    if position == 'residual_end':
        # the FFN's residual branch, before its add (mmcv FFN: layers -> dropout -> + x)
        return [f'{p}.ffn.layers' for p in blocks]
    return _stage_ends(last_blocks, position)


@register_preset('ConvNeXt')
def convnext_places(model: nn.Module, position: str) -> Optional[List[str]]:
    """ConvNeXt (mmpretrain): the residual branch ends with pointwise_conv2 (channels-last)."""
    blocks = [f'stages.{i}.{j}' for i, stage in enumerate(model.stages)
              for j in range(len(stage))]
    position, blocks = _late_blocks(position, blocks, 'stages.0')
    if position == 'residual_end':
        return [f'{p}.pointwise_conv2' for p in blocks]
    if position == 'before_mid_norm':
        return [f'{p}.depthwise_conv' for p in blocks]
    return _stage_ends([f'stages.{i}' for i in range(len(model.stages))], position)


@register_preset('MobileNetV2')
def mobilenet_v2_places(model: nn.Module, position: str) -> Optional[List[str]]:
    """MobileNetV2 (mmpretrain, mmdet): attention after the depthwise conv (as in CA, SE-V3)."""
    # model.layers also names the final 1x1 ConvModule ('conv2'): stages are the Sequentials
    stages = [name for name in model.layers if isinstance(getattr(model, name), nn.Sequential)]
    depthwise = []
    for stage in stages:
        for i, block in enumerate(getattr(model, stage)):
            if hasattr(block, 'depthwise_conv'):  # mmdet's InvertedResidual
                depthwise.append(f'{stage}.{i}.depthwise_conv')
            else:  # mmpretrain's: a Sequential of ConvModules
                k = next(k for k, m in enumerate(block.conv) if m.conv.groups > 1)
                depthwise.append(f'{stage}.{i}.conv.{k}')
    position, depthwise = _late_blocks(position, depthwise, stages[0])
    if position in ('residual_end', 'after_mid_conv'):
        return depthwise
    if position == 'before_mid_norm':
        return [f'{p}.conv' for p in depthwise]
    return _stage_ends(stages, position)


@register_preset('FPN')
def fpn_places(model: nn.Module, position: str) -> Optional[List[str]]:
    """FPN (mmdet, mmseg): every output level, whatever the module's paper position (but
    'around_stage', which needs stages of blocks, and the replacing positions)."""
    if position in NOT_ON_OUTPUTS:
        return None
    return [f'fpn_convs.{i}' for i in range(len(model.fpn_convs))]


def _csp_layers(model: nn.Module, stages: List[str]) -> List[str]:
    """The path of each stage's CSP layer: the child that holds the bottleneck ``blocks``
    (``stage*.1``; ``stage4.2`` after the SPP of YOLOX and CSPNeXt)."""
    paths = []
    for stage in stages:
        found = [f'{stage}.{name}' for name, child in getattr(model, stage).named_children()
                 if isinstance(getattr(child, 'blocks', None), (nn.Sequential, nn.ModuleList))]
        if len(found) != 1:
            raise ValueError(f'{type(model).__name__}.{stage} should hold one CSP layer (a child '
                             f'with bottleneck blocks), found {len(found)}: {found}')
        paths += found
    return paths


def _mid_conv(path: str, block: nn.Module) -> Tuple[str, ConvModule]:
    """``(path, ConvModule)`` of a CSP bottleneck's 'mid' conv: the spatial conv of its last
    conv module ``conv2``, whose output ends the residual branch.

    That is ``conv2`` itself when it is a ConvModule: the 3x3 conv after the 1x1 ``conv1`` in
    YOLOv5's and YOLOX's DarknetBottleneck; YOLOv8's has two 3x3 convs, and the last one is
    taken, as before_mid_norm's '(last) 3x3 conv' in ResNet's BasicBlock. When ``conv2`` is
    depthwise-separable (CSPNeXtBlock: 3x3 conv1, then 5x5 depthwise and 1x1 pointwise; YOLOX
    with ``use_depthwise``), it is the depthwise conv: like ResNet's 3x3 it sits before the
    block's last 1x1 conv, and it is the block's large-kernel spatial conv, as the depthwise
    conv is in the MobileNetV2 preset.
    """
    if hasattr(block.conv2, 'depthwise_conv'):
        return f'{path}.conv2.depthwise_conv', block.conv2.depthwise_conv
    return f'{path}.conv2', block.conv2


@register_preset('YOLOv5CSPDarknet', 'YOLOv8CSPDarknet', 'YOLOXCSPDarknet', 'CSPDarknet',
                 'CSPNeXt')
def csp_places(model: nn.Module, position: str) -> Optional[List[str]]:
    """The CSP backbones of mmyolo (YOLOv5/YOLOv8/YOLOX CSPDarknet, RTMDet's CSPNeXt) and mmdet
    (CSPDarknet, CSPNeXt): a stem, then stages of a downsampling ConvModule, a CSP layer of
    bottleneck ``blocks`` and, in the last stage, an SPP(F) block (before the CSP layer in
    YOLOX and CSPNeXt, after it in YOLOv5 and YOLOv8). No paper defines positions there; these
    are the equivalents of ResNet's on the bottlenecks of the CSP layers."""
    stages = [name for name in model.layers if name != 'stem']
    csp_layers = _csp_layers(model, stages)
    blocks = [(f'{csp}.blocks.{i}', block) for csp in csp_layers
              for i, block in enumerate(model.get_submodule(csp).blocks)]
    if position == 'backbone_input':
        return ['stem:input']
    if position == 'before_every_conv':  # stem, downsampling, CSP, bottleneck and SPP convs
        return ['.'.join(filter(None, (layer, path, 'conv:input')))
                for layer in model.layers
                for path, module in getattr(model, layer).named_modules()
                if isinstance(module, ConvModule)]
    if position == 'around_stage':  # stages 1 to 3: from the downsampling conv's output (as
        # from ResNet's block 0) through the CSP layer (the stage's other blocks)
        return [f'{csp}~{csp}' for csp in csp_layers[:3]]
    if position == 'stage_last_residual_end':
        position = 'residual_end'
        blocks = [(f'{csp}.blocks.{len(model.get_submodule(csp).blocks) - 1}',
                   model.get_submodule(csp).blocks[-1]) for csp in csp_layers]
    position, blocks = _late_blocks(position, blocks, stages[0])
    if position == 'residual_end':  # conv2 ends the branch, before the add (if add_identity)
        return [f'{p}.conv2' for p, _ in blocks]
    mids = [_mid_conv(p, b) for p, b in blocks]
    if position == 'before_mid_norm':
        return [f'{p}.conv' for p, _ in mids]
    if position == 'after_mid_norm':
        return [f'{p}.{m.norm_name}' for p, m in mids] if all(m.with_norm for _, m in mids) \
            else None
    if position == 'after_mid_conv':  # for a plain conv2 this is residual_end's place
        return [p for p, _ in mids]
    if position == 'replaces_mid_conv':  # an explicit pattern instead, see SUBSTITUTES
        return None
    if position == 'replaces_block_convs':
        return [f'{p}.{name}.conv' for p, b in blocks for name, m in b.named_modules()
                if isinstance(m, ConvModule)]
    # the CSP layers' outputs, also in the last stage of YOLOv5/YOLOv8 where the SPPF follows:
    # so the place is the same kind of module in every stage and family (YOLOX and CSPNeXt
    # put their SPP before the CSP layer)
    return _stage_ends(csp_layers, position)


@register_preset('BaseYOLONeck', 'YOLOXPAFPN', 'CSPNeXtPAFPN')
def yolo_neck_places(model: nn.Module, position: str) -> Optional[List[str]]:
    """The PAFPN necks of mmyolo (BaseYOLONeck: YOLOv5/YOLOv8/YOLOX/CSPNeXt PAFPN, ...) and
    mmdet (YOLOXPAFPN, CSPNeXtPAFPN): every output level, as in FPN (not the bottlenecks of
    the neck's CSP layers)."""
    if position in NOT_ON_OUTPUTS:
        return None
    outputs = 'out_layers' if hasattr(model, 'out_layers') else 'out_convs'
    return [f'{outputs}.{i}' for i in range(len(getattr(model, outputs)))]
