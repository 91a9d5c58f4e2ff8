"""Quickstart: train a baseline and attention models over several seeds on generated data,
compare, visualise.

    python tools/quickstart.py [--task classification|detection|segmentation|all]
        [--seeds 0 1 2] [--data-root data/quickstart] [--work-dir work_dirs/quickstart]

Per task: generates the data set into ``<data-root>/<task>`` unless it is there already (its
generator seed is fixed: every training seed sees the same images), trains each of the task's
quickstart configs (``configs/quickstart/``: ResNet-18 plain and with attention inserted by
``InsertAttention``) once per seed on this machine's CPU, tests them, prints a table (the
task's metric as mean ± std over the seeds with the per-seed figures, the per-seed difference
to the baseline and a verdict, parameters, training and inference time), writes
``results.md``, ``results.json`` (every run) and ``results.png`` (error bars), and draws one
attention model's maps on a few validation images. Everything is written under
``--work-dir``.
"""
import argparse
import functools
import os
import os.path as osp
import sys
import time
from typing import NamedTuple, Tuple

import torch
from mmengine.config import DictAction
from mmengine.runner import load_checkpoint

import cvattn_mm  # noqa: F401  (registers the modules)
from cvattn_mm.analysis.compare import DEFAULT_SEEDS
from cvattn_mm.analysis.runs import set_data_root
from cvattn_mm.analysis.schedule import set_schedule_length
from cvattn_mm.analysis.seed_report import format_seed_table, write_seed_report
from cvattn_mm.analysis.seeds import train_over_seeds
from cvattn_mm.config import build_model, load_config
from cvattn_mm.datasets import ensure_quickstart_data
from cvattn_mm.quiet import silence_upstream_noise
from cvattn_mm.visualization import visualize_config_model
from cvattn_mm.visualization.visualize import find_images

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(ROOT, 'configs', 'quickstart')


class QuickstartTask(NamedTuple):
    """The models of one task's quickstart.

    Args:
        models: ``(name, config file in configs/quickstart/)`` per model, the baseline first.
        maps: The name of the model whose attention maps are drawn (its first seed's run).
        val_images: The folder of the generated validation images, under the data root.
    """

    models: Tuple[Tuple[str, str], ...]
    maps: str
    val_images: str


TASKS = {
    'classification': QuickstartTask(
        models=(('ResNet-18', 'cls_resnet18.py'), ('ResNet-18 + SE', 'cls_resnet18-se.py'),
                ('ResNet-18 + CBAM', 'cls_resnet18-cbam.py')),
        maps='ResNet-18 + CBAM', val_images='val'),
    'detection': QuickstartTask(
        models=(('RetinaNet R-18', 'det_retinanet_r18.py'),
                ('RetinaNet R-18 + SE', 'det_retinanet_r18-se.py'),
                ('RetinaNet R-18 + CBAM', 'det_retinanet_r18-cbam.py')),
        maps='RetinaNet R-18 + CBAM', val_images='val'),
    'segmentation': QuickstartTask(
        models=(('Semantic FPN R-18', 'seg_fpn_r18.py'),
                ('Semantic FPN R-18 + SE', 'seg_fpn_r18-se.py'),
                ('Semantic FPN R-18 + CBAM', 'seg_fpn_r18-cbam.py')),
        maps='Semantic FPN R-18 + CBAM', val_images='img_dir/val'),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--task', choices=[*TASKS, 'all'], default='classification')
    parser.add_argument('--seeds', nargs='+', type=int, default=list(DEFAULT_SEEDS),
                        help='training seeds; every model runs with each (default: %(default)s)')
    parser.add_argument('--data-root', default='data/quickstart',
                        help='generated data sets go to <data-root>/<task>')
    parser.add_argument('--work-dir', default='work_dirs/quickstart')
    parser.add_argument('--num-maps', type=int, default=4,
                        help='validation images whose attention maps are drawn')
    parser.add_argument('--num-train', type=int, help='training images (default: per task)')
    parser.add_argument('--num-val', type=int, help='validation images (default: per task)')
    parser.add_argument('--train-length', type=int, metavar='N',
                        help='train every run for N epochs (iterations for iteration-based '
                        'configs): loop, learning-rate schedule and intervals together')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of every config, key=value')
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f'--seeds must be distinct, got {args.seeds}')
    return args


def run_task(task: str, args) -> str:
    spec = TASKS[task]
    data_root = osp.abspath(osp.join(args.data_root, task))
    start = time.perf_counter()
    sizes = {k: v for k, v in dict(num_train=args.num_train, num_val=args.num_val).items()
             if v is not None}
    data = ensure_quickstart_data(task, data_root, **sizes)
    state = f'generated in {time.perf_counter() - start:.0f} s' if data['written'] else 'found'
    print(f'\n== {task}: data {data_root} ({data["num_train"]} train, {data["num_val"]} val '
          f'images of {data["image_size"]}x{data["image_size"]}, {state}); '
          f'{len(spec.models)} models x seeds {args.seeds}', flush=True)
    task_dir = osp.join(args.work_dir, task)
    models, configs = [], {}
    for name, config in spec.models:
        configs[name] = osp.join(CONFIGS, config)
        cfg = load_config(configs[name])
        if args.train_length is not None:
            set_schedule_length(cfg, args.train_length)
        cfg.merge_from_dict(args.cfg_options or {})
        set_data_root(cfg, data_root)
        models.append((name, cfg, osp.join(task_dir, osp.splitext(config)[0])))
    summaries = train_over_seeds(models, args.seeds,
                                 report=functools.partial(print, flush=True))
    write_seed_report(summaries, task_dir, 'results', f'Quickstart, {task}')
    table = format_seed_table(summaries)
    images = find_images(osp.join(data_root, spec.val_images), args.num_maps)
    drawn = next(s for s in summaries if s.name == spec.maps)
    model = load_trained_model(configs[spec.maps], drawn.runs[0].work_dir, args.cfg_options)
    pictures = visualize_config_model(model, images, osp.join(task_dir, 'maps'), max_sites=6)
    return (f'{task} (results.md, .json, .png in {task_dir})\n\n{table}\n\n'
            f'attention maps of {spec.maps} (seed {args.seeds[0]}):\n'
            + '\n'.join(f'  {p}' for p in pictures))


def load_trained_model(config: str, work_dir: str, cfg_options=None):
    """The model of ``config`` with the weights of the last checkpoint in ``work_dir``."""
    model = build_model(config, cfg_options)
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        load_checkpoint(model, f.read().strip(), map_location='cpu', logger='silent')
    return model.eval()


def main(argv=None) -> int:
    silence_upstream_noise()
    args = parse_args(argv)
    tasks = list(TASKS) if args.task == 'all' else [args.task]
    print(f'cvattn_mm quickstart: {", ".join(tasks)} on {torch.get_num_threads()} CPU threads; '
          f'writing to {osp.abspath(args.work_dir)}', flush=True)
    os.makedirs(args.work_dir, exist_ok=True)
    start = time.perf_counter()
    reports = [run_task(task, args) for task in tasks]
    print('\n' + '\n\n'.join(reports))
    print(f'\nquickstart finished in {time.perf_counter() - start:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
