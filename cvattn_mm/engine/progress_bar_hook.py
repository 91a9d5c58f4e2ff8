"""A tqdm progress bar for mmengine's loops, for runs whose log level hides the logger."""
from typing import Optional

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from tqdm import tqdm


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """Shows one progress bar per training, validation and test run (on rank 0 only).

    The training bar counts iterations of the whole run (``runner.max_iters``, starting at the
    resumed iteration) and shows the latest loss. Registered in mmengine's root ``HOOKS``, so
    every task's config can use it: ``custom_hooks = [dict(type='ProgressBarHook')]``.

    Args:
        desc (str, optional): Prefix of the bars (e.g. the model's name).
        leave (bool): Keep the finished bars on the screen.
    """

    priority = 'VERY_LOW'

    def __init__(self, desc: Optional[str] = None, leave: bool = True):
        self.desc = desc
        self.leave = leave
        self._bar = None
        self._train_bar = None  # set aside while a validation bar shows

    def _open(self, total: int, stage: str, initial: int = 0) -> None:
        if is_main_process():
            desc = f'{self.desc}: {stage}' if self.desc else stage
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit='it',
                             leave=self.leave, dynamic_ncols=True)

    def _advance(self, **postfix) -> None:
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(1)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def before_train(self, runner) -> None:
        self._open(runner.max_iters, 'train', initial=runner.iter)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        loss = (outputs or {}).get('loss')
        if torch.is_tensor(loss):
            loss = loss.detach().item()
        self._advance(**({} if loss is None else dict(loss=f'{loss:.3f}')))

    def after_train(self, runner) -> None:
        self._close()

    def before_val_epoch(self, runner) -> None:
        self._train_bar, self._bar = self._bar, None
        self._open(len(runner.val_dataloader), 'val')

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._advance()

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._close()
        self._bar = self._train_bar

    def before_test_epoch(self, runner) -> None:
        self._open(len(runner.test_dataloader), 'test')

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._advance()

    def after_test_epoch(self, runner, metrics=None) -> None:
        self._close()
