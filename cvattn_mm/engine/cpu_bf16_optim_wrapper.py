"""Mixed precision on the CPU: what ``tools/train.py --amp`` uses without CUDA."""
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class CPUBF16OptimWrapper(OptimWrapper):
    """An ``OptimWrapper`` whose forward passes run under CPU bfloat16 autocast.

    mmengine's ``AmpOptimWrapper`` needs a GPU. bfloat16 has float32's exponent range, so no
    loss scaling is needed. Registered in mmengine's root ``OPTIM_WRAPPERS``, so a config
    saved with it loads wherever ``cvattn_mm`` is imported.
    """

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast('cpu', dtype=torch.bfloat16):
            yield
