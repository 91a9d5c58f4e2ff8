"""Config to model: load a config and build its model with the registry of its default scope.

The one builder of the package, used by the console command, the visualisation, the
analysis tools and the quickstart.
"""
import copy
import os
from typing import Optional, Union

import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope


def load_config(config: Union[str, os.PathLike, Config],
                cfg_options: Optional[dict] = None) -> Config:
    """The config of a file (or a loaded config) with ``cfg_options`` merged in.

    Args:
        config: A config file, or a :class:`~mmengine.config.Config`, which is not modified
            (options are merged into a copy).
        cfg_options: Overrides as ``--cfg-options`` gives them, ``{'model.head.topk': 1}``.
    """
    if isinstance(config, Config):
        cfg = copy.deepcopy(config) if cfg_options else config
    else:
        cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def build_model(config: Union[str, os.PathLike, Config],
                cfg_options: Optional[dict] = None,
                model_cfg: Optional[dict] = None) -> nn.Module:
    """Build a config's model with the registry of its ``default_scope``; no weights loaded.

    The scope (``mmpretrain``, ``mmdet``, ``mmseg``; ``mmengine`` when the config has none)
    is the default scope only while the model is built.

    Args:
        config: A config file or a :class:`~mmengine.config.Config`.
        cfg_options: Overrides merged into the config first (see :func:`load_config`).
        model_cfg: A model config built instead of the config's ``model``, in the same scope.
    """
    cfg = load_config(config, cfg_options)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmengine')):
        return MODELS.build(cfg.model if model_cfg is None else model_cfg)
