"""Change the length of a config's training consistently: the loop, the schedulers, the
intervals.

``--cfg-options train_cfg.max_epochs=16`` alone leaves the learning-rate schedule at its old
length (a cosine that ends at epoch 10 trains epochs 11-16 at its final rate), and
``max_epochs=1`` of a config with a one-epoch warm-up trains nothing but the warm-up.
:func:`set_schedule_length` moves every boundary that is tied to the end of training.
"""
from typing import Tuple

from mmengine.config import Config

from ..attention.checks import check_int


def _loop_length(cfg: Config) -> Tuple[str, int]:
    """``('max_epochs' | 'max_iters', value)`` of ``cfg.train_cfg``."""
    train_cfg = cfg.get('train_cfg') or {}
    for key in ('max_epochs', 'max_iters'):
        if train_cfg.get(key) is not None:
            return key, int(train_cfg[key])
    raise ValueError(f'{cfg.filename}: set_schedule_length needs train_cfg.max_epochs or '
                     f'train_cfg.max_iters, got train_cfg={dict(train_cfg)}')


def set_schedule_length(cfg: Config, length: int) -> None:
    """Train ``cfg`` for ``length`` epochs (epoch-based loops) or iterations (iteration-based
    loops), in place.

    * ``train_cfg.max_epochs`` / ``max_iters`` becomes ``length``;
    * every parameter scheduler counted in the loop's unit (``by_epoch`` as the loop) that
      ends at the old end (or later) ends at ``length``; its ``T_max`` (cosine) follows when
      it spanned the scheduler, and ``MultiStepLR`` milestones scale with the length;
    * schedulers that end earlier (warm-ups) and schedulers in the other unit (a warm-up in
      iterations of an epoch-based loop) keep their span; a warm-up that would not end
      before ``length`` raises a ``ValueError``;
    * ``train_cfg.val_interval`` and the checkpoint hook's ``interval`` that were the old
      length become ``length``; shorter ones are capped at ``length``.
    """
    length = check_int('set_schedule_length', 'length', length, 1)
    key, old = _loop_length(cfg)
    by_epoch = key == 'max_epochs'
    cfg.train_cfg[key] = length
    schedulers = cfg.get('param_scheduler') or []
    for scheduler in schedulers if isinstance(schedulers, (list, tuple)) else [schedulers]:
        if scheduler.get('by_epoch', True) != by_epoch:
            continue
        begin = scheduler.get('begin', 0)
        end = scheduler.get('end')
        if end is None or end >= old:
            if begin >= length:
                raise ValueError(f'{cfg.filename}: a training of {length} '
                                 f"{key.removeprefix('max_')} ends before the "
                                 f"{scheduler['type']} that starts at {begin}: use a length "
                                 f'> {begin}')
            span = (old if end is None else end) - begin
            if scheduler.get('T_max') == span:
                scheduler['T_max'] = length - begin
            if 'milestones' in scheduler:
                scheduler['milestones'] = sorted(
                    {max(begin + 1, round(m * length / old)) for m in scheduler['milestones']})
            if end is not None:
                scheduler['end'] = length
        elif end >= length:
            raise ValueError(f"{cfg.filename}: the {scheduler['type']} warm-up ends at {end}, "
                             f"not before the end of a training of {length} "
                             f"{key.removeprefix('max_')}: use a length > {end}")
    if 'val_interval' in cfg.train_cfg:
        interval = cfg.train_cfg.val_interval
        cfg.train_cfg.val_interval = length if interval == old else min(interval, length)
    checkpoint = (cfg.get('default_hooks') or {}).get('checkpoint')
    if checkpoint and 'interval' in checkpoint and checkpoint.get('by_epoch', True) == by_epoch:
        interval = checkpoint.interval
        checkpoint.interval = length if interval == old else min(interval, length)
