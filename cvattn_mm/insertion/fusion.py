"""Conv-BN fusion that keeps attention sites between a conv and its norm correct.

mmcv's ``fuse_conv_bn`` folds a BatchNorm into the Conv2d registered before it among the
children of one module. An attention site on that conv's output (or on the norm's input,
e.g. SimAM's paper position between ``conv2`` and ``bn2``) then sees ``bn(conv(x))`` instead
of ``conv(x)``, and the model silently computes something else. Insertion records such pairs
(:func:`conv_norm_pairs`), the model's pre-hook refuses to run once one was fused
(:func:`check_unfused`), and :func:`fuse_conv_bn` fuses all other pairs.

mmengine's ``efficient_conv_bn_eval`` (a config key naming modules, e.g. ``['backbone']``)
fuses by another route: it traces those modules with ``torch.fx.symbolic_trace`` and replaces
their forward with the traced graph. The trace records a call of a ``torch.nn`` layer without
its hooks, so every site hosted by a conv or a norm would vanish from the model;
:func:`check_untraced` refuses that.
"""
from typing import Iterator, List, NamedTuple, Set, Tuple

import torch
import torch.fx as fx
import torch.nn as nn

from .site import SITES, AttentionSite, IdentityBlend

#: Whether ``torch.fx.symbolic_trace`` is tracing now (not ``torch.export`` or
#: ``torch.compile``); torch releases without ``is_fx_tracing_symbolic_tracing`` have only
#: ``is_fx_tracing``.
symbolic_tracing = getattr(fx._symbolic_trace, 'is_fx_tracing_symbolic_tracing',
                           fx._symbolic_trace.is_fx_tracing)
#: The norm types that mmcv's ``fuse_conv_bn`` folds into a preceding Conv2d.
FUSED_NORMS = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)


class ConvNormPair(NamedTuple):
    """A Conv2d and the BatchNorm that mmcv's ``fuse_conv_bn`` folds into it.

    Args:
        parent (nn.Module): The module whose children they are.
        prefix (str): Path of ``parent`` in the model followed by a dot (``''`` for the
            model itself).
        conv (str): Child name of the conv.
        norm (str): Child name of the norm.
    """
    parent: nn.Module
    prefix: str
    conv: str
    norm: str

    @property
    def conv_path(self) -> str:
        return self.prefix + self.conv

    @property
    def norm_path(self) -> str:
        return self.prefix + self.norm

    def is_split_at(self, host: nn.Module, on_input: bool) -> bool:
        """Whether a site on ``host``'s output (its input if ``on_input``) lies between the
        conv and the norm."""
        return self.parent._modules[self.norm if on_input else self.conv] is host


def conv_norm_pairs(model: nn.Module) -> List[ConvNormPair]:
    """The pairs that mmcv's ``fuse_conv_bn(model)`` fuses, found by its rule.

    Among the children of a module, a BatchNorm is folded into the last Conv2d registered
    before it that no earlier BatchNorm took; any other child is searched the same way
    (the children of convs and norms are not).
    """
    return list(_pairs_in(model, '', set()))


def _pairs_in(module: nn.Module, prefix: str, seen: Set[nn.Module]) -> Iterator[ConvNormPair]:
    if module in seen:  # a shared module is fused once
        return
    seen.add(module)
    conv = None
    for name, child in module.named_children():
        if isinstance(child, FUSED_NORMS):
            if conv is not None:
                yield ConvNormPair(module, prefix, conv, name)
                conv = None
        elif isinstance(child, nn.Conv2d):
            conv = name
        else:
            yield from _pairs_in(child, f'{prefix}{name}.', seen)


def check_unfused(model: nn.Module, site: AttentionSite) -> None:
    """Raise if the conv-norm pair that ``site`` splits has been fused.

    Fusers (mmcv's ``fuse_conv_bn``, ``torch.ao.quantization.fuse_modules``) leave an
    ``nn.Identity`` where the norm was; a norm replaced by another norm (SyncBN conversion)
    passes.

    Args:
        model: The model that owns ``site`` (its paths are relative to it).
        site: One of ``model``'s attention sites.
    """
    if site.split_pair is None:
        return
    conv_path, norm_path = site.split_pair
    parent, _, name = norm_path.rpartition('.')
    norm = model.get_submodule(parent)._modules.get(name)
    if not isinstance(norm, nn.Identity):
        return
    where = (f'input of the norm {norm_path!r}, after the conv {conv_path!r}' if site.on_input
             else f'output of the conv {conv_path!r}, before its norm {norm_path!r}')
    attentions = ', '.join(type(a.attention if isinstance(a, IdentityBlend) else a).__name__
                           for a in site.attentions.values())
    raise RuntimeError(
        f'attention site {site.path!r} ({attentions}) is on the {where}, but {norm_path!r} '
        'is now Identity: the norm was folded into the conv (as mmcv.cnn.fuse_conv_bn does), '
        'so the attention would see norm(conv(x)) instead of conv(x) and the model would no '
        'longer compute what it was built and trained to compute. The fused weights cannot be '
        'taken back: rebuild or reload the model, then fuse it with '
        'cvattn_mm.insertion.fuse_conv_bn(model), which leaves the conv-norm pairs split by '
        'attention sites unfused.')


def check_untraced(model: nn.Module) -> None:
    """Raise if ``model`` is being traced by ``torch.fx.symbolic_trace``, or runs a forward
    that such a trace replaced, while some of its sites are hooked on ``torch.nn`` layers
    (which the trace records without their hooks).

    Sites hooked on other modules (blocks, stages, mmcv's ConvModule) run during the trace,
    which then records them or fails on them (a ``TraceError``), but does not drop them.

    Args:
        model: A model with attention sites (the owner of ``attention_sites``).
    """
    forward = model.__dict__.get('forward')
    replaced = isinstance(getattr(forward, '__self__', None), fx.GraphModule)
    if not (replaced or symbolic_tracing()):
        return
    tracer = fx.Tracer()  # the default tracer's leaves: torch.nn layers but Sequential
    lost = [site.path for site in getattr(model, SITES).values()
            if any(tracer.is_leaf_module(model.get_submodule(path), path)
                   for path in (site.host_path, site.wraps_from) if path is not None)]
    if lost:
        named = ', '.join(lost[:4]) + (f' and {len(lost) - 4} more' if len(lost) > 4 else '')
        raise RuntimeError(
            f'{type(model).__name__}: the attention sites at {named} are hooked on torch.nn '
            'layers, and the model is traced by torch.fx.symbolic_trace, which records them '
            "without their hooks (mmengine's efficient_conv_bn_eval config key traces the "
            'modules it names this way), so the traced model would silently compute the model '
            'without that attention. Leave the modules with attention out of '
            'efficient_conv_bn_eval; cvattn_mm.insertion.fuse_conv_bn(model) fuses the '
            'conv-norm pairs that no site splits.')


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fuse the conv-BN pairs of ``model`` that mmcv's ``fuse_conv_bn`` fuses, except the
    pairs split by an attention site, in place.

    Each fused BatchNorm is replaced by ``nn.Identity`` and its running statistics and
    affine parameters are folded into the conv's weight and bias, so the model in eval
    mode computes what it computed before. BatchNorms without running statistics
    (``track_running_stats=False``) normalise with the batch and are left unfused.
    Like mmcv, this assumes that a BatchNorm that follows a conv among the children of a
    module normalises that conv's output.

    Args:
        model: Any model, with attention inserted into it or into its submodules.

    Returns:
        ``model``.
    """
    places = _site_places(model)
    for pair in conv_norm_pairs(model):
        norm = pair.parent._modules[pair.norm]
        split = any(pair.is_split_at(host, on_input) for host, on_input in places)
        if not split and norm.running_var is not None:
            _fold(pair.parent._modules[pair.conv], norm)
            pair.parent._modules[pair.norm] = nn.Identity()
    return model


def _site_places(model: nn.Module) -> List[Tuple[nn.Module, bool]]:
    """``(host, on_input)`` of every attention site in ``model`` and its submodules."""
    places = []
    for owner in model.modules():
        sites = getattr(owner, SITES, None)
        if isinstance(sites, nn.ModuleDict):
            places += [(owner.get_submodule(s.host_path), s.on_input) for s in sites.values()]
    return places


def _fold(conv: nn.Conv2d, norm: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``norm``'s running statistics and affine parameters into ``conv`` in place
    (computed in float64, stored in the conv's dtype)."""
    with torch.no_grad():
        scale = torch.rsqrt(norm.running_var.double() + norm.eps)
        shift = -norm.running_mean.double()
        if conv.bias is not None:
            shift = shift + conv.bias.double()
        if norm.weight is not None:
            scale = scale * norm.weight.double()
        shift = shift * scale
        if norm.bias is not None:
            shift = shift + norm.bias.double()
        conv.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
        if conv.bias is None:
            conv.bias = nn.Parameter(shift.to(conv.weight.dtype))
        else:
            conv.bias.copy_(shift)
