"""What a model's attention is and where: one row per inserted module and per plug-in.

Three mechanisms add attention to a model: ``InsertAttention`` with ``at=`` (sites under
``attention_sites``) or ``replace=`` (modules in place of convs), and ``plugins=``: mmdet's
and mmseg's ResNet (modules of the Bottleneck blocks, named in their
``after_conv{1,2,3}_plugin_names``) and mmyolo's backbones (modules appended to the stages
they select). All are listed, in forward order.
"""
from typing import Dict, List, Tuple

import torch.nn as nn

from ..attention.conv_replacement import ConvReplacement
from .insert import SITES
from .site import IdentityBlend

#: Bottleneck attributes naming the plug-ins after a conv, and that conv.
PLUGIN_POSITIONS = {f'after_conv{i}': f'conv{i}' for i in (1, 2, 3)}


def insertion_rows(model: nn.Module) -> List[Dict]:
    """Rows ``module, path, via, channels, layout, attention, name, identity_init, params,
    replaced_params``.

    ``module`` is the path of the module that the config gives the attention to (the
    ``module`` of an ``InsertAttention``, the ResNet with ``plugins=``; ``''`` for ``model``
    itself) and ``path`` is relative to it, so an inserted row's path can be pasted into
    ``at=`` of that ``InsertAttention``. ``via`` is ``'insertions'`` or
    ``'plugins <position>'``.

    Args:
        model: A built model (a backbone, a detector, a segmentor...).
    """
    order = {path: i for i, (path, _) in enumerate(model.named_modules())}
    rows = []
    for prefix, module in model.named_modules():
        sites = getattr(module, SITES, None)
        if isinstance(sites, nn.ModuleDict):
            rows += _site_rows(prefix, sites)
            rows += _replacement_rows(prefix, module)
        rows += _plugin_rows(model, prefix, module)
        rows += _stage_plugin_rows(prefix, module)
    return [row for _, row in sorted(rows, key=lambda r: order[r[0]])]


def _site_rows(prefix: str, sites: nn.ModuleDict) -> List[Tuple[str, Dict]]:
    """``(host path in the model, row)`` for every module of every site in ``sites``."""
    rows = []
    for site in sites.values():
        for name, attention in site.attentions.items():
            blended = isinstance(attention, IdentityBlend)
            inner = attention.attention if blended else attention
            rows.append((_join(prefix, site.host_path), dict(
                module=prefix, path=site.path, via='insertions', channels=site.channels,
                layout=site.layout, attention=type(inner).__name__, name=name,
                identity_init=blended, params=_count(attention), replaced_params=0)))
    return rows


def _replacement_rows(prefix: str, owner: nn.Module) -> List[Tuple[str, Dict]]:
    """``(path in the model, row)`` for every module of ``owner`` that replaced a conv."""
    rows = []
    for path, module in owner.named_modules():
        replaced = module.__dict__.get('replaced') if isinstance(module, ConvReplacement) \
            else None
        if replaced is None:
            continue
        via = f'replaces {replaced["conv"]}' + (
            f' and {replaced["norm"]}' if replaced['norm'] else '')
        rows.append((_join(prefix, path), dict(
            module=prefix, path=path, via=via, channels=module.in_channels, layout='nchw',
            attention=type(module).__name__, name=module._abbr_, identity_init=False,
            params=_count(module), replaced_params=replaced['params'])))
    return rows


def _plugin_rows(model: nn.Module, prefix: str, block: nn.Module) -> List[Tuple[str, Dict]]:
    """``(plug-in path in the model, row)`` for every plug-in of the block at ``prefix``."""
    rows = []
    for position, conv in PLUGIN_POSITIONS.items():
        for name in getattr(block, f'{position}_plugin_names', None) or ():
            owner, full = _plugin_owner(model, prefix), _join(prefix, name)
            plugin = getattr(block, name)
            rows.append((full, dict(
                module=owner, path=full[len(owner) + 1:] if owner else full,
                via=f'plugins {position}', channels=getattr(block, conv).out_channels,
                layout='nchw', attention=type(plugin).__name__, name=name,
                identity_init=False, params=_count(plugin), replaced_params=0)))
    return rows


def _stage_plugin_rows(prefix: str, backbone: nn.Module) -> List[Tuple[str, Dict]]:
    """``(plug-in path in the model, row)`` for every plug-in of an mmyolo backbone: its
    ``make_stage_plugins`` appends the plug-ins that select a stage (``stages=None``: every
    stage) to the end of that stage, in the order of ``plugins``."""
    plugins = getattr(backbone, 'plugins', None)
    if not plugins or not any(k.__name__ == 'BaseBackbone' and k.__module__.startswith('mmyolo.')
                              for k in type(backbone).__mro__):
        return []
    rows = []
    for index, stage_name in enumerate(backbone.layers[1:]):  # layers[0] is the stem
        stage = getattr(backbone, stage_name)
        count = sum(p.get('stages') is None or bool(p['stages'][index]) for p in plugins)
        for k in range(len(stage) - count, len(stage)):
            plugin, path = stage[k], f'{stage_name}.{k}'
            rows.append((_join(prefix, path), dict(
                module=prefix, path=path, via=f'plugins {stage_name}',
                channels=getattr(plugin, 'in_channels', None), layout='nchw',
                attention=type(plugin).__name__, name=path, identity_init=False,
                params=_count(plugin), replaced_params=0)))
    return rows


def _plugin_owner(model: nn.Module, block_path: str) -> str:
    """The closest ancestor of a plug-in block that holds ``plugins`` and is no block."""
    parts = block_path.split('.')
    for depth in range(len(parts) - 1, -1, -1):
        path = '.'.join(parts[:depth])
        ancestor = model.get_submodule(path)
        if getattr(ancestor, 'plugins', None) and \
                not hasattr(ancestor, 'after_conv1_plugin_names'):
            return path
    return ''


def _join(prefix: str, path: str) -> str:
    return f'{prefix}.{path}' if prefix else path


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def format_rows(rows: List[Dict], total_params: int) -> str:
    """A plain-text table of :func:`insertion_rows` with totals.

    Args:
        rows: Rows of :func:`insertion_rows`.
        total_params: Parameters of the whole model, attention included.
    """
    header = ('module', 'path', 'channels', 'layout', 'attention', 'params', 'via')
    cells = [(r['module'] or '(model)', r['path'], str(r['channels']), r['layout'],
              r['attention'] + (' (identity init)' if r['identity_init'] else ''),
              f'{r["params"]:,d}', r['via']) for r in rows]
    widths = [max(len(row[i]) for row in [header] + cells) for i in range(len(header) - 1)]
    right = {2, 3, 5}  # numbers and the layout are right-aligned
    lines = ['  '.join([cell.rjust(w) if i in right else cell.ljust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))] + [row[-1]])
             for row in [header] + cells]
    added = sum(r['params'] - r['replaced_params'] for r in rows)
    plugins = sum(r['via'].startswith('plugins') for r in rows)
    replacing = sum(r['via'].startswith('replaces') for r in rows)
    kinds = [f'{len(rows) - plugins - replacing} inserted'] + \
        ([f'{replacing} replacing convs'] if replacing else []) + [f'{plugins} plug-ins']
    lines.append(f'{len(rows)} attention modules ({", ".join(kinds)}), {added:,d} parameters '
                 f'added; model {total_params:,d} parameters ({total_params - added:,d} '
                 'without attention)')
    if plugins < len(rows):
        lines.append("paths of inserted modules are relative to their module: paste them "
                     "into at= (replace= for replacing modules) of that module's "
                     'InsertAttention')
    return '\n'.join(lines)
