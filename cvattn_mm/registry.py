"""Registries of cvattn_mm.

Every model-side class of cvattn_mm (attention modules, heads, the insertion builder) is
registered twice:

* in mmengine's root ``MODELS``, so that ``type='SE'`` resolves from the mmdet, mmseg and
  mmpretrain registries (each is a child of the root and searches its ancestors, never its
  siblings) once ``custom_imports=dict(imports=['cvattn_mm'])`` has imported this package,
  including inside mmcv's ``build_plugin_layer``;
* in the scoped child registry :data:`MODELS` (scope ``cvattn_mm``), so that
  ``type='cvattn_mm.SE'`` resolves with no custom import at all: mmengine imports
  ``cvattn_mm.registry`` for the scope, and the registry's ``locations`` import the modules.

An unknown name looked up through this registry raises a ``KeyError`` that lists the closest
registered names; a name that papers use for several modules (:data:`AMBIGUOUS_NAMES`) raises
one that lists the candidates.
"""
import difflib

from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

#: Names that users type and that mean several modules in this ecosystem: never resolved,
#: a look-up lists the candidates (``name -> {candidate: (package, what it is)}``).
AMBIGUOUS_NAMES = {
    'EMA': {
        'EMAU': ('cvattn_mm', "EMANet's expectation-maximisation attention unit (Li et al., "
                              'ICCV 2019)'),
        'EfficientMultiScaleAttention': ('cvattn_mm', 'efficient multi-scale attention '
                                                      '(Ouyang et al., ICASSP 2023)'),
        'ExponentialMovingAverage': ('mmengine', "a moving average of the weights (custom_hooks"
                                                 "=[dict(type='EMAHook')]), not attention"),
    },
    'PSA': {
        'PolarizedSelfAttention': ('cvattn_mm', 'polarized self-attention (Liu et al., 2021)'),
        'PyramidSplitAttention': ('cvattn_mm', "EPSANet's pyramid split attention (Zhang et "
                                               'al., ACCV 2022)'),
        'PSAHead': ('mmseg', "PSANet's point-wise spatial attention head (Zhao et al., "
                             'ECCV 2018)'),
    },
    'ResidualAttention': {
        'ResidualAttentionMask': ('cvattn_mm', "the Residual Attention Network's soft mask "
                                               'branch (Wang et al., CVPR 2017)'),
        'CSRAHead': ('cvattn_mm', 'class-specific residual attention, a classification head '
                                  '(Zhu and Wu, ICCV 2021)'),
    },
}


class SuggestingRegistry(Registry):
    """A :class:`~mmengine.registry.Registry` whose failed look-ups suggest names."""

    def build(self, cfg, *args, **kwargs):
        """``Registry.build``; an unknown type (also when the current default scope moved the
        look-up to another registry) raises the error of :meth:`get`, with suggestions."""
        try:
            return super().build(cfg, *args, **kwargs)
        except KeyError as error:
            obj_type = cfg.get('type') if isinstance(cfg, dict) else None
            if isinstance(obj_type, str) and f'{obj_type} is not in the' in str(error):
                self.get(obj_type)  # raises the suggesting KeyError if no registry knows it
            raise

    def get(self, key):
        obj = super().get(key)
        if obj is None and isinstance(key, str):
            scope, real_key = self.split_scope_key(key)
            if scope in (None, self.scope):
                raise KeyError(unknown_name_message(real_key, self))
        return obj


def unknown_name_message(name, registry):
    """Text of the error for an unknown ``name`` in ``registry``."""
    known = sorted(registry.module_dict)
    if name in AMBIGUOUS_NAMES:
        missing = ', not implemented yet'
        candidates = '; '.join(
            f'{candidate} ({package}'
            f'{missing if package == "cvattn_mm" and candidate not in known else ""}): {what}'
            for candidate, (package, what) in AMBIGUOUS_NAMES[name].items())
        return f"'{name}' is ambiguous, name the module you mean: {candidates}"
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    close += [k for k in known if name.lower() in k.lower() and k not in close]
    hint = f'closest: {", ".join(close)}; ' if close else ''
    return (f"'{name}' is not a registered cvattn_mm {registry.name}: {hint}"
            f'all {len(known)}: {", ".join(known)}')


MODELS = SuggestingRegistry(
    'model',
    parent=MMENGINE_MODELS,
    scope='cvattn_mm',
    locations=['cvattn_mm.attention', 'cvattn_mm.heads', 'cvattn_mm.insertion'])


def register_model(cls=None, *, name=None):
    """Register ``cls`` in :data:`MODELS` and in mmengine's root ``MODELS``.

    Usable as ``@register_model()`` or ``@register_model(name='X')``.
    """

    def _register(module_cls):
        MODELS.register_module(name=name, module=module_cls)
        MMENGINE_MODELS.register_module(name=name, module=module_cls)
        return module_cls

    return _register if cls is None else _register(cls)
