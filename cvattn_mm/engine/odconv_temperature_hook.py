"""The temperature annealing of ODConv's attentions (a training hook)."""
import logging
from typing import List, Optional

import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ..attention.branch.odconv import ODConv
from ..attention.checks import check_int, check_positive_float


def odconv_temperature(iteration: int, total: int, temp_init: float = 30.0) -> float:
    """The temperature after ``iteration`` training iterations of an annealing over
    ``total`` iterations: ``1 + (temp_init - 1) max(0, (total - iteration) / total)``,
    linear from ``temp_init`` (iteration 0) to 1 (iteration ``total``), then 1 (the
    official ``get_temperature`` with ``iteration + epoch * iter_per_epoch`` iterations)."""
    return 1.0 + max(0.0, (temp_init - 1.0) * ((total - iteration) / total))


def odconv_modules(model: nn.Module) -> List[ODConv]:
    """The :class:`~cvattn_mm.attention.branch.odconv.ODConv` modules of ``model``."""
    return [m for m in model.modules() if isinstance(m, ODConv)]


@HOOKS.register_module()
class ODConvTemperatureHook(Hook):
    """The temperature annealing of ODConv (Li et al., ICLR 2022, arXiv:2209.07947) for
    mmengine runners.

    The official training divides the attention logits of every ODConv by a temperature
    that falls linearly from ``temp_init`` = 30 to 1 over the first ``temp_epoch`` = 10
    epochs, updated before every iteration, then stays 1. Before iteration i (counted over
    the whole training from 0) it is :func:`odconv_temperature` ``(i + 1, total)``: the
    official ``get_temperature(batch_idx + 1, epoch, iter_per_epoch)``, so the first
    iteration already runs slightly below 30 and the last annealing iteration at exactly 1.
    Before training (and when resuming) it sets :func:`odconv_temperature` ``(runner.iter,
    total)``, as the official script does with ``get_temperature(0, start_epoch, ...)``.
    ``total = temp_epoch * len(runner.train_dataloader)`` unless ``temp_iters`` is given
    (e.g. for iteration-based loops). Validation between epochs uses the temperature of the
    last training iteration, as in the official script; the modules' temperature is not
    saved in checkpoints and starts at 1, the value after the annealing.
    Registered in mmengine's root ``HOOKS``:
    ``custom_hooks = [dict(type='ODConvTemperatureHook')]``.

    Args:
        temp_epoch (int): Epochs of the annealing (the official ``--temp_epoch``, 10).
        temp_init (float): Initial temperature (the official ``--temp_init``, 30).
        temp_iters (int, optional): Iterations of the annealing, instead of
            ``temp_epoch`` epochs.
    """

    priority = 'NORMAL'

    def __init__(self, temp_epoch: int = 10, temp_init: float = 30.0,
                 temp_iters: Optional[int] = None):
        name = type(self).__name__
        self.temp_epoch = check_int(name, 'temp_epoch', temp_epoch, 1)
        self.temp_init = check_positive_float(name, 'temp_init', temp_init)
        self.temp_iters = None if temp_iters is None else check_int(name, 'temp_iters',
                                                                     temp_iters, 1)
        self._odconvs: List[ODConv] = []
        self._total = 1

    def _set(self, iteration: int) -> None:
        temperature = odconv_temperature(iteration, self._total, self.temp_init)
        for module in self._odconvs:
            module.update_temperature(temperature)

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self._odconvs = odconv_modules(model)
        if not self._odconvs:
            print_log(f'{type(self).__name__}: the model has no ODConv; the hook does nothing',
                      logger='current', level=logging.WARNING)
            return
        self._total = (self.temp_iters if self.temp_iters is not None else
                       self.temp_epoch * len(runner.train_dataloader))
        self._set(runner.iter)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._set(runner.iter + 1)
