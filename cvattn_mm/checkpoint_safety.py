"""Let torch >= 2.6 load mmengine's own checkpoints with ``weights_only=True``, and no more.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; since torch 2.6 that means
``weights_only=True``, whose unpickler refuses the objects an mmengine checkpoint holds
besides tensors (the message hub's ``HistoryBuffer`` with its numpy arrays), so ``resume``
and ``load_from`` fail. Instead of turning the check off (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``)
this allow-lists exactly what such a checkpoint needs; any other pickled object is refused.
Rule: importing this library must never make loading an untrusted checkpoint easier.

What an mmengine checkpoint needs, and how each need is met:

* ``HistoryBuffer`` itself, numpy's ``_reconstruct``/``scalar``, ``ndarray``, ``dtype`` and the
  dtype classes: allow-listed as they are (they only rebuild arrays and buffers from data).
* ``builtins.getattr``. ``HistoryBuffer.__getstate__`` pickles its ``_statistics_methods``
  (``HistoryBuffer.min/max/current/mean``), and pickle protocol 2 (``torch.save``'s default)
  cannot name a function with a dotted ``__qualname__`` by a ``GLOBAL``: it writes
  ``getattr(HistoryBuffer, 'mean')``. Allow-listing ``HistoryBuffer.mean`` by its qualified name
  would therefore not help, and allow-listing ``getattr`` itself opens everything reachable
  from an allowed object (``getattr(getattr, '__self__')`` is the ``builtins`` module, then
  ``eval``, ``__import__``, ...). The weights-only unpickler resolves a ``GLOBAL`` by its
  ``module.name`` string, and ``add_safe_globals`` accepts ``(callable, 'module.name')``
  pairs, so ``builtins.getattr`` is bound to :func:`_history_buffer_statistic` instead: it
  returns one of those four functions for ``(HistoryBuffer, name)`` and refuses any other
  call. The real ``getattr`` is never reachable from a checkpoint.
* ``builtins.bytes``. Protocol 2 writes an *empty* ``bytes`` object (the raw data of an empty
  numpy array, i.e. a ``HistoryBuffer`` nothing was logged to) as ``bytes()``; non-empty ones
  go through ``_codecs.encode``, which torch allows already. ``builtins.bytes`` is bound to
  :func:`_empty_bytes`, which builds only ``b''``: ``bytes`` itself would also accept an
  integer (``bytes(10**12)`` allocates that many bytes) or any iterable.

Checkpoints written by mmengine 0.10.7 before this change load unchanged (same pickle, same
names); so do those written with numpy 1.x, whose arrays name ``numpy.core.multiarray``.
The allow-list is process-wide (``torch.serialization.add_safe_globals``) because mmengine's
loaders and a user's own ``torch.load`` of a Runner checkpoint all need it; that is safe only
because nothing on it can run code or reach objects other than the ones listed here.
"""
import pickle
import reprlib

import numpy as np
import torch

#: what ``HistoryBuffer.__getstate__`` pickles by ``getattr(HistoryBuffer, name)``
HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')

_shorten = reprlib.Repr()  # bounded repr of what a refused checkpoint passed
_shorten.maxstring = _shorten.maxother = 80


def _numpy_globals():
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = [getattr(np.dtypes, name) for name in getattr(np.dtypes, '__all__', ())]
    # the module path each numpy major version writes into a pickle, whichever is installed
    named = [(function, f'{module}.{function.__name__}')
             for function in (_reconstruct, scalar)
             for module in ('numpy.core.multiarray', 'numpy._core.multiarray')]
    return [_reconstruct, scalar, *named, np.ndarray, np.dtype, *dtypes]


def _history_buffer_statistic(owner, name):
    """Stand-in for ``builtins.getattr`` in a weights-only load: ``HistoryBuffer.<statistic>``.

    Returns the plain function for ``owner is HistoryBuffer`` and ``name`` one of
    :data:`HISTORY_BUFFER_STATISTICS`; refuses every other lookup with the
    ``pickle.UnpicklingError`` that ``torch.load`` reports as "Weights only load failed".
    """
    from mmengine.logging import HistoryBuffer

    if owner is HistoryBuffer and type(name) is str and name in HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    # a checkpoint's ``builtins.getattr`` is this function: name it as the file does
    shown = 'getattr' if owner is _history_buffer_statistic else _shorten.repr(owner)
    raise pickle.UnpicklingError(
        f'cvattn_mm refuses getattr({shown}, {_shorten.repr(name)}) in a weights-only load: '
        f'only getattr(HistoryBuffer, name) for name in {HISTORY_BUFFER_STATISTICS} '
        '(what mmengine pickles) is allowed.')


def _empty_bytes(*args):
    """Stand-in for ``builtins.bytes`` in a weights-only load: only ``bytes()``, i.e. ``b''``."""
    if args:
        raise pickle.UnpicklingError(
            f'cvattn_mm refuses bytes({", ".join(map(_shorten.repr, args))}) in a weights-only '
            'load: only bytes() (how pickle protocol 2 writes an empty bytes object) is allowed.')
    return b''


def allow_mmengine_checkpoints() -> None:
    """Allow-list what mmengine's Runner writes into a checkpoint besides tensors.

    Idempotent. ``builtins.getattr`` and ``builtins.bytes`` are bound to the restricted
    stand-ins above, never to the built-ins (see the module docstring).
    """
    if not hasattr(torch.serialization, 'add_safe_globals'):  # torch < 2.4: nothing to do
        return
    from mmengine.logging import HistoryBuffer

    torch.serialization.add_safe_globals([
        HistoryBuffer,
        (_history_buffer_statistic, 'builtins.getattr'),
        (_empty_bytes, 'builtins.bytes'),
        *_numpy_globals(),
    ])
