"""Test (and evaluate) a checkpoint of any OpenMMLab task with mmengine's Runner.

The config's ``default_scope`` (``mmpretrain``, ``mmdet``, ``mmseg``) decides the task. As in
``tools/train.py``, the model is built before the Runner writes anything, and without CUDA
``--launcher pytorch`` (torchrun, ``tools/dist_test.sh``) communicates over gloo.

Example:
    python tools/test.py configs/classification/resnet50/resnet50-se_8xb32_in1k.py \
        work_dirs/resnet50-se_8xb32_in1k/epoch_100.pth --out results.pkl
"""
import argparse
import inspect
import os

from mmengine.config import Config
from mmengine.evaluator import DumpResults
from mmengine.registry import HOOKS
from train import add_common_args, build_runner, set_work_dir

import cvattn_mm  # noqa: F401  (registers the modules; lets torch load mmengine checkpoints)
from cvattn_mm.quiet import silence_upstream_noise


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test a checkpoint (any OpenMMLab task)')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='dump the predictions to this pickle file (.pkl)')
    parser.add_argument('--show-dir', help='save images with the predictions drawn here')
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error(f'--out must name a .pkl or .pickle file, got {args.out}')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def draw_predictions(cfg: Config, show_dir: str) -> None:
    """Make the task's visualization hook draw the predictions on every test image and save
    them to ``show_dir``."""
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise SystemExit('--show-dir needs a visualization hook in default_hooks, e.g. '
                         "mmpretrain's VisualizationHook or mmdet's DetVisualizationHook")
    with HOOKS.switch_scope_and_registry(cfg.get('default_scope')) as registry:
        params = inspect.signature(registry.get(hook['type'])).parameters
    if 'out_dir' in params:  # mmpretrain
        hook.update(enable=True, out_dir=show_dir)
    elif 'test_out_dir' in params:  # mmdet
        hook.update(draw=True, test_out_dir=show_dir)
    elif 'draw' in params:  # mmseg: the visualizer's backends save the images
        hook.draw = True
        cfg.visualizer.save_dir = show_dir
    else:
        raise SystemExit(f'--show-dir: {hook["type"]} takes none of out_dir, test_out_dir, '
                         'draw; set it to save images with --cfg-options')
    hook.interval = 1


def merge_args(cfg: Config, args: argparse.Namespace) -> Config:
    """Apply the command-line arguments to ``cfg``; ``--cfg-options`` apply last."""
    cfg.launcher = args.launcher
    set_work_dir(cfg, args.work_dir, args.config)
    cfg.load_from = args.checkpoint
    if args.show_dir is not None:
        draw_predictions(cfg, args.show_dir)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    return cfg


def main(argv=None) -> None:
    silence_upstream_noise()
    args = parse_args(argv)
    cfg = merge_args(Config.fromfile(args.config), args)
    runner = build_runner(cfg)
    if args.out is not None:
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    runner.test()


if __name__ == '__main__':
    main()
