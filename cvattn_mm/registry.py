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
registered names.
"""
import difflib

from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry


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
