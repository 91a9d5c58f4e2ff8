"""Checks of ``plugins=`` in a model config (mmdet's and mmseg's ResNet, mmyolo's backbones),
before it is built (tools/train.py, ``cvattn-mm insertions``).

Built as is, a mistyped plug-in type fails in mmcv's ``build_plugin_layer`` with "Cannot find
None in registry", plug-ins on a BasicBlock ResNet fail with mmdet's "Not implemented yet.",
and a plug-in type that another toolbox also registers (mmyolo's ``CBAM``) silently builds
that toolbox's class under its scope. :func:`check_plugins` says what is wrong and what to
write instead.
"""
import difflib
import logging
from typing import Any

from mmengine.logging import print_log
from mmengine.registry import MODELS

from ..registry import MODELS as CVATTN_MODELS


def check_plugins(model_cfg: Any, scope: str) -> None:
    """Check every ``plugins=`` list found in ``model_cfg`` (at any depth).

    Args:
        model_cfg: A model config (dicts and lists).
        scope: The config's default scope (``'mmdet'``, ``'mmseg'``, ``'mmyolo'``).

    Raises:
        KeyError: A plug-in type is not registered (the closest names are listed).
        ValueError: ``plugins=`` is given to a ResNet whose depth builds BasicBlocks.
    """
    with MODELS.switch_scope_and_registry(scope) as registry:
        _check(model_cfg, registry)


def _check(cfg: Any, registry) -> None:
    if isinstance(cfg, (list, tuple)):
        for item in cfg:
            _check(item, registry)
    if not isinstance(cfg, dict):
        return
    plugins = cfg.get('plugins')
    if isinstance(plugins, (list, tuple)) and plugins:
        types = [plugin['cfg'].get('type') for plugin in plugins
                 if isinstance(plugin, dict) and isinstance(plugin.get('cfg'), dict)]
        for plugin_type in types:
            _check_type(plugin_type, registry)
        _check_block(cfg, types, registry)
    for value in cfg.values():
        _check(value, registry)


def _check_type(plugin_type: Any, registry) -> None:
    if not isinstance(plugin_type, str):
        return  # a class, or no type (mmcv says so)
    found = registry.get(plugin_type)
    ours = CVATTN_MODELS.module_dict.get(plugin_type)
    if found is not None and ours is not None and found is not ours:
        print_log(f'plugins=: type {plugin_type!r} resolves to {found.__module__}.'
                  f"{found.__name__} in the {registry.scope} scope, not to cvattn_mm's "
                  f"{plugin_type}; write type='cvattn_mm.{plugin_type}' for cvattn_mm's",
                  logger='current', level=logging.WARNING)
    if found is not None:
        return
    known = sorted(set(registry.module_dict) | set(MODELS.module_dict))
    close = difflib.get_close_matches(str(plugin_type), known, n=5, cutoff=0.5)
    raise KeyError(f'plugins=: plug-in type {plugin_type!r} is not registered in the '
                   f'{registry.scope} scope; closest: {", ".join(close) or "none"}')


def _check_block(cfg: dict, types: list, registry) -> None:
    """``plugins=`` needs Bottleneck blocks (the BasicBlock of mmdet and mmseg refuses it)."""
    backbone = cfg.get('type')
    backbone = registry.get(backbone) if isinstance(backbone, str) else backbone
    depths = getattr(backbone, 'arch_settings', {})
    if cfg.get('depth') not in depths or hasattr(depths[cfg['depth']][0], 'make_block_plugins'):
        return
    bottleneck = [d for d, (block, _) in depths.items() if hasattr(block, 'make_block_plugins')]
    insertions = ', '.join(f"dict(attention=dict(type='{getattr(t, '__name__', t)}'), "
                           "at='paper')" for t in types)
    raise ValueError(
        f"plugins= needs Bottleneck blocks, but {cfg['type']} depth={cfg['depth']} builds "
        f'{depths[cfg["depth"]][0].__name__}s (plug-ins need depth {bottleneck}); '
        "InsertAttention works on BasicBlocks: dict(type='InsertAttention', module=<this "
        f'backbone without plugins>, insertions=[{insertions}])')
