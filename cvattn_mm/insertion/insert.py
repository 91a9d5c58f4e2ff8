"""Insert attention modules into any model, keeping its own state-dict keys unchanged.

Each insertion names an attention config and places. The modules live in one
``attention_sites`` ModuleDict added to the model, and forward hooks on the host modules
pass the hosts' outputs through them, so:

* every original key of the model's state dict is unchanged (pretrained checkpoints load;
  only ``attention_sites.*`` keys are missing, and reported as such);
* the model keeps its class, attributes, ``frozen_stages``, ``norm_eval``, ``init_cfg`` and
  ``out_indices``; ``frozen_stages`` does not freeze the inserted attention;
* hooks are re-attached when a host module is replaced (e.g. SyncBN conversion);
* a site between a conv and its BatchNorm refuses to run once the pair was fused (mmcv's
  ``fuse_conv_bn``); ``fusion.fuse_conv_bn`` fuses every other pair;
* an 'around' site (``at='layer1.1~layer1.2'``) gives its modules the output of the last
  module and the input of the first: a pre-hook on the first records it, a hook on the last
  applies the site.

An insertion with ``replace=`` instead of ``at=`` replaces convolutions by modules built from
their hyper-parameters (``replace.py``): the conv's keys go, the module's come.
"""
import copy
import inspect
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import DefaultScope

from ..attention.base import AttentionModule, loads_checkpoint
from ..attention.conv_replacement import ConvReplacement
from ..registry import MODELS, register_model
from .fusion import check_unfused, check_untraced, conv_norm_pairs
from .places import candidate_message, resolve_places
from .replace import replace_conv, resolve_convs
from .site import (
    AROUND_SEP,
    INPUT_SUFFIX,
    LAYOUTS,
    SITES,
    ApplyAroundSite,
    ApplySite,
    ApplySiteToInput,
    AttentionSite,
    IdentityBlend,
    RecordHWShape,
    RecordWrappedInput,
    host_of,
)

INSERTION_KEYS = ('attention', 'at', 'replace', 'identity_init', 'init_from_conv', 'layout')
#: Default scopes of models with spatial targets (boxes, masks, keypoints).
DENSE_TASK_SCOPES = ('mmdet', 'mmseg', 'mmyolo', 'mmrotate', 'mmpose')


def site_key(path: str) -> str:
    """Key of a site in the ``attention_sites`` ModuleDict (ModuleDict keys have no dots)."""
    return path.replace('.', '-')


def insert_attention(model: nn.Module,
                     insertions: Sequence[dict],
                     example_inputs: Optional[Tuple] = None) -> nn.Module:
    """Insert attention into ``model`` in place and return it.

    Args:
        model: Any ``nn.Module`` (a backbone, a neck, a whole detector...).
        insertions: A list of dicts with ``attention`` (a registered attention config,
            without ``in_channels``: it is inferred; or its type name, ``'CBAM'``), ``at``
            (``'paper'`` or path patterns, default ``'paper'``), ``identity_init`` (default
            False: when True the attention is blended in by a zero-initialised gain, so the
            model computes exactly what it computed without it), ``layout`` (optional
            override of the inferred layout). Several insertions at one place apply in the
            given order. An insertion of a conv-replacing module (``ConvReplacement``) gives
            ``replace`` instead of ``at``: ``'paper'`` or path patterns of convs
            (``'layer*.*.conv2'``); the module is built from each conv's hyper-parameters and
            takes its place; ``init_from_conv=True`` initialises it from the conv's weights
            (now, and when a checkpoint of the plain model is loaded) where its math allows,
            and ``identity_init=True`` requires that it then computes exactly the conv.
        example_inputs: Inputs of one forward pass used to infer the channels and layouts
            of the hosts; by default an image of 224x224 (necks: maps of the ``in_channels``).

    Returns:
        ``model``, with an ``attention_sites`` ModuleDict.
    """
    plans = [_plan(model, dict(insertion)) for insertion in _checked_list(insertions)]
    if callable(getattr(model, 'init_weights', None)) and \
            not isinstance(model.__dict__.get('init_weights'), InitInsertedLast):
        model.init_weights = InitInsertedLast(model)
    replacing = [plan for plan in plans if plan['replace']]
    if replacing:
        _sites_of(model)  # the model's attention lives under it (the report looks there)
        taken = [p for plan in replacing for p in plan['paths']]
        twice = sorted({p for p in taken if taken.count(p) > 1})
        if twice:
            raise ValueError(f'replace: {twice} named by more than one insertion (a conv is '
                             'replaced once)')
    for plan in replacing:
        options = {k: v for k, v in plan['attention'].items() if k != 'type'}
        for path in plan['paths']:
            replace_conv(model, path, plan['cls'], options, plan['init_from_conv'],
                         plan['identity_init'])
    if replacing:  # a replacement in a frozen stage is frozen like the conv it replaced
        for module in model.modules():
            if callable(getattr(module, '_freeze_stages', None)):
                module._freeze_stages()
    plans = [plan for plan in plans if not plan['replace']]
    for plan in plans:  # before the model changes
        for path in plan['paths']:
            if AROUND_SEP in path:
                _check_takes_wrapped_input(plan['cls'], path)
    sites = _sites_of(model)
    order = {p: i for i, (p, _) in enumerate(model.named_modules())}
    new_paths = sorted({p for plan in plans for p in plan['paths'] if site_key(p) not in sites},
                       key=lambda p: (order[host_of(p)], p))
    probes = [q for p in new_paths for q in _probe_paths(p)]
    outputs = probe_outputs(model, list(dict.fromkeys(probes)), example_inputs)
    pairs = conv_norm_pairs(model)
    for path in new_paths:
        host = model.get_submodule(host_of(path))
        output = outputs[_probe_paths(path)[-1]]
        layout = next((pl['layout'] for pl in plans if path in pl['paths'] and pl['layout']),
                      None) or infer_layout(host, output, path)
        channels = output.shape[1] if layout == 'nchw' else output.shape[-1]
        site = AttentionSite(path, layout, channels)
        if site.wraps_from is not None:
            _check_around(site, outputs[_probe_paths(path)[0]])
        split = next((p for p in pairs if p.is_split_at(host, site.on_input)), None)
        site.split_pair = None if split is None else (split.conv_path, split.norm_path)
        sites[site_key(path)] = site
        attach_site(model, site)
    for plan in plans:
        for path in plan['paths']:
            site = sites[site_key(path)]
            # built from the class found in cvattn_mm's registry: a build by name would look
            # in the default scope's registry first (mmyolo registers its own CBAM)
            attention = MODELS.build(dict(plan['attention'], type=plan['cls'],
                                          in_channels=site.channels))
            if plan['identity_init']:
                attention = IdentityBlend(attention)
            name = type(attention.attention if plan['identity_init'] else attention)._abbr_
            site.attentions[_unique(name, site.attentions)] = attention
    return model


def _probe_paths(path: str) -> List[str]:
    """The places whose tensors a site at ``path`` needs: for an 'around' site, the input of
    its first module and the output of its last; else ``path`` itself."""
    if AROUND_SEP in path:
        first, last = path.split(AROUND_SEP)
        return [first + INPUT_SUFFIX, last]
    return [path]


def _check_around(site: AttentionSite, wrapped_input) -> None:
    """An 'around' site needs NCHW maps and an input of its first module with the channels
    of its last module's output."""
    if site.layout != 'nchw':
        raise ValueError(f'around place {site.path!r}: around sites take (N, C, H, W) maps, '
                         f'got layout {site.layout!r}')
    if wrapped_input.dim() != 4 or wrapped_input.shape[1] != site.channels:
        raise ValueError(f'around place {site.path!r}: the input of {site.wraps_from!r} has '
                         f'shape {tuple(wrapped_input.shape)}, the output of '
                         f'{site.host_path!r} has {site.channels} channels; the module reads '
                         'both, so they need the same channels (N, C, H, W)')


def _check_takes_wrapped_input(cls: type, path: str) -> None:
    """Modules of an 'around' site are called as ``forward(x, mask_input)``."""
    params = list(inspect.signature(cls.forward).parameters.values())[1:]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in params):
        raise ValueError(f'around place {path!r}: {cls.__name__}.forward takes only x, but an '
                         "around site calls forward(x, mask_input) (the first module's "
                         'input); use a plain place (module-path pattern) for it')


def _checked_list(insertions) -> list:
    """``insertions`` if it is a list (or tuple) of dicts, else a ValueError saying so."""
    if isinstance(insertions, (list, tuple)) and all(isinstance(i, dict) for i in insertions):
        return list(insertions)
    hint = ' (put it in a list: [dict(...)])' if isinstance(insertions, dict) else ''
    raise ValueError("insertions= takes a list of dicts such as [dict(attention=dict(type="
                     f"'CBAM'), at='paper')], got {type(insertions).__name__} "
                     f'{insertions!r}{hint}')


def _plan(model: nn.Module, insertion: dict) -> dict:
    unknown = sorted(set(insertion) - set(INSERTION_KEYS))
    if unknown or 'attention' not in insertion:
        raise ValueError(f'an insertion takes the keys {INSERTION_KEYS} (attention required), '
                         f'got {sorted(insertion)}')
    attention = insertion['attention']
    attention = dict(type=attention) if isinstance(attention, str) else attention
    if not isinstance(attention, dict):
        raise ValueError("an insertion's attention is a config dict (dict(type='CBAM', "
                         f"reduction=8)) or a type name ('CBAM'), got {attention!r}")
    attention = copy.deepcopy(dict(attention))
    if 'type' not in attention:
        raise ValueError(f'insertion attention config needs a type, got {attention}')
    if 'in_channels' in attention:
        raise ValueError(f"insertion of {attention['type']}: remove in_channels="
                         f"{attention['in_channels']}, the channels are inferred at each place")
    cls = MODELS.get(attention['type'])
    if not (isinstance(cls, type) and issubclass(cls, AttentionModule)):
        raise ValueError(f"insertion attention type {attention['type']!r} is not an "
                         'attention module of cvattn_mm')
    if 'replace' in insertion or issubclass(cls, ConvReplacement):
        return _replace_plan(model, insertion, attention, cls)
    if insertion.get('init_from_conv'):
        raise ValueError(f"insertion of {attention['type']}: init_from_conv is for modules "
                         'that replace a conv (replace=)')
    scope = DefaultScope.get_current_instance()
    if cls.warps_geometry and scope is not None and scope.scope_name in DENSE_TASK_SCOPES:
        raise ValueError(
            f"{attention['type']} warps the features spatially, which a "
            f'{scope.scope_name} model cannot take: its boxes or masks would need the same '
            'warp. Use it in classifiers; for learned spatial sampling in detectors and '
            "segmentors use DeformableAttention2D or mmcv's deformable convolutions (DCN)")
    layout = insertion.get('layout')
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f'insertion layout must be one of {tuple(LAYOUTS)}, got {layout!r}')
    return dict(attention=attention, cls=cls, layout=layout, replace=False,
                identity_init=bool(insertion.get('identity_init', False)),
                paths=resolve_places(model, insertion.get('at', 'paper'), cls))


def _replace_plan(model: nn.Module, insertion: dict, attention: dict, cls: type) -> dict:
    """The plan of a ``replace=`` insertion (a ConvReplacement, no ``at``/``layout``)."""
    name = attention['type']
    if not issubclass(cls, ConvReplacement):
        raise ValueError(f'insertion of {name}: replace= takes modules that replace a conv '
                         f'({", ".join(_replacement_names())}); {name} is inserted with at=')
    if 'replace' not in insertion:
        raise ValueError(f"insertion of {name}: it replaces convs, so the insertion names them "
                         f"with replace= ('paper' or conv path patterns such as "
                         f"'layer*.*.conv2'), not at=")
    wrong = sorted({'at', 'layout'} & set(insertion))
    if wrong:
        raise ValueError(f'insertion of {name}: {wrong} are for inserted modules; a replacement '
                         'takes the place and layout of the conv it replaces')
    return dict(attention=attention, cls=cls, layout=None, replace=True,
                identity_init=bool(insertion.get('identity_init', False)),
                init_from_conv=bool(insertion.get('init_from_conv', False)),
                paths=resolve_convs(model, insertion['replace'], cls))


def _replacement_names() -> List[str]:
    return sorted(n for n, c in MODELS.module_dict.items()
                  if isinstance(c, type) and issubclass(c, ConvReplacement))


def _sites_of(model: nn.Module) -> nn.ModuleDict:
    sites = getattr(model, SITES, None)
    if sites is None:
        if isinstance(model, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            raise ValueError(f'cannot insert attention into a bare {type(model).__name__}: it '
                             'runs or lists all its children, the attention sites included; '
                             'insert into a Module that holds it')
        if hasattr(model, SITES):
            raise ValueError(f'{type(model).__name__} already has an attribute {SITES!r}')
        sites = nn.ModuleDict()
        model.add_module(SITES, sites)
        model.register_forward_pre_hook(KeepSitesAttached())
    return sites


def _unique(name: str, taken) -> str:
    if name not in taken:
        return name
    i = 2
    while f'{name}_{i}' in taken:
        i += 1
    return f'{name}_{i}'


def infer_layout(host: nn.Module, output: torch.Tensor, path: str) -> str:
    """``'tokens'`` for (N, L, C) outputs, ``'nhwc'`` for rank-4 outputs of Linear layers
    (channels-last blocks), ``'nchw'`` for other rank-4 outputs."""
    if output.dim() == 3:
        return 'tokens'
    if output.dim() == 4:
        return 'nhwc' if isinstance(host, nn.Linear) else 'nchw'
    raise ValueError(f'cannot insert attention after {path}: its output has shape '
                     f'{tuple(output.shape)}; attention needs (N, C, H, W), (N, H, W, C) or '
                     '(N, L, C) outputs')


def attach_site(model: nn.Module, site: AttentionSite) -> None:
    """(Re-)attach the hooks of ``site`` to its host module in ``model``."""
    for handle in site.__dict__.pop('_handles', ()):
        handle.remove()
    host = model.get_submodule(site.host_path)
    if site.wraps_from is not None:
        first = model.get_submodule(site.wraps_from)
        handles = [first.register_forward_pre_hook(RecordWrappedInput(site)),
                   host.register_forward_hook(ApplyAroundSite(site))]
        site.__dict__['_first'] = first
    else:
        handles = [host.register_forward_pre_hook(ApplySiteToInput(site)) if site.on_input
                   else host.register_forward_hook(ApplySite(site))]
    if site.layout == 'tokens':
        block, position = _hw_shape_owner(model, site.host_path)
        handles.append(block.register_forward_pre_hook(RecordHWShape(site, position),
                                                        with_kwargs=True))
    site.__dict__['_handles'] = handles
    site.__dict__['_host'] = host


def _hw_shape_owner(model: nn.Module, path: str):
    """The closest module on ``path`` (itself included) whose forward takes ``hw_shape``."""
    parts = path.split('.')
    for depth in range(len(parts), 0, -1):
        module = model.get_submodule('.'.join(parts[:depth]))
        params = list(inspect.signature(module.forward).parameters)
        if 'hw_shape' in params:
            return module, params.index('hw_shape')
    raise ValueError(f'{path} outputs tokens, but no module on its path takes hw_shape in its '
                     "forward, so their (H, W) is unknown; pass layout='nchw' or 'nhwc' if "
                     'the output is a map')


class InitInsertedLast:
    """``model.init_weights`` of a model with inserted modules: the model's own, then the
    inserted modules' (their papers' initialisation, ``init_special``).

    mmengine's ``init_weights`` descends only through children that are ``BaseModule``s, so it
    never reaches modules in plain ``nn.Sequential`` stages (mmpretrain's ResLayer) or in
    ``attention_sites``; and a backbone's ``init_cfg`` (Kaiming on every Conv2d, constant 1 on
    every norm of its subtree) overwrites their initialisation (GC's zero last conv, ACmix's
    shift kernels). So they are initialised again after it, unless the model's ``init_cfg``
    loads a checkpoint: then it did not touch them, and it may have initialised replacements
    from the checkpoint's convs (``init_from_conv``).
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self) -> None:
        model = self.model
        type(model).init_weights(model)
        if loads_checkpoint(getattr(model, 'init_cfg', None)):
            return
        for module in outermost_attention(model):
            module._is_init = False
            module.init_weights()


def outermost_attention(model: nn.Module) -> List[AttentionModule]:
    """The attention modules of ``model`` that are not inside another one."""
    found: List[Tuple[str, AttentionModule]] = []
    for path, module in model.named_modules():
        if isinstance(module, AttentionModule) and \
                not any(path.startswith(p + '.') for p, _ in found):
            found.append((path, module))
    return [m for _, m in found]


class KeepSitesAttached:
    """Forward pre-hook of the model: re-attaches sites whose host module was replaced and
    refuses to run a site whose conv-norm pair was fused (``fusion.check_unfused``) or a
    model whose trace drops sites (``fusion.check_untraced``)."""

    def __call__(self, model, args):
        check_untraced(model)
        for site in getattr(model, SITES).values():
            check_unfused(model, site)
            first = site.wraps_from
            if site.__dict__.get('_host') is not model.get_submodule(site.host_path) or (
                    first is not None and
                    site.__dict__.get('_first') is not model.get_submodule(first)):
                attach_site(model, site)


def probe_outputs(model: nn.Module, paths: List[str],
                  example_inputs: Optional[Tuple] = None) -> Dict[str, torch.Tensor]:
    """Outputs (inputs, for ``':input'`` paths) of the modules at ``paths`` during one
    forward pass in eval mode."""
    if not paths:
        return {}
    if example_inputs is None:
        example_inputs = default_example_inputs(model)
    outputs, handles = {}, []
    for path in paths:
        host = model.get_submodule(path.removesuffix(INPUT_SUFFIX))
        if path.endswith(INPUT_SUFFIX):
            def record_input(module, args, path=path):
                outputs[path] = args[0] if args else None
            handles.append(host.register_forward_pre_hook(record_input))
        else:
            def record(module, args, output, path=path):
                outputs[path] = output
            handles.append(host.register_forward_hook(record))
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    for path in paths:
        if path not in outputs:
            raise ValueError(f'{path} is not called by the forward pass of '
                             f'{type(model).__name__}, so attention there would never run; '
                             f'{candidate_message(model, path)}')
        if not isinstance(outputs[path], torch.Tensor):
            raise ValueError(f'cannot insert attention at {path}: it gives '
                             f'{type(outputs[path]).__name__}, not a tensor; choose one of its '
                             f'submodules; {candidate_message(model, path + ".")}')
    return outputs


def _widened(model: nn.Module) -> List[int]:
    """mmyolo's ``make_divisible(c, widen_factor)`` (to a multiple of 8) of each level."""
    return [math.ceil(c * model.widen_factor / 8) * 8 for c in model.in_channels]


#: Necks that keep the ``in_channels`` they were given and widen them when they build their
#: layers (mmyolo 0.6's YOLOv5PAFPN and YOLOv8PAFPN): the channels of their real inputs.
NECK_INPUT_CHANNELS: Dict[str, Callable[[nn.Module], List[int]]] = {
    'YOLOv5PAFPN': _widened, 'YOLOv8PAFPN': _widened}


def default_example_inputs(model: nn.Module, size: int = 224) -> Tuple:
    """One image whose channels are those of the first conv (for necks with a list of
    ``in_channels``: one map per level, at strides 4, 8, 16, ...)."""
    param = next(model.parameters(), None)
    kwargs = dict(dtype=param.dtype if param is not None else torch.float32,
                  device=param.device if param is not None else 'cpu')
    in_channels = getattr(model, 'in_channels', None)
    widen = next((NECK_INPUT_CHANNELS[k.__name__] for k in type(model).__mro__
                  if k.__name__ in NECK_INPUT_CHANNELS), None)
    if widen is not None:
        in_channels = widen(model)
    if isinstance(in_channels, (list, tuple)):
        return (tuple(torch.zeros(1, c, size // 4 >> i, size // 4 >> i, **kwargs)
                      for i, c in enumerate(in_channels)), )
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first_conv.in_channels if first_conv is not None else 3
    return (torch.zeros(1, channels, size, size, **kwargs), )


@register_model(name='InsertAttention')
def build_with_attention(module: dict, insertions: Sequence[dict],
                         example_inputs: Optional[Tuple] = None, **module_options) -> nn.Module:
    """Config builder: ``dict(type='InsertAttention', module=<any model config>,
    insertions=[dict(attention=dict(type='CBAM'), at='paper'), ...])``.

    ``module`` is built by the registry of the current default scope (mmdet, mmseg,
    mmpretrain), or by its own scope prefix (``'mmpretrain.ResNet'``). Other keyword arguments
    go to ``module``: parents that set options of their backbone config (mmseg's segmentors
    set ``pretrained``) work as with the plain backbone.
    """
    module = dict(module, **module_options)
    return insert_attention(_build_module(module), insertions, example_inputs)


def _build_module(module: dict) -> nn.Module:
    """``module`` built by mmengine's registry; an unscoped type without a default scope
    raises a KeyError that names the two ways to give one."""
    try:
        return MMENGINE_MODELS.build(module)
    except KeyError as error:
        name = module.get('type')
        if not (isinstance(name, str) and '.' not in name and f'{name} is not in the' in
                str(error) and DefaultScope.get_current_instance() is None):
            raise
        raise KeyError(f"InsertAttention: module type '{name}' needs a scope, and no default "
                       f"scope is set: write a scoped type (type='mmpretrain.{name}', "
                       f"'mmdet.{name}', 'mmseg.{name}'), or call mmengine.registry."
                       "init_default_scope('mmpretrain') (or 'mmdet', 'mmseg') before "
                       'building') from error
