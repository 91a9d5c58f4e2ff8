"""Train a model of any OpenMMLab task with mmengine's Runner.

The config's ``default_scope`` (``mmpretrain``, ``mmdet``, ``mmseg``) decides the task. The
model is built once before the Runner starts, so a broken model config (an unknown module, an
insertion pattern that matches nothing, a plug-in that does not fit its channels) fails with
its own error before anything is written to the work dir.

Without CUDA, ``--amp`` trains under bfloat16 autocast, and ``--launcher pytorch`` (torchrun,
``tools/dist_train.sh``) communicates over gloo.

Example:
    python tools/train.py configs/classification/resnet50/resnet50-se_8xb32_in1k.py
"""
import argparse
import datetime
import os
import os.path as osp

import torch
import torch.distributed as torch_dist
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import print_log
from mmengine.registry import MODEL_WRAPPERS, RUNNERS, init_default_scope
from mmengine.runner import Runner
from torch.nn.parallel import DistributedDataParallel

import cvattn_mm  # noqa: F401  (registers the modules; lets torch load mmengine checkpoints)
from cvattn_mm.analysis.schedule import set_schedule_length
from cvattn_mm.config import build_model
from cvattn_mm.insertion.plugin_checks import check_plugins
from cvattn_mm.quiet import silence_upstream_noise

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Arguments that train.py and test.py share."""
    parser.add_argument('--work-dir', help='the dir to save logs, checkpoints and results')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, as key=value pairs (a list: key="[a,b]" or '
        'key=a,b; nested: key="[(a,b),(c,d)]"; quotes needed, no white space)')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model (any OpenMMLab task)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint; without a path, from the latest checkpoint in '
        'the work dir')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='automatic mixed precision (float16 with loss scaling on GPU, bfloat16 on CPU)')
    parser.add_argument(
        '--train-length',
        type=int,
        metavar='N',
        help='train for N epochs (epoch-based configs) or N iterations (iteration-based): '
        'the loop, the learning-rate schedule and the validation and checkpoint intervals '
        'together (cvattn_mm/analysis/schedule.py); applied before --cfg-options')
    add_common_args(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def set_work_dir(cfg: Config, work_dir, config_path: str) -> None:
    """The work dir, by priority: the command line, the config, ./work_dirs/<config name>."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def merge_args(cfg: Config, args: argparse.Namespace) -> Config:
    """Apply the command-line arguments to ``cfg``; ``--cfg-options`` apply last."""
    cfg.launcher = args.launcher
    set_work_dir(cfg, args.work_dir, args.config)
    if args.amp:
        if torch.cuda.is_available():
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
        else:
            cfg.optim_wrapper.type = 'CPUBF16OptimWrapper'  # cvattn_mm.engine
            cfg.optim_wrapper.pop('loss_scale', None)
            print_log('--amp without CUDA: bfloat16 autocast on the CPU', logger='current')
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    if getattr(args, 'train_length', None) is not None:
        set_schedule_length(cfg, args.train_length)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    return cfg


def check_model(cfg: Config) -> None:
    """Build the model once before the Runner writes anything, so that a broken model config
    fails here with its own error and leaves no work dir behind (``plugins=`` are checked
    first: mmcv's and mmdet's own errors say little)."""
    check_plugins(cfg.model, cfg.get('default_scope', 'mmengine'))
    build_model(cfg)
    init_default_scope(cfg.get('default_scope', 'mmengine'))  # for RUNNERS.build below


def setup_cpu_distributed(cfg: Config) -> None:
    """Join the process group over gloo when a launcher is used without CUDA.

    mmengine's launchers pin a CUDA device before they create the process group, and its
    ``MMDistributedDataParallel`` default passes CUDA device ids; neither works on a CPU. With
    ``--launcher pytorch`` (torchrun) the group is created here instead (the Runner then skips
    its own), over gloo, and the model is wrapped without device ids.
    """
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    if cfg.launcher != 'pytorch':
        raise SystemExit(f'--launcher {cfg.launcher} needs CUDA (mmengine pins a GPU per '
                         'process); on CPUs, start the processes with torchrun '
                         '(tools/dist_train.sh, --launcher pytorch), which uses gloo')
    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    dist_cfg = env_cfg.setdefault('dist_cfg', ConfigDict())
    dist_cfg.backend = 'gloo'
    kwargs = {k: v for k, v in dist_cfg.items() if k not in ('backend', 'init_backend')}
    if kwargs.get('timeout') is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=kwargs['timeout'])
    torch_dist.init_process_group(backend='gloo', **kwargs)
    wrapper = cfg.get('model_wrapper_cfg') or ConfigDict(
        type='MMDistributedDataParallel',
        broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    if issubclass(MODEL_WRAPPERS.get(wrapper['type']), DistributedDataParallel):
        wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    print_log(f'CPU distributed run over gloo: rank {torch_dist.get_rank()} of world size '
              f'{torch_dist.get_world_size()}', logger='current')


def build_runner(cfg: Config) -> Runner:
    """The config's runner (``runner_type``), by default mmengine's ``Runner``."""
    check_model(cfg)
    setup_cpu_distributed(cfg)
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def main(argv=None) -> None:
    silence_upstream_noise()
    args = parse_args(argv)
    cfg = merge_args(Config.fromfile(args.config), args)
    build_runner(cfg).train()


if __name__ == '__main__':
    main()
