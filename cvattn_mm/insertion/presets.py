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

PAPER_PRESETS: Dict[str, Callable[[nn.Module, str], Optional[List[str]]]] = {}

#: ``(backbone class name, paper position) -> (pattern, why)`` where a preset returns None.
SUBSTITUTES: Dict[Tuple[str, str], Tuple[str, str]] = {
    ('ResNet', 'after_mid_norm'): (
        'layer*.*.bn1', "a BasicBlock has no bottleneck 3x3 conv; its first 3x3 conv's norm "
        'takes that role (as in configs/classification/resnet18/resnet18-sk_8xb32_in1k.py)'),
}


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
    if position in ('around_stage', 'replaces_mid_conv', 'replaces_block_convs'):
        return None
    return [f'fpn_convs.{i}' for i in range(len(model.fpn_convs))]
