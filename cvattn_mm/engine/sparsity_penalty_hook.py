"""An L1 sparsity penalty on the weights that attention modules mark (NAM's BN weights)."""
import logging
from typing import Iterable, List

import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS
from torch.utils.hooks import RemovableHandle

from ..attention.checks import check_positive_float


def sparsity_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The parameters that the modules of ``model`` mark for the L1 sparsity penalty: what
    every submodule's ``sparsity_parameters()`` method returns (e.g.
    :meth:`cvattn_mm.attention.channel.nam.NAM.sparsity_parameters`), each once."""
    found, seen = [], set()
    for module in model.modules():
        method = getattr(module, 'sparsity_parameters', None)
        if not callable(method):
            continue
        for param in method():
            if id(param) not in seen:
                seen.add(id(param))
                found.append(param)
    return found


def add_sparsity_penalty(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter],
                         penalty: float) -> RemovableHandle:
    """Make every ``optimizer.step()`` first add ``penalty * sign(p)`` to the gradient of
    each of ``params`` that the optimiser updates and that has a gradient: the subgradient
    of ``penalty * sum |p|``, once per step. Returns the handle that removes it.

    A step pre-hook of the optimiser runs after the whole backward, after gradient
    accumulation, after ``GradScaler`` has unscaled the gradients (AMP) and after gradient
    clipping, just before the update (where weight decay is added): the official NAM
    script's ``updateBN`` between ``loss.backward()`` and ``optimizer.step()``.
    """
    owned = {id(p) for group in optimizer.param_groups for p in group['params']}
    targets = [p for p in params if id(p) in owned]

    def pre_step(opt, args, kwargs):
        with torch.no_grad():
            for p in targets:
                if p.grad is not None:
                    p.grad.add_(torch.sign(p), alpha=penalty)

    return optimizer.register_step_pre_hook(pre_step)


@HOOKS.register_module()
class SparsityPenaltyHook(Hook):
    """The L1 sparsity penalty of NAM (Liu et al., arXiv:2111.12419) for mmengine runners.

    The paper trains with ``loss + p sum |gamma|`` over the weights of NAM's batch norms
    (p = 1e-4); the official script adds ``s * sign(gamma)`` to their gradients after the
    backward, before ``optimizer.step()``. This hook does the same at every optimiser step
    (:func:`add_sparsity_penalty`) for every parameter that a module of the model marks
    (:func:`sparsity_parameters`: the modules' ``sparsity_parameters()``; NAM's channel
    and spatial BN weights), with every optimiser wrapper of the runner (plain, AMP, CPU
    bf16, gradient accumulation: once per update). Registered in mmengine's root ``HOOKS``:
    ``custom_hooks = [dict(type='SparsityPenaltyHook', penalty=1e-4)]``.

    Args:
        penalty (float): The factor p (the official script's ``--s``), 1e-4.
    """

    priority = 'NORMAL'

    def __init__(self, penalty: float = 1e-4):
        self.penalty = check_positive_float(type(self).__name__, 'penalty', penalty)
        self._handles: List[RemovableHandle] = []

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        params = sparsity_parameters(model)
        if not params:
            print_log(f'{type(self).__name__}: no module of the model marks parameters for '
                      'the sparsity penalty (no NAM?); the hook does nothing',
                      logger='current', level=logging.WARNING)
            return
        wrapper = runner.optim_wrapper
        wrappers = (wrapper.optim_wrappers.values() if isinstance(wrapper, OptimWrapperDict)
                    else [wrapper])
        self._handles = [add_sparsity_penalty(w.optimizer, params, self.penalty)
                         for w in wrappers]

    def after_train(self, runner) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
