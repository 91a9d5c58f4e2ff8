"""Train and evaluate configs in this process: the runs of the quickstart and of the comparison.

A run trains a config with mmengine's Runner (no validation during training), tests the
trained model on the config's test loader, and measures the model's inference time on one test
batch. Several runs can share one process: each gets its own experiment name.
"""
import os.path as osp
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Union

import torch
from mmengine.config import Config, ConfigDict
from mmengine.hooks import Hook
from mmengine.runner import Runner

from ..attention.base import AttentionModule

#: The headline metric of each task (default scope): the evaluator's key and its label.
METRICS = {
    'mmpretrain': ('accuracy/top1', 'top-1 (%)'),
    'mmdet': ('coco/bbox_mAP', 'bbox mAP (%)'),
    'mmseg': ('mIoU', 'mIoU (%)'),
}


@dataclass
class RunResult:
    """What one run measured.

    ``train_seconds`` is the training loop's wall time alone (:class:`TrainTimer`: no model
    building, no test, no shutdown of the previous run's loader workers); ``latency_ms`` is
    the median time of the model's ``test_step`` on the first test batch, per image, in
    eval mode without gradients.
    """

    name: str
    metric_name: str
    metric: float
    params: int
    attention_params: int
    train_seconds: float
    latency_ms: float
    work_dir: str

    def as_dict(self) -> dict:
        return asdict(self)


def set_data_root(cfg: Config, data_root: str) -> None:
    """Point every loader of ``cfg`` (and evaluator files under the old root) at ``data_root``.

    The old root is ``cfg.data_root``; evaluator arguments such as mmdet's ``ann_file`` that
    start with it are moved along.
    """
    old_root = cfg.get('data_root')
    if old_root is None:
        raise ValueError(f'{cfg.filename}: set_data_root needs a top-level data_root')
    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader')
        if loader:
            loader.dataset.data_root = data_root
        evaluator = cfg.get(f'{split}_evaluator')
        for metric in evaluator if isinstance(evaluator, list) else [evaluator]:
            ann_file = (metric or {}).get('ann_file')
            if isinstance(ann_file, str) and ann_file.startswith(old_root):
                metric['ann_file'] = osp.join(data_root, osp.relpath(ann_file, old_root))
    cfg.data_root = data_root


def set_attention(cfg: Config, attention: Union[None, str, dict], at='paper') -> None:
    """Replace the insertions of ``cfg``'s ``InsertAttention`` backbone by one module.

    Args:
        cfg: A config whose ``model.backbone`` is an ``InsertAttention``.
        attention: A registered module name (``'SE'``), a module config, or ``None`` for no
            attention (the baseline).
        at: Where to insert it (``'paper'``: the paper's position).
    """
    backbone = cfg.model.get('backbone', {})
    if backbone.get('type') not in ('InsertAttention', 'cvattn_mm.InsertAttention'):
        raise ValueError(f'{cfg.filename}: set_attention needs model.backbone of type '
                         f"InsertAttention, got {backbone.get('type')!r}")
    if attention is None:
        backbone.insertions = []
        return
    module = dict(type=attention) if isinstance(attention, str) else dict(attention)
    backbone.insertions = [ConfigDict(attention=module, at=at)]


def attention_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, AttentionModule)
               for p in m.parameters())


@torch.no_grad()
def inference_latency_ms(model, data_batch: dict, repeats: int = 5) -> float:
    """Median time of ``model.test_step(data_batch)`` per image, in milliseconds."""
    model.eval()
    model.test_step(data_batch)  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.test_step(data_batch)
        seconds.append(time.perf_counter() - start)
    return 1000 * statistics.median(seconds) / len(data_batch['inputs'])


class TrainTimer(Hook):
    """Wall time of the training loop alone: from ``before_train`` (model, optimiser and
    loaders built) to ``after_train`` (before checkpoints of the last epoch are written)."""

    def before_train(self, runner) -> None:
        self.start = time.perf_counter()

    def after_train(self, runner) -> None:
        self.seconds = time.perf_counter() - self.start


def release_workers(runner: Runner) -> None:
    """Shut down the worker processes of the runner's loaders now.

    Persistent workers otherwise live until their iterator is garbage-collected, which can
    happen inside the next run's timed training (about 20 s per run were charged so).
    """
    loops = (runner._train_loop, runner._val_loop, runner._test_loop)
    for loop in loops:
        loader = getattr(loop, 'dataloader', None)
        iterator = getattr(loader, '_iterator', None)  # torch keeps persistent workers here
        if iterator is not None and hasattr(iterator, '_shutdown_workers'):
            iterator._shutdown_workers()
            loader._iterator = None


def train_and_evaluate(cfg: Config, work_dir: str, name: str, progress: bool = True,
                       quiet: bool = True) -> RunResult:
    """Train ``cfg``, test it, and time its inference.

    Args:
        cfg: The config (not modified).
        work_dir: Where the Runner writes its logs and checkpoints.
        name: The run's name in the results (and in its progress bars).
        progress: Show progress bars (``ProgressBarHook``).
        quiet: Log warnings only on the console (the Runner's logs hold the rest).
    """
    cfg = cfg.copy()
    scope = cfg.get('default_scope', 'mmengine')
    if scope not in METRICS:
        raise ValueError(f'{cfg.filename}: train_and_evaluate knows the metrics of '
                         f'{sorted(METRICS)}, not of default_scope={scope!r}')
    metric_key, metric_name = METRICS[scope]
    cfg.work_dir = work_dir
    cfg.experiment_name = f'{name}_{uuid.uuid4().hex[:8]}'.replace(' ', '_')
    # tested once after training instead
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    if quiet:
        cfg.log_level = 'WARNING'
    if progress:
        cfg.custom_hooks = [*cfg.get('custom_hooks', []),
                            dict(type='ProgressBarHook', desc=name)]
    runner = Runner.from_cfg(cfg)
    timer = TrainTimer()
    runner.register_hook(timer, priority='VERY_LOW')
    runner.train()
    metrics = runner.test()
    if metric_key not in metrics:
        raise KeyError(f'{name}: the test metrics {sorted(metrics)} lack {metric_key!r}')
    metric = float(metrics[metric_key])
    if scope == 'mmdet':
        metric *= 100  # COCO mAP in [0, 1]; shown in percent like the others
    model = runner.model
    latency = inference_latency_ms(model, next(iter(runner.test_dataloader)))
    release_workers(runner)
    train_seconds = timer.seconds
    return RunResult(
        name=name, metric_name=metric_name, metric=metric,
        params=sum(p.numel() for p in model.parameters()),
        attention_params=attention_parameters(model), train_seconds=train_seconds,
        latency_ms=latency, work_dir=work_dir)

