"""Replacing convolutions by modules built from their hyper-parameters (``replace=``).

A replacement takes the conv's place among its parent's children, under the conv's name, so
the conv's state-dict keys go and the module's come (``layer1.0.conv2.weight`` becomes, for
SKConv, ``layer1.0.conv2.branches.0.conv.weight``, ...). A module that ends with its own norm
and activation (``absorbs_norm``) also takes the place of the norm after the conv, which
becomes ``nn.Identity``. Loading a checkpoint of the plain model then reports the replaced
keys as unexpected and the module's as missing, unless the insertion asked for
``init_from_conv``: then a load pre-hook of the parent initialises the module from the
checkpoint's conv (and norm) weights, as :meth:`ConvReplacement.init_from_conv` allows.
"""
import copy
from typing import List, Optional, Sequence, Union

import torch.nn as nn
from mmengine.logging import print_log

from ..attention.conv_replacement import ConvReplacement
from .fusion import conv_norm_pairs
from .places import match_paths, paper_places


def conv_description(module: ConvReplacement) -> str:
    """The replaced conv, e.g. ``'Conv2d(64, 64, k=3, s=2, p=1, d=1, g=1)'``."""
    return (f'Conv2d({module.in_channels}, {module.out_channels}, k={module.kernel_size}, '
            f's={module.stride}, p={module.padding}, d={module.dilation}, g={module.groups}'
            f'{", bias" if module.with_bias else ""})')


def resolve_convs(model: nn.Module, patterns: Union[str, Sequence[str]],
                  cls: type) -> List[str]:
    """The conv paths of ``model`` that ``replace=`` names: ``'paper'`` (the preset of
    ``cls.paper_position``) or ``fnmatch`` patterns; each must be an ``nn.Conv2d``."""
    if patterns == 'paper':
        paths = paper_places(model, cls, 'replace')
    else:
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, (list, tuple)) or not patterns or \
                not all(isinstance(p, str) and p for p in patterns):
            raise ValueError(f"replace= must be 'paper' or module-path patterns of convs, got "
                             f'{patterns!r}')
        paths = []
        for pattern in patterns:
            paths += [p for p in match_paths(model, pattern, f"replace='{pattern}'")
                      if p not in paths]
    for path in paths:
        module = model.get_submodule(path)
        if isinstance(module, ConvReplacement):
            raise ValueError(f'replace: {path} was already replaced by '
                             f'{type(module).__name__} (a conv is replaced once)')
        if not isinstance(module, nn.Conv2d):
            raise ValueError(f'replace: {path} is a {type(module).__name__}, not a Conv2d; '
                             'replace= names convs (e.g. layer*.*.conv2)')
    return paths


def replace_conv(model: nn.Module, path: str, cls: type, options: dict,
                 init_from_conv: bool, exact: bool) -> ConvReplacement:
    """Replace the conv at ``path`` by ``cls`` built from it with ``options``.

    Args:
        model: The model.
        path: Path of an ``nn.Conv2d`` in ``model``.
        cls: A :class:`ConvReplacement` subclass.
        options: Constructor options of ``cls`` other than the conv's.
        init_from_conv: Initialise the module from the conv (now, and from the conv's keys
            when a checkpoint of the plain model is loaded).
        exact: Require that the module computes exactly what the conv (and the absorbed
            norm) computed (``identity_init=True``).

    Returns:
        The new module.
    """
    parent_path, _, name = path.rpartition('.')
    parent = model.get_submodule(parent_path)
    conv = parent._modules[name]
    module = cls.from_conv(conv, **options).to(conv.weight.device, conv.weight.dtype)
    norm_name = None
    if cls.absorbs_norm:
        pair = next((p for p in conv_norm_pairs(model) if p.conv_path == path), None)
        if pair is None:
            raise ValueError(f'{cls.__name__} ends with its own norm and activation, so it '
                             f'replaces {path} together with the BatchNorm after it, but no '
                             f'BatchNorm follows {path} among the children of '
                             f'{parent_path or "the model"}')
        norm_name = pair.norm
        _check_host_activation(parent, parent_path, path, cls)
    norm = parent._modules[norm_name] if norm_name else None
    if init_from_conv or exact:
        computes_conv = module.init_from_conv(conv, norm)
        if exact and not computes_conv:
            raise ValueError(f'identity_init: {cls.__name__} replacing {path} cannot compute '
                             f'exactly what the conv computed at initialisation ('
                             f'{cls.conv_init}); use init_from_conv=True for that partial '
                             'initialisation')
        parent._register_load_state_dict_pre_hook(
            InitFromCheckpointConv(name, norm_name, copy.deepcopy(norm)), with_module=True)
    module.__dict__['replaced'] = dict(conv=conv_description(module), norm=norm_name,
                                       params=_count(conv) + _count(norm))
    parent._modules[name] = module
    if norm_name:
        parent._modules[norm_name] = nn.Identity()
    return module


#: Activations a host may apply after the norm of a conv that a module replaces.
HOST_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU,
                    nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
                    nn.Tanh)


def _check_host_activation(parent: nn.Module, parent_path: str, path: str, cls: type) -> None:
    """A module that absorbs the norm ends with its own ReLU, and the host's activation then
    runs on its output: only a ReLU (idempotent) keeps the block's function. A parent whose
    activation children are anything else (an mmcv ConvModule with SiLU, as in the YOLO
    backbones) is refused."""
    others = sorted({type(m).__name__ for m in parent.children()
                     if isinstance(m, HOST_ACTIVATIONS) and type(m) is not nn.ReLU})
    if others:
        raise ValueError(
            f'{cls.__name__} ends with its own norm and ReLU, and the host then applies its '
            f'activation after the replaced norm; {parent_path or "the model"} applies '
            f'{", ".join(others)} there (not ReLU), so replacing {path} would change the '
            "block's function: replace convs whose norm a ReLU follows, or use a module that "
            'keeps the host\'s norm (absorbs_norm=False)')


def _count(module: Optional[nn.Module]) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


class InitFromCheckpointConv:
    """Load pre-hook of the parent of a replaced conv (``init_from_conv=True``).

    When the loaded state dict holds the replaced conv's keys (a checkpoint of the plain
    model) and not all of the module's (with their shapes: a module may name a parameter
    ``weight`` too), the module is initialised from that conv (and the
    absorbed norm) by :meth:`ConvReplacement.init_from_conv`, and the state dict is rewritten
    to hold the module's keys instead: nothing is reported missing or unexpected for it, and
    a log line says what was translated. Checkpoints of the replaced model load as they are.

    Args:
        name (str): Child name of the replaced conv in the parent.
        norm_name (str | None): Child name of the absorbed norm.
        norm (nn.Module | None): A copy of the absorbed norm (its type and options).
    """

    def __init__(self, name: str, norm_name: Optional[str], norm: Optional[nn.Module]):
        self.name = name
        self.norm_name = norm_name
        self.norm = norm

    def __call__(self, parent, state_dict, prefix, local_metadata, strict, missing_keys,
                 unexpected_keys, error_msgs):
        module = parent._modules[self.name]
        own = prefix + self.name + '.'
        if not isinstance(module, ConvReplacement) or all(  # a checkpoint of the replaced model
                own + key in state_dict and state_dict[own + key].shape == value.shape
                for key, value in module.state_dict().items()):
            return
        weight = state_dict.get(own + 'weight')
        conv = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size,
                         module.stride, module.padding, module.dilation, module.groups,
                         module.with_bias)
        if weight is None or tuple(weight.shape) != tuple(conv.weight.shape):
            return
        conv_keys = [own + key for key in conv.state_dict()]
        norm_keys = []
        norm = None
        if self.norm_name:
            norm = copy.deepcopy(self.norm)
            norm_keys = [f'{prefix}{self.norm_name}.{key}' for key in norm.state_dict()]
            if not all(key in state_dict for key in norm_keys):
                return
            norm.load_state_dict({k[len(prefix + self.norm_name) + 1:]: state_dict[k]
                                  for k in norm_keys})
        conv.load_state_dict({k[len(own):]: state_dict[k] for k in conv_keys})
        work = copy.deepcopy(module).cpu()
        exact = work.init_from_conv(conv.to(weight.dtype), norm)
        for key in conv_keys + norm_keys:
            del state_dict[key]
        for key, value in work.state_dict().items():
            state_dict[own + key] = value
        took = ', '.join(sorted(conv_keys + norm_keys))
        print_log(f'{prefix}{self.name}: {type(module).__name__} initialised from the '
                  f'checkpoint\'s {took} ({"exactly the conv" if exact else "partly"})',
                  logger='current')
