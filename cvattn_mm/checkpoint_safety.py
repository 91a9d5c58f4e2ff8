"""Let torch >= 2.6 load mmengine's own checkpoints with ``weights_only=True``.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; since torch 2.6 that means
``weights_only=True``, whose unpickler refuses the classes an mmengine checkpoint holds
(the message hub's ``HistoryBuffer`` with its numpy arrays), so ``resume`` and ``load_from``
fail. Instead of turning the check off (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``), this
allow-lists exactly those classes; any other pickled object is still refused.
"""
import numpy as np
import torch


def _numpy_globals():
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = [getattr(np.dtypes, name) for name in getattr(np.dtypes, '__all__', ())]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtypes]


def allow_mmengine_checkpoints() -> None:
    """Allow-list what mmengine's Runner writes into a checkpoint besides tensors.

    ``getattr`` is needed because a ``HistoryBuffer`` pickles its statistics methods as
    ``getattr(HistoryBuffer, 'mean')``; the weights-only unpickler still refuses to call
    anything that is not allow-listed, so it only fetches attributes of allowed classes.
    """
    if not hasattr(torch.serialization, 'add_safe_globals'):  # torch < 2.4: nothing to do
        return
    from mmengine.logging import HistoryBuffer

    torch.serialization.add_safe_globals([HistoryBuffer, getattr, *_numpy_globals()])
